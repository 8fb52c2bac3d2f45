"""What the page test modules share: the app signed in as a fixture user (``signed_in``), on
the store the ``fx`` fixture (``conftest.py``) points the environment at."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[2] / "app.py")
TIMEOUT = 30


def signed_in(ids, role: str = "admin", page: str | None = None) -> AppTest:
    """The app with a user already signed in (the login form has its own test): the fixture's
    admin, or its annotator for ``role`` annotator; on ``page`` when given."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    uid, name = (ids.admin_id, "admin") if role == "admin" else (ids.annotator_id, "ann")
    at.session_state["user"] = {"id": uid, "name": name, "role": role}
    at.run()
    if page:
        at.switch_page(page).run()
    assert not at.exception, at.exception
    return at
