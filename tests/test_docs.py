"""The docs and the code check each other."""

from __future__ import annotations

import subprocess
import sys

from _paths import ROOT

from meiju_core.cli import app
from meiju_core.settings import SETTINGS


def test_readme_shows_the_two_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "make run" in readme and "make test" in readme


def test_readme_benchmark_table_matches_the_results():
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "update_readme.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, "README benchmark table is stale: run benchmarks/update_readme.py"


def test_every_cli_command_is_in_the_readme():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    names = [c.name or c.callback.__name__ for c in app.registered_commands]
    names += [g.name for g in app.registered_groups]
    for name in names:
        assert f"meiju {name}" in readme, f"`meiju {name}` is not documented in README.md"


def test_every_setting_has_help():
    for name, _default, help_ in SETTINGS:
        assert len(help_) > 15, name
