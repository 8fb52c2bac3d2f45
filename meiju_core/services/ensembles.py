"""Ensembles of trained model versions: averaged probabilities, one temperature per head fitted on
valid, registered as a model version of their own (no weights) and predicted like any other.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sqlalchemy import func, select

from db import Store, rows
from db import queries as q
from db.models import ModelVersion, Prediction, Sample
from meiju_core.errors import InputError
from meiju_core.services import projects, training, users
from meiju_core.settings import Settings

ENSEMBLE = "ensemble"  # model_version.preset of an ensemble version


def create_ensemble(
    store: Store,
    settings: Settings,
    *,
    project_id: int,
    members: dict[str, list[int]],
    name: str | None = None,
    user: dict[str, Any] | None = None,
) -> int:
    """Register an ensemble of separately trained model versions as a model version of its own,
    predict every sample with it and score it on valid and test.

    Each head's probabilities are the mean of its members' (the paper's final row takes emotion
    from one system and intent fused from a one-head and a two-head system, §II.E and Table I;
    "fused" read as the mean of probabilities: an interpretation). The version can then be
    promoted, reviewed against and compared like any other.

    Args:
        members: head -> model version ids, e.g. ``{"emotion": [3], "intent": [4, 5]}``; every
            head of the schema needs at least one.
        user: the acting user; only admins may create versions from the app (the CLI passes None).
    Returns:
        The new model version id.
    Raises:
        InputError: a head without members, an unknown head, a member that is not a trained
            version of this project, members on different feature sets.
        PermissionDenied: ``user`` is not an admin.
    """
    if user is not None:
        users.require_admin(user, "create an ensemble", store=store)
    schema = projects.schema_of(store, project_id)
    unknown = [h for h in members if h not in schema.head_names]
    if unknown:
        raise InputError(f"unknown head(s) {unknown}; heads are {schema.head_names}", field="head")
    missing = [h for h in schema.head_names if not members.get(h)]
    if missing:
        raise InputError(f"every head needs at least one member; none for {missing}", field="head")
    ids = sorted({int(m) for ms in members.values() for m in ms})
    with store.write() as s:
        versions: dict[int, ModelVersion] = {}
        for m in ids:
            v = s.get(ModelVersion, m)
            if v is None or v.project_id != project_id:
                raise InputError(
                    f"model version {m} does not exist in this project", field="member"
                )
            if v.preset == ENSEMBLE:
                raise InputError(
                    f"model version {m} is itself an ensemble; name its members instead",
                    field="member",
                )
            versions[m] = v
        feature_sets = {v.config.get("feature_set_id") for v in versions.values()}
        if len(feature_sets) > 1:
            named = sorted(f for f in feature_sets if f is not None)
            if None in feature_sets:  # a member without one is listed last
                named.append(None)
            raise InputError(f"members use different feature sets {named}", field="member")
        label = " + ".join(
            f"{h[:3]} {'/'.join(str(m) for m in members[h])}" for h in schema.head_names
        )
        mv = ModelVersion(
            project_id=project_id,
            name=name or f"ensemble ({label})",
            stage=max(v.stage for v in versions.values()),
            preset=ENSEMBLE,
            config={
                "members": {h: [int(m) for m in members[h]] for h in schema.head_names},
                "feature_set_id": feature_sets.pop(),
                "schema": schema.to_dict(),
                "fusion": "mean of member probabilities per head",
            },
            checkpoint_path="",
            snapshot={"members": ids},
            metrics={},
            train_seconds=0.0,
        )
        s.add(mv)
        s.flush()
        mv_id = mv.id
        q.audit(
            s,
            user_id=(user or {}).get("id"),
            action="create_ensemble",
            entity="model_version",
            entity_id=mv_id,
        )
    training.predict(store, settings, model_version_id=mv_id)
    training.evaluate(store, model_version_id=mv_id)
    return mv_id


def predict_ensemble(
    store: Store, settings: Settings, *, model_version_id: int, splits: tuple[str, ...]
) -> int:
    """Predict an ensemble version from its members: each member predicted where it lacks rows,
    then per head the mean of its members' stored probabilities, each member's argmax kept in
    ``prediction.paths``. Returns the number of prediction rows written.

    Raises:
        InputError: a member of the ensemble no longer exists.
    """
    with store.read() as s:
        mv = rows.get(s, ModelVersion, model_version_id)
        members: dict[str, list[int]] = mv.config["members"]
        project_id = mv.project_id
        sample_ids = list(
            s.scalars(
                select(Sample.id)
                .where(Sample.project_id == project_id, Sample.split.in_(splits))
                .order_by(Sample.id)
            )
        )
    schema = projects.schema_of(store, project_id)
    for m in sorted({m for ms in members.values() for m in ms}):
        with store.read() as s:
            member = s.get(ModelVersion, m)
            if member is None:
                raise InputError(f"ensemble member {m} no longer exists", field="member")
            have = s.scalar(
                select(func.count()).select_from(Prediction).where(Prediction.model_version_id == m)
            )
            have = have or 0  # COUNT(*) always returns a row; this only narrows the type
            can_predict = bool(member.checkpoint_path)
        if have < len(sample_ids) * len(schema.head_names) and can_predict:
            training.predict(store, settings, model_version_id=m, splits=splits, missing_only=True)
    row_of = {sid: i for i, sid in enumerate(sample_ids)}
    probs, paths = {}, {}
    for head in schema.head_names:
        k = schema.num_classes(head)
        stack = []
        for m in members[head]:
            p = np.full((len(sample_ids), k), np.nan)
            with store.read() as s:
                for sid, pr in s.execute(
                    select(Prediction.sample_id, Prediction.probs).where(
                        Prediction.model_version_id == m, Prediction.head == head
                    )
                ):
                    if sid in row_of:
                        p[row_of[sid]] = pr
            stack.append(p)
        probs[head] = np.mean(stack, axis=0)
        paths[head] = [p.argmax(axis=1) for p in stack]
    # a sample some member has no prediction for (e.g. imported predictions) gets none
    keep = np.all([~np.isnan(p).any(axis=1) for p in probs.values()], axis=0)
    kept = np.flatnonzero(keep)
    return training.write_predictions(
        store,
        model_version_id,
        schema,
        [sample_ids[i] for i in kept],
        {h: p[kept] for h, p in probs.items()},
        {h: [a[kept] for a in args] for h, args in paths.items()},
    )
