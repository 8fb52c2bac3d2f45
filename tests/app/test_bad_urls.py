"""Bad URL parameters never crash a page or show a server path: ``?samples=`` with a superscript
digit, a number past the database's integer range, ``?sample=`` and ``?min=`` that are not
numbers. The page ignores what it cannot read."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest
from test_app_pages import APP, TIMEOUT


@pytest.mark.parametrize(
    ("page", "params"),
    [
        ("pages/review.py", {"samples": "99999999999999999999999"}),
        ("pages/review.py", {"samples": "²"}),
        ("pages/review.py", {"samples": "1,²,-4,1e9", "model": "１", "min": "nan", "max": "9"}),
        ("pages/transcripts.py", {"sample": "²"}),
        ("pages/transcripts.py", {"sample": "99999999999999999999999"}),
    ],
)
def test_bad_url_parameters_do_not_crash_a_page(fx, page, params):
    _store, ids = fx
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["user"] = {"id": ids.admin_id, "name": "admin", "role": "admin"}
    for key, value in params.items():
        at.query_params[key] = value
    at.run()
    at.switch_page(page)
    for key, value in params.items():
        at.query_params[key] = value
    at.run()
    assert not at.exception, at.exception
    shown = " ".join(str(e.value) for e in (*at.markdown, *at.caption, *at.error) if e.value)
    assert "/work/" not in shown and "Traceback" not in shown
