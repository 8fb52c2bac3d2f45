"""Punctuation rules over a project's transcripts, in two steps, so a person sees what will
change before anything is written:

1. :func:`preview_rule` reads the transcripts a rule (:mod:`meiju_core.transcript_rules`) changes
   and returns each one's before and after text with the version it was read at;
2. :func:`apply_changes` saves each through ``pipeline.save_transcript``, which checks that
   version: a transcript someone saved in between is skipped and reported, never overwritten.
   Every save is recorded as a ``transcript_edit`` with its kind, editor and time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from db import Store, views
from meiju_core import pipeline
from meiju_core.errors import MeijuError, StaleEdit
from meiju_core.transcript_rules import Rule, apply_rule

__all__ = ["BulkResult", "Change", "apply_changes", "preview_rule"]


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
    """Save each change through ``pipeline.save_transcript`` against the version it was read at.

    A transcript saved by someone else since the preview is skipped (``stale``); HTML or another
    refused text goes to ``failed``. ``progress(done, total)`` is called after each one.
    """
    result = BulkResult()
    for k, c in enumerate(changes, 1):
        try:
            version = pipeline.save_transcript(
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
