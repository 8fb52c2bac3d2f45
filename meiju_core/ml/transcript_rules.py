"""Punctuation rules for transcripts: which flags a text has, and what a rule makes of it.

A *rule* applies the suggestions of some flag codes of ``meiju_core.ml.text.flags`` (for example
every ``space_as_punct``: a space between two Chinese clauses becomes ``，`` or ``？``), or the whole
:func:`meiju_core.ml.text.suggest` fix. Everything here is text in, text out: reading the project's
transcripts and saving a rule's changes over the store is the service
:mod:`meiju_core.services.transcripts`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from meiju_core.ml import text

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
