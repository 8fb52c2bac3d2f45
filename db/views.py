"""Reads for the pages' lists and panels: model versions, transcripts and their edits, one job,
the Review page's round, card states and linked samples.

Like ``db.queries`` and ``db.analytics``, every function takes an open ``Session`` first and the
rest by keyword, and returns plain tuples, dicts and lists (no ORM objects), so a page can cache
the result and never holds a session or a row across reruns. Nothing here writes: transcript
saves go through ``transcripts.save_transcript``, promotion through ``training.promote``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import exists, func, or_, select
from sqlalchemy.orm import Session

from db import queries as q
from db.models import (
    Job,
    ModelVersion,
    Prediction,
    PseudoLabel,
    ReviewRound,
    Sample,
    Transcript,
    TranscriptEdit,
    User,
)

# --------------------------------------------------------------------------- model versions


def model_versions(s: Session, *, project_id: int) -> list[dict[str, Any]]:
    """Every model version of the project, newest first, as plain dicts."""
    rows = s.scalars(
        select(ModelVersion)
        .where(ModelVersion.project_id == project_id)
        .order_by(ModelVersion.id.desc())
    ).all()
    return [
        {
            "id": mv.id,
            "name": mv.name,
            "stage": mv.stage,
            "preset": mv.preset,
            "status": mv.status,
            "created_at": mv.created_at,
            "train_seconds": mv.train_seconds,
            "metrics": dict(mv.metrics or {}),
            "snapshot": dict(mv.snapshot or {}),
            "job_id": mv.job_id,
            "members": (mv.config or {}).get("members"),  # an ensemble's, head -> ids
        }
        for mv in rows
    ]


# --------------------------------------------------------------------------- transcripts


def search_transcripts(
    s: Session,
    *,
    project_id: int,
    text: str = "",
    source: str | None = None,
    sample_ids: list[int] | None = None,
    offset: int = 0,
    limit: int = 20,
) -> tuple[list[dict[str, Any]], int]:
    """A page of transcripts whose utterance id or text contains ``text``; and the total."""
    cond = [Sample.project_id == project_id]
    if text:
        like = f"%{text}%"
        cond.append(or_(Transcript.text.like(like), Sample.utt_id.like(like)))
    if source:
        cond.append(Transcript.source == source)
    if sample_ids is not None:
        cond.append(Sample.id.in_(sample_ids))
    base = select(Sample.id).join(Transcript, Transcript.sample_id == Sample.id).where(*cond)
    total = s.scalar(select(func.count()).select_from(base.subquery())) or 0
    rows = s.execute(
        select(
            Sample.id,
            Sample.utt_id,
            Sample.split,
            Transcript.text,
            Transcript.source,
            Transcript.version,
            Transcript.updated_at,
        )
        .join(Transcript, Transcript.sample_id == Sample.id)
        .where(*cond)
        .order_by(Sample.utt_id)
        .offset(offset)
        .limit(limit)
    ).all()
    return [dict(r._mapping) for r in rows], total


def transcript_rows(s: Session, *, project_id: int) -> list[tuple[int, str, str, int, str]]:
    """``(sample id, utterance id, source, version, text)`` of every transcript of a project."""
    rows = s.execute(
        select(Sample.id, Sample.utt_id, Transcript.source, Transcript.version, Transcript.text)
        .join(Transcript, Transcript.sample_id == Sample.id)
        .where(Sample.project_id == project_id)
    )
    return [(sid, utt, source, version, text) for sid, utt, source, version, text in rows]


def transcripts_stamp(s: Session) -> tuple[int, int, int]:
    """Changes whenever a transcript is added or saved (in any project): (transcripts, highest
    transcript id, highest edit id). Every save writes a ``transcript_edit`` row and imports
    only insert, so this catches both; cheap enough (no join, primary keys) to key a cache on."""
    n, top = s.execute(select(func.count(), func.max(Transcript.id))).one()
    edit = s.scalar(select(func.max(TranscriptEdit.id)))
    return int(n or 0), int(top or 0), int(edit or 0)


def matching_ids(s: Session, *, project_id: int, needle: str) -> set[int]:
    """Sample ids whose utterance id or transcript contains ``needle``."""
    like = f"%{needle}%"
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


def transcript(s: Session, *, sample_id: int) -> dict[str, Any] | None:
    """One sample's transcript with its media paths, as a plain dict."""
    row = s.execute(
        select(Sample, Transcript)
        .join(Transcript, Transcript.sample_id == Sample.id)
        .where(Sample.id == sample_id)
    ).first()
    if row is None:
        return None
    sample, tr = row
    return {
        "sample_id": sample.id,
        "utt_id": sample.utt_id,
        "split": sample.split,
        "video_path": sample.video_path,
        "audio_path": sample.audio_path,
        "start_s": sample.start_s,
        "transcript_id": tr.id,
        "text": tr.text,
        "original_text": tr.original_text,
        "source": tr.source,
        "version": tr.version,
        "updated_at": tr.updated_at,
    }


def transcript_edits(
    s: Session, *, project_id: int, sample_id: int | None = None, limit: int = 10
) -> list[dict[str, Any]]:
    """The latest saved edits (of one sample, or of the project), newest first, with editor."""
    q = (
        select(TranscriptEdit, User.name, Sample.utt_id)
        .join(Transcript, Transcript.id == TranscriptEdit.transcript_id)
        .join(Sample, Sample.id == Transcript.sample_id)
        .outerjoin(User, User.id == TranscriptEdit.editor_id)
        .where(Sample.project_id == project_id)
    )
    if sample_id is not None:
        q = q.where(Sample.id == sample_id)
    rows = s.execute(q.order_by(TranscriptEdit.id.desc()).limit(limit)).all()
    return [
        {
            "utt_id": utt,
            "before": e.before,
            "after": e.after,
            "kind": e.kind,
            "editor": name or "–",
            "at": e.created_at,
        }
        for e, name, utt in rows
    ]


# --------------------------------------------------------------------------- jobs


def job(s: Session, *, job_id: int) -> dict[str, Any] | None:
    """One job row as a plain dict."""
    j = s.get(Job, job_id)
    if j is None:
        return None
    return {
        "id": j.id,
        "kind": j.kind,
        "params": dict(j.params or {}),
        "status": j.status,
        "progress": j.progress or 0.0,
        "detail": dict(j.detail or {}),
        "log": j.log or "",
        "result": j.result,
        "error": j.error,
        "cancel_requested": j.cancel_requested,
        "created_at": j.created_at,
        "started_at": j.started_at,
        "finished_at": j.finished_at,
        "heartbeat_at": j.heartbeat_at,
    }


def train_job_id(s: Session, *, project_id: int) -> int | None:
    """The project's running or queued train job, else its newest one, else None."""
    active = q.active_job(s, kind="train", project_id=project_id)
    if active is not None:
        return active.id
    latest = q.latest_jobs(s, project_id=project_id, limit=1, kind="train")
    return latest[0].id if latest else None


def retrain_state(s: Session, *, project_id: int) -> dict[str, Any]:
    """What the retrain button needs: the train job in the way (``busy``: ``{"id", "status"}``
    or None), the open round (``round_id`` or None) and its accepted pseudo-labels
    (``accepted``, over both heads)."""
    busy = q.active_job(s, kind="train", project_id=project_id)
    rnd = q.active_round(s, project_id=project_id)
    accepted = 0
    if rnd is not None:
        accepted = sum(sum(c.values()) for c in q.accepted_counts(s, round_id=rnd.id).values())
    return {
        "busy": None if busy is None else {"id": busy.id, "status": busy.status},
        "round_id": None if rnd is None else rnd.id,
        "accepted": accepted,
    }


def recent_job_ids(
    s: Session, *, kinds: Sequence[str], project_id: int, limit: int = 10
) -> list[int]:
    """Ids of the newest jobs of ``kinds`` for the project or for no project, newest first
    (among the last 100 jobs)."""
    return [
        j.id
        for j in q.latest_jobs(s, limit=100)
        if j.kind in kinds and j.project_id in (project_id, None)
    ][:limit]


def round_model_version(s: Session, *, round_id: int) -> int | None:
    """The model version id a review round was opened on (None for an unknown round)."""
    rnd = s.get(ReviewRound, round_id)
    return None if rnd is None else rnd.model_version_id


# --------------------------------------------------------------------------- review page


def _round_dict(s: Session, rnd: ReviewRound) -> dict[str, Any]:
    mv = s.get(ModelVersion, rnd.model_version_id)
    return {
        "id": rnd.id,
        "model_version_id": rnd.model_version_id,
        "model_name": mv.name if mv else "?",
        "thresholds": dict(rnd.thresholds or {}),
        "quotas": dict(rnd.quotas or {}),
        "created_at": rnd.created_at,
        "queue_order": rnd.queue_order,
    }


def review_round(s: Session, *, round_id: int) -> dict[str, Any] | None:
    """One review round as the Review page shows it: ``id``, ``model_version_id``,
    ``model_name`` (``"?"`` if the version is gone), ``thresholds``, ``quotas``, ``created_at``,
    ``queue_order``; None for an unknown round."""
    rnd = s.get(ReviewRound, round_id)
    return None if rnd is None else _round_dict(s, rnd)


def active_review_round(s: Session, *, project_id: int) -> dict[str, Any] | None:
    """The project's open pseudo-label round (``q.active_round``) as :func:`review_round`
    returns it, or None."""
    rnd = q.active_round(s, project_id=project_id)
    return None if rnd is None else _round_dict(s, rnd)


def predicted_versions(s: Session, *, project_id: int) -> list[tuple[int, str, str]]:
    """``(id, name, status)`` of the project's model versions that have predictions, newest
    first."""
    rows = s.execute(
        select(ModelVersion.id, ModelVersion.name, ModelVersion.status)
        .where(
            ModelVersion.project_id == project_id,
            exists().where(Prediction.model_version_id == ModelVersion.id),
        )
        .order_by(ModelVersion.id.desc())
    ).all()
    return [(i, name, status) for i, name, status in rows]


def outside_pool(s: Session, *, sample_ids: Sequence[int]) -> tuple[int, ...]:
    """The samples of ``sample_ids`` that exist and are not in the pool (train, valid or test),
    in the order given."""
    if not sample_ids:
        return ()
    found = set(
        s.scalars(select(Sample.id).where(Sample.id.in_(sample_ids), Sample.split != "pool"))
    )
    return tuple(i for i in sample_ids if i in found)


def head_states(s: Session, *, round_id: int, sample_id: int) -> dict[str, tuple[str, str]]:
    """``{head: (state, label)}`` of a card's decided heads in a round (``accepted`` or
    ``rejected``); a skip is no head."""
    rows = s.execute(
        select(PseudoLabel.head, PseudoLabel.state, PseudoLabel.label).where(
            PseudoLabel.round_id == round_id,
            PseudoLabel.sample_id == sample_id,
            PseudoLabel.head != q.SKIP_HEAD,
        )
    )
    return {head: (state, label) for head, state, label in rows}


def utt_ids(s: Session, *, sample_ids: Sequence[int]) -> dict[int, str]:
    """``{sample id: utterance id}`` of the samples found among ``sample_ids``."""
    if not sample_ids:
        return {}
    rows = s.execute(select(Sample.id, Sample.utt_id).where(Sample.id.in_(sample_ids)))
    return {sid: utt for sid, utt in rows}
