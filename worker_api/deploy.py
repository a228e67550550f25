"""``cicd-worker deploy``: prepare the shared Prefect server for pool mode (``WORKER_DISPATCH=pool``).

Pool mode needs one object on the Prefect server, made idempotently (safe to run again after every upgrade):
the global concurrency limit on containers (``WORKER_CONCURRENCY_LIMIT_NAME``, limit
``WORKER_MAX_CONCURRENT_JOBS``), created or its limit updated. Prefect's own ``concurrency()`` skips a limit
that does not exist and limits nothing (docs/prefect-behaviours.md, "Concurrency"), so the flows take their
slots through :mod:`flows.global_limit`, which fails the job, naming the limit, when it is missing. The API
host also creates it at start-up. No work pool and no deployment: the API queues task runs that the
``cicd-worker pool-worker`` processes take (:mod:`flows.pool_tasks`).

Anyone who can call the Prefect API can queue runs of the pool's tasks, on every pool host. So this refuses
to run unless the Prefect server demands basic auth: ``PREFECT_SERVER_API_AUTH_STRING`` (``user:password``) on
the server, the same value as ``PREFECT_API_AUTH_STRING`` on every client (this command, the API host, each
pool worker). It checks that the server refuses a call without the string and accepts one with it.
``--no-prefect-auth`` skips that, loudly.
"""

from __future__ import annotations

import argparse
import base64
import os
import sys

import httpx

from core.settings import Settings

NO_AUTH_WARNING = ("WARNING: --no-prefect-auth: the Prefect server is used without basic auth. Anyone who reaches "
                   "it can queue jobs on every pool host. Set "
                   "PREFECT_SERVER_API_AUTH_STRING on the server and PREFECT_API_AUTH_STRING on every client.")


def ensure_concurrency_limit(name: str, limit: int) -> None:
    """Create the global concurrency limit ``name`` with ``limit`` slots, or set its limit (not atomic)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(name, limit)


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


def main(settings: Settings, argv: list[str] | None = None) -> int:
    """Console entry (``cicd-worker deploy``); defaults come from the ``WORKER_*`` settings."""
    parser = argparse.ArgumentParser(prog="cicd-worker deploy", description=(
        "Create or update the global container limit of pool mode on the Prefect server."))
    parser.add_argument("--limit-name", default=settings.concurrency_limit_name,
                        help="global concurrency limit (default WORKER_CONCURRENCY_LIMIT_NAME)")
    parser.add_argument("--limit", type=int, default=settings.max_concurrent_jobs,
                        help="containers at once across all workers (default WORKER_MAX_CONCURRENT_JOBS)")
    parser.add_argument("--no-prefect-auth", action="store_true",
                        help="use a Prefect server without basic auth (anyone reaching it can run jobs)")
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
    ensure_concurrency_limit(args.limit_name, args.limit)
    print(f"global concurrency limit {args.limit_name!r} = {args.limit}: ready")
    return 0


if __name__ == "__main__":
    sys.exit(main(Settings()))
