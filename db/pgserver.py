"""A throw-away local PostgreSQL server, for the tests and the benchmarks.

Uses Debian's ``postgresql`` package (``initdb``, ``pg_ctl``; ``make postgres`` installs it): a
cluster in a temporary folder, trust authentication for the ``meiju`` role, a free port on
127.0.0.1, durability off (``fsync``, ``synchronous_commit``); stopped and removed on exit. As
root, the server runs as the ``postgres`` user (PostgreSQL refuses to run as root).

Usage::

    with temporary_server() as base:          # postgresql+psycopg://meiju@127.0.0.1:PORT
        url = create_database(base, "bench")   # .../bench
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from meiju_core.errors import StoreError


def pg_bin(name: str) -> str | None:
    """The path of a PostgreSQL server program, on PATH or in ``/usr/lib/postgresql/*/bin``."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def available() -> bool:
    return bool(pg_bin("initdb") and pg_bin("pg_ctl"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def temporary_server(*, max_connections: int = 200) -> Iterator[str]:
    """Start a server; yield its base URL (no database name); stop and remove it afterwards.

    Raises StoreError when PostgreSQL is not installed or does not start (its log is in the
    message).
    """
    initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        raise StoreError("PostgreSQL is not installed: make postgres (apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="meiju-pg-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    prefix: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(sock, "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    options = (
        f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off "
        f"-c synchronous_commit=off -c full_page_writes=off -c max_connections={max_connections}"
    )
    try:
        subprocess.run(
            [*prefix, initdb, "-D", str(data), "-A", "trust", "-U", "meiju", "--no-sync"]
            + ["-E", "UTF8"],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [*prefix, pg_ctl, "-D", str(data), "-o", options, "-l", str(root / "log"), "-w"]
            + ["start"],
            check=True,
            capture_output=True,
        )
    except subprocess.CalledProcessError as e:
        log = (root / "log").read_text(errors="replace") if (root / "log").exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        raise StoreError(f"PostgreSQL did not start: {e.stderr!r} {log[-2000:]}") from None
    try:
        yield f"postgresql+psycopg://meiju@127.0.0.1:{port}"
    finally:
        subprocess.run(
            [*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"],
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)


def _admin(base_url: str, sql: str) -> None:
    import psycopg

    url = base_url.replace("postgresql+psycopg", "postgresql") + "/postgres"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql)


def create_database(base_url: str, name: str) -> str:
    """Create database ``name`` (letters, digits, ``_``) on the server; returns its URL."""
    if not name.replace("_", "").isalnum():
        raise StoreError(f"database name {name!r}: letters, digits and _ only")
    _admin(base_url, f'CREATE DATABASE "{name}"')
    return f"{base_url}/{name}"


def drop_database(base_url: str, name: str) -> None:
    _admin(base_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
