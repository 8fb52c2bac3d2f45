"""The gold-label check over the store: flag likely-wrong gold labels, keep or relabel them.

``check_gold_labels`` loads one split's features and gold labels, runs
:mod:`meiju_core.label_issues` per head (cross-validated logistic regression + cleanlab) and keeps
the flags on the project (``project.settings["label_issues"]``), where Review reads them as a
queue of their own. ``relabel_gold`` changes one gold label and writes the old and new label to the
audit log; ``keep_gold`` records that a person confirmed the given label. Both drop the flag.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from sqlalchemy import select

from db import Store
from db import queries as q
from db.models import GoldLabel, Project, Sample
from meiju_core.errors import InputError

KEY = "label_issues"


def check_gold_labels(
    store: Store,
    settings: Any,
    *,
    project_id: int,
    split: str = "train",
    folds: int = 5,
    progress: Any = None,
) -> dict[str, Any]:
    """Flag gold labels of ``split`` that are likely wrong, per head, and store the flags.

    Classes with fewer than 2 gold examples in the split are left out of the check (cross-
    validation needs two). Returns ``{"split", "checked": {head: n}, "flagged": {head: n},
    "issues": {head: [{"sample_id", "utt_id", "given", "suggested", "quality", "confidence"}]}}``.

    Raises:
        InputError: the project has no features of ``settings.feature_set`` or no gold labels in
            ``split``.
    """
    from meiju_core import pipeline
    from meiju_core.label_issues import find_issues, out_of_sample_probs, utterance_vectors

    schema = pipeline.schema_of(store, project_id)
    fs_id = pipeline._feature_set_id(store, project_id, settings.feature_set)
    part = pipeline.load_split(
        store, project_id=project_id, split=split, feature_set_id=fs_id, schema=schema
    )
    if not part.sample_ids:
        raise InputError(f"the project has no {split} samples to check", field="split")
    x = utterance_vectors(part.data.features, pipeline._feature_dims(store, fs_id))
    report: dict[str, Any] = {"split": split, "checked": {}, "flagged": {}, "issues": {}}
    for head in schema.head_names:
        y = part.data.labels[head]
        names = schema.classes(head)
        counts = np.bincount(y[y >= 0], minlength=len(names))
        keep_classes = [k for k in range(len(names)) if counts[k] >= 2]
        rows = np.flatnonzero(np.isin(y, keep_classes))
        report["checked"][head] = int(rows.size)
        if len(keep_classes) < 2:
            report["flagged"][head], report["issues"][head] = 0, []
            continue
        compact = {k: i for i, k in enumerate(keep_classes)}
        yc = np.array([compact[int(v)] for v in y[rows]])
        probs = out_of_sample_probs(x[rows], yc, folds=folds, seed=settings.seed)
        issues = find_issues(yc, probs)
        report["issues"][head] = [
            {
                "sample_id": part.sample_ids[rows[i.row]],
                "utt_id": part.data.ids[rows[i.row]],
                "given": names[keep_classes[i.given]],
                "suggested": names[keep_classes[i.suggested]],
                "quality": round(i.quality, 4),
                "confidence": round(i.confidence, 4),
            }
            for i in issues
        ]
        report["flagged"][head] = len(issues)
        if progress:
            progress({"message": f"{head}: {len(issues)} of {rows.size} gold labels flagged"})
    with store.write() as s:
        project = s.get(Project, project_id)
        project.settings = {
            **(project.settings or {}),
            KEY: {"created_at": time.time(), **report},
        }
    return report


def open_issues(store: Store, *, project_id: int, head: str | None = None) -> list[dict]:
    """The stored flags not yet resolved, most doubtful first; each with its ``head``."""
    with store.read() as s:
        stored = ((s.get(Project, project_id).settings or {}).get(KEY)) or {}
    out = []
    for h, issues in (stored.get("issues") or {}).items():
        if head is None or h == head:
            out += [{**i, "head": h} for i in issues]
    return sorted(out, key=lambda i: i["quality"])


def _resolve(s, project_id: int, sample_id: int, head: str) -> None:
    project = s.get(Project, project_id)
    stored = dict((project.settings or {}).get(KEY) or {})
    issues = dict(stored.get("issues") or {})
    issues[head] = [i for i in issues.get(head, []) if i["sample_id"] != sample_id]
    stored["issues"] = issues
    project.settings = {**(project.settings or {}), KEY: stored}


def relabel_gold(
    store: Store,
    *,
    project_id: int,
    sample_id: int,
    head: str,
    label: str,
    user: dict[str, Any] | None,
) -> str:
    """Set a gold label, keeping the old one in the audit log (``relabel_gold``, payload ``{"head",
    "old", "new"}``), and drop its flag. Returns the old label.

    Raises:
        InputError: an unknown head or class, or a sample of another project without that gold
            label.
    """
    from meiju_core import pipeline

    schema = pipeline.schema_of(store, project_id)
    if head not in schema.head_names or label not in schema.classes(head):
        raise InputError(f"{label!r} is not a {head} class", field=head)
    with store.write() as s:
        gold = s.scalars(
            select(GoldLabel)
            .join(Sample, Sample.id == GoldLabel.sample_id)
            .where(
                GoldLabel.sample_id == sample_id,
                GoldLabel.head == head,
                Sample.project_id == project_id,
            )
        ).first()
        if gold is None:
            raise InputError(f"sample {sample_id} has no gold {head} label", field="sample")
        old = gold.label
        gold.label = label
        q.audit(
            s,
            user_id=(user or {}).get("id"),
            action="relabel_gold",
            entity="gold_label",
            entity_id=gold.id,
            payload={"head": head, "old": old, "new": label, "sample_id": sample_id},
        )
        _resolve(s, project_id, sample_id, head)
    return old


def keep_gold(
    store: Store, *, project_id: int, sample_id: int, head: str, user: dict[str, Any] | None
) -> None:
    """Confirm a flagged gold label as it is (audit ``keep_gold``) and drop its flag."""
    with store.write() as s:
        q.audit(
            s,
            user_id=(user or {}).get("id"),
            action="keep_gold",
            entity="sample",
            entity_id=sample_id,
            payload={"head": head},
        )
        _resolve(s, project_id, sample_id, head)
