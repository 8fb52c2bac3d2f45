"""Decisions on pseudo-labels: accept, correct or reject one card (:func:`decide`), undo,
accept a filtered set in bulk under the quotas (:func:`bulk_preview`, :func:`bulk_accept`) and the
automatic rule that accepts without a reviewer (:func:`auto_pseudo_label`, the paper's selection).
"""

from __future__ import annotations

from typing import Any, Literal, cast

import numpy as np
from sqlalchemy import select

from db import Store, rows
from db import queries as q
from db import thresholds as thr
from db.models import ModelVersion, Prediction, Project, PseudoLabel, ReviewRound, Sample
from meiju_core.errors import BelowThreshold, CardTaken, InputError, QuotaExceeded, StoreError
from meiju_core.schema import LabelSchema
from meiju_core.services import projects, users
from meiju_core.services.projects import Progress, no_progress


def decide(
    store: Store,
    *,
    round_id: int,
    sample_id: int,
    action: str,
    user: dict[str, Any] | None,
    labels: dict[str, str] | None = None,
    heads: list[str] | None = None,
    ms_spent: int | None = None,
    model_version_id: int | None = None,
    confirm_below_threshold: bool = False,
    admin_override: bool = False,
) -> list[int]:
    """Commit one review decision (accept / reject / skip) with its quota check in the same
    transaction; returns the decision ids.

    ``labels`` overrides the predicted class per head; ``heads`` defaults to the card's heads
    still undecided; ``model_version_id`` names the model whose predictions were shown (default:
    the round's). Accepting a predicted class under the round's threshold needs
    ``confirm_below_threshold`` (the decision is then marked ``below_threshold``). A card is
    decided once: ``admin_override`` (admins only, logged) replaces another user's decision.

    Raises:
        QuotaExceeded: the class quota is full (nothing written).
        CardTaken: the card (or the head asked for) was decided since it was shown, or another
            annotator holds it.
        BelowThreshold: an unconfirmed accept under the threshold.
        PermissionDenied: ``admin_override`` by a user who is not an admin in the store.
        StoreError: a closed round, an unknown action or no prediction to accept.
    """
    if admin_override:
        users.require_admin(user, "replace another user's decision", store=store)
    try:
        with store.write() as s:
            ds = q.decide(
                s,
                round_id=round_id,
                sample_id=sample_id,
                action=action,
                user_id=(user or {}).get("id"),
                labels=labels,
                heads=heads,
                ms_spent=ms_spent,
                model_version_id=model_version_id,
                check_threshold=True,
                confirmed_below=confirm_below_threshold,
                admin_override=admin_override,
            )
            return [d.id for d in ds]
    except q.QuotaFull as e:
        raise QuotaExceeded(e.head, e.label, e.quota, e.accepted) from e
    except q.AlreadyDecided as e:
        raise CardTaken(str(e), by=e.by, decided=True) from e
    except q.CardLeased as e:
        raise CardTaken(str(e), by=e.by, decided=False) from e
    except q.BelowThreshold as e:
        raise BelowThreshold(e.head, e.label, e.confidence, e.threshold) from e
    except q.QueueError as e:
        raise StoreError(str(e)) from e


def undo(
    store: Store, *, round_id: int, user: dict[str, Any] | None, decision_id: int | None = None
) -> int | None:
    """Compensate the user's latest decision (or ``decision_id``); returns its sample id."""
    with store.write() as s:
        return q.undo(s, round_id=round_id, user_id=(user or {}).get("id"), decision_id=decision_id)


def lease(store: Store, *, round_id: int, sample_id: int, user_id: int, seconds: int) -> bool:
    """Reserve the card ``sample_id`` of the round for ``user_id`` for ``seconds`` (one short
    write). False, changing nothing, when another annotator holds it or every head of it is
    decided (:func:`db.queries.lease`).

    Raises:
        StoreError: ``seconds`` under 1 or a closed round.
    """
    try:
        with store.write() as s:
            return q.lease(
                s, round_id=round_id, sample_id=sample_id, user_id=user_id, seconds=seconds
            )
    except q.QueueError as e:
        raise StoreError(str(e)) from e


def auto_pseudo_label(
    store: Store,
    *,
    round_id: int,
    user: dict[str, Any] | None = None,
    progress: Progress = no_progress,
    rule: str = "joint",
    confidence: str = "raw",
) -> dict[str, int]:
    """The paper's automatic mode (§II.B): accept the pool's most confident predictions at or
    above the round's thresholds within the remaining per-class quotas, through the same
    quota-checked decisions the review app makes. Returns {head: accepted}.

    Args:
        rule: ``"joint"``: a sample is accepted with both of its labels when every head passes
            (settings ``pseudo_rule``); ``"per_head"``: each head on its own
            (:func:`meiju_core.ml.pseudo.select_joint`).
        confidence: ``"raw"``: the model's softmax confidence, as the paper (stored calibrated
            probabilities are turned back with the version's temperature); ``"calibrated"``: the
            stored temperature-scaled ones (ours, reported as its own row, never the default).
    Raises:
        InputError: an unknown rule or confidence.
    """
    from meiju_core.ml.pseudo import apply_temperature, select_joint

    if rule not in ("joint", "per_head") or confidence not in ("raw", "calibrated"):
        raise InputError(
            f"rule must be joint or per_head and confidence raw or calibrated, got {rule!r}, "
            f"{confidence!r}",
            field="pseudo_rule",
        )
    with store.read() as s:
        rnd = rows.get(s, ReviewRound, round_id)
        schema = projects.schema_of(store, rnd.project_id)
        temperatures = (rows.get(s, ModelVersion, rnd.model_version_id).config or {}).get(
            "temperature"
        ) or {}
        preds = s.execute(
            select(Prediction.sample_id, Prediction.head, Prediction.probs)
            .join(Sample, Sample.id == Prediction.sample_id)
            .where(Prediction.model_version_id == rnd.model_version_id, Sample.split == "pool")
        ).all()
        done = {
            (p.sample_id, p.head)
            for p in s.scalars(select(PseudoLabel).where(PseudoLabel.round_id == round_id))
        }
        accepted = q.accepted_counts(s, round_id=round_id)
        thresholds, quotas = dict(rnd.thresholds), dict(rnd.quotas)
    heads = schema.head_names
    by_sample: dict[int, dict[str, list[float]]] = {}
    for sid, head, probs in preds:
        by_sample.setdefault(sid, {})[head] = probs
    sample_ids = sorted(sid for sid, d in by_sample.items() if all(h in d for h in heads))
    out = dict.fromkeys(heads, 0)
    if not sample_ids:
        return out
    probs_by_head, eligible = {}, {}
    for head in heads:
        p = np.array([by_sample[sid][head] for sid in sample_ids], dtype=np.float64)
        p /= p.sum(axis=1, keepdims=True)
        if confidence == "raw" and temperatures.get(head):
            # calibrated = softmax(log p / T), so raw = softmax(T log calibrated)
            p = apply_temperature(p, 1.0 / float(temperatures[head]), kind="probs")
        probs_by_head[head] = p
        eligible[head] = np.array([(sid, head) not in done for sid in sample_ids])
    picked = select_joint(
        probs_by_head,
        classes={h: schema.classes(h) for h in heads},
        thresholds={h: _threshold_arg(thresholds[h]) for h in heads},
        quotas={
            h: np.array([quotas.get(h, {}).get(c, 0) for c in schema.classes(h)], dtype=np.int64)
            for h in heads
        },
        already_accepted={
            h: np.array([accepted.get(h, {}).get(c, 0) for c in schema.classes(h)], dtype=np.int64)
            for h in heads
        },
        eligible=eligible,
        rule=cast(Literal["per_head", "joint"], rule),  # checked at the top
    )
    decisions: dict[int, list[str]] = {}
    for head in heads:
        for i in picked[head]:
            decisions.setdefault(sample_ids[i], []).append(head)
    with store.write() as s:
        for sid, hs in decisions.items():
            q.decide(
                s,
                round_id=round_id,
                sample_id=sid,
                action="accept",
                user_id=(user or {}).get("id"),
                heads=hs,
            )
    for head in heads:
        out[head] = len(picked[head])
        progress({"message": f"{head}: {out[head]} pseudo-labels accepted ({rule}, {confidence})"})
    return out


def _threshold_arg(value: Any) -> float | dict[str, float]:
    """A round's threshold entry as ``pseudo.select`` takes it: (0, 1] (a threshold of 0 keeps
    every row, as 1e-9 does), per class when the entry is per class."""
    if thr.is_per_class(value):
        return {c: min(1.0, max(float(t), 1e-9)) for c, t in value.items()}
    return min(1.0, max(float(value), 1e-9))


def bulk_preview(
    store: Store,
    *,
    round_id: int,
    flt: q.QueueFilter | None = None,
    user: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What bulk accept would take from the filtered queue: per head, ``pseudo.select`` (the rule
    of automatic mode) on the filtered open cards' probabilities, with the round's threshold and
    the quotas that remain.

    Returns:
        ``{"items": [(sample id, head, class, confidence)], most confident first per head;
        "counts": {head: {class: n}}; "candidates": {head: n}; "remaining": {head: {class: n}}}``.
    """
    from meiju_core.ml.pseudo import select as select_rows

    flt = flt or q.QueueFilter()
    with store.read() as s:
        rnd = rows.get(s, ReviewRound, round_id)
        schema = LabelSchema.from_dict(rows.get(s, Project, rnd.project_id).label_schema)
        cands = q.filtered_candidates(s, round_id=round_id, flt=flt, user_id=(user or {}).get("id"))
        accepted = q.accepted_counts(s, round_id=round_id)
        thresholds, quotas = dict(rnd.thresholds), dict(rnd.quotas)
    out: dict[str, Any] = {"items": [], "counts": {}, "candidates": {}, "remaining": {}}
    for head, head_rows in cands.items():
        classes = schema.classes(head)
        quota = np.array([quotas.get(head, {}).get(c, 0) for c in classes], dtype=np.int64)
        already = np.array([accepted.get(head, {}).get(c, 0) for c in classes], dtype=np.int64)
        out["candidates"][head] = len(head_rows)
        out["remaining"][head] = {
            c: int(max(0, n - a)) for c, n, a in zip(classes, quota, already, strict=True)
        }
        counts = dict.fromkeys(classes, 0)
        if head_rows:
            probs = np.array([r[1] for r in head_rows], dtype=np.float64)
            probs /= probs.sum(axis=1, keepdims=True)
            idx = select_rows(
                probs,
                threshold=_threshold_arg(thresholds[head]),
                quotas=quota,
                classes=classes,
                already_accepted=already,
            )
            for i in idx:
                k = int(probs[i].argmax())
                out["items"].append((head_rows[i][0], head, classes[k], float(probs[i, k])))
                counts[classes[k]] += 1
        out["counts"][head] = counts
    return out


def bulk_accept(
    store: Store,
    *,
    round_id: int,
    items: list[tuple[int, str, str]] | list[tuple[int, str, str, float]],
    user: dict[str, Any] | None,
    model_version_id: int | None = None,
) -> q.BulkResult:
    """Accept a previewed set (admins only, the role read from the store) in one transaction
    that re-checks every quota (``db.queries.bulk_accept``). Items that would pass a quota, were
    decided since the preview, or whose card another annotator holds are skipped and counted in
    the result (``leased`` names those cards). Undo takes the whole bulk back as one unit.

    Raises:
        PermissionDenied: not an admin.
        StoreError: a closed round.
    """
    users.require_admin(user, "bulk accept pseudo-labels", store=store)
    try:
        with store.write() as s:
            return q.bulk_accept(
                s,
                round_id=round_id,
                items=[(it[0], it[1], it[2]) for it in items],
                user_id=(user or {}).get("id"),
                model_version_id=model_version_id,
            )
    except q.QueueError as e:
        raise StoreError(str(e)) from e
