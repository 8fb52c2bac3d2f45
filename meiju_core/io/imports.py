"""One entry point for every import the app, the worker and the CLI offer.

``run_import`` dispatches on ``params["source"]``:

========  ==============================================  =========================================
source    params                                           function
========  ==============================================  =========================================
csv       path, default_split?                             :func:`meiju_core.io.tables.import_csv`
labels    path, split                                      :func:`meiju_core.io.tables.import_label_list`
npy       path, set_name?, replace?                        :func:`meiju_core.io.meiju.import_npy_features`
release   path, project_name, lang?, probe_media?         :func:`meiju_core.io.meiju.import_release`
========  ==============================================  =========================================

Each is all or nothing and returns a plain, JSON-ready summary dict.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from db import Store
from meiju_core.errors import InputError

SOURCES = ("csv", "labels", "npy", "release")


def _plain(summary: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(summary), default=str))


def run_import(store: Store, *, project_id: int | None, params: dict[str, Any]) -> dict[str, Any]:
    """Run the import ``params`` describe (see the module docstring); returns its summary.

    Raises InputError for an unknown source, or a source that needs a project without one;
    ImportDataError (an InputError) for a file that cannot be imported (nothing is stored).
    """
    source = params.get("source", "csv")
    if source not in SOURCES:
        raise InputError(
            f"unknown import source {source!r}; sources are {list(SOURCES)}", field="source"
        )
    path = params["path"]
    if source == "release":
        from meiju_core.io.meiju import import_release

        return _plain(
            import_release(
                store,
                path,
                project_name=params["project_name"],
                lang=params.get("lang", "Mandarin"),
                probe_media=bool(params.get("probe_media", True)),
            )
        )
    if project_id is None:
        raise InputError(f"a {source} import needs a project", field="project")
    if source == "csv":
        from meiju_core.io.tables import import_csv

        return _plain(
            import_csv(
                store, path, project_id=project_id, default_split=params.get("default_split")
            )
        )
    if source == "labels":
        from meiju_core.io.tables import import_label_list

        return _plain(import_label_list(store, path, project_id=project_id, split=params["split"]))
    from meiju_core.io.meiju import import_npy_features

    return _plain(
        import_npy_features(
            store,
            project_id,
            path,
            set_name=params.get("set_name", "meiju-npy"),
            replace=bool(params.get("replace", False)),
        )
    )
