"""Punctuation rules over a project's transcripts, in two steps, so a person sees what will
change before anything is written:

1. :func:`preview_rule` reads the transcripts a rule (:mod:`meiju_core.ml.transcript_rules`) changes
   and returns each one's before and after text with the version it was read at;
2. :func:`apply_changes` saves each through ``save_transcript``, which checks that
   version: a transcript someone saved in between is skipped and reported, never overwritten.
   Every save is recorded as a ``transcript_edit`` with its kind, editor and time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from db import Store, views
from db import queries as q
from db.models import Transcript, TranscriptEdit, utcnow
from meiju_core.errors import InputError, MeijuError, StaleEdit
from meiju_core.ml.transcript_rules import Rule, apply_rule

__all__ = ["BulkResult", "Change", "apply_changes", "preview_rule", "save_transcript"]


@dataclass(frozen=True)
class Change:
    """One transcript a rule changes, read at ``version``."""

    sample_id: int
    utt_id: str
    version: int
    before: str
    after: str


@dataclass
class BulkResult:
    saved: int = 0
    unchanged: int = 0
    stale: list[str] = field(default_factory=list)  # utterance ids someone saved in between
    failed: list[tuple[str, str]] = field(default_factory=list)  # (utterance id, why)


def preview_rule(
    store: Store, *, project_id: int, rule: Rule, sample_ids: Iterable[int] | None = None
) -> list[Change]:
    """Every transcript of the project (or of ``sample_ids``) that ``rule`` changes, by
    utterance id, with its text before and after and the version it was read at."""
    wanted = None if sample_ids is None else set(sample_ids)
    out = []
    with store.read() as s:
        rows = views.transcript_rows(s, project_id=project_id)
    for sid, utt, _source, version, before in rows:
        if wanted is not None and sid not in wanted:
            continue
        after = apply_rule(before or "", rule)
        if after != (before or ""):
            out.append(Change(sid, utt, version, before or "", after))
    return sorted(out, key=lambda c: c.utt_id)


def apply_changes(
    store: Store,
    changes: Sequence[Change],
    *,
    user: dict[str, Any] | None,
    progress: Callable[[int, int], Any] | None = None,
) -> BulkResult:
    """Save each change through ``save_transcript`` against the version it was read at.

    A transcript saved by someone else since the preview is skipped (``stale``); HTML or another
    refused text goes to ``failed``. ``progress(done, total)`` is called after each one.
    """
    result = BulkResult()
    for k, c in enumerate(changes, 1):
        try:
            version = save_transcript(
                store,
                sample_id=c.sample_id,
                text=c.after,
                expected_version=c.version,
                user=user,
            )
        except StaleEdit:
            result.stale.append(c.utt_id)
        except MeijuError as e:
            result.failed.append((c.utt_id, str(e)))
        else:
            if version == c.version:
                result.unchanged += 1
            else:
                result.saved += 1
        if progress is not None:
            progress(k, len(changes))
    return result


def save_transcript(
    store: Store, *, sample_id: int, text: str, expected_version: int, user: dict[str, Any] | None
) -> int:
    """Save a transcript edit if nobody saved since ``expected_version``; records the edit with
    its kind (punctuation-only or lexical), editor and time. Returns the new version.
    Raises StaleEdit when the stored version moved on, InputError on HTML or a control or
    invisible character (NUL, a line break, U+202E)."""
    from meiju_core.ml.text import has_html, is_punctuation_only_change
    from meiju_core.validate import text_problem

    if has_html(text):
        raise InputError("transcripts are plain text; remove the HTML markup", field="text")
    problem = text_problem(text)
    if problem:
        raise InputError(problem, field="text")
    with store.write() as s:
        tr = s.scalars(select(Transcript).where(Transcript.sample_id == sample_id)).one()
        if tr.version != expected_version:
            raise StaleEdit(
                f"transcript of sample {sample_id} was saved by someone else "
                f"(version {tr.version}, you edited {expected_version}); reload"
            )
        if tr.text == text:
            return tr.version
        kind = "punctuation" if is_punctuation_only_change(tr.text, text) else "lexical"
        s.add(
            TranscriptEdit(
                transcript_id=tr.id,
                before=tr.text,
                after=text,
                kind=kind,
                editor_id=(user or {}).get("id"),
            )
        )
        tr.text, tr.updated_at, tr.updated_by = text, utcnow(), (user or {}).get("id")
        if tr.source != "manual" and kind == "lexical":
            tr.source = "manual"
        s.flush()
        q.audit(
            s,
            user_id=(user or {}).get("id"),
            action="edit_transcript",
            entity="transcript",
            entity_id=tr.id,
            payload={"kind": kind},
        )
        return tr.version
