"""Pure DAG planning for a pipeline run: jobs in, validated graph and ready sets out.

Nothing here touches Docker, Prefect, HTTP or the file system, so the pipeline flow's
whole scheduling logic is tested as plain functions (``tests/flows/test_planning.py``).

Data moves one way::

    JobNode[] --build_graph--> nx.DiGraph --Scheduler--> take_ready / finish ... until done
                                         \\--levels----> generations (for --dry-run)

**The stage rule and barrier nodes.** A job that names no dependencies of its own but has a
``stage_order`` waits for every job of every strictly earlier stage (GitLab's rule without
``needs``). Spelled out as job-to-job edges that is quadratic: 20 stages of 500 jobs need at
least 250,000 edges between each pair of neighbouring stages even after transitive reduction
(no job sits between two neighbouring stages to share a path through), about 4.75 million
in all, several seconds in networkx. So each stage boundary that the rule uses gets one
:class:`StageBarrier` node: the "frontier" of earlier jobs points to it and it points to
the stage's rule-following jobs, which costs ``|frontier| + |stage|`` edges instead of their
product. The frontier is the set of earlier-stage jobs that have no dependent among the
earlier stages; every other earlier job reaches some frontier job, so each rule-following
job still has *every* earlier-stage job as an ancestor. That keeps the reachability of the
exact rule, which is all that scheduling (and cancellation: a failure in stage 0 cancels a
stage-2 job even when stage 1 named other dependencies) depends on.

Barriers are not jobs: they carry no ``job`` attribute, :class:`Scheduler` and
:func:`levels` look through them, and :func:`job_ids` / :func:`upstream` give the job-only
view. Job nodes are the job ids (``str``); barriers are ``StageBarrier`` values, so the two
can never collide.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

import networkx as nx

__all__ = [
    "JobNode",
    "Outcome",
    "PlanningError",
    "Scheduler",
    "StageBarrier",
    "build_graph",
    "job_ids",
    "levels",
    "upstream",
]


@dataclass(frozen=True)
class JobNode:
    """One job of a pipeline run, as the planner sees it."""

    id: str
    """Job execution id: the node key in the graph."""
    name: str
    """Shown in error messages and used to order ready jobs."""
    dependencies: tuple[str, ...] = ()
    """Job execution ids this job waits for; empty means "follow the stage rule"."""
    stage_order: int | None = None
    """Position of the job's stage in its pipeline, 0 = first; None = no stage."""
    when: str = "on_success"
    """``on_success``, ``on_failure``, ``always`` or ``manual``: see :class:`Scheduler`."""


class StageBarrier(NamedTuple):
    """Graph node standing for "every job of the stages before ``stage_order``".

    Not a job: never handed out, never reported. See the module docstring for why it exists.
    A NamedTuple rather than a frozen dataclass because networkx hashes nodes constantly and
    a tuple's hash is computed in C (about twice as fast to build a staged graph).
    """

    stage_order: int


class PlanningError(ValueError):
    """Refusal before anything runs.

    ``problems`` holds one message per problem (the exception text joins them with newlines);
    ``jobs`` lists the ids of every job involved, in order of first mention.
    """

    def __init__(self, problems: Iterable[str], jobs: Iterable[str]) -> None:
        self.problems: tuple[str, ...] = tuple(problems)
        self.jobs: tuple[str, ...] = tuple(dict.fromkeys(jobs))
        super().__init__("\n".join(self.problems))


class Outcome(StrEnum):
    """Final state of a job, as far as scheduling cares.

    A failure that the job allows (``allowFailure``) counts as SUCCESS here: its dependents run.
    SKIPPED is a job its ``when`` kept from running (reported to the backend as CANCELED).
    """

    SUCCESS = "SUCCESS"
    FAILED = "FAILED"
    CANCELED = "CANCELED"
    SKIPPED = "SKIPPED"


# --------------------------------------------------------------------------- build_graph


def build_graph(jobs: Iterable[JobNode]) -> nx.DiGraph:
    """Build and validate the dependency graph of one pipeline run.

    One node per job, keyed by id, with attribute ``job`` (the :class:`JobNode`); an edge
    ``u -> v`` when ``v`` waits for ``u``. Jobs that follow the stage rule are connected
    through :class:`StageBarrier` nodes (see the module docstring).

    Raises :class:`PlanningError` listing every problem found — duplicate ids,
    self-dependencies, dependencies on ids outside the run, cycles — never just the first.
    """
    jobs = list(jobs)
    index, problems, involved = _index_jobs(jobs)
    edges = _dependency_edges(index.values(), index, problems, involved)
    graph = nx.DiGraph()
    graph.add_nodes_from(index)
    nx.set_node_attributes(graph, index, "job")  # faster than one attribute dict per node
    graph.add_edges_from(edges)
    graph.add_edges_from(_stage_edges(index.values()))
    # The acyclicity test is cheap; the strongly connected components that explain a cycle
    # are only computed when there is one.
    if not nx.is_directed_acyclic_graph(graph):
        for message, cycle_ids in _describe_cycles(graph, list(index)):
            problems.append(message)
            involved.extend(cycle_ids)
    if problems:
        raise PlanningError(problems, involved)
    return graph


def _label(job: JobNode) -> str:
    return f"'{job.name}' ({job.id})"


def _index_jobs(jobs: list[JobNode]) -> tuple[dict[str, JobNode], list[str], list[str]]:
    """Map ids to jobs, keeping the first of each id; report ids used more than once."""
    by_id: dict[str, list[JobNode]] = {}
    for job in jobs:
        by_id.setdefault(job.id, []).append(job)
    problems: list[str] = []
    involved: list[str] = []
    for job_id, same in by_id.items():
        if len(same) > 1:
            names = ", ".join(f"'{job.name}'" for job in same)
            problems.append(f"duplicate job id {job_id}: used by {len(same)} jobs ({names})")
            involved.append(job_id)
    return {job_id: same[0] for job_id, same in by_id.items()}, problems, involved


def _dependency_edges(
    jobs: Iterable[JobNode], index: dict[str, JobNode], problems: list[str], involved: list[str]
) -> list[tuple[str, str]]:
    """Edges from explicit dependencies; bad ones are reported instead of added."""
    edges: list[tuple[str, str]] = []
    for job in jobs:
        for dep in job.dependencies:
            if dep == job.id:
                problems.append(f"job {_label(job)} depends on itself")
                involved.append(job.id)
            elif dep not in index:
                problems.append(f"job {_label(job)} depends on {dep}, which is not a job of this run")
                involved.append(job.id)
            else:
                edges.append((dep, job.id))
    return edges


def _stage_edges(jobs: Iterable[JobNode]) -> Iterator[tuple[Hashable, Hashable]]:
    """Edges for the stage rule, through one barrier per stage that has rule-following jobs.

    Walks the stages in order keeping the frontier: earlier-stage jobs with no dependent in
    an earlier-or-current stage yet. A barrier takes the whole frontier as predecessors, after
    which those jobs have a dependent (the barrier's jobs) and leave it. Each job enters and
    leaves the frontier once, so the edge count is at most about twice the number of jobs.
    """
    by_stage: dict[int, list[JobNode]] = {}
    for job in jobs:
        if job.stage_order is not None:
            by_stage.setdefault(job.stage_order, []).append(job)
    first_dependent = _first_dependent_stage(by_stage)
    frontier: dict[str, None] = {}  # insertion-ordered set, for deterministic edges
    leaves_at: dict[int, list[str]] = {}
    for stage in sorted(by_stage):
        followers = [job.id for job in by_stage[stage] if not job.dependencies]
        if followers and frontier:
            barrier = StageBarrier(stage)
            yield from ((job_id, barrier) for job_id in frontier)
            yield from ((barrier, job_id) for job_id in followers)
            frontier.clear()
        for job_id in leaves_at.pop(stage, ()):
            frontier.pop(job_id, None)
        for job in by_stage[stage]:
            # A job named by a job of its own or an earlier stage reaches the frontier through
            # that dependent; one named first by a later stage stays until that stage's turn.
            first = first_dependent.get(job.id)
            if first is None:
                frontier[job.id] = None
            elif first > stage:
                frontier[job.id] = None
                leaves_at.setdefault(first, []).append(job.id)


def _first_dependent_stage(by_stage: dict[int, list[JobNode]]) -> dict[str, int]:
    """For each staged job, the earliest stage of a staged job that names it as a dependency.

    Dependents without a stage are ignored: they are not "earlier-stage jobs" that could carry
    the job to a barrier, so the job simply stays in the frontier longer (harmless).
    """
    first: dict[str, int] = {}
    for stage, stage_jobs in by_stage.items():
        for job in stage_jobs:
            for dep in job.dependencies:
                # A self-dependency is refused on its own; it must not hide the job from barriers.
                if dep != job.id and stage < first.get(dep, stage + 1):
                    first[dep] = stage
    return first


def _describe_cycles(graph: nx.DiGraph, order: list[str]) -> list[tuple[str, list[str]]]:
    """One message per cyclic strongly connected component, in input order of its first job."""
    position = {job_id: i for i, job_id in enumerate(order)}
    starts: list[tuple[str, set[Hashable]]] = []
    for component in nx.strongly_connected_components(graph):
        if len(component) > 1:  # self-dependencies never become edges, so size 1 is acyclic
            jobs = (node for node in component if isinstance(node, str))
            starts.append((min(jobs, key=position.__getitem__), component))
    starts.sort(key=lambda pair: position[pair[0]])
    return [_describe_cycle(graph, _shortest_cycle(graph, start, component)) for start, component in starts]


def _shortest_cycle(graph: nx.DiGraph, start: str, component: set[Hashable]) -> list[Hashable]:
    """Shortest cycle through ``start`` inside its component (breadth-first), start first."""
    came_from: dict[Hashable, Hashable] = {}
    queue: deque[Hashable] = deque([start])
    while queue:
        node = queue.popleft()
        for succ in graph.successors(node):
            if succ == start:
                path = [node]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return path[::-1]
            if succ in component and succ not in came_from:
                came_from[succ] = node
                queue.append(succ)
    raise AssertionError("a strongly connected component always has a cycle through each node")


def _describe_cycle(graph: nx.DiGraph, cycle: list[Hashable]) -> tuple[str, list[str]]:
    """Text ``a -> b -> c -> a`` with names, the ids, and which hops come from stage order."""
    jobs: list[JobNode] = [graph.nodes[n]["job"] for n in cycle if isinstance(n, str)]
    chain = " -> ".join(job.name for job in [*jobs, jobs[0]])
    ids = ", ".join(f"{job.name} = {job.id}" for job in jobs)
    by_stage = [
        f"'{graph.nodes[after]['job'].name}' waits for '{graph.nodes[before]['job'].name}'"
        for before, barrier, after in zip(cycle, cycle[1:] + cycle[:1], cycle[2:] + cycle[:2], strict=True)
        if isinstance(barrier, StageBarrier)
    ]
    note = f"; by stage order, {', '.join(by_stage)}" if by_stage else ""
    return f"dependency cycle: {chain} ({ids}){note}", [job.id for job in jobs]


# --------------------------------------------------------------------------- job-only views


def job_ids(graph: nx.DiGraph) -> list[str]:
    """The job ids of a planned graph, in input order (barrier nodes left out)."""
    return [node for node in graph.nodes if isinstance(node, str)]


def upstream(graph: nx.DiGraph, job_id: str) -> list[str]:
    """Jobs that ``job_id`` waits for directly, looking through barriers.

    Stage-rule dependencies come out transitively reduced (the frontier of earlier stages,
    not every earlier job); the other earlier jobs are upstream of those.
    """
    found: dict[str, None] = {}
    for pred in graph.predecessors(job_id):
        if isinstance(pred, StageBarrier):
            found.update(dict.fromkeys(graph.predecessors(pred)))
        else:
            found[pred] = None
    return list(found)


def _order_key(graph: nx.DiGraph, job_id: str) -> tuple[bool, int, str, str]:
    """Deterministic order: stage, then name, then id; jobs without a stage last."""
    job: JobNode = graph.nodes[job_id]["job"]
    return (job.stage_order is None, job.stage_order or 0, job.name, job.id)


def levels(graph: nx.DiGraph) -> list[list[str]]:
    """Topological generations of the jobs, each sorted by (stage_order, name), for --dry-run.

    Level n holds the jobs whose longest chain of upstream jobs has n jobs; barriers add no
    level of their own.
    """
    depth: dict[Hashable, int] = {}
    for node in nx.topological_sort(graph):
        below = max((depth[pred] for pred in graph.predecessors(node)), default=-1)
        # A barrier sits at the depth of its deepest predecessor so that it is transparent.
        depth[node] = below if isinstance(node, StageBarrier) else below + 1
    rows: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for node, level in depth.items():
        if isinstance(node, str):
            rows[level].append(node)
    return [sorted(row, key=lambda job_id: _order_key(graph, job_id)) for row in rows]


# --------------------------------------------------------------------------- Scheduler


class Scheduler:
    """Pure state machine walking a planned graph; the pipeline flow drives it.

    Protocol: call :meth:`take_ready`, start those jobs, call :meth:`finish` for each as it
    ends (forwarding the cancellations and skips it returns to the backend), repeat until
    :attr:`done`; jobs skipped before anything ran come from :meth:`take_notices`.

    A job's ``when`` decides what happens once the jobs upstream of it (its ancestors) end:

    * ``on_success`` (the default): handed out once every upstream job succeeded; a FAILED or
      CANCELED upstream job cancels it at once (it cannot have started).
    * ``always``: handed out once every upstream job is final, whatever the outcomes.
    * ``on_failure``: handed out once every upstream job is final if one of them failed or
      was canceled; otherwise SKIPPED.
    * ``manual``: SKIPPED (nothing here can start it; the shell door runs a manual job it was
      asked for as ``on_success``).

    A SKIPPED job counts as a success for the jobs after it and for :attr:`succeeded` (GitLab
    does not fail a pipeline over a skipped job). A job after a failure stays "after a
    failure" for good: an ``on_success`` job below an ``always`` job that ran after a failure
    is canceled, as GitLab's stage rule has it.

    Every operation is amortised linear over the run: each edge is looked at a bounded number
    of times. Not thread-safe: drive it from one thread or under a lock.
    """

    def __init__(self, graph: nx.DiGraph) -> None:
        """Start with every job pending; the graph must come from :func:`build_graph`."""
        self._graph = graph
        self._waiting: dict[Hashable, int] = {node: deg for node, deg in graph.in_degree}
        self._job_count = sum(1 for node in graph.nodes if isinstance(node, str))
        self._ready: list[str] = []
        self._started: set[str] = set()
        self._after_failure: set[Hashable] = set()  # nodes with a FAILED or CANCELED job upstream
        self._to_resolve: list[Hashable] = []  # final nodes whose successors are not told yet
        self._notices: list[tuple[str, str]] = []
        self._outcomes: dict[str, Outcome] = {}
        # Collect first: settling a node changes the counts of the nodes after it.
        for node in [node for node, count in self._waiting.items() if count == 0]:
            self._settle(node)
        self._drain()

    def take_ready(self) -> list[str]:
        """Jobs whose upstream allows them to run and that were not handed out yet; marks them started.

        Sorted by (stage_order, name, id). Empty while running jobs hold everything else up.
        """
        ready = sorted(self._ready, key=lambda job_id: _order_key(self._graph, job_id))
        self._ready = []
        self._started.update(ready)
        return ready

    def take_notices(self) -> list[tuple[str, str]]:
        """``(job_id, reason)`` for each job canceled or skipped since the last call, never repeated;
        the reason starts with ``canceled:`` or ``skipped:``."""
        notices = sorted(self._notices, key=lambda notice: _order_key(self._graph, notice[0]))
        self._notices = []
        return notices

    def finish(self, job_id: str, outcome: Outcome | str) -> list[tuple[str, str]]:
        """Record the final outcome of a started job; returns :meth:`take_notices` (the jobs it
        canceled or skipped). Raises ValueError when the job was not handed out or already finished."""
        outcome = Outcome(outcome)
        if outcome is Outcome.SKIPPED:
            raise ValueError(f"job {job_id} ran: it cannot finish SKIPPED")
        if job_id not in self._started:
            raise ValueError(f"job {job_id} cannot finish: it was never handed out by take_ready")
        if job_id in self._outcomes:
            raise ValueError(f"job {job_id} already finished with {self._outcomes[job_id]}")
        self._outcomes[job_id] = outcome
        if outcome in (Outcome.FAILED, Outcome.CANCELED):
            self._mark_downstream(job_id, outcome)
        self._to_resolve.append(job_id)
        self._drain()
        return self.take_notices()

    @property
    def done(self) -> bool:
        """Every job has a final outcome."""
        return len(self._outcomes) == self._job_count

    @property
    def outcomes(self) -> dict[str, Outcome]:
        """Final outcome of each job that has one (a copy)."""
        return dict(self._outcomes)

    @property
    def succeeded(self) -> bool:
        """Done, and every job ended with SUCCESS or was SKIPPED."""
        return self.done and all(outcome in (Outcome.SUCCESS, Outcome.SKIPPED) for outcome in self._outcomes.values())

    def _when(self, job_id: str) -> str:
        job: JobNode = self._graph.nodes[job_id]["job"]
        return job.when

    def _drain(self) -> None:
        """Tell the successors of every newly final node; settle those with nothing left to wait for."""
        while self._to_resolve:
            for succ in self._graph.successors(self._to_resolve.pop()):
                self._waiting[succ] -= 1
                if self._waiting[succ] == 0:
                    self._settle(succ)

    def _settle(self, node: Hashable) -> None:
        """Everything upstream of ``node`` is final: pass through a barrier, hand out or skip a job."""
        if not isinstance(node, str):
            self._to_resolve.append(node)
            return
        if node in self._outcomes:  # canceled when something upstream failed
            return
        when, after_failure = self._when(node), node in self._after_failure
        runs = {"always": True, "on_failure": after_failure, "on_success": not after_failure}.get(when, False)
        if runs:
            self._ready.append(node)
            return
        reason = ("skipped: a manual job (run it by naming it)" if when == "manual"
                  else "skipped: when: on_failure, and nothing upstream failed")
        self._outcomes[node] = Outcome.SKIPPED
        self._notices.append((node, reason))
        self._to_resolve.append(node)

    def _mark_downstream(self, job_id: str, outcome: Outcome) -> None:
        """Mark every descendant of ``job_id`` as after a failure; cancel the ``on_success`` jobs among them."""
        verb = "failed" if outcome is Outcome.FAILED else "was canceled"
        reason = f"canceled: upstream job {_label(self._graph.nodes[job_id]['job'])} {verb}"
        stack: list[Hashable] = [job_id]
        while stack:
            for succ in self._graph.successors(stack.pop()):
                # A marked node's descendants were marked with it: no need to go further.
                if succ in self._after_failure:
                    continue
                self._after_failure.add(succ)
                stack.append(succ)
                if isinstance(succ, str) and self._when(succ) == "on_success" and succ not in self._outcomes:
                    self._outcomes[succ] = Outcome.CANCELED
                    self._notices.append((succ, reason))
                    self._to_resolve.append(succ)
