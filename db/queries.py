"""Shared reads and writes of the store: the review queue, decisions under quotas, undo, jobs.

Every function takes an open ``Session`` first and the rest by keyword. Write functions expect a
session from ``Store.write()`` (``BEGIN IMMEDIATE`` on SQLite), so a quota check and the decision
it guards happen in one transaction: two annotators can never push a class past its quota,
whatever the timing. On PostgreSQL the round row is locked with ``SELECT ... FOR UPDATE`` instead.

State of a card in a round lives in ``pseudo_label`` (derived from the append-only ``decision``
log): one row per head with state ``accepted`` or ``rejected``, and a row with head ``*`` and
state ``skipped`` once the card was skipped. A card stays in the queue while some head of the
round is undecided (one head accepted keeps the card for the other); a skipped card waits at the
end of the queue, the earliest skip first. A card is decided once: ``decide`` refuses a head
decided by anyone (``AlreadyDecided``) or a card another user holds (``CardLeased``) unless an
admin overrides, which is logged. Undo appends compensating ``undo`` decisions and removes the
derived rows; decisions are never deleted; a bulk accept (``decision.batch_id``) is undone as one.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    Select,
    and_,
    bindparam,
    delete,
    exists,
    false,
    func,
    literal,
    or_,
    select,
    union,
    union_all,
    update,
)
from sqlalchemy.orm import Session, aliased

from db import thresholds as thr
from db.models import (
    AuditEvent,
    Decision,
    GoldLabel,
    Job,
    ModelVersion,
    Prediction,
    Project,
    PseudoLabel,
    ReviewLease,
    ReviewRound,
    Sample,
    Transcript,
    User,
    utcnow,
)

SKIP_HEAD = "*"


class QueueError(Exception):
    """Raised by store functions on a violated invariant; re-raised by services as MeijuError."""


class QuotaFull(QueueError):
    def __init__(self, head: str, label: str, quota: int, accepted: int) -> None:
        self.head, self.label, self.quota, self.accepted = head, label, quota, accepted
        super().__init__(f"quota for {head} {label!r} is full: {accepted} of {quota} accepted")


class AlreadyDecided(QueueError):
    """The card's head was decided (by ``by``, a user name or None) since it was shown."""

    def __init__(self, sample_id: int, head: str, state: str, by: str | None) -> None:
        self.sample_id, self.head, self.state, self.by = sample_id, head, state, by
        who = by or "another session"
        super().__init__(f"{head} of this card was already {state} by {who}")


class CardLeased(QueueError):
    """Another user holds an unexpired lease on the card."""

    def __init__(self, sample_id: int, by: str | None) -> None:
        self.sample_id, self.by = sample_id, by
        super().__init__(f"this card is being reviewed by {by or 'another annotator'}")


class BelowThreshold(QueueError):
    """Accepting a predicted class whose confidence is under the round's threshold, unconfirmed."""

    def __init__(self, head: str, label: str, confidence: float, threshold: float) -> None:
        self.head, self.label, self.confidence, self.threshold = head, label, confidence, threshold
        super().__init__(
            f"{head} {label} has confidence {confidence:.2f}, below the round's threshold "
            f"{threshold:.2f}"
        )


MIN_LEASE_S = 1
ROUND_KINDS = ("pseudo", "label_issues")


# --------------------------------------------------------------------------- projects & users


def get_project(s: Session, *, name: str) -> Project | None:
    return s.scalars(select(Project).where(Project.name == name)).first()


def last_sample_id(s: Session) -> int:
    """The highest sample id in the store (0 when empty)."""
    return s.scalar(select(func.max(Sample.id))) or 0


def sample_ids_after(s: Session, *, project_id: int, after_id: int, limit: int) -> list[int]:
    """Ids of the project's samples above ``after_id`` (those an import added), ascending, at
    most ``limit``."""
    return list(
        s.scalars(
            select(Sample.id)
            .where(Sample.project_id == project_id, Sample.id > after_id)
            .order_by(Sample.id)
            .limit(limit)
        )
    )


def get_user(s: Session, *, name: str) -> User | None:
    return s.scalars(select(User).where(User.name == name)).first()


def audit(
    s: Session,
    *,
    user_id: int | None,
    action: str,
    entity: str,
    entity_id: int | None,
    payload: dict[str, Any] | None = None,
) -> None:
    s.add(
        AuditEvent(
            user_id=user_id,
            action=action,
            entity=entity,
            entity_id=entity_id,
            payload=payload or {},
        )
    )


# --------------------------------------------------------------------------- models


def current_model(s: Session, *, project_id: int) -> ModelVersion | None:
    """The promoted model version, else the newest one."""
    q = select(ModelVersion).where(ModelVersion.project_id == project_id)
    promoted = s.scalars(
        q.where(ModelVersion.status == "promoted").order_by(ModelVersion.id.desc())
    ).first()
    return promoted or s.scalars(q.order_by(ModelVersion.id.desc())).first()


def get_round(s: Session, round_id: int) -> ReviewRound:
    """The review round ``round_id``. Raises QueueError when there is none."""
    rnd = s.get(ReviewRound, round_id)
    if rnd is None:
        raise QueueError(f"review round {round_id} does not exist")
    return rnd


def promote(s: Session, *, model_version_id: int, user_id: int | None = None) -> None:
    """Make one model version the promoted one; the previously promoted becomes archived.
    Raises QueueError for an unknown model version."""
    mv = s.get(ModelVersion, model_version_id)
    if mv is None:
        raise QueueError(f"model version {model_version_id} does not exist")
    s.execute(
        update(ModelVersion)
        .where(ModelVersion.project_id == mv.project_id, ModelVersion.status == "promoted")
        .values(status="archived")
    )
    mv.status = "promoted"
    audit(s, user_id=user_id, action="promote", entity="model_version", entity_id=mv.id)


# --------------------------------------------------------------------------- rounds & quotas

# The orders a round serves its cards in (``review_round.queue_order``), see :func:`queue`.
QUEUE_ORDERS = ("confidence", "uncertainty", "disagreement", "rarest")


def open_round(
    s: Session,
    *,
    project_id: int,
    model_version_id: int,
    thresholds: dict[str, Any],
    quotas: dict[str, dict[str, int]],
    user_id: int | None = None,
    kind: str = "pseudo",
    queue_order: str = "confidence",
) -> ReviewRound:
    """Close the project's open rounds of ``kind`` and open a new one.

    ``thresholds``: {head: float} or {head: {class: float}} (:mod:`db.thresholds`); ``kind``:
    ``pseudo`` (a pseudo-label round) or ``label_issues`` (a check of flagged gold labels, which
    has neither thresholds nor quotas: ``{}``). A round of one kind leaves the other kind's open
    round open. ``queue_order``: the order its cards are served in, one of
    :data:`QUEUE_ORDERS` (see :func:`queue`).

    Raises:
        QueueError: an unknown kind or queue order.
    """
    if kind not in ROUND_KINDS:
        raise QueueError(f"unknown round kind {kind!r}; kinds are {list(ROUND_KINDS)}")
    if queue_order not in QUEUE_ORDERS:
        raise QueueError(
            f"queue order {queue_order!r} is not one of {', '.join(QUEUE_ORDERS)} (queue_order)"
        )
    s.execute(
        update(ReviewRound)
        .where(
            ReviewRound.project_id == project_id,
            ReviewRound.status == "open",
            ReviewRound.kind == kind,
        )
        .values(status="closed")
    )
    rnd = ReviewRound(
        project_id=project_id,
        model_version_id=model_version_id,
        thresholds=thresholds,
        quotas=quotas,
        created_by=user_id,
        kind=kind,
        queue_order=queue_order,
    )
    s.add(rnd)
    s.flush()
    audit(
        s,
        user_id=user_id,
        action="open_round",
        entity="review_round",
        entity_id=rnd.id,
        payload={
            "thresholds": thresholds,
            "quotas": quotas,
            "kind": kind,
            "queue_order": queue_order,
        },
    )
    return rnd


def active_round(s: Session, *, project_id: int, kind: str = "pseudo") -> ReviewRound | None:
    """The project's newest open round of ``kind`` (``pseudo`` or ``label_issues``), or None."""
    return s.scalars(
        select(ReviewRound)
        .where(
            ReviewRound.project_id == project_id,
            ReviewRound.status == "open",
            ReviewRound.kind == kind,
        )
        .order_by(ReviewRound.id.desc())
    ).first()


def accepted_counts(s: Session, *, round_id: int) -> dict[str, dict[str, int]]:
    """{head: {class: accepted pseudo-labels}} in one round."""
    rows = s.execute(
        select(PseudoLabel.head, PseudoLabel.label, func.count())
        .where(PseudoLabel.round_id == round_id, PseudoLabel.state == "accepted")
        .group_by(PseudoLabel.head, PseudoLabel.label)
    ).all()
    out: dict[str, dict[str, int]] = {}
    for head, label, n in rows:
        out.setdefault(head, {})[label] = n
    return out


def quota_status(s: Session, *, round_id: int) -> dict[str, dict[str, tuple[int, int]]]:
    """{head: {class: (accepted, quota)}} for every class that has a quota or an acceptance."""
    rnd = get_round(s, round_id)
    counts = accepted_counts(s, round_id=round_id)
    out: dict[str, dict[str, tuple[int, int]]] = {}
    for head, per_class in rnd.quotas.items():
        labels = set(per_class) | set(counts.get(head, {}))
        out[head] = {c: (counts.get(head, {}).get(c, 0), int(per_class.get(c, 0))) for c in labels}
    return out


def open_classes(s: Session, *, round_id: int) -> dict[str, tuple[str, ...]]:
    """{head: classes whose quota is not yet full} in one round, each tuple sorted: the classes
    a card's prediction may have for that head to stay in the review queue."""
    return open_from_status(quota_status(s, round_id=round_id))


def open_from_status(
    status: dict[str, dict[str, tuple[int, int]]],
) -> dict[str, tuple[str, ...]]:
    """:func:`open_classes` from a :func:`quota_status` already read."""
    return {
        head: tuple(sorted(c for c, (n, quota) in per_class.items() if n < quota))
        for head, per_class in status.items()
    }


def gold_counts(s: Session, *, project_id: int, split: str = "train") -> dict[str, dict[str, int]]:
    """{head: {class: gold labels}} in one split."""
    rows = s.execute(
        select(GoldLabel.head, GoldLabel.label, func.count())
        .join(Sample, Sample.id == GoldLabel.sample_id)
        .where(Sample.project_id == project_id, Sample.split == split)
        .group_by(GoldLabel.head, GoldLabel.label)
    ).all()
    out: dict[str, dict[str, int]] = {}
    for head, label, n in rows:
        out.setdefault(head, {})[label] = n
    return out


def class_candidates(
    s: Session, *, model_version_id: int, thresholds: dict[str, Any]
) -> dict[str, dict[str, int]]:
    """{head: {class: pool samples predicted as that class with confidence >= its threshold}}
    for one model version: the cards a round of these thresholds can offer. ``thresholds``:
    {head: float} or {head: {class: float}} (:mod:`db.thresholds`)."""
    out: dict[str, dict[str, int]] = {h: {} for h in thresholds}
    for head, t in thresholds.items():
        for label, n in s.execute(
            select(Prediction.label, func.count())
            .join(Sample, Sample.id == Prediction.sample_id)
            .where(
                Prediction.model_version_id == model_version_id,
                Prediction.head == head,
                *threshold_conditions(t),
                Sample.split == "pool",
            )
            .group_by(Prediction.label)
        ):
            out[head][label] = n
    return out


def threshold_conditions(value: Any, pred=Prediction, *, at_least: float | None = None) -> list:
    """SQL conditions: ``pred`` reaches one head's threshold entry (:mod:`db.thresholds`).

    The first is a plain range on the confidence (the entry's floor, raised to ``at_least``),
    which the prediction indexes serve; a per-class entry adds one condition on (class,
    confidence), which the queue index carries, so the scan still never reads the row."""
    lo = thr.floor(value)
    if at_least is not None:
        lo = max(lo, float(at_least))
    conds = [pred.confidence >= lo]
    if thr.uniform(value) is None:
        named = {c: float(t) for c, t in value.items() if c != thr.DEFAULT_KEY}
        alts = [and_(pred.label == c, pred.confidence >= t) for c, t in sorted(named.items())]
        if thr.DEFAULT_KEY in value:
            alts.append(
                and_(
                    pred.label.not_in(sorted(named)) if named else literal(True),
                    pred.confidence >= float(value[thr.DEFAULT_KEY]),
                )
            )
        conds.append(or_(*alts) if alts else false())
    return conds


# --------------------------------------------------------------------------- the queue


@dataclass(frozen=True)
class QueueFilter:
    """What the review queue shows.

    ``head`` narrows thresholds, class and confidence to one head; None means a card qualifies
    when any head reaches its threshold (and the class / confidence conditions). The other fields
    are conditions on the whole card:

    - ``model_version_id``: whose predictions rank and label the cards (None: the round's model);
    - ``unseen_pairs``: (row-head class, column-head class) pairs of ``pair_heads``; a card
      qualifies when its predicted pair is one of them (the zero cells of the gold co-occurrence,
      :func:`unseen_pairs`). None: no condition; an empty tuple matches nothing;
    - ``disagree``: some head's ensemble members predict different classes (``prediction.paths``);
    - ``sample_ids``: only these samples.
    """

    head: str | None = None
    label: str | None = None
    min_confidence: float | None = None
    max_confidence: float | None = None
    sample_ids: tuple[int, ...] | None = None
    model_version_id: int | None = None
    unseen_pairs: tuple[tuple[str, str], ...] | None = None
    pair_heads: tuple[str, str] = ("emotion", "intent")
    disagree: bool = False


@dataclass
class Card:
    """Everything the review card shows for one sample."""

    sample_id: int
    utt_id: str
    source: str
    video_path: str | None
    audio_path: str | None
    start_s: float | None
    duration_s: float | None
    text: str
    transcript_source: str
    predictions: dict[str, dict[str, Any]] = field(
        default_factory=dict
    )  # head -> label, conf, probs, paths


MAX_PATHS = 4  # ensemble members compared by the disagreement filter
PAIR_SEP = "\x1f"  # joins a (row class, column class) pair into one string for an IN list
# Aliases built once: building one per query costs more than running the query.
_PAIR_A = aliased(Prediction, name="pair_a")
_PAIR_B = aliased(Prediction, name="pair_b")
_PATHS = aliased(Prediction, name="paths_p")
_ANY = aliased(Prediction, name="any_p")


def unseen_pairs(
    s: Session,
    *,
    project_id: int,
    heads: tuple[str, str] = ("emotion", "intent"),
    split: str = "train",
) -> tuple[tuple[str, str], ...]:
    """The zero cells of the project's gold co-occurrence matrix of ``heads`` in ``split``: every
    (row class, column class) pair of the label schema that no gold-labelled sample has.

    Returns an empty tuple when the schema lacks one of the heads.
    """
    schema = s.scalar(select(Project.label_schema).where(Project.id == project_id)) or {}
    a_head, b_head = heads
    if a_head not in schema or b_head not in schema:
        return ()
    a, b = aliased(GoldLabel), aliased(GoldLabel)
    seen = set(
        s.execute(
            select(a.label, b.label)
            .join(b, and_(b.sample_id == a.sample_id, b.head == b_head))
            .join(Sample, Sample.id == a.sample_id)
            .where(a.head == a_head, Sample.project_id == project_id, Sample.split == split)
            .distinct()
        ).all()
    )
    return tuple((x, y) for x in schema[a_head] for y in schema[b_head] if (x, y) not in seen)


def paths_disagree(pred=Prediction):
    """SQL condition: the row's ensemble members do not all predict the same class."""
    first = pred.paths[0].as_string()
    return or_(*(pred.paths[k].as_string() != first for k in range(1, MAX_PATHS)))


def _card_conditions(
    rnd: ReviewRound,
    flt: QueueFilter,
    mv_id: int,
    sample_col,
    *,
    bind_ids: bool = False,
) -> list:
    """Conditions on the whole card (the sample in ``sample_col``), whichever head qualifies.
    ``bind_ids``: the sample ids come as the expanding parameter ``sample_ids``."""
    conds = []
    if flt.sample_ids is not None:
        ids = bindparam("sample_ids", expanding=True) if bind_ids else flt.sample_ids
        conds.append(sample_col.in_(ids))
    if flt.unseen_pairs is not None:
        if not flt.unseen_pairs:
            conds.append(false())
        else:
            a, b = _PAIR_A, _PAIR_B
            row_head, col_head = flt.pair_heads
            conds.append(
                exists()
                .where(
                    a.model_version_id == mv_id,
                    a.sample_id == sample_col,
                    a.head == row_head,
                    b.model_version_id == mv_id,
                    b.sample_id == sample_col,
                    b.head == col_head,
                    (a.label + PAIR_SEP + b.label).in_(
                        [f"{x}{PAIR_SEP}{y}" for x, y in flt.unseen_pairs]
                    ),
                )
                .correlate_except(a, b)
            )
    if flt.disagree:
        d = _PATHS
        conds.append(
            exists()
            .where(
                d.model_version_id == mv_id,
                d.sample_id == sample_col,
                d.paths.is_not(None),
                paths_disagree(d),
            )
            .correlate_except(d)
        )
    return conds


def _head_conditions(
    rnd: ReviewRound,
    flt: QueueFilter,
    head: str,
    pred=Prediction,
    open_labels: dict[str, tuple[str, ...]] | None = None,
) -> list:
    """Conditions on one head's prediction row: its threshold, class and confidence range, and,
    given ``open_labels`` (:func:`open_classes`), a predicted class whose quota is not full."""
    c = [
        pred.head == head,
        *threshold_conditions(rnd.thresholds[head], pred, at_least=flt.min_confidence),
    ]
    if flt.label:
        c.append(pred.label == flt.label)
    if open_labels is not None:
        c.append(pred.label.in_(open_labels.get(head, ())) if open_labels.get(head) else false())
    if flt.max_confidence is not None:
        c.append(pred.confidence <= float(flt.max_confidence))
    return c


def _queue_heads(rnd: ReviewRound, flt: QueueFilter) -> list[str]:
    if flt.head:
        return [flt.head] if flt.head in rnd.thresholds else []
    return list(rnd.thresholds)


def _head_query(
    rnd: ReviewRound,
    flt: QueueFilter,
    head: str,
    *,
    user_id: int | None,
    now: Any,  # a datetime, a bound parameter (a cached statement), or None with open_only=False
    open_only: bool = True,
    bind_ids: bool = False,
    open_labels: dict[str, tuple[str, ...]] | None = None,
):
    """Sample id and confidence of the cards whose ``head`` qualifies: one head's rows of the
    prediction index, the pool samples among them, undecided and not leased by another user when
    ``open_only``, predicted as a class with quota left when ``open_labels`` is given."""
    mv_id = flt.model_version_id or rnd.model_version_id
    # cheap conditions first: SQLite tests them in this order, so a decided card costs one
    # probe of pseudo_label, not the pair or path lookups of the card conditions
    conds = [
        Prediction.model_version_id == mv_id,
        *_head_conditions(rnd, flt, head, open_labels=open_labels),
    ]
    if flt.sample_ids is not None:
        # a few named cards: ``model + 0`` and ``head || ''`` hide those columns from the index
        # chooser, so SQLite looks the cards up by ``ix_prediction_sample`` with the id list
        # instead of scanning a model + head index (which, without statistics, it takes for
        # selective)
        conds[0] = (Prediction.model_version_id + 0) == mv_id
        conds[1] = (Prediction.head + literal("")) == head
    if open_only:
        conds += _open_conditions(
            rnd,
            Prediction.sample_id,
            user_id=user_id,
            now=now,
            head=flt.head,
        )
    conds += _card_conditions(rnd, flt, mv_id, Prediction.sample_id, bind_ids=bind_ids)
    q = (
        select(Prediction.sample_id, Prediction.confidence)
        .join(Sample, Sample.id == Prediction.sample_id)
        .where(*conds, Sample.split == "pool")  # only unlabelled samples are candidates
    )
    return q


def _decided_heads(rnd: ReviewRound, sample_col):
    """SQL scalar: how many heads of the card in ``sample_col`` are decided in the round."""
    return (
        select(func.count())
        .select_from(PseudoLabel)
        .where(
            PseudoLabel.round_id == rnd.id,
            PseudoLabel.sample_id == sample_col,
            PseudoLabel.head != SKIP_HEAD,
        )
        .correlate_except(PseudoLabel)
        .scalar_subquery()
    )


def _skipped(rnd: ReviewRound, sample_col):
    return exists().where(
        PseudoLabel.round_id == rnd.id,
        PseudoLabel.sample_id == sample_col,
        PseudoLabel.head == SKIP_HEAD,
    )


def _open_conditions(
    rnd: ReviewRound,
    sample_col,
    *,
    user_id: int | None,
    now: Any,  # a datetime or a bound parameter
    skipped: str = "exclude",
    head: str | None = None,
) -> list:
    """A card is open while some head of the round is undecided (``head`` given, as when the
    filter names one head: while that head is undecided) and no other user holds an unexpired
    lease on it. ``skipped``: ``exclude`` (the main queue), ``only`` (the end of the queue,
    where skipped cards wait) or ``any`` (named cards)."""
    leased = exists().where(
        ReviewLease.round_id == rnd.id,
        ReviewLease.sample_id == sample_col,
        ReviewLease.expires_at > now,
        ReviewLease.user_id.is_distinct_from(user_id),
    )
    conds = [_decided_heads(rnd, sample_col) < len(rnd.thresholds), ~leased]
    if head is not None:
        conds.append(
            ~exists().where(
                PseudoLabel.round_id == rnd.id,
                PseudoLabel.sample_id == sample_col,
                PseudoLabel.head == head,
            )
        )
    if skipped == "exclude":
        conds.append(~_skipped(rnd, sample_col))
    elif skipped == "only":
        conds.append(_skipped(rnd, sample_col))
    return conds


_STATEMENTS: dict[tuple, Any] = {}  # built queue statements; ``now`` and ``exclude`` are bound

# Gold-derived facts the disagreement and rarest orders read on every queue call (the unseen
# class pairs, the gold counts per class, the schema), kept this many seconds per database and
# project: gold labels change rarely, and a relabel shows in the order within this time.
GOLD_CACHE_S = 30.0
_GOLD_CACHE: dict[tuple, tuple[float, Any]] = {}


def _gold_cached(s: Session, key: tuple, compute):
    """``compute()`` for ``key`` in this session's database, reused for :data:`GOLD_CACHE_S`."""
    full = (str(s.get_bind().engine.url), *key)
    now = time.monotonic()
    hit = _GOLD_CACHE.get(full)
    if hit is not None and now - hit[0] < GOLD_CACHE_S:
        return hit[1]
    value = compute()
    if len(_GOLD_CACHE) > 256:
        _GOLD_CACHE.clear()
    _GOLD_CACHE[full] = (now, value)
    return value


def _queue_statement(
    rnd: ReviewRound,
    flt: QueueFilter,
    head: str,
    user_id,
    exclude: bool,
    open_labels: dict[str, tuple[str, ...]] | None,
    ascending: bool = False,
):
    key = (
        ascending,
        tuple(sorted(open_labels.items())) if open_labels is not None else None,
        rnd.id,
        rnd.model_version_id,
        thr.key(rnd.thresholds),
        replace(flt, sample_ids=() if flt.sample_ids is not None else None),
        head,
        user_id,
        exclude,
    )
    stmt = _STATEMENTS.get(key)
    if stmt is None:
        stmt = _head_query(
            rnd,
            flt,
            head,
            user_id=user_id,
            now=bindparam("now"),
            bind_ids=True,
            open_labels=open_labels,
        )
        if exclude:
            stmt = stmt.where(Prediction.sample_id.not_in(bindparam("exclude", expanding=True)))
        if flt.sample_ids is None:
            conf = Prediction.confidence.asc() if ascending else Prediction.confidence.desc()
            stmt = stmt.order_by(conf, Prediction.sample_id).limit(bindparam("limit"))
        # else a few named cards, sorted by the caller: without ORDER BY the planner looks them
        # up by id instead of scanning the confidence index
        if len(_STATEMENTS) > 256:
            _STATEMENTS.clear()
        _STATEMENTS[key] = stmt
    return stmt


def queue(
    s: Session,
    *,
    round_id: int,
    flt: QueueFilter = QueueFilter(),
    user_id: int | None = None,
    limit: int = 2,
    exclude: Iterable[int] = (),
    skip_full: bool = True,
    open_labels: dict[str, tuple[str, ...]] | None = None,
) -> list[int]:
    """Sample ids of the next undecided cards in the round's queue order, not leased by others.

    A head qualifies when its prediction reaches the round's threshold, matches the filter and
    predicts a class whose quota is not full; a card whose every head predicts a full class is
    left out, since accepting it as predicted would be refused (named ``flt.sample_ids`` are
    shown too, so that a prefetched card whose class filled meanwhile drops out). ``skip_full``
    False keeps cards of full classes; ``open_labels`` (:func:`open_classes`) saves reading the
    quotas again when the caller has them.

    The order is the round's ``queue_order`` (:data:`QUEUE_ORDERS`; ties: lower sample id first):

    - ``confidence`` (the paper's rule): a card's rank is its highest confidence among the heads
      that qualify, highest first;
    - ``uncertainty``: its lowest confidence among the heads that qualify, lowest first (still at
      or above the thresholds: uncertainty sampling within the round's candidates);
    - ``disagreement``: first the cards whose ensemble members disagree (an ensemble version's
      ``prediction.paths``), then those whose predicted (``pair_heads``) class pair never occurs
      in the gold train labels (:func:`unseen_pairs`: the heads disagree), then the rest; each
      part by confidence, highest first;
    - ``rarest``: class-balanced round robin: the (head, predicted class) lists with quota left,
      ordered by gold train labels + pseudo-labels accepted in the round (fewest first), each
      most confident first, give their first card in turn, then their second, and so on.

    Named ``flt.sample_ids`` come by confidence (the caller keeps its own order). Skipped cards
    follow the queue, the earliest skip first (:func:`skipped_queue`).

    Each head (class, part) is read from its own index scan, stopping after ``limit`` rows, and
    the lists are merged: a card in the overall top ``limit`` is in the top ``limit`` of the list
    that ranks it, so no GROUP BY over all predictions is needed.
    """
    rnd = get_round(s, round_id)
    params: dict[str, Any] = {"now": utcnow(), "limit": int(limit)}
    exclude = tuple(exclude)
    if flt.sample_ids is not None:
        params["sample_ids"] = list(flt.sample_ids)
    if not skip_full:
        open_labels = None
    elif open_labels is None:
        open_labels = open_classes(s, round_id=round_id)
    order = (rnd.queue_order or "confidence") if flt.sample_ids is None else "confidence"
    if order == "disagreement":
        out = _disagreement_first(s, rnd, flt, user_id, open_labels, params, exclude)
    elif order == "rarest":
        out = _rarest_first(s, rnd, flt, user_id, open_labels, params, exclude)
    else:
        out = _ranked(
            s, rnd, flt, user_id, open_labels, params, exclude, ascending=order == "uncertainty"
        )
    if len(out) < limit:
        out += skipped_queue(
            s,
            rnd=rnd,
            flt=flt,
            user_id=user_id,
            limit=limit - len(out),
            exclude=(*exclude, *out),
            open_labels=open_labels,
            now=params["now"],
        )
    return out


def _ranked(
    s: Session,
    rnd: ReviewRound,
    flt: QueueFilter,
    user_id: int | None,
    open_labels: dict[str, tuple[str, ...]] | None,
    params: dict[str, Any],
    exclude: tuple[int, ...],
    *,
    ascending: bool = False,
) -> list[int]:
    """Up to ``params["limit"]`` open cards by their best confidence (highest first) or, with
    ``ascending``, by their lowest (lowest first): one index scan per head, merged."""
    if exclude:
        params = {**params, "exclude": list(exclude)}
    best: dict[int, float] = {}
    for head in _queue_heads(rnd, flt):
        stmt = _queue_statement(rnd, flt, head, user_id, bool(exclude), open_labels, ascending)
        for sid, conf in s.execute(stmt, params):
            if sid not in best or (conf < best[sid] if ascending else conf > best[sid]):
                best[sid] = conf
    sign = 1.0 if ascending else -1.0
    return sorted(best, key=lambda i: (sign * best[i], i))[: params["limit"]]


def _disagreement_first(
    s: Session,
    rnd: ReviewRound,
    flt: QueueFilter,
    user_id: int | None,
    open_labels: dict[str, tuple[str, ...]] | None,
    params: dict[str, Any],
    exclude: tuple[int, ...],
) -> list[int]:
    """The ``disagreement`` order of :func:`queue`: ensemble members disagree, then an unseen
    class pair of the two heads, then the rest, each part most confident first."""
    limit = int(params["limit"])
    mv_id = flt.model_version_id or rnd.model_version_id
    preset = s.scalar(select(ModelVersion.preset).where(ModelVersion.id == mv_id))
    parts = []
    if preset == "ensemble" and not flt.disagree:  # ensembles.ENSEMBLE
        parts.append(replace(flt, disagree=True))
    if flt.unseen_pairs is None and all(h in rnd.thresholds for h in flt.pair_heads):
        pairs = _gold_cached(
            s,
            ("unseen_pairs", rnd.project_id, flt.pair_heads),
            lambda: unseen_pairs(s, project_id=rnd.project_id, heads=flt.pair_heads),
        )
        if pairs:
            parts.append(replace(flt, unseen_pairs=pairs))
    parts.append(flt)
    out: list[int] = []
    for part in parts:
        out += _ranked(
            s,
            rnd,
            part,
            user_id,
            open_labels,
            {**params, "limit": limit - len(out)},
            (*exclude, *out),
        )
        if len(out) >= limit:
            break
    return out


def _rarest_first(
    s: Session,
    rnd: ReviewRound,
    flt: QueueFilter,
    user_id: int | None,
    open_labels: dict[str, tuple[str, ...]] | None,
    params: dict[str, Any],
    exclude: tuple[int, ...],
) -> list[int]:
    """The ``rarest`` order of :func:`queue`: class-balanced round robin over the (head,
    predicted class) lists, the class with the fewest gold + accepted labels first."""
    limit = int(params["limit"])
    gold = _gold_cached(
        s, ("gold_counts", rnd.project_id), lambda: gold_counts(s, project_id=rnd.project_id)
    )
    accepted = accepted_counts(s, round_id=rnd.id)
    schema = _gold_cached(
        s,
        ("schema", rnd.project_id),
        lambda: s.scalar(select(Project.label_schema).where(Project.id == rnd.project_id)) or {},
    )
    keys = []
    for head in _queue_heads(rnd, flt):
        classes = open_labels.get(head, ()) if open_labels is not None else schema.get(head, ())
        for c in classes:
            if flt.label and c != flt.label:
                continue
            n = gold.get(head, {}).get(c, 0) + accepted.get(head, {}).get(c, 0)
            keys.append((n, head, c))
    keys.sort()
    if not keys:
        return []
    # one round trip: each (head, class) scan, most confident first and stopping at ``limit``,
    # as a subquery of one UNION ALL (the statements are built once, see _queue_statement)
    ukey = (
        "rarest",
        tuple((h, c) for _, h, c in keys),
        rnd.id,
        replace(flt, sample_ids=None),
        user_id,
        bool(exclude),
        tuple(sorted(open_labels.items())) if open_labels is not None else None,
    )
    stmt = _STATEMENTS.get(ukey)
    if stmt is None:
        subs = [
            _queue_statement(
                rnd, replace(flt, head=h, label=c), h, user_id, bool(exclude), open_labels
            ).subquery()
            for _, h, c in keys
        ]
        stmt = union_all(
            *(
                select(literal(k).label("k"), sub.c.sample_id, sub.c.confidence)
                for k, sub in enumerate(subs)
            )
        )
        _STATEMENTS[ukey] = stmt
    if exclude:
        params = {**params, "exclude": list(exclude)}
    rows = sorted(s.execute(stmt, params).all(), key=lambda r: (r[0], -r[2], r[1]))
    lists: list[list[int]] = [[] for _ in keys]
    for k, sid, _conf in rows:
        lists[k].append(sid)
    out: list[int] = []
    seen: set[int] = set()
    for rank in range(limit):
        for ids in lists:
            if rank < len(ids) and ids[rank] not in seen:
                seen.add(ids[rank])
                out.append(ids[rank])
                if len(out) >= limit:
                    return out
    return out


def skipped_queue(
    s: Session,
    *,
    rnd: ReviewRound,
    flt: QueueFilter,
    user_id: int | None,
    limit: int,
    exclude: Iterable[int] = (),
    open_labels: dict[str, tuple[str, ...]] | None = None,
    now: datetime | None = None,
) -> list[int]:
    """The end of the queue: skipped cards that still match, in the order they were skipped
    (the one skipped longest ago first)."""
    skip = aliased(PseudoLabel, name="skip_row")
    q = (
        select(skip.sample_id)
        .where(
            skip.round_id == rnd.id,
            skip.head == SKIP_HEAD,
            *_card_query(
                rnd,
                flt,
                skip.sample_id,
                now=now or utcnow(),
                user_id=user_id,
                open_only=True,
                open_labels=open_labels,
                skipped="any",
            ),
        )
        .order_by(skip.decision_id)
        .limit(int(limit))
    )
    exclude = tuple(exclude)
    if exclude:
        q = q.where(skip.sample_id.not_in(exclude))
    return list(s.scalars(q))


def _card_query(
    rnd: ReviewRound,
    flt: QueueFilter,
    sample_col,
    *,
    now,
    user_id,
    open_only,
    open_labels=None,
    skipped: str = "exclude",
):
    """Conditions: the sample in ``sample_col`` is a card of the queue (any head qualifies)."""
    mv_id = flt.model_version_id or rnd.model_version_id
    p = _ANY
    per_head = [
        and_(*_head_conditions(rnd, flt, h, p, open_labels=open_labels))
        for h in _queue_heads(rnd, flt)
    ]
    if not per_head:
        return [false()]
    conds = [
        exists()
        .where(p.model_version_id == mv_id, p.sample_id == sample_col, or_(*per_head))
        .correlate_except(p),
        *_card_conditions(rnd, flt, mv_id, sample_col),
    ]
    if open_only:
        conds += _open_conditions(
            rnd, sample_col, user_id=user_id, now=now, skipped=skipped, head=flt.head
        )
    return conds


def candidate_count(
    s: Session,
    *,
    round_id: int,
    flt: QueueFilter = QueueFilter(),
    open_labels: dict[str, tuple[str, ...]] | None = None,
) -> int:
    """Cards that match ``flt`` whatever their state (decided, leased or open), among those with
    a head predicting a class of ``open_labels`` (default: :func:`open_classes` of the round).

    It changes only with the round, the filter, the predictions or the set of full classes, so a
    page may cache it under those and pass it to :func:`queue_size` as ``base``: the full count
    reads every pool sample (tens of milliseconds per 100,000), the correction only the decided
    and leased ones.
    """
    rnd = get_round(s, round_id)
    if open_labels is None:
        open_labels = open_classes(s, round_id=round_id)
    q = (
        select(func.count())
        .select_from(Sample)
        .where(
            Sample.project_id == rnd.project_id,
            Sample.split == "pool",
            *_card_query(
                rnd,
                flt,
                Sample.id,
                now=None,
                user_id=None,
                open_only=False,
                open_labels=open_labels,
            ),
        )
    )
    return s.scalar(q) or 0


def queue_size(
    s: Session,
    *,
    round_id: int,
    flt: QueueFilter = QueueFilter(),
    base: int | None = None,
    open_labels: dict[str, tuple[str, ...]] | None = None,
) -> int:
    """Open cards that match ``flt`` (some head undecided, skipped ones included, not leased by
    anyone, a class with quota left):
    ``base`` (or :func:`candidate_count`) less the matching cards that are decided or leased.
    ``base`` must have been counted with the same ``open_labels``."""
    rnd = get_round(s, round_id)
    if open_labels is None:
        open_labels = open_classes(s, round_id=round_id)
    if base is None:
        base = candidate_count(s, round_id=round_id, flt=flt, open_labels=open_labels)
    now = utcnow()
    if flt.head:  # the head the filter names is decided
        done = select(PseudoLabel.sample_id.label("sid")).where(
            PseudoLabel.round_id == round_id, PseudoLabel.head == flt.head
        )
    else:  # every head is decided
        done = (
            select(PseudoLabel.sample_id.label("sid"))
            .where(PseudoLabel.round_id == round_id, PseudoLabel.head != SKIP_HEAD)
            .group_by(PseudoLabel.sample_id)
            .having(func.count() >= len(rnd.thresholds))
        )
    taken = union(
        done,
        select(ReviewLease.sample_id.label("sid")).where(
            ReviewLease.round_id == round_id, ReviewLease.expires_at > now
        ),
    ).subquery()
    q = (
        select(func.count())
        .select_from(taken)
        .join(Sample, Sample.id == taken.c.sid)
        .where(
            Sample.split == "pool",
            *_card_query(
                rnd,
                flt,
                taken.c.sid,
                now=None,
                user_id=None,
                open_only=False,
                open_labels=open_labels,
            ),
        )
    )
    return max(0, base - (s.scalar(q) or 0))


def filtered_candidates(
    s: Session, *, round_id: int, flt: QueueFilter = QueueFilter(), user_id: int | None = None
) -> dict[str, list[tuple[int, list[float]]]]:
    """Bulk accept's input: head -> [(sample id, probs)] of every open card of the filtered set
    whose ``head`` row qualifies (threshold, class, confidence range), most confident first."""
    rnd = get_round(s, round_id)
    now = utcnow()
    mv_id = flt.model_version_id or rnd.model_version_id
    out: dict[str, list[tuple[int, list[float]]]] = {}
    for head in _queue_heads(rnd, flt):
        sub = _head_query(rnd, flt, head, user_id=user_id, now=now).subquery()
        head_done = exists().where(
            PseudoLabel.round_id == round_id,
            PseudoLabel.sample_id == Prediction.sample_id,
            PseudoLabel.head == head,
        )
        rows = s.execute(
            select(Prediction.sample_id, Prediction.probs)
            .join(sub, sub.c.sample_id == Prediction.sample_id)
            .where(Prediction.model_version_id == mv_id, Prediction.head == head, ~head_done)
            .order_by(Prediction.confidence.desc(), Prediction.sample_id)
        ).all()
        out[head] = [(sid, list(probs)) for sid, probs in rows]
    return out


def load_cards(s: Session, *, model_version_id: int, sample_ids: Sequence[int]) -> list[Card]:
    """Cards for ``sample_ids`` in that order, with each head's prediction."""
    if not sample_ids:
        return []
    rows = s.execute(
        select(Sample, Transcript).outerjoin(Transcript).where(Sample.id.in_(sample_ids))
    ).all()
    cards = {}
    for sample, tr in rows:
        cards[sample.id] = Card(
            sample_id=sample.id,
            utt_id=sample.utt_id,
            source=sample.source,
            video_path=sample.video_path,
            audio_path=sample.audio_path,
            start_s=sample.start_s,
            duration_s=sample.duration_s,
            text=tr.text if tr else "",
            transcript_source=tr.source if tr else "",
        )
    preds = s.scalars(
        select(Prediction).where(
            Prediction.model_version_id == model_version_id, Prediction.sample_id.in_(sample_ids)
        )
    )
    for p in preds:
        cards[p.sample_id].predictions[p.head] = {
            "label": p.label,
            "confidence": p.confidence,
            "probs": p.probs,
            "paths": p.paths,
        }
    return [cards[i] for i in sample_ids if i in cards]


def lease(
    s: Session, *, round_id: int, sample_id: int, user_id: int | None, seconds: int = 120
) -> bool:
    """Reserve a card for ``user_id`` for ``seconds``.

    Returns False, changing nothing, when another user holds an unexpired lease on it or when
    every head of the card is decided in the round (a card decided since the queue was read).

    Raises:
        QueueError: ``seconds`` under 1 (:data:`MIN_LEASE_S`), or a closed round.
    """
    _check_lease_seconds(seconds)
    rnd = _lock_round(s, round_id)
    now = utcnow()
    decided = s.scalar(
        select(func.count())
        .select_from(PseudoLabel)
        .where(
            PseudoLabel.round_id == round_id,
            PseudoLabel.sample_id == sample_id,
            PseudoLabel.head != SKIP_HEAD,
        )
    )
    if (decided or 0) >= len(rnd.thresholds):
        return False
    return _hold_lease(
        s, round_id=round_id, sample_id=sample_id, user_id=user_id, seconds=seconds, now=now
    )


def _check_lease_seconds(seconds: int) -> None:
    """Raise QueueError for a lease shorter than :data:`MIN_LEASE_S` (or NaN)."""
    if not seconds >= MIN_LEASE_S:  # also refuses NaN
        raise QueueError(f"a lease lasts at least {MIN_LEASE_S} s, got {seconds}")


def _hold_lease(
    s: Session, *, round_id: int, sample_id: int, user_id: int | None, seconds: int, now: datetime
) -> bool:
    """The lease step shared by :func:`lease` and ``label_issues.lease``: take or renew the
    sample's lease for ``user_id`` until ``now`` + ``seconds``; False, changing nothing, when
    another user holds an unexpired one."""
    held = s.scalars(
        select(ReviewLease).where(
            ReviewLease.round_id == round_id, ReviewLease.sample_id == sample_id
        )
    ).first()
    if held is not None:
        if held.user_id != user_id and _aware(held.expires_at) > now:
            return False
        held.user_id, held.expires_at = user_id, now + timedelta(seconds=seconds)
        return True
    s.add(
        ReviewLease(
            round_id=round_id,
            sample_id=sample_id,
            user_id=user_id,
            expires_at=now + timedelta(seconds=seconds),
        )
    )
    return True


def release(s: Session, *, round_id: int, sample_id: int, user_id: int | None) -> None:
    """Drop ``user_id``'s lease on a card (a skip, or leaving the card)."""
    s.execute(
        delete(ReviewLease).where(
            ReviewLease.round_id == round_id,
            ReviewLease.sample_id == sample_id,
            ReviewLease.user_id.is_not_distinct_from(user_id),
        )
    )


def _user_name(s: Session, user_id: int | None) -> str | None:
    return s.scalar(select(User.name).where(User.id == user_id)) if user_id is not None else None


def _aware(t: datetime) -> datetime:
    # SQLite returns naive datetimes for timezone-aware columns; they were stored as UTC.
    from datetime import UTC

    return t if t.tzinfo else t.replace(tzinfo=UTC)


# --------------------------------------------------------------------------- decisions


def _lock_round(s: Session, round_id: int) -> ReviewRound:
    q = select(ReviewRound).where(ReviewRound.id == round_id)
    if s.get_bind().dialect.name != "sqlite":  # SQLite: BEGIN IMMEDIATE already serialises
        q = q.with_for_update()
    rnd = s.scalars(q).one()
    if rnd.status != "open":
        raise QueueError(f"round {round_id} is {rnd.status}; decisions need an open round")
    return rnd


def decide(
    s: Session,
    *,
    round_id: int,
    sample_id: int,
    action: str,
    user_id: int | None,
    labels: dict[str, str] | None = None,
    heads: Sequence[str] | None = None,
    ms_spent: int | None = None,
    model_version_id: int | None = None,
    check_threshold: bool = False,
    confirmed_below: bool = False,
    admin_override: bool = False,
) -> list[Decision]:
    """Record one card decision and update the derived pseudo-label state, quota checked.

    A card is decided once: a head that already has a state in the round (decided by anyone
    since the card was shown) is refused, and so is a card another user holds an unexpired lease
    on, unless ``admin_override`` (the user must be an admin; the replaced state is written to the
    audit log and the decision marked ``admin_redecide``).

    Args:
        action: ``accept`` / ``reject`` for ``heads`` (default: every head of the round still
            undecided on this card), or ``skip`` for the whole card (it goes to the end of the
            queue and its lease is released).
        labels: head -> class to accept instead of the prediction (an override).
        model_version_id: whose prediction is decided on (label when no override, confidence,
            provenance); default the round's model.
        check_threshold: refuse to accept a predicted class whose confidence is under the
            round's threshold for its head, unless ``confirmed_below`` (then the decision is
            marked ``below_threshold``). A class set in ``labels`` is a human label: no check.
    Raises:
        QuotaFull: accepting would pass a class quota; nothing is written.
        AlreadyDecided: a head to decide (or, by default, every head) is decided already.
        CardLeased: another user holds the card.
        BelowThreshold: see ``check_threshold``.
        QueueError: unknown action, closed round, no prediction to accept, or an
            ``admin_override`` by a user who is not an admin.
    """
    if action not in ("accept", "reject", "skip"):
        raise QueueError(f"unknown action {action!r}")
    rnd = _lock_round(s, round_id)
    now = utcnow()
    if admin_override:
        _require_admin(s, user_id)
    held = _foreign_lease(s, round_id, sample_id, user_id, now, admin_override=admin_override)
    states = _card_states(s, round_id, sample_id)
    undecided, wanted, conflicts = _heads_to_decide(list(rnd.thresholds), states, action, heads)
    if conflicts:
        wanted = _redecide_or_refuse(
            s,
            rnd,
            sample_id,
            states,
            conflicts,
            wanted=wanted,
            heads=heads,
            action=action,
            user_id=user_id,
            admin_override=admin_override,
        )
    card = _CardDecision(
        rnd=rnd,
        sample_id=sample_id,
        action=action,
        user_id=user_id,
        labels=labels or {},
        ms_spent=ms_spent,
        now=now,
        override="admin_redecide" if admin_override and (conflicts or held) else None,
        model_version_id=model_version_id or rnd.model_version_id,
        check_threshold=check_threshold,
        confirmed_below=confirmed_below,
    )
    if action == "skip":
        return [_record_skip(s, card, states.get(SKIP_HEAD))]
    out = _decide_heads(s, card, wanted, states)
    if len(undecided) <= len([h for h in wanted if h in undecided]):  # the card is done
        _drop_card_leases(s, round_id, sample_id)
    return out


@dataclass(frozen=True)
class _CardDecision:
    """One ``decide`` call as every row it writes shares it (``override``: the mark of its rows)."""

    rnd: ReviewRound
    sample_id: int
    action: str
    user_id: int | None
    labels: dict[str, str]
    ms_spent: int | None
    now: datetime
    override: str | None
    model_version_id: int
    check_threshold: bool
    confirmed_below: bool


def _require_admin(s: Session, user_id: int | None) -> None:
    """Refuse an admin override by a user who is not an admin. Raises QueueError."""
    if s.scalar(select(User.role).where(User.id == user_id)) != "admin":
        raise QueueError("only admins may replace another user's decision")


def _foreign_lease(
    s: Session,
    round_id: int,
    sample_id: int,
    user_id: int | None,
    now: datetime,
    *,
    admin_override: bool,
) -> ReviewLease | None:
    """Another user's lease on the card (expired or not), or None. Raises CardLeased when it
    is unexpired and not ``admin_override``."""
    held = s.scalars(
        select(ReviewLease).where(
            ReviewLease.round_id == round_id,
            ReviewLease.sample_id == sample_id,
            ReviewLease.user_id.is_distinct_from(user_id),
        )
    ).first()
    if held is not None and _aware(held.expires_at) > now and not admin_override:
        raise CardLeased(sample_id, _user_name(s, held.user_id))
    return held


def _card_states(s: Session, round_id: int, sample_id: int) -> dict[str, PseudoLabel]:
    """The card's current state per head (the skip marker included) in the round; raises none."""
    return {
        p.head: p
        for p in s.scalars(
            select(PseudoLabel).where(
                PseudoLabel.round_id == round_id, PseudoLabel.sample_id == sample_id
            )
        )
    }


def _heads_to_decide(
    round_heads: list[str],
    states: dict[str, PseudoLabel],
    action: str,
    heads: Sequence[str] | None,
) -> tuple[list[str], list[str], list[str]]:
    """(undecided, wanted, conflicts): the round's heads with no state, the heads to decide,
    and those of them decided already (none when defaulting while a head is open); raises none."""
    undecided = [h for h in round_heads if h not in states]
    wanted = list(heads) if heads else (undecided if action != "skip" else [])
    conflicts = [h for h in (wanted if heads else round_heads) if h in states and h != SKIP_HEAD]
    if heads is None and undecided:
        conflicts = []
    return undecided, wanted, conflicts


def _redecide_or_refuse(
    s: Session,
    rnd: ReviewRound,
    sample_id: int,
    states: dict[str, PseudoLabel],
    conflicts: list[str],
    *,
    wanted: list[str],
    heads: Sequence[str] | None,
    action: str,
    user_id: int | None,
    admin_override: bool,
) -> list[str]:
    """Refuse deciding decided heads, or, on ``admin_override``, audit the states it replaces
    and return the heads to decide (every head of the round when none was named). Raises
    AlreadyDecided without ``admin_override``."""
    if not admin_override:
        first = states[conflicts[0]]
        by = s.scalar(select(Decision.user_id).where(Decision.id == first.decision_id))
        raise AlreadyDecided(sample_id, conflicts[0], first.state, _user_name(s, by))
    if not heads:
        wanted = list(rnd.thresholds)
    audit(
        s,
        user_id=user_id,
        action="admin_redecide",
        entity="sample",
        entity_id=sample_id,
        payload={
            "round_id": rnd.id,
            "replaced": {h: [states[h].state, states[h].label] for h in conflicts},
            "action": action,
        },
    )
    return wanted


def _record_skip(s: Session, card: _CardDecision, row: PseudoLabel | None) -> Decision:
    """Write a skip decision and the card's skip marker, and release the user's lease; raises
    none."""
    d = Decision(
        round_id=card.rnd.id,
        sample_id=card.sample_id,
        head=None,
        action="skip",
        user_id=card.user_id,
        ms_spent=card.ms_spent,
        created_at=card.now,
        override=card.override,
    )
    s.add(d)
    s.flush()
    _set_state(s, card.rnd, card.sample_id, SKIP_HEAD, "", "skipped", None, d.id, row=row)
    release(s, round_id=card.rnd.id, sample_id=card.sample_id, user_id=card.user_id)
    return d


def _decide_heads(
    s: Session, card: _CardDecision, wanted: list[str], states: dict[str, PseudoLabel]
) -> list[Decision]:
    """Write an accept / reject decision and its state for each head in ``wanted``, in order.
    Raises QueueError (no prediction and no label), QuotaFull, BelowThreshold."""
    preds = {
        p.head: p
        for p in s.scalars(
            select(Prediction).where(
                Prediction.model_version_id == card.model_version_id,
                Prediction.sample_id == card.sample_id,
            )
        )
    }
    out = []
    for head in wanted:
        pred = preds.get(head)
        label = card.labels.get(head) or (pred.label if pred else None)
        if label is None:
            raise QueueError(f"sample {card.sample_id} has no {head} prediction to {card.action}")
        mark = (
            _accept_mark(s, card, head, label, pred) if card.action == "accept" else card.override
        )
        d = Decision(
            round_id=card.rnd.id,
            sample_id=card.sample_id,
            head=head,
            label=label,
            action=card.action,
            user_id=card.user_id,
            ms_spent=card.ms_spent,
            created_at=card.now,
            override=mark,
        )
        s.add(d)
        s.flush()
        state = "accepted" if card.action == "accept" else "rejected"
        conf = pred.confidence if pred else None
        mv_id = card.model_version_id
        _set_state(
            s, card.rnd, card.sample_id, head, label, state, conf, d.id, mv_id, row=states.get(head)
        )
        out.append(d)
    return out


def _accept_mark(
    s: Session, card: _CardDecision, head: str, label: str, pred: Prediction | None
) -> str | None:
    """Check that ``label`` may be accepted on ``head`` and return the decision's mark
    (``below_threshold`` when confirmed under the threshold). Raises QuotaFull, BelowThreshold."""
    _check_quota(s, card.rnd, head, label, card.sample_id)
    human = bool(card.labels.get(head)) and label != (pred.label if pred else None)
    th = thr.threshold_for(card.rnd.thresholds.get(head, 0.0), pred.label if pred else label)
    if card.check_threshold and not human and pred is not None and pred.confidence < th:
        if not card.confirmed_below:
            raise BelowThreshold(head, label, float(pred.confidence), th)
        return card.override or "below_threshold"
    return card.override


def _drop_card_leases(s: Session, round_id: int, sample_id: int) -> None:
    """Delete every lease on a card left with no undecided head; raises none."""
    s.execute(
        delete(ReviewLease).where(
            ReviewLease.round_id == round_id, ReviewLease.sample_id == sample_id
        )
    )


def _check_quota(s: Session, rnd: ReviewRound, head: str, label: str, sample_id: int) -> None:
    quota = int(rnd.quotas.get(head, {}).get(label, 0))
    accepted = (
        s.scalar(
            select(func.count())
            .select_from(PseudoLabel)
            .where(
                PseudoLabel.round_id == rnd.id,
                PseudoLabel.head == head,
                PseudoLabel.label == label,
                PseudoLabel.state == "accepted",
                PseudoLabel.sample_id != sample_id,
            )
        )
        or 0
    )
    if accepted + 1 > quota:
        raise QuotaFull(head, label, quota, accepted)


_UNREAD = object()  # _set_state: the caller has not read the head's state


def _set_state(
    s: Session,
    rnd: ReviewRound,
    sample_id: int,
    head: str,
    label: str,
    state: str,
    confidence: float | None,
    decision_id: int,
    model_version_id: int | None = None,
    *,
    row: PseudoLabel | None | object = _UNREAD,
) -> None:
    """Write the state of one head of a card; ``row`` is its current state when the caller has
    read it already (None: it has none), else it is read here."""
    if row is _UNREAD:
        row = s.scalars(
            select(PseudoLabel).where(
                PseudoLabel.round_id == rnd.id,
                PseudoLabel.sample_id == sample_id,
                PseudoLabel.head == head,
            )
        ).first()
    if row is None:
        row = PseudoLabel(
            round_id=rnd.id,
            sample_id=sample_id,
            head=head,
            model_version_id=model_version_id or rnd.model_version_id,
        )
        s.add(row)
    state_row = cast(PseudoLabel, row)
    state_row.label, state_row.state = label, state
    state_row.confidence, state_row.decision_id = confidence, decision_id


@dataclass
class BulkResult:
    """What one bulk accept did. ``leased``: sample ids skipped because another user held them;
    ``decided``: items skipped because their head was decided or the card skipped;
    ``full``: items skipped because their class had no quota left; ``batch_id``: the audit
    event that names the bulk (each decision carries it; None when nothing was accepted)."""

    accepted: int = 0
    leased: list[int] = field(default_factory=list)
    decided: int = 0
    full: int = 0
    batch_id: int | None = None


def bulk_accept(
    s: Session,
    *,
    round_id: int,
    items: Sequence[tuple[int, str, str]],
    user_id: int | None,
    model_version_id: int | None = None,
) -> BulkResult:
    """Accept many (sample id, head, class) pseudo-labels in the caller's one write transaction.

    Every quota is re-checked here, against the counts inside this transaction (``BEGIN
    IMMEDIATE`` on SQLite, the round row locked on PostgreSQL), so nothing decided since a preview
    can push a class past its quota: an item whose class is full, whose (sample, head) is already
    decided in the round, whose card was skipped, whose card another user holds an unexpired
    lease on (reported in ``leased``), or whose sample is not a pool sample of the model is
    skipped. Items are taken in the given order (a preview lists them most confident first). Each
    accepted item writes one ``accept`` decision carrying the bulk's ``batch_id`` (so undo takes
    the bulk back as one unit) and its pseudo-label; the leases of cards left with no undecided
    head are released.

    Raises:
        QueueError: a closed round.
    """
    rnd = _lock_round(s, round_id)
    mv_id = model_version_id or rnd.model_version_id
    items = list(dict.fromkeys((int(i), str(h), str(c)) for i, h, c in items))
    result = BulkResult()
    if not items:
        return result
    remaining = _quota_left(s, rnd)
    now = utcnow()
    seen = _bulk_lookup(s, round_id, mv_id, sorted({i for i, _, _ in items}), user_id, now)
    chosen = _bulk_choose(items, seen, remaining, result)
    event = _bulk_event(s, round_id, user_id, mv_id, asked=len(items), result=result)
    if not chosen:
        return result
    result.batch_id = event.id
    _bulk_write(s, round_id, user_id, mv_id, now, event.id, chosen, seen.conf)
    _release_done_cards(s, rnd, chosen, seen.taken)
    s.flush()
    return result


@dataclass
class _BulkSeen:
    """What the store holds for a bulk's samples: the (sample, head) pairs with a state in the
    round, the model's pool confidences per (sample, head), and the cards others hold."""

    taken: set[tuple[int, str]] = field(default_factory=set)
    conf: dict[tuple[int, str], float] = field(default_factory=dict)
    leased: set[int] = field(default_factory=set)


def _quota_left(s: Session, rnd: ReviewRound) -> dict[str, dict[str, int]]:
    """Per head and class, how many more accepts the round's quota allows; raises none."""
    counts = accepted_counts(s, round_id=rnd.id)
    return {
        h: {c: int(n) - counts.get(h, {}).get(c, 0) for c, n in per.items()}
        for h, per in rnd.quotas.items()
    }


def _bulk_lookup(
    s: Session,
    round_id: int,
    mv_id: int,
    ids: list[int],
    user_id: int | None,
    now: datetime,
) -> _BulkSeen:
    """Read states, pool predictions and others' unexpired leases of ``ids``, 500 at a time;
    raises none."""
    seen = _BulkSeen()
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        for sid, head in s.execute(
            select(PseudoLabel.sample_id, PseudoLabel.head).where(
                PseudoLabel.round_id == round_id, PseudoLabel.sample_id.in_(chunk)
            )
        ):
            seen.taken.add((sid, head))
        for sid, c_head, c in s.execute(
            select(Prediction.sample_id, Prediction.head, Prediction.confidence)
            .join(Sample, Sample.id == Prediction.sample_id)
            .where(
                Prediction.model_version_id == mv_id,
                Prediction.sample_id.in_(chunk),
                Sample.split == "pool",
            )
        ):
            seen.conf[(sid, c_head)] = c
        seen.leased.update(
            s.scalars(
                select(ReviewLease.sample_id).where(
                    ReviewLease.round_id == round_id,
                    ReviewLease.sample_id.in_(chunk),
                    ReviewLease.expires_at > now,
                    ReviewLease.user_id.is_distinct_from(user_id),
                )
            )
        )
    return seen


def _bulk_choose(
    items: list[tuple[int, str, str]],
    seen: _BulkSeen,
    remaining: dict[str, dict[str, int]],
    result: BulkResult,
) -> list[tuple[int, str, str]]:
    """The items to accept, in order, within the quota left; counts the others in ``result``
    and marks the chosen in ``seen.taken`` and ``remaining``. Raises none."""
    skipped_cards = {sid for sid, head in seen.taken if head == SKIP_HEAD}
    chosen: list[tuple[int, str, str]] = []
    for sid, head, label in items:
        if sid in seen.leased:
            continue
        if (sid, head) in seen.taken or sid in skipped_cards:
            result.decided += 1
            continue
        if (sid, head) not in seen.conf:
            continue
        left = remaining.get(head, {}).get(label, 0)
        if left <= 0:
            result.full += 1
            continue
        remaining[head][label] = left - 1
        seen.taken.add((sid, head))
        chosen.append((sid, head, label))
    result.leased = sorted(seen.leased & {sid for sid, _, _ in items})
    result.accepted = len(chosen)
    return chosen


def _bulk_event(
    s: Session, round_id: int, user_id: int | None, mv_id: int, *, asked: int, result: BulkResult
) -> AuditEvent:
    """Write (and flush, for its id) the audit event naming the bulk; raises none."""
    event = AuditEvent(
        user_id=user_id,
        action="bulk_accept",
        entity="review_round",
        entity_id=round_id,
        payload={
            "asked": asked,
            "accepted": result.accepted,
            "leased": result.leased[:100],
            "model_version_id": mv_id,
        },
    )
    s.add(event)
    s.flush()
    return event


def _bulk_write(
    s: Session,
    round_id: int,
    user_id: int | None,
    mv_id: int,
    now: datetime,
    batch_id: int,
    chosen: list[tuple[int, str, str]],
    conf: dict[tuple[int, str], float],
) -> None:
    """Write one ``accept`` decision per chosen item (flushed, for their ids), then its
    accepted pseudo-label; raises none."""
    decisions = [
        Decision(
            round_id=round_id,
            sample_id=sid,
            head=head,
            label=label,
            action="accept",
            user_id=user_id,
            created_at=now,
            batch_id=batch_id,
        )
        for sid, head, label in chosen
    ]
    s.add_all(decisions)
    s.flush()
    s.add_all(
        PseudoLabel(
            round_id=round_id,
            sample_id=d.sample_id,
            head=d.head,
            label=d.label,
            state="accepted",
            confidence=conf[(d.sample_id, str(d.head))],
            decision_id=d.id,
            model_version_id=mv_id,
        )
        for d in decisions
    )


def _release_done_cards(
    s: Session, rnd: ReviewRound, chosen: list[tuple[int, str, str]], taken: set[tuple[int, str]]
) -> None:
    """Delete the leases of the chosen cards that no longer have an undecided head; raises
    none."""
    n_heads = len(rnd.thresholds)
    per_card: dict[int, int] = {}
    for sid, head in taken:
        if head != SKIP_HEAD:
            per_card[sid] = per_card.get(sid, 0) + 1
    done = sorted({sid for sid, _, _ in chosen if per_card.get(sid, 0) >= n_heads})
    for start in range(0, len(done), 500):
        s.execute(
            delete(ReviewLease).where(
                ReviewLease.round_id == rnd.id,
                ReviewLease.sample_id.in_(done[start : start + 500]),
            )
        )


def _latest_decision(
    s: Session, live: Select[Decision], *, decision_id: int | None, user_id: int | None
) -> Decision | None:
    """The decision ``decision_id`` among ``live`` (a select of live decisions), else the
    latest of ``user_id``'s (of anyone's when None); what :func:`undo` and ``label_issues.undo``
    compensate."""
    stmt = live
    if decision_id is not None:
        stmt = stmt.where(Decision.id == decision_id)
    elif user_id is not None:
        stmt = stmt.where(Decision.user_id == user_id)
    return s.scalars(stmt.order_by(Decision.id.desc()).limit(1)).first()


def undo(
    s: Session, *, round_id: int, user_id: int | None, decision_id: int | None = None
) -> int | None:
    """Compensate the user's latest card decision (or the card of ``decision_id``); when that
    decision belongs to a bulk accept, every decision of the bulk.

    Appends one ``undo`` decision per compensated decision and removes the derived pseudo-label
    rows, so the card returns to the queue. Returns the sample id (of the latest decision of a
    bulk), or None if nothing to undo.

    Raises:
        QueueError: a closed round.
    """
    _lock_round(s, round_id)
    undone = select(Decision.undoes_id).where(
        Decision.round_id == round_id, Decision.undoes_id.is_not(None)
    )
    live = select(Decision).where(
        Decision.round_id == round_id, Decision.action != "undo", Decision.id.not_in(undone)
    )
    last = _latest_decision(s, live, decision_id=decision_id, user_id=user_id)
    if last is None:
        return None
    if last.batch_id is not None:  # a bulk accept is undone as one unit
        group = s.scalars(live.where(Decision.batch_id == last.batch_id)).all()
    else:  # every head of that card decision, whichever of its rows ``decision_id`` named
        group = s.scalars(
            live.where(Decision.sample_id == last.sample_id, Decision.created_at == last.created_at)
        ).all()
    group = group or [last]
    now = utcnow()
    for d in group:
        s.add(
            Decision(
                round_id=round_id,
                sample_id=d.sample_id,
                head=d.head,
                label=d.label,
                action="undo",
                undoes_id=d.id,
                user_id=user_id,
                created_at=now,
            )
        )
    s.execute(delete(PseudoLabel).where(PseudoLabel.decision_id.in_([d.id for d in group])))
    return last.sample_id


def history(
    s: Session, *, round_id: int, user_id: int | None = None, limit: int = 10
) -> list[dict[str, Any]]:
    """The user's last ``limit`` card decisions, newest first, each with ``undone`` set; a bulk
    accept is one entry (``action`` ``bulk accept``, ``cards`` its number of cards).

    Reads only the newest rows (``ix_decision_round_user`` is in id order per round and user) and
    the undo decisions that name them (``ix_decision_undoes``), so it does not grow with the
    round's history.
    """
    q = (
        select(Decision, Sample.utt_id)
        .join(Sample, Sample.id == Decision.sample_id)
        .where(Decision.round_id == round_id, Decision.action != "undo")
    )
    if user_id is not None:
        q = q.where(Decision.user_id == user_id)
    rows = s.execute(q.order_by(Decision.id.desc()).limit(limit * 4)).all()
    undone = set(
        s.scalars(select(Decision.undoes_id).where(Decision.undoes_id.in_([d.id for d, _ in rows])))
    )
    cards: dict[tuple, dict[str, Any]] = {}
    for d, utt in rows:
        key = ("bulk", d.batch_id) if d.batch_id is not None else (d.sample_id, d.created_at)
        card = cards.setdefault(
            key,
            {
                "decision_id": d.id,
                "sample_id": d.sample_id,
                "utt_id": utt,
                "action": "bulk accept" if d.batch_id is not None else d.action,
                "labels": {},
                "at": d.created_at,
                "undone": d.id in undone,
                "cards": set(),
                "override": d.override,
            },
        )
        card["cards"].add(d.sample_id)
        if d.head and d.batch_id is None:
            card["labels"][d.head] = d.label
    out = list(cards.values())[:limit]
    for card in out:
        card["cards"] = len(card["cards"])
    return out


# --------------------------------------------------------------------------- jobs


ACTIVE_JOB_STATES = ("queued", "running")


def active_job(s: Session, *, kind: str, project_id: int | None = None) -> Job | None:
    q = select(Job).where(Job.kind == kind, Job.status.in_(ACTIVE_JOB_STATES))
    if project_id is not None:
        q = q.where(Job.project_id == project_id)
    return s.scalars(q.order_by(Job.id.desc())).first()


def latest_jobs(
    s: Session, *, project_id: int | None = None, limit: int = 10, kind: str | None = None
) -> list[Job]:
    """The newest jobs, of one ``kind`` when given."""
    q = select(Job)
    if project_id is not None:
        q = q.where(Job.project_id == project_id)
    if kind is not None:
        q = q.where(Job.kind == kind)
    return list(s.scalars(q.order_by(Job.id.desc()).limit(limit)))
