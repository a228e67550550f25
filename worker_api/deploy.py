"""``cicd-worker deploy``: register the two flows of ``prefect.yaml`` with a Prefect ``process`` work pool.

What scale-out needs on the Prefect server, made idempotently (safe to run again after every upgrade):

1. the work pool (type ``process``), unless it exists;
2. the global concurrency limit on containers (``WORKER_CONCURRENCY_LIMIT_NAME``, limit
   ``WORKER_MAX_CONCURRENT_JOBS``), created or its limit updated. Prefect's own ``concurrency()`` skips a
   limit that does not exist and limits nothing (docs/prefect-behaviours.md, "Concurrency"), so the flows
   take their slots through :mod:`flows.global_limit`, which fails the job, naming the limit, when it is
   missing;
3. the deployments of ``prefect.yaml`` (``execute-job/<name>``, ``execute-pipeline/<name>``), with its pull
   steps as written. ``{{ $CICD_WORKER_HOME }}`` is kept as a template and resolved by each worker at run
   time, which is why this does not shell out to ``prefect deploy`` (that bakes in the deployer's value
   when it is set) and why it takes a second instead of ~20 s of CLI start-up.

Anyone who can call the Prefect API can start these deployments with any parameters, on every pool host.
So this refuses to run unless the Prefect server demands basic auth: ``PREFECT_SERVER_API_AUTH_STRING``
(``user:password``) on the server, the same value as ``PREFECT_API_AUTH_STRING`` on every client (this
command, the API host, each ``prefect worker``). It checks that the server refuses a call without the
string and accepts one with it. ``--no-prefect-auth`` skips that, loudly.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import sys
from pathlib import Path
from typing import Any

import httpx
import yaml

from core.settings import Settings

PREFECT_FILE = "prefect.yaml"
NO_AUTH_WARNING = ("WARNING: --no-prefect-auth: the Prefect server is used without basic auth. Anyone who reaches "
                   "it can start execute-job/execute-pipeline with any parameters on every pool host. Set "
                   "PREFECT_SERVER_API_AUTH_STRING on the server and PREFECT_API_AUTH_STRING on every client.")


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


def _client_auth_string() -> str | None:
    """``PREFECT_API_AUTH_STRING`` as Prefect's client sees it (environment, ``.env`` or profile)."""
    from prefect.settings import get_current_settings

    secret = get_current_settings().api.auth_string
    return secret.get_secret_value() if secret is not None else None


def prefect_auth_problem(api_url: str, auth_string: str | None) -> str | None:
    """Why the Prefect server at ``api_url`` is not safe to deploy to with ``auth_string``, or None.

    It must refuse a call without credentials (the server has ``PREFECT_SERVER_API_AUTH_STRING``) and accept
    ``auth_string`` (the client's ``PREFECT_API_AUTH_STRING``, the same ``user:password``).
    """
    if not auth_string:
        return ("PREFECT_API_AUTH_STRING is not set: pool mode needs a Prefect server with basic auth "
                "(PREFECT_SERVER_API_AUTH_STRING=user:password on the server, the same value as "
                "PREFECT_API_AUTH_STRING on every client), or --no-prefect-auth to go on without it")
    probe = api_url.rstrip("/") + "/admin/version"  # any route but /health and /ready needs the credentials
    basic = "Basic " + base64.b64encode(auth_string.encode()).decode()
    try:
        anonymous = httpx.get(probe, timeout=10).status_code
        with_auth = httpx.get(probe, headers={"Authorization": basic}, timeout=10).status_code
    except httpx.HTTPError as exc:
        return f"the Prefect API at {api_url} did not answer: {exc}"
    if anonymous != 401:
        return (f"the Prefect server at {api_url} answers without credentials ({anonymous}): start it with "
                "PREFECT_SERVER_API_AUTH_STRING=user:password (the value of PREFECT_API_AUTH_STRING)")
    if with_auth != 200:
        return (f"the Prefect server at {api_url} refuses PREFECT_API_AUTH_STRING ({with_auth}): it must be the "
                "server's PREFECT_SERVER_API_AUTH_STRING")
    return None


def deploy_all(work_pool: str, deployment_name: str, limit_name: str, limit: int,
               directory: Path | None = None) -> list[str]:
    """Steps 1-3 of the module docstring."""
    ensure_work_pool(work_pool)
    ensure_concurrency_limit(limit_name, limit)
    return deploy(work_pool, deployment_name, directory)


def main(settings: Settings, argv: list[str] | None = None) -> int:
    """Console entry (``cicd-worker deploy``); defaults come from the ``WORKER_*`` settings."""
    parser = argparse.ArgumentParser(prog="cicd-worker deploy", description=(
        "Create the Prefect work pool and global concurrency limit, and register the deployments of prefect.yaml."))
    parser.add_argument("--pool", default=settings.work_pool, help="work pool (default WORKER_WORK_POOL)")
    parser.add_argument("--name", default=settings.deployment_name, help="deployment name (WORKER_DEPLOYMENT_NAME)")
    parser.add_argument("--limit-name", default=settings.concurrency_limit_name,
                        help="global concurrency limit (default WORKER_CONCURRENCY_LIMIT_NAME)")
    parser.add_argument("--limit", type=int, default=settings.max_concurrent_jobs,
                        help="containers at once across all workers (default WORKER_MAX_CONCURRENT_JOBS)")
    parser.add_argument("--project-dir", type=Path, default=None, help="where prefect.yaml is (CICD_WORKER_HOME)")
    parser.add_argument("--no-prefect-auth", action="store_true",
                        help="deploy to a Prefect server without basic auth (anyone reaching it can run jobs)")
    args = parser.parse_args(argv)
    api_url = os.environ.get("PREFECT_API_URL")
    if not api_url:
        print("PREFECT_API_URL is not set: point it at the Prefect server the workers use", file=sys.stderr)
        return 2
    if args.no_prefect_auth:
        print(f"{'!' * 100}\n{NO_AUTH_WARNING}\n{'!' * 100}", file=sys.stderr, flush=True)
    elif problem := prefect_auth_problem(api_url, _client_auth_string()):
        print(f"cicd-worker deploy: refused: {problem}", file=sys.stderr)
        return 2
    names = deploy_all(args.pool, args.name, args.limit_name, args.limit, args.project_dir)
    print(f"work pool {args.pool!r}, global concurrency limit {args.limit_name!r} = {args.limit}")
    for name in names:
        print(f"deployed {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Settings()))
