"""SQLAlchemy 2 typed ORM for the MEIJU Review store.

One module holds every table (DESIGN.md, "The store"). Media and feature tensors stay on disk: rows
hold paths, hashes and shapes, never blobs. ``decision`` is append-only; ``pseudo_label`` is the
current state derived from it; ``job`` is the single source of truth for background work.

Times are timezone-aware UTC. JSON columns hold plain lists and dicts.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Stable constraint names on SQLite and PostgreSQL alike (Alembic batch mode needs them).
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

ROLES = ("annotator", "admin")
SPLITS = ("train", "valid", "test", "pool")
TRANSCRIPT_SOURCES = ("official", "asr", "manual")
MODEL_STATUSES = ("candidate", "promoted", "archived")
DECISION_ACTIONS = ("accept", "reject", "skip", "undo", "keep", "relabel")
JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")


def utcnow() -> datetime:
    """Current time, timezone-aware UTC."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class User(Base):
    """A person who reviews or administers; ``role`` is ``annotator`` or ``admin``."""

    __tablename__ = "user"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(80), unique=True)
    role: Mapped[str] = mapped_column(String(16), default="annotator")
    password_hash: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Project(Base):
    """A labelled corpus with its own label schema (heads and class names, in index order)."""

    __tablename__ = "project"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(120), unique=True)
    label_schema: Mapped[dict[str, Any]] = mapped_column(JSON)
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Sample(Base):
    """One utterance: its split, media paths and duration (seconds).

    ``withheld`` keeps labels the UI must never show (e.g. the demo pool's CPED labels), used only
    by benchmarks to measure pseudo-label precision.
    """

    __tablename__ = "sample"
    __table_args__ = (
        UniqueConstraint("project_id", "utt_id"),
        Index("ix_sample_project_split", "project_id", "split"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("project.id", ondelete="CASCADE"))
    utt_id: Mapped[str] = mapped_column(String(200))
    split: Mapped[str] = mapped_column(String(8))
    source: Mapped[str] = mapped_column(String(40), default="")
    group_id: Mapped[str | None] = mapped_column(String(120))  # dialogue / session id
    video_path: Mapped[str | None] = mapped_column(String(1000))
    audio_path: Mapped[str | None] = mapped_column(String(1000))
    start_s: Mapped[float | None] = mapped_column(Float)
    duration_s: Mapped[float | None] = mapped_column(Float)
    withheld: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    transcript: Mapped[Transcript | None] = relationship(back_populates="sample", uselist=False)


class Transcript(Base):
    """The text of a sample: the original and its source, the current text and its version.

    ``version`` is an optimistic lock: a save against a stale version raises ``StaleDataError``.
    """

    __tablename__ = "transcript"
    id: Mapped[int] = mapped_column(primary_key=True)
    sample_id: Mapped[int] = mapped_column(ForeignKey("sample.id", ondelete="CASCADE"), unique=True)
    original_text: Mapped[str] = mapped_column(Text, default="")
    source: Mapped[str] = mapped_column(String(16), default="official")
    text: Mapped[str] = mapped_column(Text, default="")
    version: Mapped[int] = mapped_column(Integer, default=1)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_by: Mapped[int | None] = mapped_column(ForeignKey("user.id"))

    sample: Mapped[Sample] = relationship(back_populates="transcript")
    __mapper_args__ = {"version_id_col": version}


class TranscriptEdit(Base):
    """One saved change of a transcript; ``kind`` is ``punctuation`` (only punctuation or spaces
    changed) or ``lexical``."""

    __tablename__ = "transcript_edit"
    id: Mapped[int] = mapped_column(primary_key=True)
    transcript_id: Mapped[int] = mapped_column(ForeignKey("transcript.id", ondelete="CASCADE"))
    before: Mapped[str] = mapped_column(Text)
    after: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(16))
    editor_id: Mapped[int | None] = mapped_column(ForeignKey("user.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class GoldLabel(Base):
    """A human label for one head of one sample (``source``: e.g. ``official``, ``cped``)."""

    __tablename__ = "gold_label"
    __table_args__ = (UniqueConstraint("sample_id", "head"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    sample_id: Mapped[int] = mapped_column(ForeignKey("sample.id", ondelete="CASCADE"))
    head: Mapped[str] = mapped_column(String(32))
    label: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(32), default="official")


class FeatureSet(Base):
    """Features made by one extractor with one set of settings; ``dims`` maps modality to D."""

    __tablename__ = "feature_set"
    __table_args__ = (UniqueConstraint("project_id", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("project.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(80))
    extractor: Mapped[str] = mapped_column(String(40))
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    dims: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    path: Mapped[str] = mapped_column(String(1000), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class FeatureFile(Base):
    """One (T, D) float32 array on disk for one sample and modality."""

    __tablename__ = "feature_file"
    __table_args__ = (UniqueConstraint("feature_set_id", "sample_id", "modality"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    feature_set_id: Mapped[int] = mapped_column(ForeignKey("feature_set.id", ondelete="CASCADE"))
    sample_id: Mapped[int] = mapped_column(ForeignKey("sample.id", ondelete="CASCADE"))
    modality: Mapped[str] = mapped_column(String(8))
    path: Mapped[str] = mapped_column(String(1000))
    shape: Mapped[list[Any]] = mapped_column(JSON)
    content_hash: Mapped[str] = mapped_column(String(64), default="")


class ModelVersion(Base):
    """A trained checkpoint with its resolved config, training-set snapshot and metrics."""

    __tablename__ = "model_version"
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("project.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(120))
    stage: Mapped[int] = mapped_column(Integer, default=1)
    preset: Mapped[str] = mapped_column(String(32), default="paper")
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    checkpoint_path: Mapped[str] = mapped_column(String(1000), default="")
    snapshot: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), default="candidate")
    job_id: Mapped[int | None] = mapped_column(ForeignKey("job.id", ondelete="SET NULL"))
    train_seconds: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Prediction(Base):
    """One head's prediction for one sample by one model version.

    ``probs`` holds K floats in the schema's class order; ``label`` is the argmax class name and
    ``confidence`` its probability (0..1). ``paths`` holds, for a head with several interaction
    paths (the intent ensemble of a one-head and a two-head path), each path's argmax class name in
    path order, e.g. ``["questioning", "neutral"]``; NULL for a head with one path. The review
    queue's "disagreement" filter compares them.

    Indexes serve the review queue: ``ix_prediction_queue`` is scanned per head from the most
    confident row down (it carries ``sample_id`` and ``label``, so the scan never reads the row),
    ``ix_prediction_class`` does the same within one predicted class.
    """

    __tablename__ = "prediction"
    __table_args__ = (
        UniqueConstraint("model_version_id", "sample_id", "head"),
        Index(
            "ix_prediction_queue", "model_version_id", "head", "confidence", "sample_id", "label"
        ),
        Index(
            "ix_prediction_class", "model_version_id", "head", "label", "confidence", "sample_id"
        ),
        Index("ix_prediction_sample", "sample_id"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    model_version_id: Mapped[int] = mapped_column(
        ForeignKey("model_version.id", ondelete="CASCADE")
    )
    sample_id: Mapped[int] = mapped_column(ForeignKey("sample.id", ondelete="CASCADE"))
    head: Mapped[str] = mapped_column(String(32))
    label: Mapped[str] = mapped_column(String(64))
    confidence: Mapped[float] = mapped_column(Float)
    probs: Mapped[list[Any]] = mapped_column(JSON)
    paths: Mapped[list[Any] | None] = mapped_column(JSON(none_as_null=True))


class ReviewRound(Base):
    """A review round: one model version, thresholds and per-class quotas.

    ``thresholds``: {head: float} or, per predicted class, {head: {class: float}}
    (:mod:`db.thresholds`); ``quotas``: {head: {class: max accepted}} (a class absent from the
    mapping has no quota left, i.e. 0). A ``label_issues`` round (a check of flagged gold labels,
    :mod:`db.label_issues`) has neither: ``{}``.
    """

    __tablename__ = "review_round"
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("project.id", ondelete="CASCADE"))
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_version.id"))
    thresholds: Mapped[dict[str, Any]] = mapped_column(JSON)
    quotas: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default="open")
    created_by: Mapped[int | None] = mapped_column(ForeignKey("user.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # confidence / uncertainty / disagreement / rarest (migration 0005 explains each)
    queue_order: Mapped[str] = mapped_column(
        String(16), default="confidence", server_default="confidence"
    )
    # pseudo (pseudo-label review) or label_issues (a check of flagged gold labels)
    kind: Mapped[str] = mapped_column(String(16), default="pseudo", server_default="pseudo")


class Decision(Base):
    """An append-only review event. ``action``: accept / reject / skip / undo in a pseudo-label
    round; keep / relabel / undo of a flagged gold label in a ``label_issues`` round.

    ``head`` is NULL for a skip of the whole card; an undo names the decision it compensates in
    ``undoes_id``. ``ms_spent`` is the time from card shown to decision, in milliseconds.
    """

    __tablename__ = "decision"
    __table_args__ = (
        Index("ix_decision_round_sample", "round_id", "sample_id"),
        Index("ix_decision_user_time", "user_id", "created_at"),
        Index("ix_decision_round_user", "round_id", "user_id"),  # a user's history, newest first
        Index("ix_decision_undoes", "undoes_id"),  # which decisions are undone
        Index("ix_decision_batch", "batch_id"),  # the decisions of one bulk accept
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("review_round.id", ondelete="CASCADE"))
    sample_id: Mapped[int] = mapped_column(ForeignKey("sample.id", ondelete="CASCADE"))
    head: Mapped[str | None] = mapped_column(String(32))
    label: Mapped[str | None] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(8))
    undoes_id: Mapped[int | None] = mapped_column(ForeignKey("decision.id"))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("user.id"))
    ms_spent: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # the audit event of the bulk accept this decision belongs to (NULL: a card decision)
    batch_id: Mapped[int | None] = mapped_column(Integer)
    # why a guard was passed: below_threshold (confirmed by the annotator) or admin_redecide
    override: Mapped[str | None] = mapped_column(String(16))
    # the gold label a ``relabel`` decision of a label_issues round replaced
    previous_label: Mapped[str | None] = mapped_column(String(64))


class PseudoLabel(Base):
    """Current state of one head of one sample in a round, derived from ``decision``.

    ``state``: ``accepted`` or ``rejected``; an undone decision removes its row.
    """

    __tablename__ = "pseudo_label"
    __table_args__ = (
        UniqueConstraint("round_id", "sample_id", "head"),
        Index("ix_pseudo_label_quota", "round_id", "head", "label", "state"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("review_round.id", ondelete="CASCADE"))
    sample_id: Mapped[int] = mapped_column(ForeignKey("sample.id", ondelete="CASCADE"))
    head: Mapped[str] = mapped_column(String(32))
    label: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(10))
    confidence: Mapped[float | None] = mapped_column(Float)
    decision_id: Mapped[int] = mapped_column(ForeignKey("decision.id"))
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_version.id"))


class LabelIssue(Base):
    """A gold label flagged as likely wrong, queued in a ``label_issues`` round.

    ``suggested_label`` is the most probable class under out-of-sample probabilities; ``score`` is
    the label quality cleanlab gives the given label (0..1, lower = more likely wrong).
    """

    __tablename__ = "label_issue"
    __table_args__ = (UniqueConstraint("round_id", "sample_id", "head"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("review_round.id", ondelete="CASCADE"))
    sample_id: Mapped[int] = mapped_column(ForeignKey("sample.id", ondelete="CASCADE"))
    head: Mapped[str] = mapped_column(String(32))
    given_label: Mapped[str] = mapped_column(String(64))
    suggested_label: Mapped[str] = mapped_column(String(64))
    score: Mapped[float | None] = mapped_column(Float)


class ReviewLease(Base):
    """A card held by one annotator until ``expires_at``, so two never review it at once."""

    __tablename__ = "review_lease"
    __table_args__ = (UniqueConstraint("round_id", "sample_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("review_round.id", ondelete="CASCADE"))
    sample_id: Mapped[int] = mapped_column(ForeignKey("sample.id", ondelete="CASCADE"))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("user.id"))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class LoginSession(Base):
    """One sign-in. The browser keeps ``id`` in a signed, expiring cookie; the session is valid
    while ``ended_at`` is NULL and ``expires_at`` is ahead (sign-out sets ``ended_at``)."""

    __tablename__ = "login_session"
    __table_args__ = (Index("ix_login_session_user", "user_id"),)
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"))
    address: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class LoginThrottle(Base):
    """Failed sign-ins under one ``key`` (``user:<name>`` or ``addr:<address>``) since the last
    success, for the back-off."""

    __tablename__ = "login_throttle"
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    last_failed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Job(Base):
    """Background work. Status: queued / running / succeeded / failed / cancelled.

    ``progress`` is 0..1; ``detail`` holds live figures (stage, epoch, loss, validation scores);
    ``log`` is the tail of the job's log; ``heartbeat_at`` is touched by the worker while running.
    ``pid`` and ``host`` name the process running the job (so a worker can tell a job whose process
    is gone); ``attempts`` counts starts (a re-queued train job resumes from its last epoch).
    """

    __tablename__ = "job"
    __table_args__ = (Index("ix_job_kind_status", "kind", "status"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int | None] = mapped_column(ForeignKey("project.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(12), default="queued")
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    log: Mapped[str] = mapped_column(Text, default="")
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("user.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    pid: Mapped[int | None] = mapped_column(Integer)
    host: Mapped[str | None] = mapped_column(String(255))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class AuditEvent(Base):
    """Who did what to which row, and when (every write from the app carries its user)."""

    __tablename__ = "audit_event"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("user.id"))
    action: Mapped[str] = mapped_column(String(40))
    entity: Mapped[str] = mapped_column(String(40))
    entity_id: Mapped[int | None] = mapped_column(Integer)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
