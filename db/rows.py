"""Typed fetch of one row by primary key, for code that needs the row to exist.

``Session.get`` returns ``Model | None``; where a missing row is a broken invariant (an id read from
another row, or passed by the caller), use :func:`get` instead: it returns the row, typed as the
model, or raises :class:`meiju_core.errors.StoreError` naming the table and the key
("model version 7 does not exist"). Where a missing row is an ordinary case, keep ``s.get`` and
handle ``None``.
"""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy.orm import Session

from db.models import Base
from meiju_core.errors import StoreError

T = TypeVar("T", bound=Base)


def get(s: Session, model: type[T], key: Any) -> T:
    """The row of ``model`` with primary key ``key``; ``StoreError`` when there is none."""
    row = s.get(model, key)
    if row is None:
        table = str(model.__tablename__).replace("_", " ")
        raise StoreError(f"{table} {key} does not exist")
    return row
