"""The ``parallel: {matrix: [...]}`` key of a pipeline job: one job per combination of variable values.

Each mapping of the ``matrix`` list is the cartesian product of its keys' value lists (a single value counts as a
list of one), in the mapping's key order; the mappings' products are concatenated. The job ``build`` with
``parallel: {matrix: [{OS: [alpine, debian]}, {OS: [arch], ARCH: [x86, arm]}]}`` becomes ``build [alpine]``,
``build [debian]``, ``build [arch, x86]`` and ``build [arch, arm]``, in that order, where the job was in the
file, each with its values as variables. ``needs: [build]`` on another job then means every expansion;
``needs: ["build [alpine]"]`` just that one.

Expansion happens before the graph check, so the planner and the backend only ever see expanded jobs. A file
cannot make a huge pipeline: at most :data:`MAX_COMBINATIONS` jobs per matrix (GitLab's cap too) and
:data:`MAX_MATRIX_JOBS` made by all the matrices of a file, counted before any job is made.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import product
from typing import Protocol, TypeVar

import yaml

from cli.pipeline_checker import Checker
from cli.pipeline_yaml import Problems

MAX_COMBINATIONS = 200
MAX_MATRIX_JOBS = 5000
_CORE = "tag:yaml.org,2002:"
_Entry = list[tuple[str, list[yaml.ScalarNode]]]
"""One mapping of the ``matrix`` list, read: each variable with its value nodes, in the mapping's order."""


@dataclass(frozen=True)
class Combination:
    """One job of a matrix: its variables in the mapping's key order, and where they were written."""

    variables: dict[str, str]
    nodes: tuple[yaml.Node, ...]
    """The value nodes, in the same order (for the line of a value that makes a bad name)."""
    entry: yaml.Node
    """The ``matrix`` list's mapping this combination comes from."""

    def name(self, base: str) -> str:
        """The job's name: ``base [value, value ...]``."""
        return f"{base} [{', '.join(self.variables.values())}]"


@dataclass(frozen=True)
class Matrix:
    """A job's ``parallel`` key, read."""

    node: yaml.Node
    key: str
    """``stages[i].jobs[j].parallel``, for messages."""
    combinations: tuple[Combination, ...]


@dataclass(frozen=True)
class Expansion:
    """What a job made by a matrix remembers of it."""

    of: str
    """The name of the job whose matrix made this one."""
    variables: dict[str, str]
    """The matrix's values for this job (they win over every other variable: the job's name says them)."""
    index: int
    """1-based position among the matrix's jobs (``CI_NODE_INDEX``)."""
    total: int
    """How many jobs the matrix made (``CI_NODE_TOTAL``)."""


def check_parallel(checker: Checker, fields: dict[str, yaml.Node], key: str) -> Matrix | None:
    """The job's ``parallel`` key read (None when absent or invalid), every problem recorded at its line."""
    node = fields.get("parallel")
    if node is None:
        return None
    full = f"{key}.parallel"
    if isinstance(node, yaml.ScalarNode) and node.tag == _CORE + "int":
        checker.problems.at(node, full, "'parallel: N' (N copies of a job) is not supported: their names 'NAME i/N' "
                                        "hold '/', which a job name cannot; use parallel: {matrix: [...]}")
        return None
    parallel = checker.mapping(node, full, {"matrix"})
    if parallel is None:
        return None
    matrix = parallel.get("matrix")
    if matrix is None:
        checker.problems.at(node, f"{full}.matrix", "missing")
        return None
    if not isinstance(matrix, yaml.SequenceNode) or not matrix.value:
        checker.problems.at(matrix, f"{full}.matrix", "must be a non-empty list of mappings of variables to values")
        return None
    entries = [_entry(checker.problems, entry, f"{full}.matrix[{index}]") for index, entry in enumerate(matrix.value)]
    if any(entry is None for entry in entries):
        return None
    count = sum(math.prod(len(values) for _, values in entry) for entry in entries if entry is not None)
    if count > MAX_COMBINATIONS:
        checker.problems.at(matrix, f"{full}.matrix", f"makes {count} jobs, more than {MAX_COMBINATIONS}")
        return None
    combinations = tuple(_combinations(entry, matrix_entry)
                         for entry, matrix_entry in zip(entries, matrix.value, strict=True) if entry is not None)
    return Matrix(node=node, key=full, combinations=tuple(item for group in combinations for item in group))



def _entry(problems: Problems, node: yaml.Node, key: str) -> _Entry | None:
    """One mapping of the ``matrix`` list: each variable with its value nodes; None after recording a problem."""
    if not isinstance(node, yaml.MappingNode) or not node.value:
        problems.at(node, key, "must be a non-empty mapping of variable names to lists of values")
        return None
    found: _Entry = []
    valid = True
    for name_node, values_node in node.value:
        name = str(name_node.value) if isinstance(name_node, yaml.ScalarNode) else ""
        if not name or "=" in name or "\0" in name:
            problems.at(name_node, f"{key}.{name}" if name else key, "a variable name must be a plain name without '='")
            valid = False
        elif any(known == name for known, _ in found):
            problems.at(name_node, f"{key}.{name}", "given twice")
            valid = False
        values = _values(problems, values_node, f"{key}.{name}")
        valid = valid and values is not None
        found.append((name, values or []))
    return found if valid else None


def _values(problems: Problems, node: yaml.Node, key: str) -> list[yaml.ScalarNode] | None:
    if isinstance(node, yaml.ScalarNode):
        return [node]  # a single value, as in GitLab
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        problems.at(node, key, "must be a value or a non-empty list of values")
        return None
    bad = [index for index, item in enumerate(node.value) if not isinstance(item, yaml.ScalarNode)]
    for index in bad:
        problems.at(node.value[index], f"{key}[{index}]", "must be a plain value (a string or a number)")
    return None if bad else list(node.value)


def _combinations(entry: _Entry, node: yaml.Node) -> list[Combination]:
    names = [name for name, _ in entry]
    return [Combination(variables={name: _text(value) for name, value in zip(names, chosen, strict=True)},
                        nodes=chosen, entry=node)
            for chosen in product(*(values for _, values in entry))]


def _text(node: yaml.ScalarNode) -> str:
    return "" if node.tag == _CORE + "null" else str(node.value)  # as written, like the other variables


class MatrixJob(Protocol):
    """What expansion needs of a job of the file (``cli.pipeline_file.FileJob``, which imports this module)."""

    name: str
    line: int
    needs: list[str]
    need_lines: list[int]
    matrix: Matrix | None
    expansion: Expansion | None


Job = TypeVar("Job", bound=MatrixJob)


def expand(problems: Problems, jobs: Sequence[Job], name_problem: Callable[[str], str | None],
           make: Callable[[Job, str, Expansion], Job]) -> list[Job]:
    """``jobs`` with each matrix job replaced by its expansions (``make`` builds one), in place, and every
    ``needs`` naming a matrix job replaced by that job's expansions. A matrix job whose expansion is refused
    (a bad or taken name, over :data:`MAX_MATRIX_JOBS`) stays as it is, so that its ``needs`` still resolve;
    the file is invalid anyway."""
    taken = _names_taken(problems, jobs)
    budget = MAX_MATRIX_JOBS
    result: list[Job] = []
    made: dict[str, list[str]] = {}
    for job in jobs:
        if job.matrix is None:
            result.append(job)
            continue
        names = _expansion_names(problems, job.name, job.matrix, taken, name_problem)
        if names is not None and len(names) > budget:
            problems.at(job.matrix.node, job.matrix.key, f"the file's matrices make more than {MAX_MATRIX_JOBS} jobs")
            names = None
        if names is None:
            result.append(job)
            continue
        budget -= len(names)
        made[job.name] = names
        result += [make(job, name, Expansion(of=job.name, variables=combination.variables, index=index,
                                             total=len(names)))
                   for index, (name, combination) in enumerate(zip(names, job.matrix.combinations, strict=True), 1)]
    for job in result:
        _rewrite_needs(problems, job, made)
    return result


def _names_taken(problems: Problems, jobs: Sequence[MatrixJob]) -> dict[str, int]:
    """The line of each name a job has before expansion; a name used twice where a matrix job is one of the two is
    a problem here (the graph check does not see a matrix job's own name, only its expansions)."""
    taken: dict[str, int] = {}
    matrix_names = {job.name for job in jobs if job.matrix is not None}
    for job in jobs:
        if job.name in taken and job.name in matrix_names:
            problems.add(job.line, job.name, f"job name used twice (first at line {taken[job.name]})")
        taken.setdefault(job.name, job.line)
    return taken


def _expansion_names(problems: Problems, base: str, matrix: Matrix, taken: dict[str, int],
                     name_problem: Callable[[str], str | None]) -> list[str] | None:
    """The expansions' names, each checked and added to ``taken``; None when one is refused."""
    names: list[str] = []
    for combination in matrix.combinations:
        name = combination.name(base)
        if problem := name_problem(name):
            culprit = next((node for node in combination.nodes if name_problem(f"{base} [{node.value}]")),
                           combination.entry)
            problems.at(culprit, matrix.key, problem)
        elif name in names:
            problems.at(combination.entry, matrix.key, f"makes the job {name!r} twice")
        elif name in taken:
            problems.at(combination.entry, matrix.key, f"makes the job {name!r}, a name already taken at line "
                                                       f"{taken[name]}")
        else:
            names.append(name)
            continue
        return None
    for name in names:
        taken[name] = matrix.node.start_mark.line + 1
    return names


def _rewrite_needs(problems: Problems, job: MatrixJob, made: dict[str, list[str]]) -> None:
    """A need naming a matrix job becomes its expansions (each at the need's line); repeated needs are merged."""
    needs: dict[str, int] = {}
    for need, line in zip(job.needs, job.need_lines, strict=True):
        if job.expansion is not None and need == job.expansion.of:
            problems.add(line, f"{need}.needs", "a job cannot need itself")
            continue
        for name in made.get(need, [need]):
            needs.setdefault(name, line)
    job.needs, job.need_lines = list(needs), list(needs.values())


def shown_needs(needs: Sequence[str], expansions: dict[str, Expansion | None]) -> list[str]:
    """``needs`` for people: the expansions of one matrix, when all of them are needed, shown as the matrix job's
    name (``expansions`` maps a job's name to what its matrix says of it)."""
    wanted: dict[str, int] = {}
    for need in needs:
        if (expansion := expansions.get(need)) is not None:
            wanted[expansion.of] = wanted.get(expansion.of, 0) + 1
    shown: list[str] = []
    for need in needs:
        expansion = expansions.get(need)
        if expansion is None or wanted[expansion.of] < expansion.total:
            shown.append(need)
        elif expansion.of not in shown:
            shown.append(expansion.of)
    return shown
