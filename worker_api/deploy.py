"""``cicd-worker deploy``: register the two flows of ``prefect.yaml`` with a Prefect ``process`` work pool.

What scale-out needs on the Prefect server, made idempotently (safe to run again after every upgrade):

1. the work pool (type ``process``), unless it exists;
2. the global concurrency limit on containers (``WORKER_CONCURRENCY_LIMIT_NAME``, limit
   ``WORKER_MAX_CONCURRENT_JOBS``), created or its limit updated. A limit that does not exist would be
   skipped silently by Prefect (NOTES §5), so the flows acquire it with ``strict=True``;
3. the deployments of ``prefect.yaml`` (``execute-job/<name>``, ``execute-pipeline/<name>``), with its pull
   steps as written. ``{{ $CICD_WORKER_HOME }}`` is kept as a template and resolved by each worker at run
   time, which is why this does not shell out to ``prefect deploy`` (that bakes in the deployer's value
   when it is set) and why it takes a second instead of ~20 s of CLI start-up.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import Any

import yaml

PREFECT_FILE = "prefect.yaml"


def project_dir() -> Path:
    """The directory holding ``prefect.yaml``: ``CICD_WORKER_HOME``, else the source tree of this package."""
    home = os.environ.get("CICD_WORKER_HOME")
    return Path(home).resolve() if home else Path(__file__).resolve().parent.parent


def ensure_work_pool(name: str) -> None:
    """Create the ``process`` work pool ``name`` unless it exists."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists
    from prefect.workers.process import ProcessWorker

    template = ProcessWorker.get_default_base_job_template()
    with get_client(sync_client=True) as client, contextlib.suppress(ObjectAlreadyExists):
        client.create_work_pool(WorkPoolCreate(name=name, type="process", base_job_template=template))


def ensure_concurrency_limit(name: str, limit: int) -> None:
    """Create the global concurrency limit ``name`` with ``limit`` slots, or set its limit (not atomic)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(name, limit)


def deploy(work_pool: str, deployment_name: str, directory: Path | None = None) -> list[str]:
    """Register every deployment of ``prefect.yaml`` on ``work_pool`` under ``deployment_name``.

    Returns the ``flow/deployment`` names. The flows are imported from ``directory`` to read their
    parameter schemas, as ``prefect deploy`` does.
    """
    from prefect.client.orchestration import get_client
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.callables import parameter_schema

    directory = directory or project_dir()
    if not (directory / PREFECT_FILE).is_file():
        raise FileNotFoundError(f"no {PREFECT_FILE} in {directory}: set CICD_WORKER_HOME to a clone of cicd-worker")
    config: dict[str, Any] = yaml.safe_load((directory / PREFECT_FILE).read_text())
    names = []
    with get_client(sync_client=True) as client:
        for entry in config["deployments"]:
            flow: Any = load_flow_from_entrypoint(str(directory / entry["entrypoint"]))
            client.create_deployment(
                flow_id=client.create_flow_from_name(flow.name), name=deployment_name,
                entrypoint=entry["entrypoint"], work_pool_name=work_pool, description=entry.get("description"),
                pull_steps=entry.get("pull", config.get("pull")), enforce_parameter_schema=True,
                parameter_openapi_schema=parameter_schema(flow).model_dump_for_openapi())
            names.append(f"{flow.name}/{deployment_name}")
    return names


def deploy_all(work_pool: str, deployment_name: str, limit_name: str, limit: int,
               directory: Path | None = None) -> list[str]:
    """Steps 1-3 of the module docstring."""
    ensure_work_pool(work_pool)
    ensure_concurrency_limit(limit_name, limit)
    return deploy(work_pool, deployment_name, directory)


def main(argv: list[str] | None = None) -> int:
    """Console entry (``cicd-worker deploy``); defaults come from the ``WORKER_*`` settings."""
    from worker_api.settings import get_settings

    settings = get_settings()
    parser = argparse.ArgumentParser(prog="cicd-worker deploy", description=(
        "Create the Prefect work pool and global concurrency limit, and register the deployments of prefect.yaml."))
    parser.add_argument("--pool", default=settings.work_pool, help="work pool (default WORKER_WORK_POOL)")
    parser.add_argument("--name", default=settings.deployment_name, help="deployment name (WORKER_DEPLOYMENT_NAME)")
    parser.add_argument("--limit-name", default=settings.concurrency_limit_name,
                        help="global concurrency limit (default WORKER_CONCURRENCY_LIMIT_NAME)")
    parser.add_argument("--limit", type=int, default=settings.max_concurrent_jobs,
                        help="containers at once across all workers (default WORKER_MAX_CONCURRENT_JOBS)")
    parser.add_argument("--project-dir", type=Path, default=None, help="where prefect.yaml is (CICD_WORKER_HOME)")
    args = parser.parse_args(argv)
    if not os.environ.get("PREFECT_API_URL"):
        print("PREFECT_API_URL is not set: point it at the Prefect server the workers use", file=sys.stderr)
        return 2
    names = deploy_all(args.pool, args.name, args.limit_name, args.limit, args.project_dir)
    print(f"work pool {args.pool!r}, global concurrency limit {args.limit_name!r} = {args.limit}")
    for name in names:
        print(f"deployed {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
