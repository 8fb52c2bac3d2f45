"""Fit a round's per-class quotas to the candidates the model actually offers.

``pseudo.compute_quotas`` shares a head's budget from the gold train distribution alone. With the
"balanced" strategy the largest gold classes get 0, and a model trained on few labels is
confident mostly on exactly those classes, so a round opened with the defaults can have no card
at all (the demo did). :func:`fit_to_candidates` keeps the gold-based shares where the pool can
fill them and moves the rest of the budget to classes that still have candidates.

Notation: K classes of one head; ``gold``, ``candidates`` and quotas are length-K int vectors in
schema order.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence


def fit_to_candidates(
    quotas: Mapping[str, int],
    *,
    gold: Mapping[str, int],
    candidates: Mapping[str, int],
    budget: int,
    classes: Sequence[str],
) -> dict[str, int]:
    """Quotas no larger than the candidates, with the budget they free given to classes that
    still have candidates.

    Step 1 caps each class at its candidates (pool samples predicted as that class at or above
    the head's threshold): a quota the pool cannot fill yields no card. Step 2 hands the labels
    the caps freed (``sum(quotas) - sum(capped)``; the whole ``budget`` when the gold-based
    quotas are all 0, e.g. a balanced gold set) out one label at a time to the class whose
    gold + quota is lowest among those with candidates left (ties: lower class index), the
    water-filling rule of the balanced strategy, so the classes stay as level as the candidates
    allow. The total never exceeds ``budget``.

    Args:
        quotas: class -> quota from the gold distribution (``pseudo.compute_quotas``).
        gold: class -> gold train labels (absent: 0).
        candidates: class -> candidates in the pool (absent: 0).
        budget: the head's budget (most pseudo-labels the round may accept for it).
        classes: the head's classes in schema order; the result is keyed and ordered by them.
    Returns:
        class -> quota (>= 0), in ``classes`` order.
    Raises:
        ValueError: a negative budget.
    """
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    cand = {c: max(0, int(candidates.get(c, 0))) for c in classes}
    out = {c: min(max(0, int(quotas.get(c, 0))), cand[c]) for c in classes}
    asked = sum(max(0, int(quotas.get(c, 0))) for c in classes)
    left = min(int(budget), asked if asked > 0 else int(budget)) - sum(out.values())
    heap = [(int(gold.get(c, 0)) + out[c], k, c) for k, c in enumerate(classes) if out[c] < cand[c]]
    heapq.heapify(heap)
    while left > 0 and heap:
        level, k, c = heapq.heappop(heap)
        out[c] += 1
        left -= 1
        if out[c] < cand[c]:
            heapq.heappush(heap, (level + 1, k, c))
    return out
