"""Punctuation fixes for the Transcripts page: one flag at a time, or one rule over the project.

A *rule* applies the suggestions of some flag codes of ``meiju_core.text.flags`` (for example
every ``space_as_punct``: a space between two Chinese clauses becomes ``，`` or ``？``), or the whole
:func:`meiju_core.text.suggest` fix. Bulk application is two steps, so a person sees what will
change before anything is written:

1. :func:`preview_rule` reads the transcripts the rule changes and returns each one's before and
   after text with the version it was read at;
2. :func:`apply_changes` saves each through ``pipeline.save_transcript``, which checks that
   version: a transcript someone saved in between is skipped and reported, never overwritten.
   Every save is recorded as a ``transcript_edit`` with its kind, editor and time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, or_, select

from db import Store
from db.models import Sample, Transcript, TranscriptEdit
from meiju_core import pipeline, text
from meiju_core.errors import MeijuError, StaleEdit

ASR_CODE = "asr_source"  # not a punctuation flag: the words came from speech recognition


@dataclass(frozen=True)
class Rule:
    """A bulk fix: the suggestions of ``codes`` (None: the full ``text.suggest`` fix)."""

    name: str
    label: str
    codes: tuple[str, ...] | None


RULES: dict[str, Rule] = {
    r.name: r
    for r in (
        Rule("space_as_punct", "Spaces between Chinese clauses → ，/？", ("space_as_punct",)),
        Rule("no_final_mark", "Add a final 。/？", ("no_final_mark",)),
        Rule("halfwidth_punct", "Half-width , . ? ! : ; → full-width", ("halfwidth_punct",)),
        Rule("doubled_punct", "Doubled marks (。。 ，，) → one", ("doubled_punct",)),
        Rule("question_no_mark", "？ after questions", ("question_no_mark",)),
        Rule("all", "Every suggestion (the full fix)", None),
    )
}

FLAG_LABELS = {
    "space_as_punct": "space as a clause break",
    "no_final_mark": "no final mark",
    "halfwidth_punct": "half-width mark",
    "doubled_punct": "doubled mark",
    "question_no_mark": "question without ？",
    ASR_CODE: "ASR transcript",
}

# How likely fixing a flag changes a label, highest first. Text features see punctuation, and
# the intent head leans on it: a question with no ？ hides "questioning"; a space used as a
# clause break merges two clauses (and their intent); ASR words can be wrong outright; a doubled
# mark (！！, ？？) carries emphasis; a half-width mark and a missing final 。 barely move a
# prediction (and nearly every CPED line ends without one, so they would rank everything).
FLAG_IMPACT: dict[str, int] = {
    "question_no_mark": 5,
    "space_as_punct": 4,
    ASR_CODE: 3,
    "doubled_punct": 2,
    "halfwidth_punct": 1,
    "no_final_mark": 0,
}


def impact(codes: Sequence[str]) -> int:
    """How likely a transcript's flags change its labels: the highest :data:`FLAG_IMPACT` of its
    codes (-1 without a flag)."""
    return max((FLAG_IMPACT.get(c, 1) for c in codes), default=-1)


def flag_shares(codes: Iterable[Sequence[str]]) -> list[tuple[str, int, float]]:
    """``(code, transcripts flagged, share of all transcripts)`` per flag kind, most likely to
    change a label first."""
    rows = list(codes)
    counts: dict[str, int] = dict.fromkeys(FLAG_IMPACT, 0)
    for cs in rows:
        for c in set(cs):
            counts[c] = counts.get(c, 0) + 1
    n = max(1, len(rows))
    order = sorted(counts, key=lambda c: -FLAG_IMPACT.get(c, 1))
    return [(c, counts[c], counts[c] / n) for c in order]


# --------------------------------------------------------------------------- text


def unique_flags(t: str) -> list[text.Flag]:
    """``text.flags(t)`` with one flag per span (flags on one span share their suggestion)."""
    seen: dict[tuple[int, int], text.Flag] = {}
    for f in text.flags(t):
        seen.setdefault(f.span, f)
    return list(seen.values())


def apply_flags(t: str, flags: Iterable[text.Flag]) -> str:
    """Put each flag's suggestion in its span, right to left (spans come from ``t``)."""
    by_span = {f.span: f.suggestion for f in flags}
    for (start, end), repl in sorted(by_span.items(), reverse=True):
        t = t[:start] + repl + t[end:]
    return t


def apply_rule(t: str, rule: Rule) -> str:
    """``t`` with the rule applied (unchanged when the rule has nothing to fix)."""
    if rule.codes is None:
        return text.suggest(t)
    return apply_flags(t, [f for f in text.flags(t) if f.code in rule.codes])


def flag_codes(t: str, *, source: str = "official") -> tuple[str, ...]:
    """Sorted distinct flag codes of a transcript, plus ``asr_source`` for ASR text."""
    codes = {f.code for f in text.flags(t or "")}
    if source == "asr":
        codes.add(ASR_CODE)
    return tuple(sorted(codes))


def rule_matches(codes: Sequence[str], rule: Rule) -> bool:
    """Whether a transcript with these flag codes is changed by ``rule``."""
    punct = [c for c in codes if c != ASR_CODE]
    return bool(punct) if rule.codes is None else any(c in rule.codes for c in punct)


# --------------------------------------------------------------------------- store reads


def transcript_rows(store: Store, *, project_id: int) -> list[tuple[int, str, str, int, str]]:
    """``(sample id, utterance id, source, version, text)`` of every transcript of a project."""
    with store.read() as s:
        return [
            tuple(r)
            for r in s.execute(
                select(
                    Sample.id, Sample.utt_id, Transcript.source, Transcript.version, Transcript.text
                )
                .join(Transcript, Transcript.sample_id == Sample.id)
                .where(Sample.project_id == project_id)
            )
        ]


def transcripts_stamp(store: Store) -> tuple[int, int, int]:
    """Changes whenever a transcript is added or saved (in any project): (transcripts, highest
    transcript id, highest edit id). Every save writes a ``transcript_edit`` row and imports
    only insert, so this catches both; cheap enough (no join, primary keys) to key a cache on."""
    with store.read() as s:
        n, top = s.execute(select(func.count(), func.max(Transcript.id))).one()
        edit = s.scalar(select(func.max(TranscriptEdit.id)))
    return int(n or 0), int(top or 0), int(edit or 0)


def matching_ids(store: Store, *, project_id: int, needle: str) -> set[int]:
    """Sample ids whose utterance id or transcript contains ``needle``."""
    like = f"%{needle}%"
    with store.read() as s:
        return set(
            s.scalars(
                select(Sample.id)
                .join(Transcript, Transcript.sample_id == Sample.id)
                .where(
                    Sample.project_id == project_id,
                    or_(Transcript.text.like(like), Sample.utt_id.like(like)),
                )
            )
        )


# --------------------------------------------------------------------------- bulk


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
    for sid, utt, _source, version, before in transcript_rows(store, project_id=project_id):
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
