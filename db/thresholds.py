"""A round's confidence thresholds: one per head, or one per head and predicted class.

``review_round.thresholds`` is JSON with one entry per head of the round; each entry is either

- a number: the threshold of every class of that head (``{"emotion": 0.9, "intent": 0.8}``), or
- a mapping ``{class: number}``: a threshold per predicted class (``{"emotion": {"happy": 0.97,
  "neutral": 0.99, ...}}``), as taken from review evidence (``rounds.thresholds_from_evidence``).
  A class absent from the mapping takes the ``"*"`` entry when there is one, else no prediction
  of that class reaches the threshold (it is never offered).

A prediction of class ``c`` qualifies for a head when its confidence is ``>=`` the class's
threshold. The head's *floor* is its lowest threshold: an index range scan starts there and the
per-class condition is tested on the rows it reads. Plain functions, no database access.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

DEFAULT_KEY = "*"
NEVER = 1.0 + 1e-9  # above every confidence: a class without a threshold is never offered


def is_per_class(value: Any) -> bool:
    """Whether a head's threshold entry is a per-class mapping (else one number)."""
    return isinstance(value, Mapping)


def threshold_for(value: Any, label: str) -> float:
    """The threshold a prediction of class ``label`` must reach under one head's entry.

    Args:
        value: a number, or a ``{class: number}`` mapping (``"*"``: every other class).
        label: the predicted class name.
    Returns:
        The threshold, a float in [0, 1]; ``NEVER`` (just above 1) for a class a mapping names
        neither directly nor through ``"*"``.
    """
    if is_per_class(value):
        if label in value:
            return float(value[label])
        return float(value[DEFAULT_KEY]) if DEFAULT_KEY in value else NEVER
    return float(value)


def floor(value: Any) -> float:
    """The lowest threshold of one head's entry (the number itself, or the mapping's minimum;
    ``NEVER`` for an empty mapping)."""
    if is_per_class(value):
        return min((float(v) for v in value.values()), default=NEVER)
    return float(value)


def class_map(value: Any, classes: list[str] | tuple[str, ...]) -> dict[str, float]:
    """``{class: threshold}`` for every class of the head, in ``classes`` order."""
    return {c: threshold_for(value, c) for c in classes}


def uniform(value: Any) -> float | None:
    """The single threshold of an entry that has one (a number, or a mapping whose every
    threshold is equal and that has no class left out: it names ``"*"``); else None."""
    if not is_per_class(value):
        return float(value)
    values = {float(v) for v in value.values()}
    if len(values) == 1 and DEFAULT_KEY in value:
        return values.pop()
    return None


def key(thresholds: Mapping[str, Any]) -> tuple:
    """A hashable, order-free form of a round's thresholds (for caches of built statements)."""
    out: list[tuple[str, Any]] = []
    for head, value in sorted(thresholds.items()):
        if is_per_class(value):
            out.append((head, tuple(sorted((str(c), float(t)) for c, t in value.items()))))
        else:
            out.append((head, float(value)))
    return tuple(out)


def describe(value: Any, *, digits: int = 2) -> str:
    """One head's entry in words: ``≥ 0.90``, or ``per class 0.85–0.99`` for a mapping."""
    if not is_per_class(value):
        return f"≥ {float(value):.{digits}f}"
    one = uniform(value)
    if one is not None:
        return f"≥ {one:.{digits}f}"
    values = [float(v) for v in value.values()]
    if not values:
        return "no class"
    return f"per class {min(values):.{digits}f}–{max(values):.{digits}f}"
