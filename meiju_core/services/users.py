"""Users and roles: create a user, check a password (argon2), sign in (with back-off, see
:mod:`meiju_core.services.auth`) and refuse admin actions to annotators.
"""

from __future__ import annotations

from typing import Any

from db import Store
from db import queries as q
from db.models import User
from meiju_core.errors import InputError, PermissionDenied


def hash_password(password: str) -> str:
    from argon2 import PasswordHasher

    return PasswordHasher().hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    from argon2 import PasswordHasher
    from argon2.exceptions import Argon2Error

    if not password_hash:
        return False
    try:
        return PasswordHasher().verify(password_hash, password)
    except Argon2Error:
        return False


def add_user(
    store: Store, *, name: str, role: str = "annotator", password: str | None = None
) -> int:
    """Create or update a user; returns its id. Raises InputError for an unknown role, a name
    that is empty or has control characters, or an empty (or all-space) password."""
    from meiju_core.validate import id_problem

    if role not in ("annotator", "admin"):
        raise InputError(f"unknown role {role!r}; roles are annotator and admin", field="role")
    problem = id_problem(name.strip()) if name is not None else "empty name"
    if problem:
        raise InputError(problem.replace("id", "name", 1), field="name")
    if password is not None and not password.strip():
        raise InputError("the password is empty", field="password")
    with store.write() as s:
        user = q.get_user(s, name=name)
        if user is None:
            user = User(name=name)
            s.add(user)
        user.role = role
        if password is not None:
            user.password_hash = hash_password(password)
        s.flush()
        return user.id


def authenticate(
    store: Store, *, name: str, password: str, address: str | None = None
) -> dict[str, Any] | None:
    """The user when name and password match, else None (``meiju_core.services.auth.authenticate``:
    per-name and per-address back-off, the same cost for unknown names).

    Raises:
        SignInThrottled: too many recent failed sign-ins for this name or address.
    """
    from meiju_core.services import auth

    return auth.authenticate(store, name=name, password=password, address=address)


def require_admin(user: dict[str, Any] | None, action: str, *, store: Store | None = None) -> None:
    """Refuse ``action`` unless ``user`` is an admin. Given ``store``, the role is read from the
    store, not from the page's copy, so a demoted admin's open session loses its rights at once.

    Raises:
        PermissionDenied: no user, an unknown user, or a role other than admin.
    """
    if not user:
        raise PermissionDenied(f"only admins may {action}")
    role = user.get("role")
    if store is not None:
        with store.read() as s:
            row = s.get(User, user.get("id")) if user.get("id") is not None else None
            role = row.role if row is not None else None
    if role != "admin":
        raise PermissionDenied(f"only admins may {action}")
