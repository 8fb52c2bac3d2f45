"""Shared fixtures: a fresh, migrated SQLite store per test."""

from __future__ import annotations

import pytest


@pytest.fixture
def store(tmp_path):
    from db import Store

    st = Store(f"sqlite:///{tmp_path / 'meiju.db'}")
    st.upgrade()
    yield st
    st.dispose()
