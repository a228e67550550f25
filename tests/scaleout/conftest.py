"""A PostgreSQL database for the scale-out tests' Prefect server, as the multi-host set-up uses.

``scripts/setup-postgres.sh`` installs and starts Debian's PostgreSQL when absent (root) and makes a database
of its own for this session, dropped at the end.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator

import pytest

from tests.support import REPO

SETUP = REPO / "scripts" / "setup-postgres.sh"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """SQLAlchemy URL of a fresh database for a Prefect server (skips when PostgreSQL cannot be set up here)."""
    database = f"prefect_test_{uuid.uuid4().hex[:8]}"
    done = subprocess.run(["bash", str(SETUP), database], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        pytest.skip(f"PostgreSQL could not be installed or started here (scripts/setup-postgres.sh exited "
                    f"{done.returncode}: {done.stderr.strip()[-500:]})")
    url = done.stdout.strip().splitlines()[-1]
    yield url
    # The Prefect servers using it are stopped by now (module fixtures end first); its owner may drop it.
    subprocess.run(["psql", url.replace("postgresql+asyncpg", "postgresql").rsplit("/", 1)[0] + "/postgres", "-qc",
                    f"DROP DATABASE IF EXISTS {database} WITH (FORCE)"], capture_output=True, timeout=60)
