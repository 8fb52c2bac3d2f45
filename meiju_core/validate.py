"""Checks for values that come from outside: ids, transcripts, thresholds, ids in URLs.

Every importer, the transcript editor, the CLI and the pages call these, so one rule holds
everywhere. Each ``*_problem`` function returns a sentence for a person (or None when the value is
fine); the caller adds the file, row and field (``meiju_core.errors.InputError``).
"""

from __future__ import annotations

import math
import unicodedata

from meiju_core.ml.text import has_html

MAX_ID_CHARS = 200
MAX_DB_INT = 2**63 - 1
# Unicode format characters that reorder or hide text: bidi overrides and isolates (U+202A-202E,
# U+2066-2069), marks, zero-width characters and the BOM.
_HIDDEN = {chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F)}
_HIDDEN |= {"\u200b", "\u200c", "\u200d", "\u2060", "\ufeff"}
_CONTROL_NAMES = {"\x00": "NUL", "\n": "a line break", "\r": "a carriage return", "\t": "a tab"}


def _bad_char(value: str, *, allow_tab: bool = False) -> str | None:
    for ch in value:
        if ch == "\t" and allow_tab:
            continue
        if unicodedata.category(ch) == "Cc" or ch in _HIDDEN or ch in "\u2028\u2029":
            name = unicodedata.name(ch, "") or _CONTROL_NAMES.get(ch, "a control character")
            return f"U+{ord(ch):04X} ({name})"
    return None


def id_problem(value: str) -> str | None:
    """Why ``value`` cannot be an utterance id (None if it can): empty, longer than
    ``MAX_ID_CHARS``, a control or invisible character (NUL, U+202E ...), or path-like (``/``,
    ``\\``, ``..``, a leading ``.`` or ``~``), which would break feature and media paths."""
    if not value:
        return "empty id"
    if len(value) > MAX_ID_CHARS:
        return f"the id is {len(value)} characters long; at most {MAX_ID_CHARS}"
    bad = _bad_char(value)
    if bad:
        return f"the id contains {bad}"
    if "/" in value or "\\" in value or ".." in value or value[0] in ".~":
        return f"the id {value!r} looks like a path ('/', '\\\\', '..', or a leading '.' or '~')"
    return None


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be a transcript (None if it can): a control or invisible character
    (NUL, a line break, U+202E ...) or HTML markup (read by ``html.parser``)."""
    bad = _bad_char(value)
    if bad:
        return f"the transcript contains {bad}"
    if has_html(value):
        return "the transcript contains HTML (a tag or an entity); remove it"
    return None


def unit_interval_problem(value: object) -> str | None:
    """Why ``value`` is not a number in [0, 1] (NaN and infinities included)."""
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return f"{value!r} is not a number"
    if math.isnan(v) or not 0.0 <= v <= 1.0:
        return f"{value!r} is outside [0, 1]"
    return None


def db_ids(raw: str, *, limit: int = 10_000) -> tuple[int, ...]:
    """Row ids from a comma-separated URL value, in order, without duplicates. Only plain ASCII
    digits that fit a database integer count (``²``, ``１``, ``-3``, ``1e3`` and
    ``99999999999999999999999`` are dropped); at most ``limit`` ids."""
    out: dict[int, None] = {}
    for part in str(raw).split(","):
        part = part.strip()
        if part.isascii() and part.isdigit() and 0 < int(part) <= MAX_DB_INT:
            out[int(part)] = None
            if len(out) >= limit:
                break
    return tuple(out)


def db_id(raw: object) -> int | None:
    """One row id from a URL value, or None (see :func:`db_ids`)."""
    ids = db_ids(str(raw or ""), limit=1)
    return ids[0] if ids and "," not in str(raw) else None
