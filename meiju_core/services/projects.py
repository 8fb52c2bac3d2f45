"""The project's store and its settings: open (and migrate) the store, read a project and its
label schema. The ``Progress`` callback type every long service step takes lives here.

``progress`` arguments are callables taking one dict (``{"progress": 0..1, "message": str, ...}``);
returning the string ``"cancel"`` asks a long step to stop.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from db import Store, rows
from db import queries as q
from db.models import Project
from meiju_core.errors import InputError, StoreError
from meiju_core.schema import LabelSchema
from meiju_core.settings import Settings

Progress = Callable[[dict[str, Any]], Any]


def no_progress(_event: dict[str, Any]) -> None:
    return None


def open_store(settings: Settings, *, upgrade: bool = True) -> Store:
    """The project's store at ``settings.database_url``, migrated to the newest schema.

    Raises InputError when the data folder cannot be created or written (``MEIJU_DATA_DIR``)
    and StoreError when the database cannot be reached (the URL's host, not a traceback)."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        probe = settings.data_dir / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise InputError(
            f"the data folder {settings.data_dir} is not writable ({e.strerror or e}); set "
            "MEIJU_DATA_DIR or --data-dir to a folder you can write",
            field="data_dir",
        ) from None
    try:
        store = Store(settings.database_url)
        if upgrade:
            store.upgrade()
    except SQLAlchemyError as e:
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        raise StoreError(f"cannot open the database: {reason}") from None
    return store


def project_info(store: Store, *, name: str) -> dict[str, Any] | None:
    with store.read() as s:
        p = q.get_project(s, name=name)
        if p is None:
            return None
        return {
            "id": p.id,
            "name": p.name,
            "schema": LabelSchema.from_dict(p.label_schema),
            "settings": dict(p.settings or {}),
        }


def schema_of(store: Store, project_id: int) -> LabelSchema:
    with store.read() as s:
        return LabelSchema.from_dict(rows.get(s, Project, project_id).label_schema)


def scaled_progress(progress: Progress, lo: float, hi: float, label: str) -> Progress:
    """``progress`` with a sub-step's 0..1 mapped into ``lo..hi`` and its message prefixed."""

    def report(event: dict[str, Any]) -> Any:
        out = dict(event)
        if "progress" in out:
            out["progress"] = lo + (hi - lo) * float(out["progress"])
        if out.get("message"):
            out["message"] = f"{label}: {out['message']}"
        return progress(out)

    return report
