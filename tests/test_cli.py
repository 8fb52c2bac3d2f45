"""The `meiju` command: fast help, settings from one list, users, friendly errors."""

from __future__ import annotations

import subprocess
import sys

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
