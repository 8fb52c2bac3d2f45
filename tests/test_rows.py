"""db.rows.get: a row by primary key, typed as its model, or a StoreError naming table and key."""

from __future__ import annotations

import pytest

from db import rows
from db.models import ModelVersion, Project
from meiju_core.errors import StoreError


@pytest.fixture
def ids(store):
    with store.write() as s:
        p = Project(name="p", label_schema={"emotion": ["happy", "sad"]})
        s.add(p)
        s.flush()
        mv = ModelVersion(project_id=p.id, name="stage 1")
        s.add(mv)
        s.flush()
        return p.id, mv.id


def test_get_returns_the_row(store, ids):
    project_id, mv_id = ids
    with store.read() as s:
        mv = rows.get(s, ModelVersion, mv_id)
        assert isinstance(mv, ModelVersion)
        assert (mv.id, mv.name, mv.project_id) == (mv_id, "stage 1", project_id)
        assert rows.get(s, Project, project_id).name == "p"


def test_missing_key_names_table_and_key(store, ids):
    _, mv_id = ids
    missing = mv_id + 6
    with store.read() as s, pytest.raises(StoreError) as e:
        rows.get(s, ModelVersion, missing)
    assert str(e.value) == f"model version {missing} does not exist"
    with store.read() as s, pytest.raises(StoreError, match=r"^project 99 does not exist$"):
        rows.get(s, Project, 99)
