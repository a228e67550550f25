"""The Scheduler's ``when`` rules, as plain functions (no Docker, Prefect or HTTP)."""

from __future__ import annotations

from flows.planning import JobNode, Outcome, Scheduler, build_graph


def job(name: str, *needs: str, stage: int | None = None, when: str = "on_success") -> JobNode:
    return JobNode(id=name, name=name, dependencies=needs, stage_order=stage, when=when)


def test_on_failure_and_always_run_after_a_failure_on_success_is_canceled() -> None:
    scheduler = Scheduler(build_graph([job("a", stage=0), job("b", stage=0), job("fix", stage=1, when="on_failure"),
                                       job("next", stage=1), job("tidy", stage=1, when="always")]))
    assert scheduler.take_ready() == ["a", "b"]
    assert scheduler.finish("a", Outcome.FAILED) == [("next", "canceled: upstream job 'a' (a) failed")]
    assert scheduler.take_ready() == []  # fix and tidy wait for b
    assert scheduler.finish("b", Outcome.SUCCESS) == []
    assert scheduler.take_ready() == ["fix", "tidy"]


def test_on_failure_is_skipped_when_all_succeeded_and_counts_as_success() -> None:
    scheduler = Scheduler(build_graph([job("a", stage=0), job("fix", stage=1, when="on_failure"), job("c", stage=2)]))
    assert scheduler.take_ready() == ["a"]
    assert scheduler.finish("a", Outcome.SUCCESS) == [("fix", "skipped: when: on_failure, and nothing upstream "
                                                              "failed")]
    assert scheduler.take_ready() == ["c"]
    scheduler.finish("c", Outcome.SUCCESS)
    assert scheduler.succeeded and scheduler.outcomes["fix"] is Outcome.SKIPPED


def test_manual_jobs_are_skipped_at_once_and_on_success_after_always_after_failure_is_canceled() -> None:
    scheduler = Scheduler(build_graph([job("deploy", when="manual"), job("a"), job("tidy", "a", when="always"),
                                       job("after", "tidy")]))
    assert scheduler.take_notices() == [("deploy", "skipped: a manual job (run it by naming it)")]
    assert scheduler.take_ready() == ["a"]
    assert scheduler.finish("a", Outcome.FAILED) == [("after", "canceled: upstream job 'a' (a) failed")]
    assert scheduler.take_ready() == ["tidy"]
    scheduler.finish("tidy", Outcome.SUCCESS)
    assert scheduler.done and not scheduler.succeeded
