"""Shared reads and writes of the store: the review queue, decisions under quotas, undo, jobs.

Every function takes an open ``Session`` first and the rest by keyword. Write functions expect a
session from ``Store.write()`` (``BEGIN IMMEDIATE`` on SQLite), so a quota check and the decision
it guards happen in one transaction: two annotators can never push a class past its quota,
whatever the timing. On PostgreSQL the round row is locked with ``SELECT ... FOR UPDATE`` instead.

State of a card in a round lives in ``pseudo_label`` (derived from the append-only ``decision``
log): one row per head with state ``accepted`` or ``rejected``, or one row with head ``*`` and
state ``skipped``. A card with no row is still in the queue. Undo appends compensating ``undo``
decisions and removes the derived rows; decisions are never deleted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, exists, func, or_, select, update
from sqlalchemy.orm import Session

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


# --------------------------------------------------------------------------- projects & users


def get_project(s: Session, *, name: str) -> Project | None:
    return s.scalars(select(Project).where(Project.name == name)).first()


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


def promote(s: Session, *, model_version_id: int, user_id: int | None = None) -> None:
    """Make one model version the promoted one; the previously promoted becomes archived."""
    mv = s.get(ModelVersion, model_version_id)
    s.execute(
        update(ModelVersion)
        .where(ModelVersion.project_id == mv.project_id, ModelVersion.status == "promoted")
        .values(status="archived")
    )
    mv.status = "promoted"
    audit(s, user_id=user_id, action="promote", entity="model_version", entity_id=mv.id)


# --------------------------------------------------------------------------- rounds & quotas


def open_round(
    s: Session,
    *,
    project_id: int,
    model_version_id: int,
    thresholds: dict[str, float],
    quotas: dict[str, dict[str, int]],
    user_id: int | None = None,
) -> ReviewRound:
    """Close the project's open rounds and open a new one."""
    s.execute(
        update(ReviewRound)
        .where(ReviewRound.project_id == project_id, ReviewRound.status == "open")
        .values(status="closed")
    )
    rnd = ReviewRound(
        project_id=project_id,
        model_version_id=model_version_id,
        thresholds=thresholds,
        quotas=quotas,
        created_by=user_id,
    )
    s.add(rnd)
    s.flush()
    audit(
        s,
        user_id=user_id,
        action="open_round",
        entity="review_round",
        entity_id=rnd.id,
        payload={"thresholds": thresholds, "quotas": quotas},
    )
    return rnd


def active_round(s: Session, *, project_id: int) -> ReviewRound | None:
    return s.scalars(
        select(ReviewRound)
        .where(ReviewRound.project_id == project_id, ReviewRound.status == "open")
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
    rnd = s.get(ReviewRound, round_id)
    counts = accepted_counts(s, round_id=round_id)
    out: dict[str, dict[str, tuple[int, int]]] = {}
    for head, per_class in rnd.quotas.items():
        labels = set(per_class) | set(counts.get(head, {}))
        out[head] = {c: (counts.get(head, {}).get(c, 0), int(per_class.get(c, 0))) for c in labels}
    return out


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


# --------------------------------------------------------------------------- the queue


@dataclass(frozen=True)
class QueueFilter:
    """What the review queue shows. ``head`` narrows thresholds, class and confidence to one head;
    None means a card qualifies when any head reaches its threshold."""

    head: str | None = None
    label: str | None = None
    min_confidence: float | None = None
    max_confidence: float | None = None
    sample_ids: tuple[int, ...] | None = None


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
    )  # head -> label, conf, probs


def _candidate_query(rnd: ReviewRound, flt: QueueFilter, *, user_id: int | None, now: datetime):
    heads = [flt.head] if flt.head else list(rnd.thresholds)
    conds = []
    for head in heads:
        c = [Prediction.head == head, Prediction.confidence >= float(rnd.thresholds[head])]
        if flt.label:
            c.append(Prediction.label == flt.label)
        if flt.min_confidence is not None:
            c.append(Prediction.confidence >= flt.min_confidence)
        if flt.max_confidence is not None:
            c.append(Prediction.confidence <= flt.max_confidence)
        conds.append(and_(*c))
    decided = exists().where(
        PseudoLabel.round_id == rnd.id, PseudoLabel.sample_id == Prediction.sample_id
    )
    leased = exists().where(
        ReviewLease.round_id == rnd.id,
        ReviewLease.sample_id == Prediction.sample_id,
        ReviewLease.expires_at > now,
        ReviewLease.user_id != user_id,
    )
    q = (
        select(Prediction.sample_id, func.max(Prediction.confidence).label("conf"))
        .join(Sample, Sample.id == Prediction.sample_id)
        .where(
            Prediction.model_version_id == rnd.model_version_id,
            Sample.split == "pool",  # only unlabelled samples are pseudo-label candidates
            or_(*conds),
            ~decided,
            ~leased,
        )
        .group_by(Prediction.sample_id)
    )
    if flt.sample_ids is not None:
        q = q.where(Prediction.sample_id.in_(flt.sample_ids))
    return q


def queue(
    s: Session,
    *,
    round_id: int,
    flt: QueueFilter = QueueFilter(),
    user_id: int | None = None,
    limit: int = 2,
    exclude: Iterable[int] = (),
) -> list[int]:
    """Sample ids of the next undecided cards, most confident first, not leased by others."""
    rnd = s.get(ReviewRound, round_id)
    q = _candidate_query(rnd, flt, user_id=user_id, now=utcnow())
    exclude = tuple(exclude)
    if exclude:
        q = q.where(Prediction.sample_id.not_in(exclude))
    q = q.order_by(func.max(Prediction.confidence).desc(), Prediction.sample_id).limit(limit)
    return [row.sample_id for row in s.execute(q)]


def queue_size(s: Session, *, round_id: int, flt: QueueFilter = QueueFilter()) -> int:
    rnd = s.get(ReviewRound, round_id)
    sub = _candidate_query(rnd, flt, user_id=None, now=utcnow()).subquery()
    return s.scalar(select(func.count()).select_from(sub)) or 0


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
        }
    return [cards[i] for i in sample_ids if i in cards]


def lease(
    s: Session, *, round_id: int, sample_id: int, user_id: int | None, seconds: int = 120
) -> bool:
    """Reserve a card for ``user_id``; False if another user holds an unexpired lease on it."""
    now = utcnow()
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
) -> list[Decision]:
    """Record one card decision and update the derived pseudo-label state, quota checked.

    Args:
        action: ``accept`` / ``reject`` for ``heads`` (default: every head of the round), or
            ``skip`` for the whole card.
        labels: head -> class to accept instead of the prediction (an override).
    Raises:
        QuotaFull: accepting would pass a class quota; nothing is written.
        QueueError: unknown action, closed round, or no prediction to accept.
    """
    if action not in ("accept", "reject", "skip"):
        raise QueueError(f"unknown action {action!r}")
    rnd = _lock_round(s, round_id)
    now = utcnow()
    if action == "skip":
        d = Decision(
            round_id=round_id,
            sample_id=sample_id,
            head=None,
            action="skip",
            user_id=user_id,
            ms_spent=ms_spent,
            created_at=now,
        )
        s.add(d)
        s.flush()
        _set_state(s, rnd, sample_id, SKIP_HEAD, "", "skipped", None, d.id)
        return [d]
    heads = list(heads or rnd.thresholds)
    preds = {
        p.head: p
        for p in s.scalars(
            select(Prediction).where(
                Prediction.model_version_id == rnd.model_version_id,
                Prediction.sample_id == sample_id,
            )
        )
    }
    out = []
    for head in heads:
        pred = preds.get(head)
        label = (labels or {}).get(head) or (pred.label if pred else None)
        if label is None:
            raise QueueError(f"sample {sample_id} has no {head} prediction to {action}")
        if action == "accept":
            _check_quota(s, rnd, head, label, sample_id)
        d = Decision(
            round_id=round_id,
            sample_id=sample_id,
            head=head,
            label=label,
            action=action,
            user_id=user_id,
            ms_spent=ms_spent,
            created_at=now,
        )
        s.add(d)
        s.flush()
        state = "accepted" if action == "accept" else "rejected"
        _set_state(s, rnd, sample_id, head, label, state, pred.confidence if pred else None, d.id)
        out.append(d)
    s.execute(
        delete(ReviewLease).where(
            ReviewLease.round_id == round_id, ReviewLease.sample_id == sample_id
        )
    )
    return out


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


def _set_state(
    s: Session,
    rnd: ReviewRound,
    sample_id: int,
    head: str,
    label: str,
    state: str,
    confidence: float | None,
    decision_id: int,
) -> None:
    row = s.scalars(
        select(PseudoLabel).where(
            PseudoLabel.round_id == rnd.id,
            PseudoLabel.sample_id == sample_id,
            PseudoLabel.head == head,
        )
    ).first()
    if row is None:
        row = PseudoLabel(
            round_id=rnd.id, sample_id=sample_id, head=head, model_version_id=rnd.model_version_id
        )
        s.add(row)
    row.label, row.state, row.confidence, row.decision_id = label, state, confidence, decision_id


def undo(
    s: Session, *, round_id: int, user_id: int | None, decision_id: int | None = None
) -> int | None:
    """Compensate the user's latest card decision (or the card of ``decision_id``).

    Appends one ``undo`` decision per compensated decision and removes the derived pseudo-label
    rows, so the card returns to the queue. Returns the sample id, or None if nothing to undo.
    """
    _lock_round(s, round_id)
    undone = select(Decision.undoes_id).where(
        Decision.round_id == round_id, Decision.undoes_id.is_not(None)
    )
    live = select(Decision).where(
        Decision.round_id == round_id, Decision.action != "undo", Decision.id.not_in(undone)
    )
    q = live
    if decision_id is not None:
        q = q.where(Decision.id == decision_id)
    elif user_id is not None:
        q = q.where(Decision.user_id == user_id)
    last = s.scalars(q.order_by(Decision.id.desc()).limit(1)).first()
    if last is None:
        return None
    # every head of that card decision, whichever of its rows ``decision_id`` named
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
    """The user's last ``limit`` card decisions, newest first, each with ``undone`` set."""
    undone = set(
        s.scalars(
            select(Decision.undoes_id).where(
                Decision.round_id == round_id, Decision.undoes_id.is_not(None)
            )
        )
    )
    q = (
        select(Decision, Sample.utt_id)
        .join(Sample, Sample.id == Decision.sample_id)
        .where(Decision.round_id == round_id, Decision.action != "undo")
    )
    if user_id is not None:
        q = q.where(Decision.user_id == user_id)
    rows = s.execute(q.order_by(Decision.id.desc()).limit(limit * 4)).all()
    cards: dict[tuple[int, datetime], dict[str, Any]] = {}
    for d, utt in rows:
        key = (d.sample_id, d.created_at)
        card = cards.setdefault(
            key,
            {
                "decision_id": d.id,
                "sample_id": d.sample_id,
                "utt_id": utt,
                "action": d.action,
                "labels": {},
                "at": d.created_at,
                "undone": d.id in undone,
            },
        )
        if d.head:
            card["labels"][d.head] = d.label
    return list(cards.values())[:limit]


# --------------------------------------------------------------------------- jobs


ACTIVE_JOB_STATES = ("queued", "running")


def active_job(s: Session, *, kind: str, project_id: int | None = None) -> Job | None:
    q = select(Job).where(Job.kind == kind, Job.status.in_(ACTIVE_JOB_STATES))
    if project_id is not None:
        q = q.where(Job.project_id == project_id)
    return s.scalars(q.order_by(Job.id.desc())).first()


def latest_jobs(s: Session, *, project_id: int | None = None, limit: int = 10) -> list[Job]:
    q = select(Job)
    if project_id is not None:
        q = q.where(Job.project_id == project_id)
    return list(s.scalars(q.order_by(Job.id.desc()).limit(limit)))
