"""App-test set-up shared by every page test: the fixture project in a temporary SQLite store,
the app pointed at it through the environment, Streamlit's global caches cleared around each test
(they are process-wide and would leak a store between tests)."""

from __future__ import annotations

from pathlib import Path

import pytest
import streamlit as st

from db import Store
from db.fixtures import build_fixture
from meiju_core.services import users

REPO = Path(__file__).resolve().parents[2]
PASSWORD_HASH = users.hash_password("pw")


@pytest.fixture
def fx(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'meiju.db'}"
    store = Store(url)
    store.upgrade()
    ids = build_fixture(store, n_pool=40, password_hash=PASSWORD_HASH)
    monkeypatch.setenv("MEIJU_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MEIJU_DATABASE_URL", url)
    monkeypatch.setenv("MEIJU_PROJECT", "fixture")
    monkeypatch.syspath_prepend(str(REPO))
    st.cache_resource.clear()
    st.cache_data.clear()
    yield store, ids
    st.cache_resource.clear()
    st.cache_data.clear()
    store.dispose()
