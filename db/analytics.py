"""Read-only figures for the dashboards: pseudo-labels per class, acceptance over time, annotator
throughput, emotion x intent co-occurrence, per-class F1 change between model versions, and the
samples behind one confusion-matrix cell.

Like ``db.queries``, every function takes an open ``Session`` first and the rest by keyword, and
returns plain lists and dicts (no ORM objects), so a page can cache the result with
``st.cache_data``. Nothing here writes. Classes come back in the project's schema order
(``project.label_schema``); a label the schema does not know is appended after them.

A *card* is one review decision on one sample: an accept or reject of both heads writes one
``decision`` row per head with the same ``created_at``, a skip writes one row with head NULL.
Throughput counts cards; acceptance counts head decisions.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, case, func, select
from sqlalchemy.orm import Session, aliased

from db.models import (
    SPLITS,
    Decision,
    GoldLabel,
    ModelVersion,
    Prediction,
    Project,
    PseudoLabel,
    ReviewRound,
    Sample,
    Transcript,
    User,
)
from db.queries import threshold_conditions

BUCKETS = ("hour", "day")
IDLE_GAP_S = 300.0  # a pause longer than this between two cards is a break, not work

__all__ = [
    "BUCKETS",
    "IDLE_GAP_S",
    "acceptance_over_time",
    "annotator_throughput",
    "confusion_cell_samples",
    "cooccurrence_gold",
    "cooccurrence_pseudo",
    "f1_change",
    "f1_change_from_metrics",
    "labelled_samples",
    "project_schema",
    "pseudo_label_classes",
    "rounds",
]


def _utc(t: datetime) -> datetime:
    # SQLite hands back naive datetimes for timezone-aware columns; they were stored as UTC.
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _ordered(known: Iterable[str], seen: Iterable[str]) -> list[str]:
    """The schema's classes in order, then any other label seen (sorted)."""
    known = list(known)
    return known + sorted(set(seen) - set(known))


def project_schema(s: Session, *, project_id: int) -> dict[str, list[str]]:
    """{head: [class, ...]} of a project, in index order."""
    schema = s.scalar(select(Project.label_schema).where(Project.id == project_id)) or {}
    return {str(h): [str(c) for c in cs] for h, cs in schema.items()}


def rounds(s: Session, *, project_id: int, kind: str = "pseudo") -> list[dict[str, Any]]:
    """Every review round of a project of ``kind`` (``pseudo``: pseudo-label rounds;
    ``label_issues``: gold-label checks), newest first: id, status, model version, created."""
    rows = s.execute(
        select(
            ReviewRound.id,
            ReviewRound.status,
            ReviewRound.model_version_id,
            ReviewRound.created_at,
        )
        .where(ReviewRound.project_id == project_id, ReviewRound.kind == kind)
        .order_by(ReviewRound.id.desc())
    ).all()
    return [dict(r._mapping) for r in rows]


# --------------------------------------------------------------------------- pseudo-labels


def pseudo_label_classes(s: Session, *, round_id: int) -> dict[str, list[dict[str, Any]]]:
    """Per head and class: candidates at the round's threshold, accepted, rejected, quota.

    ``candidates`` counts pool samples whose prediction (by the round's model version) for the
    head is that class with a confidence at or above the head's threshold, decided or not.
    ``accepted`` and ``rejected`` count the round's current pseudo-label states (undone decisions
    are gone from them); an accepted override is counted under the class the reviewer chose.
    ``left`` is ``max(quota - accepted, 0)``.

    Returns:
        ``{head: [{"class", "candidates", "accepted", "rejected", "quota", "left"}, ...]}`` with
        every head of the round's thresholds, classes in schema order.
    """
    rnd = s.get(ReviewRound, round_id)
    if rnd is None:
        return {}
    schema = project_schema(s, project_id=rnd.project_id)
    thresholds = dict(rnd.thresholds or {})  # {head: float} or {head: {class: float}}
    counts: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
    # Every prediction at the threshold minus those of labelled samples: two index range scans
    # per head, several times faster than joining 100,000 pool samples.
    labelled = select(Sample.id).where(
        Sample.project_id == rnd.project_id, Sample.split.in_([x for x in SPLITS if x != "pool"])
    )
    for head, threshold in thresholds.items():
        at_threshold = (
            select(Prediction.label, func.count())
            .where(
                Prediction.model_version_id == rnd.model_version_id,
                Prediction.head == head,
                *threshold_conditions(threshold),
            )
            .group_by(Prediction.label)
        )
        for label, n in s.execute(at_threshold):
            counts[(head, label)]["candidates"] = n
        for label, n in s.execute(at_threshold.where(Prediction.sample_id.in_(labelled))):
            counts[(head, label)]["candidates"] -= n
    for head, label, state, n in s.execute(
        select(PseudoLabel.head, PseudoLabel.label, PseudoLabel.state, func.count())
        .where(PseudoLabel.round_id == round_id, PseudoLabel.state.in_(("accepted", "rejected")))
        .group_by(PseudoLabel.head, PseudoLabel.label, PseudoLabel.state)
    ):
        counts[(head, label)][state] = n
    quotas = rnd.quotas or {}
    out: dict[str, list[dict[str, Any]]] = {}
    for head in _ordered(thresholds, [h for h, _ in counts]):
        seen = [c for h, c in counts if h == head] + list(quotas.get(head, {}))
        rows = []
        for cls in _ordered(schema.get(head, []), seen):
            got = counts.get((head, cls), {})
            quota = int(quotas.get(head, {}).get(cls, 0))
            accepted = got.get("accepted", 0)
            rows.append(
                {
                    "class": cls,
                    "candidates": got.get("candidates", 0),
                    "accepted": accepted,
                    "rejected": got.get("rejected", 0),
                    "quota": quota,
                    "left": max(quota - accepted, 0),
                }
            )
        out[head] = rows
    return out


def _live(q, *, round_id: int | None, project_id: int | None):
    """``q`` narrowed to decisions that are not undos and were not undone, in one round or in
    every round of a project."""
    undone = select(Decision.undoes_id).where(Decision.undoes_id.is_not(None))
    if round_id is not None:
        undone = undone.where(Decision.round_id == round_id)
        q = q.where(Decision.round_id == round_id)
    if project_id is not None:  # pseudo-label rounds (a gold-label check is other work)
        q = q.join(ReviewRound, ReviewRound.id == Decision.round_id).where(
            ReviewRound.project_id == project_id, ReviewRound.kind == "pseudo"
        )
    return q.where(Decision.action != "undo", Decision.id.not_in(undone))


def _bucket(s: Session, bucket: str):
    """SQL expression: ``decision.created_at`` truncated to the hour or day (UTC)."""
    if s.get_bind().dialect.name == "sqlite":  # stored as naive UTC text
        fmt = "%Y-%m-%d %H:00:00" if bucket == "hour" else "%Y-%m-%d 00:00:00"
        return func.strftime(fmt, Decision.created_at)
    return func.date_trunc(bucket, Decision.created_at)


def _as_utc(v: datetime | str) -> datetime:
    return _utc(datetime.fromisoformat(v) if isinstance(v, str) else v)


def acceptance_over_time(
    s: Session, *, round_id: int, bucket: str = "hour"
) -> list[dict[str, Any]]:
    """Head decisions of a round per hour or day (UTC), decisions later undone left out.

    Counted in SQL (a few rows come back, whatever the number of decisions).

    Returns:
        ``[{"start": datetime (UTC), "accepted", "rejected", "skipped", "rate"}, ...]`` oldest
        first, one row per bucket that holds a decision. ``accepted`` and ``rejected`` count head
        decisions, ``skipped`` cards; ``rate`` is ``accepted / (accepted + rejected)`` or None.

    Raises:
        ValueError: ``bucket`` is not ``hour`` or ``day``.
    """
    if bucket not in BUCKETS:
        raise ValueError(f"bucket must be one of {BUCKETS}, got {bucket!r}")
    start = _bucket(s, bucket).label("start")
    q = select(start, Decision.action, func.count()).group_by(start, Decision.action)
    per: dict[datetime, dict[str, int]] = {}
    for at, action, n in s.execute(_live(q, round_id=round_id, project_id=None)):
        row = per.setdefault(_as_utc(at), {"accepted": 0, "rejected": 0, "skipped": 0})
        key = {"accept": "accepted", "reject": "rejected", "skip": "skipped"}.get(action)
        if key:
            row[key] += n
    out = []
    for at in sorted(per):
        row = per[at]
        decided = row["accepted"] + row["rejected"]
        out.append({"start": at, **row, "rate": row["accepted"] / decided if decided else None})
    return out


def _cards(s: Session, *, round_id: int | None, project_id: int | None):
    """One row per card (the decision rows of one sample written together) or per bulk accept,
    per user in time order: user_id, name, created_at, ms_spent, accept, reject, skip counts,
    batch id (None for a card)."""

    def count(action: str):
        return func.sum(case((Decision.action == action, 1), else_=0))

    # a bulk accept is one action: its rows group by batch, not by sample
    unit = case((Decision.batch_id.is_not(None), -Decision.batch_id), else_=Decision.sample_id)
    q = (
        select(
            Decision.user_id,
            User.name,
            Decision.created_at,
            func.max(Decision.ms_spent),
            count("accept"),
            count("reject"),
            count("skip"),
            func.max(Decision.batch_id),
        )
        .outerjoin(User, User.id == Decision.user_id)
        .group_by(Decision.user_id, User.name, unit, Decision.created_at)
        .order_by(Decision.user_id, Decision.created_at)
    )
    return s.execute(_live(q, round_id=round_id, project_id=project_id)).all()


def annotator_throughput(
    s: Session,
    *,
    round_id: int | None = None,
    project_id: int | None = None,
    idle_gap_s: float = IDLE_GAP_S,
) -> list[dict[str, Any]]:
    """Per annotator: cards decided, decisions per minute and median seconds per card.

    Counts every accept, reject and skip that was not undone, in one round or (``project_id``)
    every round of a project. One card is the decision rows of one sample written together. A
    bulk accept is one bulk action (``bulk_actions``, its labels in ``bulk_accepted``), not
    cards: it counts in neither ``cards`` nor ``per_minute``.

    - ``median_s``: median of the cards' ``ms_spent`` (card shown to decision), in seconds; None
      when no card recorded it.
    - ``active_min``: working time from ``created_at``: each card adds the time since the user's
      previous card, unless that gap is longer than ``idle_gap_s`` (a break) or it is the first
      card, when it adds its own ``ms_spent`` (0 if unknown).
    - ``per_minute``: ``cards / active_min``; None when no working time is known.

    Returns:
        ``[{"user_id", "user", "cards", "accepted", "rejected", "skipped", "median_s",
        "active_min", "per_minute", "bulk_actions", "bulk_accepted", "first_at", "last_at"},
        ...]``, most cards first (``first_at`` / ``last_at`` None for bulk actions only).
    """
    per_user: dict[int | None, list[tuple]] = defaultdict(list)
    names: dict[int | None, str] = {}
    bulk: dict[int | None, list[int]] = defaultdict(list)
    for user_id, name, at, ms, acc, rej, skip, batch in _cards(
        s, round_id=round_id, project_id=project_id
    ):
        names[user_id] = name or "(unknown)"
        if batch is not None:  # one bulk action, not cards reviewed one by one
            bulk[user_id].append(int(acc))
            continue
        per_user[user_id].append((_as_utc(at), ms, acc, rej, skip))
    for user_id in bulk:
        per_user.setdefault(user_id, [])
    out = []
    for user_id, seq in per_user.items():
        active_s, prev = 0.0, None
        for at, ms, *_ in seq:
            gap = (at - prev).total_seconds() if prev is not None else None
            active_s += gap if gap is not None and gap <= idle_gap_s else (ms or 0) / 1000.0
            prev = at
        spent = [ms for _, ms, *_ in seq if ms is not None]
        out.append(
            {
                "user_id": user_id,
                "user": names[user_id],
                "cards": len(seq),
                "accepted": sum(c[2] for c in seq),
                "rejected": sum(c[3] for c in seq),
                "skipped": sum(c[4] for c in seq),
                "median_s": statistics.median(spent) / 1000.0 if spent else None,
                "active_min": active_s / 60.0,
                "per_minute": len(seq) / (active_s / 60.0) if active_s > 0 else None,
                "bulk_actions": len(bulk.get(user_id, [])),
                "bulk_accepted": sum(bulk.get(user_id, [])),
                "first_at": seq[0][0] if seq else None,
                "last_at": seq[-1][0] if seq else None,
            }
        )
    return sorted(out, key=lambda r: (-r["cards"], r["user"]))


# --------------------------------------------------------------------------- co-occurrence


def _matrix(
    pairs: Iterable[tuple[str, str, int]], rows: list[str], cols: list[str]
) -> dict[str, Any]:
    pairs = list(pairs)
    rows = _ordered(rows, [a for a, _, _ in pairs])
    cols = _ordered(cols, [b for _, b, _ in pairs])
    counts = [[0] * len(cols) for _ in rows]
    for a, b, n in pairs:
        counts[rows.index(a)][cols.index(b)] += int(n)
    return {"rows": rows, "cols": cols, "counts": counts, "n": sum(n for _, _, n in pairs)}


def cooccurrence_gold(
    s: Session,
    *,
    project_id: int,
    split: str = "train",
    row_head: str = "emotion",
    col_head: str = "intent",
) -> dict[str, Any]:
    """Joint counts of gold labels (rows: ``row_head`` class, columns: ``col_head`` class) over
    the samples of ``split`` that have both heads labelled.

    Returns:
        ``{"rows": [class], "cols": [class], "counts": rows x cols ints, "n": samples}``.
    """
    a, b = aliased(GoldLabel), aliased(GoldLabel)
    pairs = s.execute(
        select(a.label, b.label, func.count())
        .join(b, and_(b.sample_id == a.sample_id, b.head == col_head))
        .join(Sample, Sample.id == a.sample_id)
        .where(a.head == row_head, Sample.project_id == project_id, Sample.split == split)
        .group_by(a.label, b.label)
    ).all()
    schema = project_schema(s, project_id=project_id)
    return _matrix(pairs, schema.get(row_head, []), schema.get(col_head, []))


def cooccurrence_pseudo(
    s: Session, *, round_id: int, row_head: str = "emotion", col_head: str = "intent"
) -> dict[str, Any]:
    """Joint counts of a round's accepted pseudo-labels; a sample counts only when both heads
    are accepted. Same shape as :func:`cooccurrence_gold`."""
    a, b = aliased(PseudoLabel), aliased(PseudoLabel)
    pairs = s.execute(
        select(a.label, b.label, func.count())
        .join(
            b,
            and_(
                b.round_id == a.round_id,
                b.sample_id == a.sample_id,
                b.head == col_head,
                b.state == "accepted",
            ),
        )
        .where(a.round_id == round_id, a.head == row_head, a.state == "accepted")
        .group_by(a.label, b.label)
    ).all()
    rnd = s.get(ReviewRound, round_id)
    schema = project_schema(s, project_id=rnd.project_id) if rnd else {}
    return _matrix(pairs, schema.get(row_head, []), schema.get(col_head, []))


# --------------------------------------------------------------------------- model versions


def _delta(base: Any, new: Any) -> float | None:
    ok = all(isinstance(x, (int, float)) for x in (base, new))
    return float(new) - float(base) if ok else None


def f1_change_from_metrics(
    base: Mapping[str, Any], new: Mapping[str, Any], *, split: str = "valid"
) -> dict[str, Any]:
    """Per-class and overall F1 change from one ``model_version.metrics`` to another.

    Args:
        base, new: ``model_version.metrics`` dicts (``{split: {"<head>_f1", "joint",
            "per_class": {head: [{"class", "f1", ...}]}}}``, as ``training.evaluate`` writes).
        split: ``valid`` or ``test``.

    Returns:
        ``{"heads": {head: [{"class", "base", "new", "delta"}]}, "overall": {key: {"base",
        "new", "delta"}}}`` with ``delta = new - base``; a figure missing on either side gives
        None there and a None delta. Heads and classes follow ``new``, then ``base``.
    """
    b, n = base.get(split) or {}, new.get(split) or {}
    heads = _ordered(n.get("per_class", {}), b.get("per_class", {}))
    out: dict[str, Any] = {"heads": {}, "overall": {}}
    for head in heads:
        fb = {r["class"]: r.get("f1") for r in b.get("per_class", {}).get(head, [])}
        fn = {r["class"]: r.get("f1") for r in n.get("per_class", {}).get(head, [])}
        out["heads"][head] = [
            {"class": c, "base": fb.get(c), "new": fn.get(c), "delta": _delta(fb.get(c), fn.get(c))}
            for c in _ordered(fn, fb)
        ]
    for key in [f"{h}_f1" for h in heads] + ["joint"]:
        out["overall"][key] = {
            "base": b.get(key),
            "new": n.get(key),
            "delta": _delta(b.get(key), n.get(key)),
        }
    return out


def f1_change(s: Session, *, base_id: int, new_id: int, split: str = "valid") -> dict[str, Any]:
    """:func:`f1_change_from_metrics` for two stored model versions (``new - base``)."""
    metrics: dict[int, Any] = dict(
        s.execute(
            select(ModelVersion.id, ModelVersion.metrics).where(
                ModelVersion.id.in_((base_id, new_id))
            )
        ).all()
    )
    return f1_change_from_metrics(
        metrics.get(base_id) or {}, metrics.get(new_id) or {}, split=split
    )


def confusion_cell_samples(
    s: Session, *, model_version_id: int, head: str, gold: str, pred: str, split: str
) -> list[int]:
    """Sample ids of ``split`` whose gold ``head`` label is ``gold`` and whose stored prediction
    by ``model_version_id`` is ``pred``: the samples behind one confusion-matrix cell, ascending.
    """
    project_id = s.scalar(
        select(ModelVersion.project_id).where(ModelVersion.id == model_version_id)
    )
    # the split's few hundred ids first, so the 100,000 pool predictions are never visited
    in_split = select(Sample.id).where(Sample.project_id == project_id, Sample.split == split)
    return list(
        s.scalars(
            select(Prediction.sample_id)
            .join(
                GoldLabel,
                and_(GoldLabel.sample_id == Prediction.sample_id, GoldLabel.head == head),
            )
            .where(
                Prediction.model_version_id == model_version_id,
                Prediction.head == head,
                Prediction.label == pred,
                GoldLabel.label == gold,
                Prediction.sample_id.in_(in_split),
            )
            .order_by(Prediction.sample_id)
        )
    )


def labelled_samples(
    s: Session, *, model_version_id: int, sample_ids: Iterable[int]
) -> list[dict[str, Any]]:
    """The gold-labelled samples a confusion cell links to, for the Review page's inspect view:
    one dict per sample id found, in the order given, with ``sample_id``, ``utt_id``, ``split``,
    ``text`` (current transcript, ``""`` if none), ``gold`` ({head: class}) and ``pred``
    ({head: (class, confidence)} of ``model_version_id``; a head the model did not predict is
    absent)."""
    ids = list(dict.fromkeys(int(i) for i in sample_ids))
    if not ids:
        return []
    rows = s.execute(
        select(Sample.id, Sample.utt_id, Sample.split, Transcript.text)
        .outerjoin(Transcript, Transcript.sample_id == Sample.id)
        .where(Sample.id.in_(ids))
    ).all()
    out: dict[int, dict[str, Any]] = {
        sid: {"sample_id": sid, "utt_id": utt, "split": split, "text": text or "", "gold": {}}
        for sid, utt, split, text in rows
    }
    for sid, head, label in s.execute(
        select(GoldLabel.sample_id, GoldLabel.head, GoldLabel.label).where(
            GoldLabel.sample_id.in_(ids)
        )
    ):
        out[sid]["gold"][head] = label
    for item in out.values():
        item["pred"] = {}
    for sid, head, label, conf in s.execute(
        select(
            Prediction.sample_id, Prediction.head, Prediction.label, Prediction.confidence
        ).where(Prediction.model_version_id == model_version_id, Prediction.sample_id.in_(ids))
    ):
        out[sid]["pred"][head] = (label, float(conf))
    return [out[i] for i in ids if i in out]
