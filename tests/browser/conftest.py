"""Browser tests: the real app under ``streamlit run``, driven by Playwright in Debian's Chromium.

Playwright never downloads a browser here: it launches ``/usr/bin/chromium`` (``apt-get install
chromium``) through ``executable_path``. The server is started once per module on a free port of
127.0.0.1 with a fixture store in a temporary folder, polled until it answers, and stopped by its
pid in teardown; a failing test gets the server's output attached to its report. Tests wait on
the app's state (script state, the utterance id on the card), never on fixed sleeps.

The ``browser`` and ``page`` fixtures here serve every module; a module whose server fixture is
not ``app_server`` names it in ``SERVER_FIXTURE``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from _server import (
    CHROMIUM,
    CHROMIUM_ARGS,
    AppServer,
    make_clip,
    start_server,
    stop_server,
)
from sqlalchemy import update

from db import Store
from db.fixtures import build_fixture
from db.models import Sample
from meiju_core.services import training, users


def serve(tmp_path_factory, **fixture_kwargs) -> Iterator[AppServer]:
    """A fixture store (``build_fixture(**fixture_kwargs)``, 60 pool samples by default) whose
    pool cards all play a small clip from second 1, served by ``streamlit run``."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Debian's Chromium is not at {CHROMIUM} (apt-get install chromium)")
    data_dir = tmp_path_factory.mktemp("app")
    url = f"sqlite:///{data_dir / 'meiju.db'}"
    store = Store(url)
    store.upgrade()
    kwargs = {"n_pool": 60, "password_hash": users.hash_password("pw"), **fixture_kwargs}
    ids = build_fixture(store, **kwargs)
    training.evaluate(store, model_version_id=ids.model_version_id)  # the dashboard's figures
    clip = make_clip(data_dir / "clip.mp4")
    with store.write() as s:  # every card plays the clip from second 1
        s.execute(
            update(Sample)
            .where(Sample.split == "pool")
            .values(video_path=str(clip), start_s=1.0, duration_s=2.0)
        )
    env = {"MEIJU_DATA_DIR": str(data_dir), "MEIJU_DATABASE_URL": url, "MEIJU_PROJECT": "fixture"}
    proc, app_url, log_path = start_server(data_dir, env)
    server = AppServer(app_url, store, ids, proc, log_path)
    yield server
    stop_server(proc)
    store.dispose()


@pytest.fixture(scope="module")
def app_server(tmp_path_factory, request) -> Iterator[AppServer]:
    """The app on the fixture store; a test module may set ``FIXTURE_KWARGS`` (e.g. quotas)."""
    yield from serve(tmp_path_factory, **getattr(request.module, "FIXTURE_KWARGS", {}))


@pytest.fixture(scope="module")
def browser(request):
    """Chromium for one test module, launched once the module's server is up: the fixture named
    by the module's ``SERVER_FIXTURE`` (default ``app_server``; when it skips, so does this)."""
    from playwright.sync_api import sync_playwright

    request.getfixturevalue(getattr(request.module, "SERVER_FIXTURE", "app_server"))
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    """A fresh page (its own browser context, 1400 x 1000) per test, closed after it."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    yield page
    context.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attach the server's output to the report of a failing browser test."""
    outcome = yield
    rep = outcome.get_result()
    server = getattr(item, "funcargs", {}).get("app_server")
    if rep.failed and server is not None:
        rep.sections.append(("streamlit server output", server.log()))
