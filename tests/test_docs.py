"""The docs and the code check each other."""

from __future__ import annotations

import re
import subprocess
import sys

from _paths import ROOT

from meiju_core.cli import app
from meiju_core.settings import SETTINGS, markdown_table


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


def test_readme_settings_table_is_the_declared_list():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start, end = "<!-- settings:start -->", "<!-- settings:end -->"
    assert start in readme and end in readme, "README.md has no settings table"
    block = readme.split(start, 1)[1].split(end, 1)[0].strip()
    assert block == markdown_table(), (
        "README settings table is stale: paste `python -m meiju_core.settings` between the markers"
    )


def test_meiju_variables_are_read_only_through_the_settings():
    """Every ``MEIJU_*`` variable named in the code or the README is a declared setting, and only
    meiju_core/settings.py reads the environment for one."""
    declared = {f"MEIJU_{name.upper()}" for name, _default, _help in SETTINGS}
    name = re.compile(r"\bMEIJU_[A-Z][A-Z0-9_]*\b")
    read = re.compile(r"os\.(environ|getenv)\b[^\n]*MEIJU_|environ\.get\([^)]*_ENV\b")
    files = [ROOT / "app.py", ROOT / "README.md"]
    for folder in ("meiju_core", "db", "pages"):
        files += sorted((ROOT / folder).rglob("*.py"))
    for path in files:
        text = path.read_text(encoding="utf-8")
        unknown = set(name.findall(text)) - declared
        assert not unknown, f"{path.relative_to(ROOT)} names undeclared settings {unknown}"
        if path.name != "settings.py" and path.suffix == ".py":
            assert not read.search(text), f"{path.relative_to(ROOT)} reads a MEIJU_* variable"
