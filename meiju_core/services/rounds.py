"""Review rounds: what a round would offer (:func:`round_plan`: candidates, thresholds, quotas),
opening one (:func:`open_round`), thresholds from a finished round's evidence, and why a queue is
empty. The per-card decisions live in :mod:`meiju_core.services.decisions`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from sqlalchemy import func, select

from db import Store, rows
from db import queries as q
from db import thresholds as thr
from db.models import Prediction, ReviewLease, ReviewRound, Sample, utcnow
from meiju_core.errors import InputError
from meiju_core.services import projects, users
from meiju_core.settings import Settings

if TYPE_CHECKING:
    from meiju_core.ml.pseudo import Strategy


def check_head_thresholds(value: Any, *, head: str, classes: Sequence[str]) -> float | dict:
    """One head's threshold entry, checked and normalised (:mod:`db.thresholds`): a number in
    [0, 1] stays a number; a ``{class: number}`` mapping (``"*"`` for the classes not named)
    becomes a mapping that names every class of ``classes``, in that order, or one number when
    they are all equal.

    Raises:
        InputError: a value outside [0, 1], NaN or not a number (field ``threshold <head>
            <class>``), an unknown class, or a class left without threshold.
    """
    from meiju_core.validate import unit_interval_problem

    if not isinstance(value, dict):
        problem = unit_interval_problem(value)
        if problem:  # also refuses NaN, infinities and words
            raise InputError(f"threshold {problem}", field=f"threshold {head}")
        return float(value)
    unknown = [c for c in value if c != thr.DEFAULT_KEY and c not in classes]
    if unknown:
        raise InputError(
            f"{head} thresholds name unknown class(es) {unknown}; classes are {classes}",
            field=f"threshold {head}",
        )
    for c, v in value.items():
        problem = unit_interval_problem(v)
        if problem:
            raise InputError(f"threshold {problem}", field=f"threshold {head} {c}")
    missing = [c for c in classes if c not in value and thr.DEFAULT_KEY not in value]
    if missing:
        raise InputError(
            f"{head} thresholds give no threshold for {missing} (name them or give '*')",
            field=f"threshold {head}",
        )
    full = {c: thr.threshold_for(value, c) for c in classes}
    return next(iter(full.values())) if len(set(full.values())) == 1 else full


def round_plan(
    store: Store,
    settings: Settings,
    *,
    project_id: int,
    model_version_id: int,
    thresholds: dict[str, Any] | float | None = None,
    strategy: str | None = None,
    budget: int | None = None,
    explicit: dict[str, dict[str, int]] | None = None,
) -> dict[str, Any]:
    """What a round would offer before it opens: per head and class the gold train labels, the
    threshold, the candidates (pool samples predicted as the class at or above its threshold),
    the quota and the cards the queue gets (``min(quota, candidates)``).

    Thresholds are one number for every head, ``{head: float}``, or per class ``{head: {class:
    float}}`` (``"*"`` for the classes not named; :mod:`db.thresholds`), e.g. from
    :func:`thresholds_from_evidence`. A per-class entry is stored with every class named; one
    whose classes all have the same threshold is stored as that number.

    Quotas come from the gold distribution (``pseudo.compute_quotas``) and, except for explicit
    quotas, are then fitted to the candidates (``quota_fit.fit_to_candidates``): the balanced
    strategy gives 0 to the largest gold classes, which are the ones a model trained on few
    labels predicts confidently, so unfitted defaults could open a round with no card.

    Returns:
        ``{"thresholds": {head: t or {class: t}}, "quotas": {head: {class: n}},
        "classes": {head: [{"class", "gold", "threshold", "candidates", "quota", "queue"}]}}``.
    Raises:
        InputError: a threshold outside [0, 1] (the field names the head and class), an unknown
            head or class, a per-class entry that leaves a class without threshold, an unknown
            strategy or a negative budget.
    """
    from meiju_core.ml.pseudo import compute_quotas
    from meiju_core.ml.quota_fit import fit_to_candidates

    schema = projects.schema_of(store, project_id)
    t = settings.threshold if thresholds is None else thresholds
    th: dict[str, Any] = {h: t for h in schema.head_names} if not isinstance(t, dict) else dict(t)
    for head, value in th.items():
        if head not in schema.head_names:
            raise InputError(f"unknown head {head!r}; heads are {schema.head_names}", field=head)
        th[head] = check_head_thresholds(value, head=head, classes=schema.classes(head))
    strategy = strategy or settings.quota_strategy
    budget = settings.quota_budget if budget is None else budget
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
        raise InputError(f"budget {budget!r} must be a whole number >= 0", field="budget")
    with store.read() as s:
        gold = q.gold_counts(s, project_id=project_id)
        cands = q.class_candidates(s, model_version_id=model_version_id, thresholds=th)
    quotas: dict[str, dict[str, int]] = {}
    table: dict[str, list[dict[str, Any]]] = {}
    for head in schema.head_names:
        classes = schema.classes(head)
        g = {c: gold.get(head, {}).get(c, 0) for c in classes}
        counts = np.array([g[c] for c in classes], dtype=np.int64)
        try:
            base = compute_quotas(
                counts,
                # compute_quotas refuses an unknown strategy (ValueError -> InputError below)
                strategy=cast("Strategy", strategy),
                budget=budget,
                classes=classes,
                explicit=(explicit or {}).get(head),
            )
        except ValueError as e:
            raise InputError(str(e), field="quotas") from e
        if strategy != "explicit":
            base = fit_to_candidates(
                base, gold=g, candidates=cands.get(head, {}), budget=budget, classes=classes
            )
        quotas[head] = {c: int(n) for c, n in base.items()}
        table[head] = [
            {
                "class": c,
                "gold": g[c],
                "threshold": thr.threshold_for(th[head], c) if head in th else None,
                "candidates": cands.get(head, {}).get(c, 0),
                "quota": quotas[head][c],
                "queue": min(quotas[head][c], cands.get(head, {}).get(c, 0)),
            }
            for c in classes
        ]
    return {"thresholds": th, "quotas": quotas, "classes": table}


def open_round(
    store: Store,
    settings: Settings,
    *,
    project_id: int,
    model_version_id: int,
    thresholds: dict[str, Any] | float | None = None,
    strategy: str | None = None,
    budget: int | None = None,
    explicit: dict[str, dict[str, int]] | None = None,
    user: dict[str, Any] | None = None,
    queue_order: str = "confidence",
) -> int:
    """Open a review round with thresholds per head or per head and class (see
    :func:`round_plan`) and the per-class quotas of :func:`round_plan` (gold distribution
    fitted to the candidates). Returns the round id.

    ``queue_order`` is the order the round serves its cards in: ``confidence`` (most confident
    first, the paper's rule), ``uncertainty`` (least confident first), ``disagreement`` (heads or
    ensemble members disagree first) or ``rarest`` (rarest predicted class first, round robin);
    ``db.queries.queue`` defines each.

    Raises:
        PermissionDenied: ``user`` is given and is not an admin in the store.
        InputError: an unknown ``queue_order``; and see :func:`round_plan`.
    """
    if user is not None:
        users.require_admin(user, "open a review round", store=store)
    if queue_order not in q.QUEUE_ORDERS:
        raise InputError(
            f"queue order {queue_order!r} is not one of {', '.join(q.QUEUE_ORDERS)}",
            field="queue_order",
        )
    plan = round_plan(
        store,
        settings,
        project_id=project_id,
        model_version_id=model_version_id,
        thresholds=thresholds,
        strategy=strategy,
        budget=budget,
        explicit=explicit,
    )
    with store.write() as s:
        rnd = q.open_round(
            s,
            project_id=project_id,
            model_version_id=model_version_id,
            thresholds=plan["thresholds"],
            quotas=plan["quotas"],
            user_id=(user or {}).get("id"),
            queue_order=queue_order,
        )
        return rnd.id


def thresholds_from_evidence(
    store: Store, *, round_id: int, precision: float = 0.95, min_count: int = 20
) -> dict[str, Any]:
    """Per-class thresholds read from a round's human review decisions: for every head and
    predicted class, the lowest confidence at which reviewers accepted at least ``precision`` of
    the pseudo-labels at or above it, over at least ``min_count`` decisions
    (``pseudo.threshold_for_precision`` on ``db.evidence.review_observations``). A class without
    that much evidence keeps the round's own threshold.

    Returns:
        ``{"round_id", "precision", "min_count", "thresholds": {head: {class: float}},
        "rows": [{"head", "class", "reviewed", "accepted", "evidence", "current", "next"}]}``:
        ``evidence`` is the threshold the decisions support (None: not enough), ``current`` the
        round's, ``next`` the one a next round takes (``evidence`` else ``current``).
    Raises:
        InputError: an unknown round, a gold-label round, ``precision`` outside (0, 1] or
            ``min_count`` under 1.
    """
    from db.evidence import review_observations
    from meiju_core.ml.pseudo import threshold_for_precision

    if isinstance(precision, bool) or not isinstance(precision, int | float):
        raise InputError(f"precision {precision!r} is not a number", field="precision")
    if not 0 < float(precision) <= 1:
        raise InputError(f"precision must be in (0, 1], got {precision}", field="precision")
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
        raise InputError(
            f"min_count must be a whole number >= 1, got {min_count!r}", field="min_count"
        )
    with store.read() as s:
        rnd = s.get(ReviewRound, round_id)
        if rnd is None or rnd.kind != "pseudo":
            raise InputError(f"round #{round_id} is not a pseudo-label round", field="round")
        obs = review_observations(s, round_id=round_id)
        current, project_id = dict(rnd.thresholds), rnd.project_id
    schema = projects.schema_of(store, project_id)
    out: dict[str, Any] = {
        "round_id": round_id,
        "precision": float(precision),
        "min_count": min_count,
        "thresholds": {},
        "rows": [],
    }
    for head in schema.head_names:
        if head not in current:
            continue
        per: dict[str, float] = {}
        for cls in schema.classes(head):
            sub = [o for o in obs if o["head"] == head and o["predicted"] == cls]
            conf = np.array([o["confidence"] for o in sub], dtype=np.float64)
            acc = np.array([o["accepted"] for o in sub], dtype=bool)
            t = (
                threshold_for_precision(conf, acc, precision=float(precision), min_count=min_count)
                if sub
                else None
            )
            now = thr.threshold_for(current[head], cls)
            per[cls] = round(t, 6) if t is not None else now
            out["rows"].append(
                {
                    "head": head,
                    "class": cls,
                    "reviewed": len(sub),
                    "accepted": int(acc.sum()),
                    "evidence": t,
                    "current": now,
                    "next": per[cls],
                }
            )
        out["thresholds"][head] = per
    return out


def open_round_from_evidence(
    store: Store,
    settings: Settings,
    *,
    round_id: int,
    precision: float = 0.95,
    min_count: int = 20,
    model_version_id: int | None = None,
    strategy: str | None = None,
    budget: int | None = None,
    user: dict[str, Any] | None,
) -> int:
    """Open the next pseudo-label round with the per-class thresholds that round ``round_id``'s
    review decisions support (:func:`thresholds_from_evidence`), on ``model_version_id`` (default:
    the project's promoted model, else its newest) with quotas as :func:`open_round` makes them.
    Admins only: the role is read from the store. Returns the new round's id.

    Raises:
        PermissionDenied: ``user`` is not an admin in the store (None is refused too).
        InputError: see :func:`thresholds_from_evidence` and :func:`round_plan`; a project with no
            model version.
    """
    users.require_admin(user, "open a review round", store=store)
    ev = thresholds_from_evidence(
        store, round_id=round_id, precision=precision, min_count=min_count
    )
    with store.read() as s:
        project_id = rows.get(s, ReviewRound, round_id).project_id
        if model_version_id is None:
            mv = q.current_model(s, project_id=project_id)
            if mv is None:
                raise InputError("the project has no model version to review", field="model")
            model_version_id = mv.id
    return open_round(
        store,
        settings,
        project_id=project_id,
        model_version_id=model_version_id,
        thresholds=ev["thresholds"],
        strategy=strategy,
        budget=budget,
        user=user,
    )


def empty_queue_reasons(
    store: Store,
    *,
    round_id: int,
    flt: q.QueueFilter | None = None,
    user: dict[str, Any] | None = None,
) -> list[dict[str, str]]:
    """Why the review queue of ``round_id`` (under ``flt``) shows no card, in words a user reads:
    each reason is ``{"reason": what is true, "fix": what can change it}``, most basic first
    (no prediction reaches the threshold; the classes predicted have no quota left; every card
    is decided; cards are held by other annotators; the filter narrows the queue)."""
    flt = flt or q.QueueFilter()
    uid = (user or {}).get("id")
    out: list[dict[str, str]] = []
    with store.read() as s:
        rnd = rows.get(s, ReviewRound, round_id)
        heads = [flt.head] if flt.head else list(rnd.thresholds)
        th = {h: rnd.thresholds[h] for h in heads if h in rnd.thresholds}
        mv_id = flt.model_version_id or rnd.model_version_id
        cands = q.class_candidates(s, model_version_id=mv_id, thresholds=th)
        status = q.quota_status(s, round_id=round_id)
        total = q.candidate_count(s, round_id=round_id, flt=flt)
        open_now = q.queue_size(s, round_id=round_id, flt=flt)
        now = utcnow()
        others = s.scalar(
            select(func.count())
            .select_from(ReviewLease)
            .where(
                ReviewLease.round_id == round_id,
                ReviewLease.expires_at > now,
                ReviewLease.user_id.is_distinct_from(uid),
            )
        )
    above = sum(sum(per.values()) for per in cands.values())
    th_text = ", ".join(f"{h} {thr.describe(t)}" for h, t in th.items())
    if above == 0:
        out.append(
            {
                "reason": f"No pool sample reaches the round's threshold ({th_text}).",
                "fix": "An admin can open a new round with a lower threshold: the open-round "
                "form shows how many cards each threshold gives.",
            }
        )
    else:
        full, n_open_classes = [], 0
        for head, per in cands.items():
            for label, n in sorted(per.items(), key=lambda kv: -kv[1]):
                accepted, quota = status.get(head, {}).get(label, (0, 0))
                if n and accepted >= quota:
                    full.append(f"{head} {label} ({accepted} of {quota})")
                elif n:
                    n_open_classes += 1
        if n_open_classes == 0:
            out.append(
                {
                    "reason": "Every class the model predicts above the threshold has no quota "
                    "left: " + ", ".join(full[:8]) + ("…" if len(full) > 8 else "") + ".",
                    "fix": "An admin can open a new round with a larger budget or other quotas.",
                }
            )
        elif total and not open_now and not others:
            out.append(
                {
                    "reason": f"All {total} cards of this queue are decided.",
                    "fix": "An admin can retrain with the accepted pseudo-labels and open the "
                    "next round.",
                }
            )
    if others:
        out.append(
            {
                "reason": f"{others} cards are being reviewed by other annotators right now.",
                "fix": "They come back if they are left undecided.",
            }
        )
    if flt != q.QueueFilter():
        out.append(
            {
                "reason": "Filters narrow the queue.",
                "fix": "Clear the filters to see the rest of the round.",
            }
        )
    return out


def candidate_counts(
    store: Store, *, model_version_id: int, thresholds: list[float]
) -> dict[str, dict[float, int]]:
    """{head: {threshold: pool samples whose confidence reaches it}} for one model version."""
    with store.read() as s:
        return candidate_counts_session(s, model_version_id, thresholds)


def candidate_counts_session(s, model_version_id: int, thresholds: list[float]):
    """``candidate_counts`` inside an open session; every head of the model version appears, with
    0 where no pool sample reaches a threshold."""
    from sqlalchemy import func

    heads = s.scalars(
        select(Prediction.head).where(Prediction.model_version_id == model_version_id).distinct()
    ).all()
    out: dict[str, dict[float, int]] = {h: dict.fromkeys(thresholds, 0) for h in heads}
    for t in thresholds:
        for head, n in s.execute(
            select(Prediction.head, func.count())
            .join(Sample, Sample.id == Prediction.sample_id)
            .where(
                Prediction.model_version_id == model_version_id,
                Sample.split == "pool",
                Prediction.confidence >= t,
            )
            .group_by(Prediction.head)
        ):
            out[head][t] = n
    return out
