"""Sign-in: password check with back-off, and sessions that survive a reload.

A sign-in creates a ``login_session`` row with a random id; the browser keeps that id in a
cookie signed and time-stamped with itsdangerous (``URLSafeTimedSerializer``, a dependency of
Streamlit already), so a reload or a pasted link finds the user again without any secret in the
URL. The cookie is checked twice: its signature and age (at most :data:`SESSION_TTL_S`), then
the row (not ended, not expired). Sign-out ends the row, so a copied cookie stops working too.
The user's role is read from the store on every resume, never from the cookie.

Failed sign-ins are counted per user name and per address (``login_throttle``); from the
:data:`FREE_ATTEMPTS`-th failure on, each further attempt waits ``2 ** (failures - FREE_ATTEMPTS)``
seconds (at most :data:`MAX_WAIT_S`) after the last failure. An unknown user name costs the same
password hash check as a wrong password, so timing does not tell which names exist.

The signing key is ``MEIJU_SECRET_KEY`` when set, else a random key kept in
``<data_dir>/session_secret`` (created on first use, readable by its owner only).
"""

from __future__ import annotations

import os
import secrets
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from db import Store
from db.models import LoginSession, LoginThrottle, User, utcnow
from meiju_core.errors import SignInThrottled
from meiju_core.settings import env_value

COOKIE_NAME = "meiju_session"
SESSION_TTL_S = 12 * 3600
FREE_ATTEMPTS = 3
MAX_WAIT_S = 300.0
_SALT = "meiju-review-session"
# a hash of a random password: an unknown user name is checked against it, at the same cost
_DUMMY_HASH: str | None = None


def _aware(t):
    from datetime import UTC

    return t if t.tzinfo else t.replace(tzinfo=UTC)


def secret_key(data_dir: Path) -> str:
    """The session signing key: ``MEIJU_SECRET_KEY``, else ``<data_dir>/session_secret``
    (created with 32 random bytes, mode 0600, on first use).

    Raises:
        OSError: the data dir cannot be written.
    """
    env = env_value("secret_key")
    if env:
        return env
    path = Path(data_dir) / "session_secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path.read_text().strip()


def _serializer(key: str):
    from itsdangerous import URLSafeTimedSerializer

    return URLSafeTimedSerializer(key, salt=_SALT)


def _user_dict(user: User) -> dict[str, Any]:
    return {"id": user.id, "name": user.name, "role": user.role}


# --------------------------------------------------------------------------- password + back-off


def _wait_left(row: LoginThrottle | None, now) -> float:
    if row is None or row.failures < FREE_ATTEMPTS:
        return 0.0
    wait = min(MAX_WAIT_S, 2.0 ** (row.failures - FREE_ATTEMPTS))
    return max(0.0, wait - (now - _aware(row.last_failed_at)).total_seconds())


def authenticate(
    store: Store, *, name: str, password: str, address: str | None = None
) -> dict[str, Any] | None:
    """The user ``{"id", "name", "role"}`` when ``name`` and ``password`` match, else None.

    Raises:
        SignInThrottled: too many recent failures for this name or this address; nothing is
            checked and the counters are left as they are.
    """
    from meiju_core.services.users import hash_password, verify_password

    global _DUMMY_HASH
    keys = [f"user:{name.strip().lower()}"] + ([f"addr:{address}"] if address else [])
    now = utcnow()
    with store.read() as s:
        rows = {k: s.get(LoginThrottle, k) for k in keys}
        user = s.scalars(select(User).where(User.name == name)).first()
        found = _user_dict(user) if user is not None else None
        pw_hash = user.password_hash if user is not None else None
    wait = max(_wait_left(r, now) for r in rows.values())
    if wait > 0:
        raise SignInThrottled(wait)
    if pw_hash is None:  # unknown user (or no password): the same hash check, then no
        if _DUMMY_HASH is None:
            _DUMMY_HASH = hash_password(secrets.token_hex(16))
        verify_password(_DUMMY_HASH, password)
        ok = False
    else:
        ok = verify_password(pw_hash, password)
    with store.write() as s:
        for k in keys:
            row = s.get(LoginThrottle, k)
            if ok:
                if row is not None:
                    s.delete(row)
            elif row is None:
                s.add(LoginThrottle(key=k, failures=1, last_failed_at=now))
            else:
                row.failures, row.last_failed_at = row.failures + 1, now
    return found if ok else None


# --------------------------------------------------------------------------- sessions


def start_session(store: Store, *, key: str, user_id: int, address: str | None = None) -> str:
    """Open a session for ``user_id``; returns the signed cookie value (no secret in it but a
    random session id)."""
    sid = secrets.token_urlsafe(32)
    now = utcnow()
    with store.write() as s:
        s.add(
            LoginSession(
                id=sid,
                user_id=user_id,
                address=(address or "")[:64] or None,
                created_at=now,
                expires_at=now + timedelta(seconds=SESSION_TTL_S),
            )
        )
    return _serializer(key).dumps(sid)


def _session_id(key: str, token: str | None) -> str | None:
    from itsdangerous import BadSignature

    if not token:
        return None
    try:
        return str(_serializer(key).loads(token, max_age=SESSION_TTL_S))
    except BadSignature:  # also SignatureExpired
        return None


def resume_session(store: Store, *, key: str, token: str | None) -> dict[str, Any] | None:
    """The user of a valid session cookie (signature, age, row not ended nor expired), with the
    role as the store has it now; None otherwise."""
    sid = _session_id(key, token)
    if sid is None:
        return None
    with store.read() as s:
        row = s.get(LoginSession, sid)
        if row is None or row.ended_at is not None or _aware(row.expires_at) <= utcnow():
            return None
        user = s.get(User, row.user_id)
        return _user_dict(user) if user is not None else None


def end_session(store: Store, *, key: str, token: str | None) -> None:
    """Sign-out: the session stops working at once, from any browser holding the cookie."""
    sid = _session_id(key, token)
    if sid is None:
        return
    with store.write() as s:
        row = s.get(LoginSession, sid)
        if row is not None and row.ended_at is None:
            row.ended_at = utcnow()
