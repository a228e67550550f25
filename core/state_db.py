"""The worker's state on disk: a private directory, and SQLite databases that survive damage.

* Privacy: the state directory (and every directory made through :func:`private_dir`) is ``0700``, fixed
  when it exists with wider bits; database files and their ``-wal``/``-shm`` companions are ``0600``
  (SQLite gives the companions the mode of the database file, which is made ``0600`` before SQLite
  opens it). The outbox's queued artifact files and the local Prefect server log are ``0600`` too.
* Damage: a database that cannot be opened, fails ``PRAGMA quick_check`` or refuses its schema (a file
  of random bytes, a truncated file, a directory in its place) is moved aside to
  ``<name>.corrupt-<UTC time>`` with an ERROR in the log, the problem is kept for health
  (:func:`state_problems`), and a fresh database is made, so the worker starts. A database that is only
  busy or locked by another process is never moved aside.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import threading
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger(__name__)

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
_COMPANIONS = ("-wal", "-shm", "-journal")
# SQLite primary result codes that mean "this is not a usable database file", as opposed to BUSY/LOCKED
# (another process holds it) or FULL (the disk), after which moving the file aside would lose good data.
_DAMAGED = {11: "SQLITE_CORRUPT", 14: "SQLITE_CANTOPEN", 26: "SQLITE_NOTADB", 24: "SQLITE_FORMAT"}
_problems: list[str] = []
_problems_lock = threading.Lock()
_open_lock = threading.Lock()


class DamagedDatabase(sqlite3.DatabaseError):
    """``PRAGMA quick_check`` found damage (it answers rows of problems instead of raising)."""


def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) with mode 0700; narrow it to 0700 when it exists wider."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for directory in reversed(missing):
        directory.mkdir(mode=PRIVATE_DIR_MODE, exist_ok=True)
    _narrow(path, PRIVATE_DIR_MODE)
    return path


def private_file(path: Path) -> Path:
    """Create ``path`` if missing with mode 0600; narrow it to 0600 when it exists wider."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, PRIVATE_FILE_MODE)
    os.close(descriptor)
    _narrow(path, PRIVATE_FILE_MODE)
    return path


def _narrow(path: Path, mode: int) -> None:
    current = stat.S_IMODE(path.lstat().st_mode)
    if current & ~mode:
        os.chmod(path, current & mode)


def open_state_db(path: Path, schema: str = "") -> sqlite3.Connection:
    """Open (or make) the SQLite database at ``path`` in WAL mode, checked, private, with ``schema`` applied.

    A damaged database is moved aside and replaced by a fresh one (see the module docstring). The
    connection may be used from several threads; callers serialize their use with their own lock.
    """
    with _open_lock:  # two threads opening one damaged file must not move each other's fresh file aside
        private_dir(path.parent)
        try:
            return _open_checked(path, schema)
        except sqlite3.DatabaseError as exc:
            if not _is_damage(exc):
                raise
            _move_aside(path, exc)
        return _open_checked(path, schema)


def _open_checked(path: Path, schema: str) -> sqlite3.Connection:
    if not path.exists() or path.is_file():
        private_file(path)
    for suffix in _COMPANIONS:
        companion = path.with_name(path.name + suffix)
        if companion.is_file():
            _narrow(companion, PRIVATE_FILE_MODE)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        rows = [row[0] for row in db.execute("PRAGMA quick_check")]
        if rows != ["ok"]:
            raise DamagedDatabase("quick_check: " + "; ".join(str(r) for r in rows[:5]))
        if schema:
            db.executescript(schema)
    except BaseException:
        db.close()
        raise
    return db


def _is_damage(exc: sqlite3.DatabaseError) -> bool:
    if isinstance(exc, DamagedDatabase):
        return True
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in _DAMAGED
    # Errors raised without a result code (an OperationalError of the module itself): decide on the text.
    text = str(exc).lower()
    return "not a database" in text or "malformed" in text or "unable to open" in text


def _move_aside(path: Path, exc: BaseException) -> None:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    number = 1
    while target.exists():
        number += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{number}")
    if path.exists() or path.is_symlink():
        os.replace(path, target)
    for suffix in _COMPANIONS:  # a stale -wal must never be replayed into the fresh database
        companion = path.with_name(path.name + suffix)
        if companion.exists():
            os.replace(companion, target.with_name(target.name + suffix))
    problem = (f"state database {path} could not be used ({type(exc).__name__}: {exc}): moved aside to "
               f"{target.name}, a fresh one was made (what it held is lost)")
    log.error(problem)
    with _problems_lock:
        _problems.append(problem)


def state_problems() -> list[str]:
    """Problems met with the state on disk since the process started (damaged databases moved aside)."""
    with _problems_lock:
        return list(_problems)
