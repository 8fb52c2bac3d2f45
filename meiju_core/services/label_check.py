"""The gold-label check over the store: flag likely-wrong gold labels, keep or relabel them.

``check_gold_labels`` loads one split's features and gold labels, runs
:mod:`meiju_core.ml.label_issues` per head (cross-validated logistic regression + cleanlab) and opens
a round of kind ``label_issues`` holding one ``label_issue`` row per flag (:mod:`db.label_issues`),
which Review shows as a queue of its own. It runs as a worker job (kind ``label_check``, from the
Review page) or from ``meiju label-issues``; never in the app process.

``resolve`` keeps or relabels one flagged gold label through a ``decision`` (action ``keep`` or
``relabel``, ``previous_label`` = the old label), so the decision log keeps every old label;
``undo`` puts the old label back.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from db import Store
from db import label_issues as li
from db import queries as q
from db.models import ReviewRound
from meiju_core.errors import CardTaken, InputError, StoreError

KIND = "label_issues"


def check_gold_labels(
    store: Store,
    settings: Any,
    *,
    project_id: int,
    split: str = "train",
    folds: int = 5,
    progress: Any = None,
    user: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Flag gold labels of ``split`` that are likely wrong, per head, and open a
    ``label_issues`` round holding the flags (the project's previous check round is closed).

    Classes with fewer than 2 gold examples in the split are left out of the check (cross-
    validation needs two). The round names the project's current model version (promoted, else
    newest) for the record; the check itself reads only features and gold labels.

    Returns:
        ``{"round_id", "split", "checked": {head: n}, "flagged": {head: n}, "issues": {head:
        [{"sample_id", "utt_id", "given", "suggested", "quality", "confidence"}]}}``, each head's
        flags most doubtful first.
    Raises:
        InputError: the project has no features of ``settings.feature_set``, no samples in
            ``split`` or no model version yet.
    """
    from meiju_core.ml.label_issues import find_issues, out_of_sample_probs, utterance_vectors
    from meiju_core.services import projects, training

    schema = projects.schema_of(store, project_id)
    fs_id = training.feature_set_id(store, project_id, settings.feature_set)
    part = training.load_split(
        store, project_id=project_id, split=split, feature_set_id=fs_id, schema=schema
    )
    if not part.sample_ids:
        raise InputError(f"the project has no {split} samples to check", field="split")
    x = utterance_vectors(part.data.features, training.feature_dims(store, fs_id))
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
        mv = q.current_model(s, project_id=project_id)
        if mv is None:
            raise InputError(
                "the project has no model version yet: train one before checking gold labels",
                field="model",
            )
        rnd = li.open_round(
            s,
            project_id=project_id,
            model_version_id=mv.id,
            issues=[
                {
                    "sample_id": i["sample_id"],
                    "head": head,
                    "given_label": i["given"],
                    "suggested_label": i["suggested"],
                    "score": i["quality"],
                }
                for head, issues in report["issues"].items()
                for i in issues
            ],
            user_id=(user or {}).get("id"),
            payload={"split": split, "checked": report["checked"], "flagged": report["flagged"]},
        )
        report["round_id"] = rnd.id
    return report


def active_round(store: Store, *, project_id: int) -> int | None:
    """The project's open gold-label check round, or None."""
    with store.read() as s:
        rnd = q.active_round(s, project_id=project_id, kind=KIND)
        return rnd.id if rnd is not None else None


def open_issues(
    store: Store, *, round_id: int, head: str | None = None, limit: int = 10_000
) -> list[dict[str, Any]]:
    """The round's flags not yet resolved, most doubtful first: ``[{"sample_id", "head",
    "given", "suggested", "score", "utt_id"}]``."""
    with store.read() as s:
        return li.queue(s, round_id=round_id, head=head, limit=limit)


def resolve(
    store: Store,
    *,
    round_id: int,
    sample_id: int,
    head: str,
    action: str,
    user: dict[str, Any] | None,
    label: str | None = None,
    ms_spent: int | None = None,
) -> int:
    """Keep (``action="keep"``) or relabel (``"relabel"``, to ``label``, default the suggested
    class) one flagged gold label; returns the decision id. A relabel updates the gold label and
    the decision keeps the old one (``previous_label``).

    Raises:
        InputError: ``label`` is not a class of ``head``.
        CardTaken: the flag was resolved since it was shown (by ``by``), or another annotator
            holds the sample.
        StoreError: a closed round, an unknown action, or a flag the round does not hold.
    """
    from meiju_core.services import projects

    with store.read() as s:
        rnd = s.get(ReviewRound, round_id)
        project_id = rnd.project_id if rnd is not None else None
    if project_id is None:
        raise StoreError(f"round {round_id} does not exist")
    if label is not None:
        schema = projects.schema_of(store, project_id)
        if head not in schema.head_names or label not in schema.classes(head):
            raise InputError(f"{label!r} is not a {head} class", field=head)
    try:
        with store.write() as s:
            d = li.decide(
                s,
                round_id=round_id,
                sample_id=sample_id,
                head=head,
                action=action,
                user_id=(user or {}).get("id"),
                label=label,
                ms_spent=ms_spent,
            )
            return d.id
    except q.AlreadyDecided as e:
        raise CardTaken(str(e), by=e.by, decided=True) from e
    except q.CardLeased as e:
        raise CardTaken(str(e), by=e.by, decided=False) from e
    except q.QueueError as e:
        raise StoreError(str(e)) from e


def lease(
    store: Store,
    *,
    round_id: int,
    sample_id: int,
    user: dict[str, Any] | None,
    seconds: int = 120,
) -> bool:
    """Reserve a flagged sample for ``user`` while it is on their screen (``db.label_issues.lease``);
    False when another annotator holds it or its flags are all resolved.

    Raises:
        StoreError: a closed round or one of another kind, ``seconds`` under 1.
    """
    try:
        with store.write() as s:
            return li.lease(
                s,
                round_id=round_id,
                sample_id=sample_id,
                user_id=(user or {}).get("id"),
                seconds=seconds,
            )
    except q.QueueError as e:
        raise StoreError(str(e)) from e


def release(store: Store, *, round_id: int, sample_id: int, user: dict[str, Any] | None) -> None:
    """Drop ``user``'s lease on a flagged sample (a skip: others may take it at once)."""
    with store.write() as s:
        q.release(s, round_id=round_id, sample_id=sample_id, user_id=(user or {}).get("id"))


def undo(
    store: Store, *, round_id: int, user: dict[str, Any] | None, decision_id: int | None = None
) -> dict[str, Any] | None:
    """Undo the user's latest keep / relabel of the round (or ``decision_id``): the old gold label
    returns and the flag opens again. Returns ``{"sample_id", "head", "action", "label",
    "previous_label"}`` of the decision undone, or None.

    Raises:
        StoreError: a closed round, or a gold label changed since the relabel.
    """
    try:
        with store.write() as s:
            d = li.undo(
                s, round_id=round_id, user_id=(user or {}).get("id"), decision_id=decision_id
            )
            if d is None:
                return None
            return {
                "sample_id": d.sample_id,
                "head": d.head,
                "action": d.action,
                "label": d.label,
                "previous_label": d.previous_label,
            }
    except q.QueueError as e:
        raise StoreError(str(e)) from e
