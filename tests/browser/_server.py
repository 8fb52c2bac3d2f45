"""The app server of the browser tests: ``streamlit run app.py`` on a free port of 127.0.0.1,
polled until it answers, stopped by its pid; a small H.264 clip for the cards to play; and the
page steps the test modules share (sign in, screenshot). Shared by ``conftest.py`` and test
modules that serve a store of their own."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from db import Store
from db.fixtures import FixtureIds

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
IDLE = "[data-testid='stApp'][data-test-script-state='notRunning']"
CARD = ".meiju-transcript"
ARTIFACTS = REPO / "tests" / "artifacts"


@dataclass
class AppServer:
    url: str
    store: Store
    ids: FixtureIds | None  # None for a store that is not the fixture project
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


def sign_in_to_card(page, url: str, name: str, password: str, *, timeout_ms: int) -> None:
    """Open the app at ``url``, sign in as ``name`` and wait (up to ``timeout_ms`` each) for the
    app to go idle and for the Review card; the caller then waits for its buttons."""
    page.goto(url)
    page.wait_for_selector(IDLE, timeout=timeout_ms)
    page.get_by_label("Name").fill(name)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_selector(CARD, timeout=timeout_ms)


def save_screenshot(page, name: str) -> Path:
    """The page as ``tests/artifacts/<name>.png``."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path
