"""The import contracts of pyproject.toml name every module, so a new one cannot slip past them.

``make lint`` runs the contracts themselves (lint-imports); these tests check that each module of
``meiju_core`` has a layer: it is an ML module (the ``ml-no-store`` contract's sources), a
service (that contract's forbidden modules), or one of the few the store may import (errors,
schema) or every layer may (settings). And the store's contract forbids every module of
``meiju_core`` but errors and schema.
"""

from __future__ import annotations

import tomllib

from _paths import ROOT

SHARED = {"meiju_core.errors", "meiju_core.schema", "meiju_core.settings"}


def _contracts() -> dict[str, dict]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return {c["id"]: c for c in config["tool"]["importlinter"]["contracts"]}


def _modules() -> set[str]:
    """``meiju_core.<name>`` of every top-level module and package of meiju_core."""
    names = set()
    for path in (ROOT / "meiju_core").iterdir():
        if path.suffix == ".py" and path.stem != "__init__":
            names.add(f"meiju_core.{path.stem}")
        elif path.is_dir() and (path / "__init__.py").exists():
            names.add(f"meiju_core.{path.name}")
    return names


def test_every_module_of_meiju_core_has_a_layer():
    ml = _contracts()["ml-no-store"]
    ml_modules = set(ml["source_modules"])
    services = {m for m in ml["forbidden_modules"] if m.startswith("meiju_core.")}
    assert not ml_modules & services
    unplaced = _modules() - ml_modules - services - SHARED
    assert not unplaced, f"add {sorted(unplaced)} to the ml-no-store contract (ML or service)"
    gone = (ml_modules | services) - _modules()
    assert not gone, f"the contracts name modules that do not exist: {sorted(gone)}"


def test_the_store_may_import_only_errors_and_schema():
    forbidden = set(_contracts()["store-bottom"]["forbidden_modules"])
    allowed = {"meiju_core.errors", "meiju_core.schema"}
    assert _modules() - allowed <= forbidden, sorted(_modules() - allowed - forbidden)
