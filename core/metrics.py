"""Prometheus metrics of the worker, served at ``/metrics``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REGISTRY = CollectorRegistry()
_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)

JOBS = Counter("cicd_jobs_total", "Jobs by final status", ["status"], registry=REGISTRY)
JOB_DURATION = Histogram("cicd_job_duration_seconds", "From the first RUNNING to the final status",
                         buckets=_BUCKETS, registry=REGISTRY)
QUEUE_WAIT = Histogram("cicd_job_queue_wait_seconds", "From acceptance to the first RUNNING",
                       buckets=_BUCKETS, registry=REGISTRY)
RUNNING_CONTAINERS = Gauge("cicd_running_containers", "Job containers running in this process", registry=REGISTRY)
OUTBOX_DEPTH = Gauge("cicd_outbox_depth", "Updates waiting to reach the backend", registry=REGISTRY)
OUTBOX_OLDEST = Gauge("cicd_outbox_oldest_age_seconds", "Age of the oldest undelivered update", registry=REGISTRY)
OUTBOX_DEAD = Gauge("cicd_outbox_dead", "Updates set aside undelivered, by cause (refused, local, failing, "
                    "no-extension)", ["cause"], registry=REGISTRY)
OUTBOX_SENDER_UP = Gauge("cicd_outbox_sender_up", "1 while the outbox sender runs and is not stuck",
                         registry=REGISTRY)
RETRIES = Counter("cicd_job_retries_total", "Job attempts retried, by failure kind", ["kind"], registry=REGISTRY)


def render(outbox_stats: dict[str, object] | None = None) -> bytes:
    """The exposition text; outbox figures are read at scrape time."""
    if outbox_stats is not None:
        depth, oldest = outbox_stats.get("depth"), outbox_stats.get("oldestAgeSeconds")
        OUTBOX_DEPTH.set(float(depth) if isinstance(depth, int | float) else 0.0)
        OUTBOX_OLDEST.set(float(oldest) if isinstance(oldest, int | float) else 0.0)
        by_cause = outbox_stats.get("deadByCause")
        for cause, count in (by_cause.items() if isinstance(by_cause, dict) else ()):
            OUTBOX_DEAD.labels(cause).set(float(count))
        OUTBOX_SENDER_UP.set(1.0 if outbox_stats.get("senderAlive") else 0.0)
    return generate_latest(REGISTRY)
