"""Browser tests: the real app under ``streamlit run``, driven by Playwright in Debian's Chromium.

Playwright never downloads a browser here: it launches ``/usr/bin/chromium`` (``apt-get install
chromium``) through ``executable_path``. The server is started once per module on a free port of
127.0.0.1 with a fixture store in a temporary folder, polled until it answers, and stopped by its
pid in teardown; a failing test gets the server's output attached to its report. Tests wait on
the app's state (script state, the utterance id on the card), never on fixed sleeps.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import update

from db import Store
from db.fixtures import FixtureIds, build_fixture
from db.models import Sample
from meiju_core import pipeline

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@dataclass
class AppServer:
    url: str
    store: Store
    ids: FixtureIds
    proc: subprocess.Popen
    log_path: Path

    def log(self, tail: int = 6000) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-tail:]


def make_clip(path: Path, *, seconds: float = 3.0, fps: int = 25) -> Path:
    """A small H.264 MP4 (moving gradient), the format browsers play, written with PyAV."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        for i in range(int(seconds * fps)):
            x = np.linspace(0, 255, 160, dtype=np.float32)
            img = ((x[None, :, None] + 6 * i + np.zeros((120, 1, 3))) % 256).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data_dir: Path, env: dict[str, str], *, timeout_s: float = 60) -> tuple:
    """``streamlit run app.py`` on a free port of 127.0.0.1; returns (proc, url, log path)."""
    port = free_port()
    log_path = data_dir / "server.log"
    log = log_path.open("w", encoding="utf-8")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            "app.py",
            "--server.headless",
            "true",
            "--server.port",
            str(port),
            "--server.address",
            "127.0.0.1",
            "--server.fileWatcherType",
            "none",
            "--global.developmentMode",
            "false",
            "--browser.gatherUsageStats",
            "false",
        ],
        cwd=REPO,
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with {proc.returncode}:\n{log_path.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url + "/", log_path
        except OSError:
            pass
        if time.monotonic() > deadline:
            stop_server(proc)
            raise RuntimeError(
                f"streamlit did not answer in {timeout_s} s:\n{log_path.read_text()}"
            )
        time.sleep(0.2)


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def serve(tmp_path_factory, **fixture_kwargs) -> Iterator[AppServer]:
    """A fixture store (``build_fixture(**fixture_kwargs)``, 60 pool samples by default) whose
    pool cards all play a small clip from second 1, served by ``streamlit run``."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Debian's Chromium is not at {CHROMIUM} (apt-get install chromium)")
    data_dir = tmp_path_factory.mktemp("app")
    url = f"sqlite:///{data_dir / 'meiju.db'}"
    store = Store(url)
    store.upgrade()
    kwargs = {"n_pool": 60, "password_hash": pipeline.hash_password("pw"), **fixture_kwargs}
    ids = build_fixture(store, **kwargs)
    pipeline.evaluate(store, model_version_id=ids.model_version_id)  # the dashboard's figures
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
def browser(app_server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, request):
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
