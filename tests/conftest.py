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


class BuiltDemo:
    """A demo data folder built once per test run, and what ``build_demo`` returned for it."""

    def __init__(self, path, summary: dict) -> None:
        self.path = path
        self.summary = summary

    def copy(self, dst):
        """A copy of the built demo at ``dst`` standing on its own (its store points into
        ``dst``): ``(settings, store, summary)``, the store migrated and open. A module that
        writes to the demo works on its copy, never on the shared build."""
        from meiju_core.services import projects
        from meiju_core.services.demo_copy import copy_built_demo
        from meiju_core.settings import Settings

        copy_built_demo(self.path, dst)
        settings = Settings.load(data_dir=str(dst), database_url="", project="demo")
        return settings, projects.open_store(settings), dict(self.summary)


@pytest.fixture(scope="session")
def built_demo(tmp_path_factory) -> BuiltDemo:
    """The real demo (CPED + GRID + Mandarin speech, builtin features, stage 1 on the short
    2-epoch schedule, the first round open), built once per test run for every module that
    needs it (each works on a ``copy``). With ``MEIJU_TEST_DEMO_DIR`` naming an already built
    demo, that one is copied and only its missing steps run."""
    from pathlib import Path

    from meiju_core.services import demo as demo_service
    from meiju_core.services import projects
    from meiju_core.services.demo_copy import copy_built_demo
    from meiju_core.settings import Settings

    data_dir = tmp_path_factory.mktemp("demo-built")
    prebuilt = os.environ.get("MEIJU_TEST_DEMO_DIR")
    if prebuilt:
        copy_built_demo(Path(prebuilt), data_dir)
    settings = Settings.load(data_dir=str(data_dir), database_url="", project="demo")
    store = projects.open_store(settings)
    try:
        summary = demo_service.build_demo(store, settings, admin_password="pw", epochs=2)
    finally:
        store.dispose()
    return BuiltDemo(data_dir, summary)
