"""Shared fixtures: a fresh, migrated store per test, on SQLite and, where a test module asks for
it (``STORE_BACKENDS = ("sqlite", "postgresql")``), on PostgreSQL too.

PostgreSQL is real: one local server per test session from Debian's package (``make test``
installs ``postgresql`` when it is missing), ``initdb`` in a temporary folder, a free port on
127.0.0.1, ``fsync`` off, stopped and removed at the end. Each test gets its own database. As
root, the server runs as the ``postgres`` user (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import itertools
import os

import pytest

_counter = itertools.count()


def pytest_generate_tests(metafunc):
    if "store" in metafunc.fixturenames:
        backends = getattr(metafunc.module, "STORE_BACKENDS", None)
        if backends:
            metafunc.parametrize("store", backends, indirect=True)


@pytest.fixture(scope="session")
def pg_server():
    """A throw-away PostgreSQL server (``db.pgserver``); yields its base URL."""
    from db import pgserver

    if not pgserver.available():
        pytest.skip("PostgreSQL is not installed (make test installs Debian's postgresql)")
    with pgserver.temporary_server() as base:
        yield base


@pytest.fixture
def pg_url(pg_server):
    """A fresh, empty PostgreSQL database on the session's server; dropped afterwards."""
    from db import pgserver

    name = f"t{os.getpid()}_{next(_counter)}"
    url = pgserver.create_database(pg_server, name)
    yield url
    pgserver.drop_database(pg_server, name)


@pytest.fixture
def store(request, tmp_path):
    from db import Store

    backend = getattr(request, "param", "sqlite")
    if backend == "postgresql":
        url = request.getfixturevalue("pg_url")
    else:
        url = f"sqlite:///{tmp_path / 'meiju.db'}"
    st = Store(url)
    st.upgrade()
    yield st
    st.dispose()
