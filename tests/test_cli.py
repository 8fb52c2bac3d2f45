"""The `meiju` command: fast help, settings from one list, users, friendly errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from meiju_core.cli import app
from meiju_core.settings import SETTINGS, Settings

runner = CliRunner()


def test_help_lists_every_stage_of_the_loop():
    out = runner.invoke(app, ["--help"]).output
    for command in (
        "demo",
        "extract",
        "train",
        "predict",
        "pseudo-label",
        "evaluate",
        "export",
        "worker",
        "run",
        "user",
    ):
        assert command in out


def test_help_does_not_import_torch():
    code = "import sys; from meiju_core.cli import app; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_settings_come_from_one_declared_list(tmp_path, monkeypatch):
    monkeypatch.setenv("MEIJU_THRESHOLD", "0.9")
    result = runner.invoke(app, ["--data-dir", str(tmp_path), "settings"])
    assert result.exit_code == 0
    for name, _default, help_ in SETTINGS:
        assert name in result.output and help_ in result.output
    s = Settings.load(data_dir=str(tmp_path))
    assert s.threshold == 0.9
    assert s.database_url == f"sqlite:///{tmp_path / 'meiju.db'}"


def test_user_add_and_bad_role(tmp_path):
    ok = runner.invoke(
        app,
        [
            "--data-dir",
            str(tmp_path),
            "user",
            "add",
            "li",
            "--role",
            "admin",
            "--password",
            "s3cret",
        ],
    )
    assert ok.exit_code == 0, ok.output
    assert "li (admin)" in ok.output
    bad = runner.invoke(
        app,
        ["--data-dir", str(tmp_path), "user", "add", "wang", "--role", "boss", "--password", "x"],
    )
    assert bad.exit_code == 1
    assert "unknown role 'boss'" in bad.output


def test_commands_need_a_project(tmp_path):
    result = runner.invoke(app, ["--data-dir", str(tmp_path), "--project", "nope", "train"])
    assert result.exit_code == 1
    assert "no project 'nope'" in result.output


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm in the background", "sigint in the background"])
def test_run_serves_the_app_and_a_signal_stops_app_and_worker(tmp_path, how):
    """`meiju run` (what `make run` ends with) starts the app and its worker; Ctrl-C (a SIGINT to
    the terminal's process group) stops both, and so does a SIGTERM or SIGINT to `meiju run`
    alone when it runs in the background (where a shell starts it with SIGINT ignored)."""
    import os
    import signal
    import socket
    import time
    import urllib.request

    background = how != "ctrl-c"

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "meiju_core.cli",
            "--data-dir",
            str(tmp_path),
            "run",
            "--port",
            str(port),
        ],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        # what `cmd &` does in a non-interactive shell
        preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if background else None,
    )
    try:
        deadline, status = time.monotonic() + 60, None
        while time.monotonic() < deadline and status != 200:
            try:
                status = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).status
            except OSError:
                time.sleep(0.5)
        assert status == 200
        children = subprocess.run(
            ["pgrep", "-g", str(proc.pid)], capture_output=True, text=True
        ).stdout.split()
        assert len(children) >= 3  # `meiju run`, the worker, streamlit
        if how == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)
        else:  # to `meiju run` alone
            os.kill(proc.pid, signal.SIGTERM if "sigterm" in how else signal.SIGINT)
        proc.wait(timeout=30)
        time.sleep(1)
        left = subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True, text=True)
        assert left.stdout.split() == []
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_commands_needing_a_model_say_so(tmp_path):
    from meiju_core.io.cped import build_demo as import_demo
    from meiju_core.services import projects

    settings = Settings.load(data_dir=str(tmp_path), database_url="")
    import_demo(projects.open_store(settings), project_name="demo")
    for command in ("evaluate", "predict", "pseudo-label"):
        result = runner.invoke(app, ["--data-dir", str(tmp_path), command])
        assert result.exit_code == 1, command
        assert "no model version yet" in result.output


def test_import_and_export_commands_cover_what_the_app_can(tmp_path, monkeypatch):
    """`meiju import csv|labels` store utterances into the fixture project (all or nothing) and
    `meiju export labels|decisions|edits` write the files the Data page offers."""
    from db import Store
    from db.fixtures import build_fixture

    url = f"sqlite:///{tmp_path / 'meiju.db'}"
    store = Store(url)
    store.upgrade()
    build_fixture(store, n_pool=5)
    base = ["--data-dir", str(tmp_path), "--database-url", url, "--project", "fixture"]
    csv_path = tmp_path / "new.csv"
    csv_path.write_text("utt_id,text,split\ncli_1,你好吗？,pool\ncli_2,好的,pool\n", "utf-8")
    out = runner.invoke(app, [*base, "import", "csv", str(csv_path), "--no-prepare"])
    assert out.exit_code == 0, out.output
    assert "'samples': 2" in out.output
    again = runner.invoke(app, [*base, "import", "csv", str(csv_path), "--no-prepare"])
    assert again.exit_code == 1 and "cli_1" in again.output and "Traceback" not in again.output
    labels = tmp_path / "list.txt"
    labels.write_text("lab_1 happy questioning\nlab_2 sad neutral\n", "utf-8")
    out = runner.invoke(
        app, [*base, "import", "labels", str(labels), "--split", "train", "--no-prepare"]
    )
    assert out.exit_code == 0, out.output
    for what, header in (
        ("labels", "utt_id"),
        ("decisions", "decision_id"),
        ("edits", "edit_id"),
    ):
        target = tmp_path / f"{what}.csv"
        out = runner.invoke(app, [*base, "export", what, str(target)])
        assert out.exit_code == 0, out.output
        assert target.read_text("utf-8").split(",")[0].startswith(header.split("_")[0])
    text = (tmp_path / "labels.csv").read_text("utf-8")
    assert "lab_1" in text and "happy" in text
    help_ = runner.invoke(app, ["--help"]).output
    assert "import" in help_ and "transcribe" in help_
    export_help = runner.invoke(app, ["export", "--help"]).output
    for name in ("submission", "labels", "decisions", "edits", "baseline"):
        assert name in export_help
