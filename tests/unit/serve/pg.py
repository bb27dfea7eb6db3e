"""A throwaway PostgreSQL server for tests: initdb + pg_ctl in a temp folder, on 127.0.0.1, removed after.

Found on PATH or in Debian's /usr/lib/postgresql/*/bin (`apt-get install postgresql`). PostgreSQL refuses
to run as root, so as root it runs as the `postgres` user the package creates. `skip_reason()` says why
a test cannot have one (no binaries, no psycopg, no such user).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return versions[-1] if versions else None


def _runner() -> list[str] | None:
    if os.geteuid() != 0:
        return []
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        return None
    return ["runuser", "-u", "postgres", "--"]


def skip_reason() -> str | None:
    if not (_bin("initdb") and _bin("pg_ctl")):
        return "PostgreSQL binaries (initdb, pg_ctl) not found: apt-get install postgresql"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg not installed (pip install 'psycopg[binary]')"
    if _runner() is None:
        return "running as root without a 'postgres' user to run the server as"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def postgres() -> Iterator[str]:
    """A running server; yields its SQLAlchemy URL (database `postgres`, user `postgres`, no password)."""
    run = _runner()
    assert run is not None
    root = Path(tempfile.mkdtemp(prefix="tunelab-pg-"))
    data, port = root / "data", _free_port()
    if run:
        shutil.chown(root, "postgres")
    root.chmod(0o755)
    pg_ctl = _bin("pg_ctl")
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off"
    try:
        _call([*run, _bin("initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8"])
        _call([*run, pg_ctl, "-D", str(data), "-o", opts, "-l", str(root / "log"), "-w", "-t", "60", "start"])
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*run, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def fresh_database(url: str) -> str:
    """A new, empty database on the server at `url` (tests share one server, not their tables)."""
    import psycopg

    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return url.rsplit("/", 1)[0] + "/" + name


def _call(cmd: list[str | None]) -> None:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({done.returncode}): {done.stderr[-2000:]}")
