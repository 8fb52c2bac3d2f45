"""Exports for people and other tools: labels with their provenance, the decision log and the
transcript edits, as UTF-8 CSV files under ``<data_dir>/exports``.

Each ``export_*`` function reads one project in one read session, writes one CSV (header first)
and returns the number of data rows. Times are ISO 8601 in UTC. :func:`export_files` writes a
chosen set of them (plus ``submission.csv`` from ``export_submission``) into one folder;
the ``export`` background job calls it.

``labels.csv`` columns
    ``utt_id, split, head, label, kind, source, model_version_id, model_version, confidence,
    round_id, reviewer, decided_at``. ``kind`` is ``gold`` (a human label; ``source`` is where it
    came from, e.g. ``official``) or ``pseudo`` (an accepted pseudo-label of a review round;
    ``source`` is ``model`` when the reviewer accepted the model's prediction, ``reviewer`` when
    they chose another class). Pseudo rows carry the model version that predicted them, its
    confidence, the round and the reviewer; gold rows leave those empty.
``decisions.csv`` columns
    ``decision_id, round_id, utt_id, head, label, action, undoes_id, reviewer, ms_spent,
    created_at``: the append-only log, undos included (``undoes_id`` names the decision undone).
``transcript_edits.csv`` columns
    ``edit_id, utt_id, before, after, kind, editor, created_at``; ``kind`` is ``punctuation`` or
    ``lexical``.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import and_, select

from db import Store
from db import queries as q
from db.models import (
    Decision,
    GoldLabel,
    ModelVersion,
    Prediction,
    PseudoLabel,
    Sample,
    Transcript,
    TranscriptEdit,
    User,
)
from meiju_core.errors import InputError
from meiju_core.settings import Settings

LABEL_COLUMNS = (
    "utt_id",
    "split",
    "head",
    "label",
    "kind",
    "source",
    "model_version_id",
    "model_version",
    "confidence",
    "round_id",
    "reviewer",
    "decided_at",
)
DECISION_COLUMNS = (
    "decision_id",
    "round_id",
    "utt_id",
    "head",
    "label",
    "action",
    "undoes_id",
    "reviewer",
    "ms_spent",
    "created_at",
    "previous_label",
)
EDIT_COLUMNS = ("edit_id", "utt_id", "before", "after", "kind", "editor", "created_at")
EXPORTS = ("submission", "labels", "decisions", "transcript_edits")
FILE_NAMES = {
    "submission": "submission.csv",
    "labels": "labels.csv",
    "decisions": "decisions.csv",
    "transcript_edits": "transcript_edits.csv",
}


def export_dir(settings: Settings) -> Path:
    """``<data_dir>/exports``, where every export is written."""
    return settings.data_dir / "exports"


def _iso(t: datetime | None) -> str:
    if t is None:
        return ""
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).isoformat(timespec="seconds")


def check_target(path: Path) -> None:
    """Raise InputError (``field="path"``) when ``path`` cannot take a file: it is a folder, or
    a part of its parent is a file."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a folder; give a file name", field="path")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise InputError(f"{parent} is a file, not a folder", field="path")


def _write(path: Path, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    check_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    tmp = path.with_name(path.name + ".part")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for row in rows:
            w.writerow(["" if v is None else v for v in row])
            n += 1
    tmp.replace(path)  # a reader never sees half a file
    return n


def _target(settings: Settings, path: Path | str | None, name: str) -> Path:
    return Path(path) if path is not None else export_dir(settings) / FILE_NAMES[name]


def export_labels(
    store: Store,
    settings: Settings,
    *,
    project_id: int,
    path: Path | str | None = None,
    round_id: int | None = None,
) -> int:
    """Gold labels and accepted pseudo-labels with provenance to ``labels.csv`` (columns in the
    module docstring); pseudo-labels of every round, or of ``round_id``. Returns data rows."""
    with store.read() as s:
        gold = s.execute(
            select(Sample.utt_id, Sample.split, GoldLabel.head, GoldLabel.label, GoldLabel.source)
            .join(Sample, Sample.id == GoldLabel.sample_id)
            .where(Sample.project_id == project_id)
            .order_by(Sample.utt_id, GoldLabel.head)
        ).all()
        q = (
            select(
                Sample.utt_id,
                Sample.split,
                PseudoLabel.head,
                PseudoLabel.label,
                Prediction.label.label("predicted"),
                PseudoLabel.model_version_id,
                ModelVersion.name,
                PseudoLabel.confidence,
                PseudoLabel.round_id,
                User.name.label("reviewer"),
                Decision.created_at,
            )
            .join(Sample, Sample.id == PseudoLabel.sample_id)
            .join(Decision, Decision.id == PseudoLabel.decision_id)
            .outerjoin(User, User.id == Decision.user_id)
            .outerjoin(ModelVersion, ModelVersion.id == PseudoLabel.model_version_id)
            .outerjoin(
                Prediction,
                and_(
                    Prediction.model_version_id == PseudoLabel.model_version_id,
                    Prediction.sample_id == PseudoLabel.sample_id,
                    Prediction.head == PseudoLabel.head,
                ),
            )
            .where(Sample.project_id == project_id, PseudoLabel.state == "accepted")
            .order_by(PseudoLabel.round_id, Sample.utt_id, PseudoLabel.head)
        )
        if round_id is not None:
            q = q.where(PseudoLabel.round_id == round_id)
        pseudo = s.execute(q).all()
    rows: list[tuple[Any, ...]] = [
        (u, sp, h, lab, "gold", src, None, None, None, None, None, None)
        for u, sp, h, lab, src in gold
    ]
    for r in pseudo:
        source = "model" if r.predicted is None or r.predicted == r.label else "reviewer"
        confidence = None if r.confidence is None else round(float(r.confidence), 6)
        rows.append(
            (
                r.utt_id,
                r.split,
                r.head,
                r.label,
                "pseudo",
                source,
                r.model_version_id,
                r.name,
                confidence,
                r.round_id,
                r.reviewer,
                _iso(r.created_at),
            )
        )
    return _write(_target(settings, path, "labels"), LABEL_COLUMNS, rows)


def export_decisions(
    store: Store,
    settings: Settings,
    *,
    project_id: int,
    path: Path | str | None = None,
    round_id: int | None = None,
) -> int:
    """The decision log (every round, or ``round_id``) to ``decisions.csv``, oldest first:
    pseudo-label decisions and the keep / relabel decisions of gold-label checks, whose
    ``previous_label`` is the gold label a relabel replaced. Returns data rows."""
    with store.read() as s:
        q = (
            select(Decision, Sample.utt_id, User.name)
            .join(Sample, Sample.id == Decision.sample_id)
            .outerjoin(User, User.id == Decision.user_id)
            .where(Sample.project_id == project_id)
            .order_by(Decision.id)
        )
        if round_id is not None:
            q = q.where(Decision.round_id == round_id)
        rows = [
            (
                d.id,
                d.round_id,
                utt,
                d.head,
                d.label,
                d.action,
                d.undoes_id,
                name,
                d.ms_spent,
                _iso(d.created_at),
                d.previous_label,
            )
            for d, utt, name in s.execute(q)
        ]
    return _write(_target(settings, path, "decisions"), DECISION_COLUMNS, rows)


def export_transcript_edits(
    store: Store, settings: Settings, *, project_id: int, path: Path | str | None = None
) -> int:
    """Every saved transcript edit to ``transcript_edits.csv``, oldest first. Returns data rows."""
    with store.read() as s:
        rows = [
            (e.id, utt, e.before, e.after, e.kind, name, _iso(e.created_at))
            for e, utt, name in s.execute(
                select(TranscriptEdit, Sample.utt_id, User.name)
                .join(Transcript, Transcript.id == TranscriptEdit.transcript_id)
                .join(Sample, Sample.id == Transcript.sample_id)
                .outerjoin(User, User.id == TranscriptEdit.editor_id)
                .where(Sample.project_id == project_id)
                .order_by(TranscriptEdit.id)
            )
        ]
    return _write(_target(settings, path, "transcript_edits"), EDIT_COLUMNS, rows)


def export_files(
    store: Store,
    settings: Settings,
    *,
    project_id: int,
    what: Sequence[str],
    folder: Path | str,
    model_version_id: int | None = None,
    split: str = "test",
    round_id: int | None = None,
    progress: Callable[[dict[str, Any]], Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """Write the exports named in ``what`` (see ``EXPORTS``) into ``folder``.

    Returns:
        ``{name: {"path": str, "rows": int}}`` in ``EXPORTS`` order.

    Raises:
        InputError: an unknown export name, or a submission with no model version to export.
    """
    unknown = [w for w in what if w not in EXPORTS]
    if unknown or not what:
        raise InputError(f"exports are {list(EXPORTS)}; got {list(what)}", field="what")
    pass

    folder = Path(folder)
    chosen = [w for w in EXPORTS if w in what]
    out: dict[str, dict[str, Any]] = {}
    for k, name in enumerate(chosen):
        path = folder / FILE_NAMES[name]
        if progress is not None:
            progress({"progress": k / len(chosen), "message": f"writing {path.name}"})
        if name == "submission":
            rows = export_submission(
                store,
                project_id=project_id,
                path=path,
                model_version_id=model_version_id,
                split=split,
            )
        elif name == "labels":
            rows = export_labels(
                store, settings, project_id=project_id, path=path, round_id=round_id
            )
        elif name == "decisions":
            rows = export_decisions(
                store, settings, project_id=project_id, path=path, round_id=round_id
            )
        else:
            rows = export_transcript_edits(store, settings, project_id=project_id, path=path)
        out[name] = {"path": str(path), "rows": rows}
    if progress is not None:
        progress({"progress": 1.0, "message": f"{len(out)} files written to {folder}"})
    return out


def export_submission(
    store: Store,
    *,
    project_id: int,
    path: Path,
    model_version_id: int | None = None,
    split: str = "test",
) -> int:
    """Write ``submission.csv`` (``filename,emo_pred,int_pred``, label strings; baseline
    ``test_baseline.py``) for one split. Returns the number of rows."""
    with store.read() as s:
        mv = (
            s.get(ModelVersion, model_version_id)
            if model_version_id
            else q.current_model(s, project_id=project_id)
        )
        if mv is None:
            raise InputError("no model version to export; train one first")
        rows = s.execute(
            select(Sample.utt_id, Prediction.head, Prediction.label)
            .join(Sample, Sample.id == Prediction.sample_id)
            .where(Prediction.model_version_id == mv.id, Sample.split == split)
            .order_by(Sample.utt_id)
        ).all()
    by_utt: dict[str, dict[str, str]] = {}
    for utt, head, label in rows:
        by_utt.setdefault(utt, {})[head] = label
    from meiju_core.io.export import check_target

    check_target(Path(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["filename", "emo_pred", "int_pred"])
        for utt, labels in by_utt.items():
            w.writerow([utt, labels.get("emotion", ""), labels.get("intent", "")])
    return len(by_utt)
