"""A PostgreSQL database for a benchmark's Prefect server (``scripts/setup-postgres.sh``), dropped afterwards.

``database(prefix)`` yields the SQLAlchemy URL to give the Prefect server as ``PREFECT_API_DATABASE_CONNECTION_URL``
(``bench.harness.environment(prefect_env=...)`` passes it on), or None with the reason printed when PostgreSQL
cannot be installed or started here (not root, no package source).
"""

from __future__ import annotations

import contextlib
import subprocess
import uuid
from collections.abc import Iterator

from tests.support import REPO

SETUP = REPO / "scripts" / "setup-postgres.sh"
URL_SETTING = "PREFECT_API_DATABASE_CONNECTION_URL"


def setup(name: str) -> tuple[str | None, str]:
    """(URL of database ``name``, created if absent, or None; what the set-up said on failure)."""
    done = subprocess.run(["bash", str(SETUP), name], capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        return None, f"scripts/setup-postgres.sh exited {done.returncode}: {done.stderr.strip()[-400:]}"
    return done.stdout.strip().splitlines()[-1], ""


def drop(url: str) -> None:
    """Drop the database of ``url`` (its owner may), closing what still uses it."""
    base, name = url.replace("postgresql+asyncpg", "postgresql").rsplit("/", 1)
    subprocess.run(["psql", f"{base}/postgres", "-qc", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"],
                   capture_output=True, timeout=60)


@contextlib.contextmanager
def database(prefix: str) -> Iterator[str | None]:
    """A fresh database ``<prefix>_<random>`` for one Prefect server; None (reason printed) when unavailable."""
    url, problem = setup(f"{prefix}_{uuid.uuid4().hex[:8]}")
    if url is None:
        print(f"PostgreSQL not available: {problem}", flush=True)
        yield None
        return
    try:
        yield url
    finally:
        drop(url)
