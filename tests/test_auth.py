"""Sign in once (issue 9, item 6) and sign-in back-off (issue 10, item 4): signed, expiring,
revocable sessions; per-name and per-address back-off; the same work for unknown names."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, update

from db.fixtures import build_fixture
from db.models import LoginSession, LoginThrottle, User
from meiju_core.errors import SignInThrottled
from meiju_core.services import auth, users

KEY = "test-secret"


@pytest.fixture
def fx(store):
    ids = build_fixture(store, n_pool=5, password_hash=users.hash_password("pw"))
    return ids


def test_a_session_resumes_until_sign_out_and_reads_the_role_from_the_store(store, fx):
    token = auth.start_session(store, key=KEY, user_id=fx.admin_id)
    assert "pw" not in token and len(token) > 40
    assert auth.resume_session(store, key=KEY, token=token) == {
        "id": fx.admin_id,
        "name": "admin",
        "role": "admin",
    }
    with store.write() as s:  # demoted meanwhile: the resumed session has the new role
        s.execute(update(User).where(User.id == fx.admin_id).values(role="annotator"))
    assert auth.resume_session(store, key=KEY, token=token)["role"] == "annotator"
    auth.end_session(store, key=KEY, token=token)
    assert auth.resume_session(store, key=KEY, token=token) is None


def test_a_forged_tampered_or_expired_cookie_is_refused(store, fx):
    token = auth.start_session(store, key=KEY, user_id=fx.admin_id)
    assert auth.resume_session(store, key="other-key", token=token) is None
    assert auth.resume_session(store, key=KEY, token=token[:-2] + "xx") is None
    assert auth.resume_session(store, key=KEY, token="") is None
    with store.write() as s:  # the row's expiry passed
        s.execute(update(LoginSession).values(expires_at=LoginSession.created_at))
    assert auth.resume_session(store, key=KEY, token=token) is None


def test_secret_key_is_kept_in_the_data_dir_owner_only(tmp_path, monkeypatch):
    monkeypatch.delenv("MEIJU_SECRET_KEY", raising=False)
    key = auth.secret_key(tmp_path)
    assert key == auth.secret_key(tmp_path) and len(key) == 64
    assert (tmp_path / "session_secret").stat().st_mode & 0o077 == 0
    monkeypatch.setenv("MEIJU_SECRET_KEY", "from-env")
    assert auth.secret_key(tmp_path) == "from-env"


def test_failed_sign_ins_back_off_per_name_and_per_address(store, fx):
    for _ in range(auth.FREE_ATTEMPTS):
        assert users.authenticate(store, name="admin", password="no", address="10.0.0.1") is None
    with pytest.raises(SignInThrottled) as e:  # even the right password waits now
        users.authenticate(store, name="admin", password="pw", address="10.0.0.2")
    assert 0 < e.value.retry_after_s <= 1.0
    with pytest.raises(SignInThrottled):  # the address is throttled for other names too
        users.authenticate(store, name="ann", password="pw", address="10.0.0.1")
    assert users.authenticate(store, name="ann", password="pw", address="10.0.0.3")
    with store.write() as s:  # the wait is over
        for row in s.scalars(select(LoginThrottle)):
            row.last_failed_at = row.last_failed_at - timedelta(seconds=10)
    assert users.authenticate(store, name="admin", password="pw", address="10.0.0.1")
    with store.read() as s:  # a success clears the counters
        assert s.get(LoginThrottle, "user:admin") is None


def test_an_unknown_name_costs_the_same_hash_check(store, fx, monkeypatch):
    calls = []
    real = users.verify_password

    def counting(h, p):
        calls.append(h)
        return real(h, p)

    monkeypatch.setattr(users, "verify_password", counting)
    assert users.authenticate(store, name="nobody", password="x") is None
    assert users.authenticate(store, name="admin", password="x") is None
    assert len(calls) == 2 and all(h.startswith("$argon2") for h in calls)
