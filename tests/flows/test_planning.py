"""Tests of the pure planner: golden cases first, then properties over random pipelines.

The properties compare against a naive model of the rules (every explicit dependency, and
for a job without any, every job of every earlier stage) so that the barrier shortcut in
``build_graph`` is checked against the definition rather than against itself.
"""

from __future__ import annotations

import random
import re

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flows.planning import (
    JobNode,
    Outcome,
    PlanningError,
    Scheduler,
    StageBarrier,
    build_graph,
    job_ids,
    levels,
    upstream,
)

PROPERTY_SETTINGS = settings(max_examples=150, deadline=None)


def job(job_id: str, *deps: str, stage: int | None = None, name: str | None = None) -> JobNode:
    """A job whose name is its id unless told otherwise: keeps golden cases readable."""
    return JobNode(id=job_id, name=name or job_id, dependencies=deps, stage_order=stage)


def walk_all_success(graph: nx.DiGraph) -> list[list[str]]:
    """Batches handed out when every job succeeds as soon as its batch is taken."""
    scheduler = Scheduler(graph)
    batches = []
    while batch := scheduler.take_ready():
        batches.append(batch)
        for job_id in batch:
            assert scheduler.finish(job_id, Outcome.SUCCESS) == []
    assert scheduler.done and scheduler.succeeded
    return batches


# --------------------------------------------------------------------------- golden cases


def test_diamond() -> None:
    graph = build_graph([job("d", "b", "c"), job("c", "a"), job("b", "a"), job("a")])
    assert set(graph.edges) == {("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")}
    assert graph.nodes["d"]["job"] == job("d", "b", "c")
    assert levels(graph) == [["a"], ["b", "c"], ["d"]]
    assert walk_all_success(graph) == [["a"], ["b", "c"], ["d"]]


def test_diamond_failure_cancels_the_join_once() -> None:
    scheduler = Scheduler(build_graph([job("a"), job("b", "a"), job("c", "a"), job("d", "b", "c")]))
    assert scheduler.take_ready() == ["a"]
    assert scheduler.finish("a", Outcome.SUCCESS) == []
    assert scheduler.take_ready() == ["b", "c"]
    assert scheduler.finish("b", Outcome.FAILED) == [("d", "canceled: upstream job 'b' (b) failed")]
    assert scheduler.finish("c", Outcome.SUCCESS) == []
    assert scheduler.take_ready() == []  # d stays canceled although c succeeded
    assert scheduler.done and not scheduler.succeeded
    assert scheduler.outcomes == {
        "a": Outcome.SUCCESS,
        "b": Outcome.FAILED,
        "c": Outcome.SUCCESS,
        "d": Outcome.CANCELED,
    }


def test_stage_order_without_dependencies() -> None:
    jobs = [job("e", stage=2), job("d", stage=1), job("c", stage=1), job("b", stage=0), job("a", stage=0)]
    graph = build_graph(jobs)
    assert levels(graph) == [["a", "b"], ["c", "d"], ["e"]]
    assert walk_all_success(graph) == [["a", "b"], ["c", "d"], ["e"]]
    assert sorted(upstream(graph, "e")) == ["c", "d"]
    assert nx.ancestors(graph, "e") >= {"a", "b", "c", "d"}
    assert job_ids(graph) == ["e", "d", "c", "b", "a"]


def test_stage_order_cancels_every_later_stage() -> None:
    scheduler = Scheduler(build_graph([job("a", stage=0), job("b", stage=1), job("c", stage=2)]))
    assert scheduler.take_ready() == ["a"]
    assert scheduler.finish("a", Outcome.CANCELED) == [
        ("b", "canceled: upstream job 'a' (a) was canceled"),
        ("c", "canceled: upstream job 'a' (a) was canceled"),
    ]
    assert scheduler.done and scheduler.outcomes["c"] is Outcome.CANCELED


def test_stage_order_mixed_with_explicit_dependencies() -> None:
    """The case where "connect to the previous stage only" would be wrong.

    ``c`` (stage 1) names ``a`` only, so ``b`` (stage 0) is upstream of ``d`` (stage 2) only by
    the stage rule: a failure of ``b`` must still cancel ``d`` although stage 1 passed.
    """
    jobs = [
        job("a", stage=0),
        job("b", stage=0),
        job("c", "a", stage=1),
        job("d", stage=2),
        job("free"),  # no stage, no dependencies: a root, and nobody waits for it
        job("late", "d"),  # no stage, explicit dependency
    ]
    graph = build_graph(jobs)
    assert sorted(upstream(graph, "d")) == ["b", "c"]
    assert upstream(graph, "c") == ["a"]
    assert levels(graph) == [["a", "b", "free"], ["c"], ["d"], ["late"]]

    scheduler = Scheduler(graph)
    assert scheduler.take_ready() == ["a", "b", "free"]
    assert scheduler.finish("a", Outcome.SUCCESS) == []
    assert scheduler.take_ready() == ["c"]
    assert scheduler.finish("c", Outcome.SUCCESS) == []
    assert scheduler.take_ready() == []  # d still waits for b
    assert scheduler.finish("b", Outcome.FAILED) == [
        ("d", "canceled: upstream job 'b' (b) failed"),
        ("late", "canceled: upstream job 'b' (b) failed"),
    ]
    assert scheduler.finish("free", Outcome.SUCCESS) == []
    assert scheduler.done and not scheduler.succeeded


def test_explicit_dependency_on_a_later_stage_is_followed() -> None:
    # GitLab allows `needs` on a later stage's job; the stage rule still applies to the rest.
    graph = build_graph([job("a", "c", stage=0), job("b", stage=1), job("c", "u", stage=2), job("u")])
    assert levels(graph) == [["u"], ["c"], ["a"], ["b"]]
    assert upstream(graph, "b") == ["a"]


def test_stage_barriers_keep_the_edge_count_linear() -> None:
    jobs = [job(f"s{stage}-{i}", stage=stage) for stage in range(20) for i in range(50)]
    graph = build_graph(jobs)
    assert graph.number_of_edges() <= 2 * len(jobs)
    assert sum(isinstance(node, StageBarrier) for node in graph) == 19
    assert [len(level) for level in levels(graph)] == [50] * 20


def test_ready_jobs_are_ordered_by_stage_then_name_then_id() -> None:
    jobs = [job("3", name="b"), job("2", name="a"), job("1", name="b", stage=0), job("0", name="b")]
    assert Scheduler(build_graph(jobs)).take_ready() == ["1", "2", "0", "3"]


def test_finish_refuses_jobs_not_handed_out_or_finished_twice() -> None:
    scheduler = Scheduler(build_graph([job("a"), job("b", "a"), job("c", "b")]))
    with pytest.raises(ValueError, match="never handed out"):
        scheduler.finish("b", Outcome.SUCCESS)
    assert scheduler.take_ready() == ["a"]
    assert scheduler.finish("a", "FAILED") == [
        ("b", "canceled: upstream job 'a' (a) failed"),
        ("c", "canceled: upstream job 'a' (a) failed"),
    ]
    with pytest.raises(ValueError, match="already finished"):
        scheduler.finish("a", Outcome.SUCCESS)
    with pytest.raises(ValueError, match="never handed out"):
        scheduler.finish("c", Outcome.SUCCESS)  # canceled, never started


def test_two_failures_do_not_cancel_a_job_twice() -> None:
    scheduler = Scheduler(build_graph([job("a"), job("b"), job("c", "a", "b"), job("d", "b")]))
    assert scheduler.take_ready() == ["a", "b"]
    assert scheduler.finish("a", Outcome.FAILED) == [("c", "canceled: upstream job 'a' (a) failed")]
    assert scheduler.finish("b", Outcome.FAILED) == [("d", "canceled: upstream job 'b' (b) failed")]
    assert scheduler.done


def test_empty_run() -> None:
    graph = build_graph([])
    assert levels(graph) == []
    scheduler = Scheduler(graph)
    assert scheduler.take_ready() == [] and scheduler.done and scheduler.succeeded


# --------------------------------------------------------------------------- refusals


def refusal(jobs: list[JobNode]) -> PlanningError:
    with pytest.raises(PlanningError) as caught:
        build_graph(jobs)
    assert isinstance(caught.value, ValueError)
    return caught.value


def test_refuses_duplicate_ids() -> None:
    error = refusal([job("x", name="build"), job("y"), job("x", name="lint")])
    assert str(error) == "duplicate job id x: used by 2 jobs ('build', 'lint')"
    assert error.jobs == ("x",)


def test_refuses_self_dependency() -> None:
    error = refusal([job("1", "1", name="build")])
    assert str(error) == "job 'build' (1) depends on itself"
    assert error.jobs == ("1",)


def test_refuses_unknown_dependency() -> None:
    error = refusal([job("1", name="build"), job("2", "1", "404", name="test")])
    assert str(error) == "job 'test' (2) depends on 404, which is not a job of this run"
    assert error.jobs == ("2",)


def test_refuses_cycle_and_prints_it() -> None:
    jobs = [
        job("id-a", "id-c", name="A"),
        job("id-b", "id-a", name="B"),
        job("id-c", "id-b", name="C"),
        job("id-d", "id-c", name="D"),  # downstream of the cycle, not part of it
    ]
    error = refusal(jobs)
    assert str(error) == "dependency cycle: A -> B -> C -> A (A = id-a, B = id-b, C = id-c)"
    assert error.jobs == ("id-a", "id-b", "id-c")


def test_refuses_cycle_made_by_stage_order() -> None:
    # `build` (stage 0) names `test`, while `test` (stage 1) waits for stage 0 by the rule.
    error = refusal([job("1", "2", name="build", stage=0), job("2", name="test", stage=1)])
    assert str(error) == (
        "dependency cycle: build -> test -> build (build = 1, test = 2); "
        "by stage order, 'test' waits for 'build'"
    )
    assert set(error.jobs) == {"1", "2"}


def test_reports_every_problem_at_once() -> None:
    jobs = [
        job("a", "b", name="alpha"),
        job("b", "a", name="beta"),
        job("c", "c", name="gamma"),
        job("d", "nope", name="delta"),
        job("d", name="delta-again"),
        job("e", "f", name="epsilon"),
        job("f", "e", name="zeta"),
    ]
    error = refusal(jobs)
    assert str(error).splitlines() == [
        "duplicate job id d: used by 2 jobs ('delta', 'delta-again')",
        "job 'gamma' (c) depends on itself",
        "job 'delta' (d) depends on nope, which is not a job of this run",
        "dependency cycle: alpha -> beta -> alpha (alpha = a, beta = b)",
        "dependency cycle: epsilon -> zeta -> epsilon (epsilon = e, zeta = f)",
    ]
    assert error.jobs == ("d", "c", "a", "b", "e", "f")
    assert len(error.problems) == 5


# --------------------------------------------------------------------------- model and strategies


def naive_dependencies(jobs: list[JobNode]) -> dict[str, set[str]]:
    """The rules as stated: explicit dependencies, else every job of every earlier stage."""
    deps: dict[str, set[str]] = {}
    for node in jobs:
        if node.dependencies:
            deps[node.id] = set(node.dependencies)
        elif node.stage_order is not None:
            deps[node.id] = {
                other.id
                for other in jobs
                if other.stage_order is not None and other.stage_order < node.stage_order
            }
        else:
            deps[node.id] = set()
    return deps


def naive_graph(jobs: list[JobNode]) -> nx.DiGraph:
    graph = nx.DiGraph()
    graph.add_nodes_from(node.id for node in jobs)
    graph.add_edges_from((dep, job_id) for job_id, deps in naive_dependencies(jobs).items() for dep in deps)
    return graph


@st.composite
def pipelines(draw: st.DrawFn, stages_follow_edges: bool = True, max_jobs: int = 25) -> list[JobNode]:
    """Random pipelines, a DAG by construction: edges only go from a lower to a higher index.

    With ``stages_follow_edges`` stage orders never decrease with the index either, so the
    stage rule keeps it acyclic; without, stages are arbitrary and may close a cycle.
    Ids are shuffled so that neither ids nor input order give the topology away.
    """
    count = draw(st.integers(min_value=1, max_value=max_jobs))
    density = draw(st.floats(min_value=0.0, max_value=0.5))
    rng = random.Random(draw(st.integers(min_value=0, max_value=2**32)))
    ids = [f"job-{n:03d}" for n in range(count)]
    rng.shuffle(ids)
    stages = stage_orders(rng, count, draw(st.sampled_from(["none", "some", "all"])), stages_follow_edges)
    jobs = []
    for index in range(count):
        deps = tuple(ids[lower] for lower in range(index) if rng.random() < density)
        name = f"n{rng.randrange(count)}"  # repeated names exercise the id tie-break
        jobs.append(JobNode(id=ids[index], name=name, dependencies=deps, stage_order=stages[index]))
    rng.shuffle(jobs)
    return jobs


def stage_orders(rng: random.Random, count: int, mode: str, monotonic: bool) -> list[int | None]:
    if mode == "none":
        return [None] * count
    orders = [rng.randrange(5) for _ in range(count)]
    if monotonic:
        orders.sort()
    if mode == "some":
        return [order if rng.random() < 0.7 else None for order in orders]
    return list(orders)


# --------------------------------------------------------------------------- properties of build_graph


@PROPERTY_SETTINGS
@given(pipelines(stages_follow_edges=False))
def test_graph_has_the_reachability_of_the_naive_rules(jobs: list[JobNode]) -> None:
    model = naive_graph(jobs)
    if not nx.is_directed_acyclic_graph(model):
        with pytest.raises(PlanningError, match="dependency cycle: "):
            build_graph(jobs)
        return
    graph = build_graph(jobs)
    assert sorted(job_ids(graph)) == sorted(model)
    for job_id in model:
        assert {n for n in nx.ancestors(graph, job_id) if isinstance(n, str)} == nx.ancestors(model, job_id)
    assert graph.number_of_edges() <= model.number_of_edges() + 2 * len(jobs)


@PROPERTY_SETTINGS
@given(pipelines())
def test_levels_are_the_topological_generations_of_the_rules(jobs: list[JobNode]) -> None:
    expected = [sorted(gen) for gen in nx.topological_generations(naive_graph(jobs))]
    assert [sorted(level) for level in levels(build_graph(jobs))] == expected


@PROPERTY_SETTINGS
@given(pipelines(max_jobs=20), st.data())
def test_an_injected_back_edge_is_always_refused(jobs: list[JobNode], data: st.DataObject) -> None:
    model = naive_graph(jobs)
    pairs = [(u, v) for u in model for v in nx.descendants(model, u)]
    if not pairs:
        return
    first, last = data.draw(st.sampled_from(sorted(pairs)))
    # Make `first` wait for its own descendant `last`: the path first ->...-> last leaves
    # `first` through edges that its own new dependency does not change, so a cycle exists.
    renamed = [
        JobNode(n.id, f"{n.name}#{n.id}", (*n.dependencies, last) if n.id == first else n.dependencies, n.stage_order)
        for n in jobs
    ]
    with pytest.raises(PlanningError) as caught:
        build_graph(renamed)
    assert_cycle_messages_are_real_cycles(caught.value, renamed)


def assert_cycle_messages_are_real_cycles(error: PlanningError, jobs: list[JobNode]) -> None:
    by_name = {node.name: node.id for node in jobs}
    deps = naive_dependencies(jobs)
    cycles = [p for p in error.problems if p.startswith("dependency cycle: ")]
    assert cycles
    for problem in cycles:
        chain = re.match(r"dependency cycle: (.*?) \(", problem)
        assert chain is not None
        names = chain.group(1).split(" -> ")
        assert names[0] == names[-1] and len(names) >= 3
        for before, after in zip(names, names[1:], strict=False):
            assert by_name[before] in deps[by_name[after]]
            assert by_name[before] in error.jobs and by_name[before] in problem


# --------------------------------------------------------------------------- properties of Scheduler


class Run:
    """Drives a Scheduler with random finishing order and outcomes, checking each step."""

    def __init__(self, jobs: list[JobNode], data: st.DataObject) -> None:
        self.data = data
        self.model = naive_graph(jobs)
        self.deps = naive_dependencies(jobs)
        self.names = {node.id: node.name for node in jobs}
        self.scheduler = Scheduler(build_graph(jobs))
        self.handed_out: list[str] = []
        self.running: list[str] = []
        self.final: dict[str, Outcome] = {}

    def take(self) -> None:
        for job_id in self.scheduler.take_ready():
            assert job_id not in self.handed_out, "handed out twice"
            assert all(self.final.get(dep) is Outcome.SUCCESS for dep in self.deps[job_id])
            self.handed_out.append(job_id)
            self.running.append(job_id)

    def finish_one(self) -> None:
        job_id = self.running.pop(self.data.draw(st.integers(0, len(self.running) - 1)))
        outcome = self.data.draw(st.sampled_from([Outcome.SUCCESS, Outcome.FAILED, Outcome.CANCELED]))
        expected = {d for d in nx.descendants(self.model, job_id) if d not in self.final}
        canceled = self.scheduler.finish(job_id, outcome)
        self.final[job_id] = outcome
        if outcome is Outcome.SUCCESS:
            assert canceled == []
            return
        assert {d for d, _ in canceled} == expected and len(canceled) == len(expected)
        for dropped, reason in canceled:
            assert dropped not in self.handed_out
            assert f"'{self.names[job_id]}' ({job_id})" in reason
            self.final[dropped] = Outcome.CANCELED

    def run(self) -> None:
        self.take()
        while self.running:
            self.finish_one()
            self.take()
        assert self.scheduler.done, "nothing running, nothing ready, yet jobs are not final"


@PROPERTY_SETTINGS
@given(pipelines(), st.data())
def test_scheduler_walk_respects_dependencies_and_failures(jobs: list[JobNode], data: st.DataObject) -> None:
    run = Run(jobs, data)
    run.run()
    outcomes = run.scheduler.outcomes
    assert outcomes == run.final
    assert set(outcomes) == set(run.model)
    for job_id, outcome in outcomes.items():
        # Either it ran (handed out, then finished), or it was canceled without starting.
        assert job_id in run.handed_out or outcome is Outcome.CANCELED
    assert run.scheduler.succeeded == all(o is Outcome.SUCCESS for o in outcomes.values())


@PROPERTY_SETTINGS
@given(pipelines())
def test_all_success_hands_out_every_job_once_in_dependency_order(jobs: list[JobNode]) -> None:
    batches = walk_all_success(build_graph(jobs))
    order = [job_id for batch in batches for job_id in batch]
    assert sorted(order) == sorted(node.id for node in jobs)
    position = {job_id: i for i, job_id in enumerate(order)}
    assert all(position[u] < position[v] for u, v in naive_graph(jobs).edges)
