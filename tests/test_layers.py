"""The folders of ``meiju_core`` are its layers, and the import contracts of pyproject.toml hold them.

``make lint`` runs the contracts themselves (lint-imports); these tests check that the tree and
the contracts tell the same plan: the root of ``meiju_core`` holds only the layer folders (``ml/``,
``services/``, ``io/``), the CLI and the modules every layer shares (errors, schema, settings,
validate); the folders are at most two deep; the ML contract covers the whole ``ml`` package and
forbids the services, io and the store; the store's contract forbids every part of ``meiju_core``
but errors and schema.
"""

from __future__ import annotations

import tomllib

from _paths import ROOT

PKG = ROOT / "meiju_core"
LAYERS = {"ml", "services", "io"}
SHARED = {"errors", "schema", "settings", "validate"}
ENTRY = {"cli"}


def _contracts() -> dict[str, dict]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return {c["id"]: c for c in config["tool"]["importlinter"]["contracts"]}


def _root_entries() -> set[str]:
    """Names of the modules and packages at the root of meiju_core."""
    names = set()
    for path in PKG.iterdir():
        if path.suffix == ".py" and path.stem != "__init__":
            names.add(path.stem)
        elif path.is_dir() and (path / "__init__.py").exists():
            names.add(path.name)
    return names


def test_the_root_of_meiju_core_holds_only_layers_shared_modules_and_the_cli():
    extra = _root_entries() - LAYERS - SHARED - ENTRY
    assert not extra, f"put {sorted(extra)} in a layer folder (ml/, services/ or io/)"
    assert _root_entries() >= LAYERS


def test_folders_are_at_most_two_deep():
    deep = [
        p.relative_to(PKG).as_posix()
        for p in PKG.rglob("*.py")
        if len(p.relative_to(PKG).parts) > 3 and "__pycache__" not in p.parts
    ]
    assert not deep, deep


def test_every_layer_folder_is_a_package_with_a_docstring():
    for layer in LAYERS:
        init = PKG / layer / "__init__.py"
        assert init.exists(), init
    for layer in ("ml", "services"):
        assert (PKG / layer / "__init__.py").read_text(encoding="utf-8").startswith('"""')


def test_the_ml_contract_covers_the_ml_folder_and_forbids_what_sits_above():
    ml = _contracts()["ml-no-store"]
    assert ml["source_modules"] == ["meiju_core.ml"]
    forbidden = set(ml["forbidden_modules"])
    assert {
        "db",
        "sqlalchemy",
        "meiju_core.services",
        "meiju_core.io",
        "meiju_core.cli",
    } <= forbidden


def test_the_store_may_import_only_errors_and_schema():
    forbidden = set(_contracts()["store-bottom"]["forbidden_modules"])
    allowed = {"errors", "schema"}
    needed = {f"meiju_core.{name}" for name in _root_entries() - allowed}
    assert needed <= forbidden, sorted(needed - forbidden)
