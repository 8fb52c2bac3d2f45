"""Shared test set-up: where the real data lives, and a fresh store per test."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# CI clones the project with the shared folder beside it; so does every developer checkout.
SHARED = ROOT.parent / "shared"
SHARED_DATA = SHARED / "data"
DEMO = ROOT / "demo"


@pytest.fixture
def store(tmp_path):
    from db import Store

    st = Store(f"sqlite:///{tmp_path / 'meiju.db'}")
    st.upgrade()
    yield st
    st.dispose()
