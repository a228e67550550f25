"""Benchmark of the pure planner against the target: plan 10,000 jobs in < 0.5 s.

Run from the repository root: ``.venv/bin/python -m bench.planning``. Cases:

- 10,000 jobs with 30,000 random forward edges (a DAG), in shuffled order;
- 10,000 jobs in 20 stages of 500 with no explicit dependencies (the stage rule only).

For each: median over several runs of ``build_graph`` and of a full ``Scheduler`` walk in
which every job succeeds, next to a baseline measured in the same process: plain
``nx.DiGraph(edges)`` + ``nx.is_directed_acyclic_graph`` on the same edges (for the staged
case, the edges ``build_graph`` itself produced, since the rule has no edge list of its own).
"""

from __future__ import annotations

import random
import statistics
import sys
import time
import uuid
from collections.abc import Callable

import networkx as nx

from flows.planning import JobNode, Outcome, Scheduler, build_graph

TARGET_SECONDS = 0.5
RUNS = 9
JOBS = 10_000
EDGES = 30_000
STAGES = 20


def median_seconds(action: Callable[[], object], runs: int = RUNS) -> float:
    """Median wall time of ``runs`` calls; the median shrugs off a stray GC pause."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def random_dag(rng: random.Random) -> tuple[list[JobNode], list[tuple[str, str]]]:
    """JOBS jobs and EDGES distinct forward edges (lower index -> higher), shuffled."""
    ids = [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(JOBS)]
    pairs: set[tuple[int, int]] = set()
    while len(pairs) < EDGES:
        a, b = rng.randrange(JOBS), rng.randrange(JOBS)
        if a != b:
            pairs.add((min(a, b), max(a, b)))
    deps: dict[int, list[str]] = {}
    for low, high in sorted(pairs):
        deps.setdefault(high, []).append(ids[low])
    jobs = [JobNode(ids[i], f"job-{i}", tuple(deps.get(i, ()))) for i in range(JOBS)]
    rng.shuffle(jobs)
    return jobs, [(ids[low], ids[high]) for low, high in pairs]


def staged(rng: random.Random) -> list[JobNode]:
    """JOBS jobs spread evenly over STAGES stages, none with explicit dependencies."""
    per_stage = JOBS // STAGES
    jobs = [
        JobNode(str(uuid.UUID(int=rng.getrandbits(128))), f"s{stage}-{i}", (), stage)
        for stage in range(STAGES)
        for i in range(per_stage)
    ]
    rng.shuffle(jobs)
    return jobs


def walk(graph: nx.DiGraph) -> None:
    """Drive a Scheduler to the end, every job succeeding."""
    scheduler = Scheduler(graph)
    while batch := scheduler.take_ready():
        for job_id in batch:
            scheduler.finish(job_id, Outcome.SUCCESS)
    assert scheduler.succeeded


def baseline(edges: list[tuple[object, object]]) -> None:
    """The least any networkx-based planner does: build the graph, check it is a DAG."""
    assert nx.is_directed_acyclic_graph(nx.DiGraph(edges))


def report(title: str, jobs: list[JobNode], edges: list[tuple[object, object]] | None) -> bool:
    """Time one case, print its figures, and say whether planning met the target."""
    graph = build_graph(jobs)
    edges = list(graph.edges) if edges is None else edges
    plan = median_seconds(lambda: build_graph(jobs))
    run = median_seconds(lambda: walk(graph))
    base = median_seconds(lambda: baseline(edges))
    print(f"{title}: {len(jobs):,} jobs, graph of {graph.number_of_nodes():,} nodes / "
          f"{graph.number_of_edges():,} edges (median of {RUNS} runs)")
    print(f"  build_graph                       {plan * 1000:8.1f} ms")
    print(f"  Scheduler walk, all success       {run * 1000:8.1f} ms")
    print(f"  baseline DiGraph + is_DAG         {base * 1000:8.1f} ms   build_graph/baseline = {plan / base:.2f}x")
    return plan < TARGET_SECONDS and run < TARGET_SECONDS


def main() -> int:
    """Run both cases; exit status 1 when a median misses the target."""
    rng = random.Random(20240611)
    print(f"python {sys.version.split()[0]}, networkx {nx.__version__}")
    jobs, edges = random_dag(rng)
    ok = report(f"random DAG ({EDGES:,} explicit edges)", jobs, list(edges))
    ok &= report(f"stage rule ({STAGES} stages of {JOBS // STAGES}, no explicit dependencies)", staged(rng), None)
    verdict = "PASS" if ok else "FAIL"
    print(f"VERDICT: {verdict}: every build_graph and Scheduler-walk median "
          f"{'is' if ok else 'is NOT'} < {TARGET_SECONDS} s")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
