"""The arrows of the loop (DESIGN.md, "The loop the product serves"), over the store.

import -> extract features -> train stage 1 -> predict the pool -> review round -> retrain stage 2
-> compare -> promote -> export. Each function here is called the same way by the CLI, by a
background job and by the tests. Heavy imports (torch, the model) happen inside the functions that
need them, so importing this module is cheap enough for the Streamlit process.

``progress`` arguments are callables taking one dict (``{"progress": 0..1, "message": str, ...}``);
returning the string ``"cancel"`` asks a long step to stop.
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import delete, func, insert, select

from db import Store
from db import queries as q
from db import thresholds as thr
from db.models import (
    FeatureFile,
    FeatureSet,
    GoldLabel,
    ModelVersion,
    Prediction,
    Project,
    PseudoLabel,
    ReviewLease,
    ReviewRound,
    Sample,
    Transcript,
    TranscriptEdit,
    User,
    utcnow,
)
from meiju_core.errors import (
    BelowThreshold,
    CardTaken,
    InputError,
    JobError,
    PermissionDenied,
    QuotaExceeded,
    StaleEdit,
    StoreError,
)
from meiju_core.schema import MODALITIES, LabelSchema
from meiju_core.settings import Settings

Progress = Callable[[dict[str, Any]], Any]


def _noop(_event: dict[str, Any]) -> None:
    return None


# --------------------------------------------------------------------------- store & users


def open_store(settings: Settings, *, upgrade: bool = True) -> Store:
    """The project's store at ``settings.database_url``, migrated to the newest schema.

    Raises InputError when the data folder cannot be created or written (``MEIJU_DATA_DIR``)
    and StoreError when the database cannot be reached (the URL's host, not a traceback)."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        probe = settings.data_dir / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise InputError(
            f"the data folder {settings.data_dir} is not writable ({e.strerror or e}); set "
            "MEIJU_DATA_DIR or --data-dir to a folder you can write",
            field="data_dir",
        ) from None
    try:
        store = Store(settings.database_url)
        if upgrade:
            store.upgrade()
    except SQLAlchemyError as e:
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        raise StoreError(f"cannot open the database: {reason}") from None
    return store


def hash_password(password: str) -> str:
    from argon2 import PasswordHasher

    return PasswordHasher().hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    from argon2 import PasswordHasher
    from argon2.exceptions import Argon2Error

    if not password_hash:
        return False
    try:
        return PasswordHasher().verify(password_hash, password)
    except Argon2Error:
        return False


def add_user(
    store: Store, *, name: str, role: str = "annotator", password: str | None = None
) -> int:
    """Create or update a user; returns its id. Raises InputError for an unknown role, a name
    that is empty or has control characters, or an empty (or all-space) password."""
    from meiju_core.validate import id_problem

    if role not in ("annotator", "admin"):
        raise InputError(f"unknown role {role!r}; roles are annotator and admin", field="role")
    problem = id_problem(name.strip()) if name is not None else "empty name"
    if problem:
        raise InputError(problem.replace("id", "name", 1), field="name")
    if password is not None and not password.strip():
        raise InputError("the password is empty", field="password")
    with store.write() as s:
        user = q.get_user(s, name=name)
        if user is None:
            user = User(name=name)
            s.add(user)
        user.role = role
        if password is not None:
            user.password_hash = hash_password(password)
        s.flush()
        return user.id


def authenticate(
    store: Store, *, name: str, password: str, address: str | None = None
) -> dict[str, Any] | None:
    """The user when name and password match, else None (``meiju_core.auth.authenticate``:
    per-name and per-address back-off, the same cost for unknown names).

    Raises:
        SignInThrottled: too many recent failed sign-ins for this name or address.
    """
    from meiju_core import auth

    return auth.authenticate(store, name=name, password=password, address=address)


def require_admin(user: dict[str, Any] | None, action: str, *, store: Store | None = None) -> None:
    """Refuse ``action`` unless ``user`` is an admin. Given ``store``, the role is read from the
    store, not from the page's copy, so a demoted admin's open session loses its rights at once.

    Raises:
        PermissionDenied: no user, an unknown user, or a role other than admin.
    """
    if not user:
        raise PermissionDenied(f"only admins may {action}")
    role = user.get("role")
    if store is not None:
        with store.read() as s:
            row = s.get(User, user.get("id")) if user.get("id") is not None else None
            role = row.role if row is not None else None
    if role != "admin":
        raise PermissionDenied(f"only admins may {action}")


def project_info(store: Store, *, name: str) -> dict[str, Any] | None:
    with store.read() as s:
        p = q.get_project(s, name=name)
        if p is None:
            return None
        return {
            "id": p.id,
            "name": p.name,
            "schema": LabelSchema.from_dict(p.label_schema),
            "settings": dict(p.settings or {}),
        }


def schema_of(store: Store, project_id: int) -> LabelSchema:
    with store.read() as s:
        return LabelSchema.from_dict(s.get(Project, project_id).label_schema)


# --------------------------------------------------------------------------- features


def extract_features(
    store: Store,
    settings: Settings,
    *,
    project_id: int,
    set_name: str = "builtin",
    progress: Progress = _noop,
    workers: int | None = None,
) -> int:
    """Features of every sample of the project (``builtin`` or ``pretrained``); returns the
    feature set id. Resumable, parallel over samples, skips what is up to date: see
    :func:`meiju_core.extraction.extract_features`."""
    from meiju_core import extraction

    return extraction.extract_features(
        store,
        settings,
        project_id=project_id,
        set_name=set_name,
        progress=progress,
        workers=workers,
    )


def _scaled(progress: Progress, lo: float, hi: float, label: str) -> Progress:
    """``progress`` with a sub-step's 0..1 mapped into ``lo..hi`` and its message prefixed."""

    def report(event: dict[str, Any]) -> Any:
        out = dict(event)
        if "progress" in out:
            out["progress"] = lo + (hi - lo) * float(out["progress"])
        if out.get("message"):
            out["message"] = f"{label}: {out['message']}"
        return progress(out)

    return report


def open_cards(store: Store, *, project_id: int) -> int | None:
    """Open cards in the Review queue of the project's open round (None when no round is open)."""
    with store.read() as s:
        rnd = q.active_round(s, project_id=project_id)
        return None if rnd is None else q.queue_size(s, round_id=rnd.id)


def prepare_new_samples(
    store: Store,
    settings: Settings,
    *,
    project_id: int,
    progress: Progress = _noop,
    cards_before: int | None = None,
) -> dict[str, Any]:
    """After an import: extract the features the new samples lack (the project's feature set, by
    default builtin) and predict them with the project's current model, so they reach Review.

    Returns ``{"feature_set_id", "predictions", "model_version_id", "queue_cards",
    "new_cards", "note"}``; ``new_cards`` is the growth of the open round's queue since
    ``cards_before``. Without a model version nothing is predicted and ``note`` says so. Raises
    JobError when cancelled, MediaError / InputError as extraction and prediction do.
    """
    set_name = settings.feature_set if settings.feature_set in ("builtin", "pretrained") else None
    out: dict[str, Any] = {"predictions": 0, "model_version_id": None, "note": None}
    with store.read() as s:
        mv = q.current_model(s, project_id=project_id)
        if mv is not None and (mv.config or {}).get("feature_set_id") is None:
            mv = None  # a model version without features (imported predictions) cannot predict
        if mv is not None:
            fs = s.get(FeatureSet, mv.config["feature_set_id"])
            set_name = fs.name if fs is not None else set_name
        mv_id = mv.id if mv is not None else None
    if set_name in ("builtin", "pretrained"):
        out["feature_set_id"] = extract_features(
            store,
            settings,
            project_id=project_id,
            set_name=set_name,
            progress=_scaled(progress, 0.2, 0.8, "extracting features"),
        )
    if mv_id is None:
        out["note"] = (
            "the project has no model that can predict yet: train one to predict the new utterances"
        )
    else:
        progress({"progress": 0.85, "message": f"predicting with model version {mv_id}"})
        out["predictions"] = predict(store, settings, model_version_id=mv_id, missing_only=True)
        evaluate(store, model_version_id=mv_id)  # labelled imports change the scores
        out["model_version_id"] = mv_id
    after = open_cards(store, project_id=project_id)
    out["queue_cards"] = after
    out["new_cards"] = (
        None if after is None or cards_before is None else max(0, after - cards_before)
    )
    if after is None and out["note"] is None:
        out["note"] = "no review round is open: open one to review the new utterances"
    return out


# --------------------------------------------------------------------------- training data


@dataclass
class SplitData:
    """Arrays of one split, ready for ``meiju_core.train``; ``sample_ids`` align with rows."""

    sample_ids: list[int]
    data: Any  # meiju_core.train.TrainData


def load_split(
    store: Store,
    *,
    project_id: int,
    split: str | tuple[str, ...],
    feature_set_id: int,
    schema: LabelSchema,
    round_id: int | None = None,
    with_gold: bool = True,
    progress: Progress | None = None,
    span: tuple[float, float] = (0.0, 1.0),
    only: set[int] | None = None,
) -> SplitData:
    """Features and labels of one or more splits (of the samples in ``only`` when given).

    ``progress`` (optional) hears ``{"progress", "message"}`` while the feature files load, the
    fraction mapped into ``span``.

    Gold labels come from ``gold_label``; with ``round_id``, accepted pseudo-labels of that round
    are added per head (a label accepted for one head trains only that head). Pool samples with
    no accepted pseudo-label for any head are left out when ``round_id`` is given.
    """
    from meiju_core.train import TrainData

    splits = (split,) if isinstance(split, str) else tuple(split)
    with store.read() as s:
        samples = s.execute(
            select(Sample.id, Sample.utt_id)
            .where(Sample.project_id == project_id, Sample.split.in_(splits))
            .order_by(Sample.id)
        ).all()
        labels: dict[tuple[int, str], str] = {}
        if with_gold:
            for sid, head, label in s.execute(
                select(GoldLabel.sample_id, GoldLabel.head, GoldLabel.label)
                .join(Sample, Sample.id == GoldLabel.sample_id)
                .where(Sample.project_id == project_id, Sample.split.in_(splits))
            ):
                labels[(sid, head)] = label
        if round_id is not None:
            for sid, head, label in s.execute(
                select(PseudoLabel.sample_id, PseudoLabel.head, PseudoLabel.label).where(
                    PseudoLabel.round_id == round_id, PseudoLabel.state == "accepted"
                )
            ):
                labels.setdefault((sid, head), label)
        files = {
            (f.sample_id, f.modality): f.path
            for f in s.scalars(
                select(FeatureFile).where(FeatureFile.feature_set_id == feature_set_id)
            )
        }
        dims = dict(s.get(FeatureSet, feature_set_id).dims or {})
    if round_id is not None:
        labelled = {sid for sid, _ in labels}
        samples = [r for r in samples if r.id in labelled]
    if only is not None:
        samples = [r for r in samples if r.id in only]
    ids = [r.id for r in samples]
    feats: dict[str, list[np.ndarray | None]] = {m: [] for m in MODALITIES if m in dims}
    last = time.monotonic()
    for k, sid in enumerate(ids):
        if progress is not None and time.monotonic() - last >= 1.0:
            last = time.monotonic()
            lo, hi = span
            progress(
                {
                    "progress": lo + (hi - lo) * k / len(ids),
                    "message": f"loading {'+'.join(splits)} features: {k} of {len(ids)}",
                }
            )
        for m in feats:
            path = files.get((sid, m))
            feats[m].append(np.load(path) if path else None)
    lab = {
        head: np.array(
            [
                schema.index(head, labels[(sid, head)]) if (sid, head) in labels else -1
                for sid in ids
            ],
            dtype=np.int64,
        )
        for head in schema.head_names
    }
    data = TrainData(ids=[r.utt_id for r in samples], features=feats, labels=lab)
    return SplitData(sample_ids=ids, data=data)


# --------------------------------------------------------------------------- training


def train(
    store: Store,
    settings: Settings,
    *,
    project_id: int,
    stage: int = 1,
    preset: str | None = None,
    round_id: int | None = None,
    job_id: int | None = None,
    epochs: int | None = None,
    progress: Progress = _noop,
    resume: bool = False,
    threads: int | None = None,
) -> int:
    """Train stage 1 (gold) or stage 2 (gold + accepted pseudo-labels of ``round_id``), register a
    model version with its metrics on valid and test, and predict every sample.

    Stage 2 starts from the round's model (or the current one) and keeps its architecture: the
    paper preset fine-tunes every stage-1 weight, the baseline preset takes the encoders and
    fusion layers of its pretrain model (``ModelConfig.stage2_init``). A job's checkpoints go to a
    folder named after the job (``stage2-paper-job17``), so with ``resume`` a re-queued job
    continues from its last finished epoch (``meiju_core.resume``). ``threads`` caps torch's CPU
    threads (the worker passes its ``job_threads`` setting so a retrain does not starve the app).
    Returns the new model version id. Raises JobError when cancelled, InputError when the project
    has no features or no labels, or when stage 2 would start from an ensemble version (it has no
    weights of its own: open the round on one of its members), ValueError when the resume file
    belongs to another schedule.
    """
    from meiju_core import train as tr

    schema = schema_of(store, project_id)
    if preset is None:  # the project's own choice (the CPU demo uses "fast"), else the paper's
        with store.read() as s:
            preset = (s.get(Project, project_id).settings or {}).get("preset", "paper")
    fs_id = _feature_set_id(store, project_id, settings.feature_set)
    if stage == 2 and round_id is None:
        with store.read() as s:
            rnd = q.active_round(s, project_id=project_id)
            round_id = rnd.id if rnd else None
    progress({"progress": 0.0, "message": "loading features"})
    train_split = load_split(
        store,
        project_id=project_id,
        split="train",
        feature_set_id=fs_id,
        schema=schema,
        progress=progress,
        span=(0.0, 0.03),
    )
    if stage == 2 and round_id is not None:
        pseudo = load_split(
            store,
            project_id=project_id,
            split="pool",
            feature_set_id=fs_id,
            schema=schema,
            round_id=round_id,
            with_gold=False,
            progress=progress,
            span=(0.03, 0.04),
        )
        train_split = _concat(train_split, pseudo)
    valid = load_split(
        store,
        project_id=project_id,
        split="valid",
        feature_set_id=fs_id,
        schema=schema,
        progress=progress,
        span=(0.04, 0.05),
    )
    if not train_split.sample_ids or not valid.sample_ids:
        raise InputError("the project needs labelled train and valid samples to train")
    init_from, base_model = None, None
    if stage == 2:
        init_from, base_model = _stage1_checkpoint(store, project_id, round_id)
    dims = _feature_dims(store, fs_id)
    model_config, train_config = presets(
        preset,
        stage=stage,
        input_dims=dims,
        num_classes={h: schema.num_classes(h) for h in schema.head_names},
        seed=settings.seed,
        device=settings.device,
        epochs=epochs,
        threads=threads,
    )
    name = f"stage{stage}-{preset}-" + (
        f"job{job_id}" if job_id is not None else time.strftime("%Y%m%d-%H%M%S")
    )
    if base_model is not None and base_model.get("input_dims") == dims:
        # stage 2 continues the stage-1 system, whatever its heads or text encoder
        from meiju_core.model import ModelConfig

        model_config = ModelConfig.from_dict({**base_model, "noise_scale": {}})
    out_dir = settings.checkpoint_dir / f"project{project_id}" / name

    def on_epoch(event: dict[str, Any]) -> Any:
        frac = event.get("epoch", 0) / max(1, event.get("epochs", 1))
        return progress(
            {
                "progress": 0.05 + 0.85 * frac,
                "stage": stage,
                **event,
                "message": f"stage {stage} epoch {event.get('epoch')}/{event.get('epochs')}",
            }
        )

    t0 = time.perf_counter()
    result = tr.fit(
        train_split.data,
        valid.data,
        model_config=model_config,
        train_config=train_config,
        stage=stage,
        out_dir=out_dir,
        init_from=init_from,
        callback=on_epoch,
        schema=schema,
        resume=resume,
    )
    seconds = time.perf_counter() - t0
    if getattr(result, "cancelled", False):
        raise JobError("training was cancelled")
    from meiju_core import resume as resume_state

    resume_state.discard(out_dir)
    snapshot = _snapshot(train_split.data, schema, round_id)
    with store.write() as s:
        mv = ModelVersion(
            project_id=project_id,
            name=name,
            stage=stage,
            preset=preset,
            config={
                "model": _plain(model_config),
                "train": train_config.to_dict(),
                "feature_set_id": fs_id,
                "schema": schema.to_dict(),
                # head -> checkpoint (the best-joint epoch, or per-head bests when asked)
                "checkpoints": {h: str(p) for h, p in result.checkpoint_paths.items()},
                "valid_during_training": result.metrics,
                "samples_per_second": result.samples_per_second,
            },
            checkpoint_path=str(result.best_joint_path),
            snapshot=snapshot,
            job_id=job_id,
            train_seconds=seconds,
            metrics={},
        )
        s.add(mv)
        s.flush()
        mv_id = mv.id
    progress({"progress": 0.92, "message": "predicting every sample"})
    predict(store, settings, model_version_id=mv_id, result=result)
    evaluate(store, model_version_id=mv_id)
    progress({"progress": 1.0, "message": f"model version {mv_id} ready"})
    return mv_id


PRESETS = ("paper", "baseline", "fast")


def presets(
    preset: str,
    *,
    stage: int,
    input_dims: dict[str, int],
    num_classes: dict[str, int],
    seed: int = 336,
    device: str = "auto",
    epochs: int | None = None,
    model_overrides: dict[str, Any] | None = None,
    train_overrides: dict[str, Any] | None = None,
    threads: int | None = None,
):
    """Model and training configs of a preset: ``paper`` (one system of the Track I winner:
    ``ModelConfig.paper`` and ``TrainConfig.paper``), ``baseline`` (the official MEIJU baseline
    exactly) or ``fast`` (the paper system on a short schedule, for CPU demos). ``epochs``
    shortens any schedule (a third flat, the rest decaying); ``model_overrides`` /
    ``train_overrides`` replace fields (``emotion_heads``, ``intent_heads`` and ``text_kernels``
    are the paper preset's arguments); ``threads`` caps torch's CPU threads. Raises InputError for
    an unknown preset or field."""
    from meiju_core.model import ModelConfig
    from meiju_core.train import TrainConfig

    if preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r}; presets are {list(PRESETS)}", field="preset")
    overrides: dict[str, Any] = {"seed": seed, "device": device}
    if threads:
        overrides["threads"] = int(threads)
    if epochs is not None:
        overrides |= {"epochs_flat": epochs // 3, "epochs_decay": epochs - epochs // 3}
    overrides |= dict(train_overrides or {})
    model_cls = ModelConfig.baseline if preset == "baseline" else ModelConfig.paper
    try:
        model_config = model_cls(input_dims, num_classes, **(model_overrides or {}))
        train_config = getattr(TrainConfig, preset)(stage, **overrides)
    except (TypeError, ValueError) as e:
        raise InputError(f"preset {preset!r}: {e}", field="preset") from None
    return model_config, train_config


def _feature_set_id(store: Store, project_id: int, name: str) -> int:
    with store.read() as s:
        fs = s.scalars(
            select(FeatureSet).where(FeatureSet.project_id == project_id, FeatureSet.name == name)
        ).first()
    if fs is None:
        raise InputError(
            f"project {project_id} has no feature set {name!r}; run `meiju extract` first",
            field="feature_set",
        )
    return fs.id


def _feature_dims(store: Store, fs_id: int) -> dict[str, int]:
    with store.read() as s:
        dims = dict(s.get(FeatureSet, fs_id).dims or {})
    return {m: int(dims[m]) for m in MODALITIES if m in dims}


def _stage1_checkpoint(
    store: Store, project_id: int, round_id: int | None
) -> tuple[Path | None, dict[str, Any] | None]:
    """(checkpoint, model config dict) of the model stage 2 starts from: the round's, else the
    current one; (None, None) when the project has none.

    Raises:
        InputError: that model version is an ensemble (it has no weights of its own).
    """
    with store.read() as s:
        mv = None
        if round_id is not None:
            mv = s.get(ModelVersion, s.get(ReviewRound, round_id).model_version_id)
        mv = mv or q.current_model(s, project_id=project_id)
        if mv is None:
            return None, None
        if mv.preset == ENSEMBLE:
            members = sorted({m for ids in mv.config["members"].values() for m in ids})
            raise InputError(
                f"model version {mv.id} is an ensemble of versions {members}; stage 2 fine-tunes "
                "one trained system: open the round on one of its members",
                field="model_version",
            )
        return Path(mv.checkpoint_path), (mv.config or {}).get("model")


def _concat(a: SplitData, b: SplitData) -> SplitData:
    from meiju_core.train import TrainData

    data = TrainData(
        ids=a.data.ids + b.data.ids,
        features={m: a.data.features[m] + b.data.features[m] for m in a.data.features},
        labels={h: np.concatenate([a.data.labels[h], b.data.labels[h]]) for h in a.data.labels},
    )
    return SplitData(sample_ids=a.sample_ids + b.sample_ids, data=data)


def _snapshot(data: Any, schema: LabelSchema, round_id: int | None) -> dict[str, Any]:
    counts = {}
    for head in schema.head_names:
        y = data.labels[head]
        counts[head] = {c: int((y == k).sum()) for k, c in enumerate(schema.classes(head))}
    return {"n_samples": len(data.ids), "labels": counts, "round_id": round_id}


def _plain(obj: Any) -> Any:
    import dataclasses

    if dataclasses.is_dataclass(obj):
        return {k: _plain(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def predict(
    store: Store,
    settings: Settings,
    *,
    model_version_id: int,
    result: Any = None,
    splits: tuple[str, ...] = ("train", "valid", "test", "pool"),
    missing_only: bool = False,
) -> int:
    """Write every sample's per-head probabilities, argmax label and confidence for one model
    version (replacing any it had). Returns the number of prediction rows written.

    With ``settings.calibrate`` (the default), each head's probabilities are temperature-scaled
    first: one temperature per head fitted on the valid split's gold labels
    (``meiju_core.pseudo.temperature_scale``; Guo et al. 2017; ours, not the paper's), recorded in
    the model version's ``config["temperature"]``. Argmax labels, and so every F1, are unchanged.

    An ensemble version (:func:`create_ensemble`) is predicted from its members: each member is
    predicted first where it lacks rows, then each head's probabilities are the mean of its
    members' stored probabilities (no further calibration); for a head with several members each
    member's class goes to ``prediction.paths`` (the review queue's disagreement filter).

    With ``missing_only`` (after an import), only samples without a prediction of this model
    version are predicted, with the temperatures already stored; the other rows stay.

    Raises:
        InputError: a member of an ensemble no longer exists.
    """
    from meiju_core import train as tr

    only = None
    with store.read() as s:
        mv = s.get(ModelVersion, model_version_id)
        project_id, fs_id = mv.project_id, mv.config["feature_set_id"]
        checkpoint = mv.config.get("checkpoints") or mv.checkpoint_path
        stored_temperatures = mv.config.get("temperature") or {}
        is_ensemble = mv.preset == ENSEMBLE
        if missing_only:
            have = select(Prediction.sample_id).where(
                Prediction.model_version_id == model_version_id
            )
            only = set(
                s.scalars(
                    select(Sample.id).where(
                        Sample.project_id == project_id,
                        Sample.split.in_(splits),
                        Sample.id.not_in(have),
                    )
                )
            )
    if only is not None and not only:
        return 0
    if is_ensemble:  # members predicted where they lack rows, then every row re-averaged
        return _predict_ensemble(store, settings, model_version_id=model_version_id, splits=splits)
    schema = schema_of(store, project_id)
    split = load_split(
        store,
        project_id=project_id,
        split=splits,
        feature_set_id=fs_id,
        schema=schema,
        with_gold=False,
        only=only,
    )
    probs = tr.predict(
        result if result is not None else checkpoint, split.data, device=settings.device
    )
    if only is not None:
        temperatures = dict(stored_temperatures)
    else:
        temperatures = (
            _fit_temperatures(store, project_id, schema, split.sample_ids, probs)
            if settings.calibrate
            else {}
        )
    scaled = {}
    for head in schema.head_names:
        p = np.asarray(probs[head], dtype=np.float64)
        if head in temperatures:
            from meiju_core.pseudo import apply_temperature

            p = apply_temperature(
                p / p.sum(axis=1, keepdims=True), temperatures[head], kind="probs"
            )
        scaled[head] = p
    n = _write_predictions(
        store, model_version_id, schema, split.sample_ids, scaled, replace=only is None
    )
    if only is None:
        with store.write() as s:
            mv = s.get(ModelVersion, model_version_id)
            mv.config = {**mv.config, "temperature": temperatures or None}
    return n


def _write_predictions(
    store: Store,
    model_version_id: int,
    schema: LabelSchema,
    sample_ids: list[int],
    probs: dict[str, np.ndarray],
    paths: dict[str, list[np.ndarray]] | None = None,
    *,
    replace: bool = True,
) -> int:
    """Write a version's prediction rows: ``probs[head]`` float (N, K) aligned with
    ``sample_ids``; ``paths[head]`` one int (N,) argmax array per member (ensembles). With
    ``replace`` every older row of the version goes first; without, the rows are added."""
    rows = []
    for head in schema.head_names:
        p = probs[head]
        arg = p.argmax(axis=1)
        classes = schema.classes(head)
        member_args = (paths or {}).get(head) or []
        for i, sid in enumerate(sample_ids):
            rows.append(
                {
                    "model_version_id": model_version_id,
                    "sample_id": sid,
                    "head": head,
                    "label": classes[arg[i]],
                    "confidence": float(p[i, arg[i]]),
                    "probs": [round(float(v), 6) for v in p[i]],
                    "paths": [classes[a[i]] for a in member_args] if len(member_args) > 1 else None,
                }
            )
    with store.write() as s:
        if replace:
            s.execute(delete(Prediction).where(Prediction.model_version_id == model_version_id))
        for start in range(0, len(rows), 5000):
            s.execute(insert(Prediction), rows[start : start + 5000])
    return len(rows)


# --------------------------------------------------------------------------- ensembles

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
        require_admin(user, "create an ensemble", store=store)
    schema = schema_of(store, project_id)
    unknown = [h for h in members if h not in schema.head_names]
    if unknown:
        raise InputError(f"unknown head(s) {unknown}; heads are {schema.head_names}", field="head")
    missing = [h for h in schema.head_names if not members.get(h)]
    if missing:
        raise InputError(f"every head needs at least one member; none for {missing}", field="head")
    ids = sorted({int(m) for ms in members.values() for m in ms})
    with store.write() as s:
        versions = {m: s.get(ModelVersion, m) for m in ids}
        for m, v in versions.items():
            if v is None or v.project_id != project_id:
                raise InputError(
                    f"model version {m} does not exist in this project", field="member"
                )
            if v.preset == ENSEMBLE:
                raise InputError(
                    f"model version {m} is itself an ensemble; name its members instead",
                    field="member",
                )
        feature_sets = {v.config.get("feature_set_id") for v in versions.values()}
        if len(feature_sets) > 1:
            raise InputError(
                f"members use different feature sets {sorted(feature_sets)}", field="member"
            )
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
    predict(store, settings, model_version_id=mv_id)
    evaluate(store, model_version_id=mv_id)
    return mv_id


def _predict_ensemble(
    store: Store, settings: Settings, *, model_version_id: int, splits: tuple[str, ...]
) -> int:
    with store.read() as s:
        mv = s.get(ModelVersion, model_version_id)
        members: dict[str, list[int]] = mv.config["members"]
        project_id = mv.project_id
        sample_ids = list(
            s.scalars(
                select(Sample.id)
                .where(Sample.project_id == project_id, Sample.split.in_(splits))
                .order_by(Sample.id)
            )
        )
    schema = schema_of(store, project_id)
    for m in sorted({m for ms in members.values() for m in ms}):
        with store.read() as s:
            if s.get(ModelVersion, m) is None:
                raise InputError(f"ensemble member {m} no longer exists", field="member")
            have = s.scalar(
                select(func.count()).select_from(Prediction).where(Prediction.model_version_id == m)
            )
            can_predict = bool(s.get(ModelVersion, m).checkpoint_path)
        if have < len(sample_ids) * len(schema.head_names) and can_predict:
            predict(store, settings, model_version_id=m, splits=splits, missing_only=True)
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
    rows = np.flatnonzero(keep)
    return _write_predictions(
        store,
        model_version_id,
        schema,
        [sample_ids[i] for i in rows],
        {h: p[rows] for h, p in probs.items()},
        {h: [a[rows] for a in args] for h, args in paths.items()},
    )


def _fit_temperatures(
    store: Store,
    project_id: int,
    schema: LabelSchema,
    sample_ids: list[int],
    probs: dict[str, Any],
) -> dict[str, float]:
    """{head: temperature} fitted on the valid samples among ``sample_ids`` (``probs[head]``
    rows, float (N, K)); a head with fewer than 20 valid gold labels is left uncalibrated."""
    from meiju_core.pseudo import temperature_scale

    with store.read() as s:
        gold = s.execute(
            select(GoldLabel.sample_id, GoldLabel.head, GoldLabel.label)
            .join(Sample, Sample.id == GoldLabel.sample_id)
            .where(Sample.project_id == project_id, Sample.split == "valid")
        ).all()
    row_of = {sid: i for i, sid in enumerate(sample_ids)}
    out: dict[str, float] = {}
    for head in schema.head_names:
        classes = schema.classes(head)
        pairs = [
            (row_of[sid], classes.index(label))
            for sid, h, label in gold
            if h == head and sid in row_of and label in classes
        ]
        if len(pairs) < 20:
            continue
        rows_, labels = (np.array(v, dtype=np.int64) for v in zip(*pairs, strict=True))
        p = np.asarray(probs[head], dtype=np.float64)[rows_]
        out[head] = round(
            temperature_scale(p / p.sum(axis=1, keepdims=True), labels, kind="probs"), 4
        )
    return out


def evaluate(store: Store, *, model_version_id: int) -> dict[str, Any]:
    """Score a model version's stored predictions against gold labels on valid and test; the
    report (weighted F1 per head, joint score, per-class figures, confusion matrices) is saved in
    ``model_version.metrics`` and returned."""
    from meiju_core.metrics import evaluate as score

    with store.read() as s:
        mv = s.get(ModelVersion, model_version_id)
        schema = LabelSchema.from_dict(mv.config["schema"])
        rows = s.execute(
            select(Sample.split, Prediction.sample_id, Prediction.head, Prediction.label)
            .join(Sample, Sample.id == Prediction.sample_id)
            .where(
                Prediction.model_version_id == model_version_id, Sample.split.in_(("valid", "test"))
            )
        ).all()
        gold = {
            (g.sample_id, g.head): g.label
            for g in s.scalars(
                select(GoldLabel)
                .join(Sample, Sample.id == GoldLabel.sample_id)
                .where(Sample.project_id == mv.project_id, Sample.split.in_(("valid", "test")))
            )
        }
    metrics: dict[str, Any] = {}
    for split in ("valid", "test"):
        by_sample: dict[int, dict[str, str]] = {}
        for sp, sid, head, label in rows:
            if sp == split:
                by_sample.setdefault(sid, {})[head] = label
        if not by_sample:
            continue
        ids = sorted(by_sample)
        y_true = {
            h: np.array([schema.index(h, gold[(i, h)]) if (i, h) in gold else -1 for i in ids])
            for h in schema.head_names
        }
        y_pred = {
            h: np.array([schema.index(h, by_sample[i][h]) for i in ids]) for h in schema.head_names
        }
        metrics[split] = score(y_true, y_pred, schema.to_dict())
        metrics[split]["n"] = len(ids)
    with store.write() as s:
        s.get(ModelVersion, model_version_id).metrics = metrics
    return metrics


# --------------------------------------------------------------------------- review rounds


def promote(store: Store, *, model_version_id: int, user: dict[str, Any] | None) -> None:
    """Make ``model_version_id`` the promoted model (the previous one is archived).

    Raises:
        PermissionDenied: ``user`` is given and is not an admin in the store.
    """
    if user is not None:
        require_admin(user, "promote a model version", store=store)
    with store.write() as s:
        q.promote(s, model_version_id=model_version_id, user_id=(user or {}).get("id"))


def check_head_thresholds(value: Any, *, head: str, classes: list[str]) -> float | dict:
    """One head's threshold entry, checked and normalised (:mod:`db.thresholds`): a number in
    [0, 1] stays a number; a ``{class: number}`` mapping (``"*"`` for the classes not named)
    becomes a mapping that names every class of ``classes``, in that order, or one number when
    they are all equal.

    Raises:
        InputError: a value outside [0, 1], NaN or not a number (field ``threshold <head>
            <class>``), an unknown class, or a class left without threshold.
    """
    from meiju_core.validate import unit_interval_problem

    if not isinstance(value, dict):
        problem = unit_interval_problem(value)
        if problem:  # also refuses NaN, infinities and words
            raise InputError(f"threshold {problem}", field=f"threshold {head}")
        return float(value)
    unknown = [c for c in value if c != thr.DEFAULT_KEY and c not in classes]
    if unknown:
        raise InputError(
            f"{head} thresholds name unknown class(es) {unknown}; classes are {classes}",
            field=f"threshold {head}",
        )
    for c, v in value.items():
        problem = unit_interval_problem(v)
        if problem:
            raise InputError(f"threshold {problem}", field=f"threshold {head} {c}")
    missing = [c for c in classes if c not in value and thr.DEFAULT_KEY not in value]
    if missing:
        raise InputError(
            f"{head} thresholds give no threshold for {missing} (name them or give '*')",
            field=f"threshold {head}",
        )
    full = {c: thr.threshold_for(value, c) for c in classes}
    return next(iter(full.values())) if len(set(full.values())) == 1 else full


def round_plan(
    store: Store,
    settings: Settings,
    *,
    project_id: int,
    model_version_id: int,
    thresholds: dict[str, Any] | float | None = None,
    strategy: str | None = None,
    budget: int | None = None,
    explicit: dict[str, dict[str, int]] | None = None,
) -> dict[str, Any]:
    """What a round would offer before it opens: per head and class the gold train labels, the
    threshold, the candidates (pool samples predicted as the class at or above its threshold),
    the quota and the cards the queue gets (``min(quota, candidates)``).

    Thresholds are one number for every head, ``{head: float}``, or per class ``{head: {class:
    float}}`` (``"*"`` for the classes not named; :mod:`db.thresholds`), e.g. from
    :func:`thresholds_from_evidence`. A per-class entry is stored with every class named; one
    whose classes all have the same threshold is stored as that number.

    Quotas come from the gold distribution (``pseudo.compute_quotas``) and, except for explicit
    quotas, are then fitted to the candidates (``quota_fit.fit_to_candidates``): the balanced
    strategy gives 0 to the largest gold classes, which are the ones a model trained on few
    labels predicts confidently, so unfitted defaults could open a round with no card.

    Returns:
        ``{"thresholds": {head: t or {class: t}}, "quotas": {head: {class: n}},
        "classes": {head: [{"class", "gold", "threshold", "candidates", "quota", "queue"}]}}``.
    Raises:
        InputError: a threshold outside [0, 1] (the field names the head and class), an unknown
            head or class, a per-class entry that leaves a class without threshold, an unknown
            strategy or a negative budget.
    """
    from meiju_core.pseudo import compute_quotas
    from meiju_core.quota_fit import fit_to_candidates

    schema = schema_of(store, project_id)
    t = settings.threshold if thresholds is None else thresholds
    th = {h: t for h in schema.head_names} if not isinstance(t, dict) else dict(t)
    for head, value in th.items():
        if head not in schema.head_names:
            raise InputError(f"unknown head {head!r}; heads are {schema.head_names}", field=head)
        th[head] = check_head_thresholds(value, head=head, classes=schema.classes(head))
    strategy = strategy or settings.quota_strategy
    budget = settings.quota_budget if budget is None else budget
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
        raise InputError(f"budget {budget!r} must be a whole number >= 0", field="budget")
    with store.read() as s:
        gold = q.gold_counts(s, project_id=project_id)
        cands = q.class_candidates(s, model_version_id=model_version_id, thresholds=th)
    quotas: dict[str, dict[str, int]] = {}
    table: dict[str, list[dict[str, Any]]] = {}
    for head in schema.head_names:
        classes = schema.classes(head)
        g = {c: gold.get(head, {}).get(c, 0) for c in classes}
        counts = np.array([g[c] for c in classes], dtype=np.int64)
        try:
            base = compute_quotas(
                counts,
                strategy=strategy,
                budget=budget,
                classes=classes,
                explicit=(explicit or {}).get(head),
            )
        except ValueError as e:
            raise InputError(str(e), field="quotas") from e
        if strategy != "explicit":
            base = fit_to_candidates(
                base, gold=g, candidates=cands.get(head, {}), budget=budget, classes=classes
            )
        quotas[head] = {c: int(n) for c, n in base.items()}
        table[head] = [
            {
                "class": c,
                "gold": g[c],
                "threshold": thr.threshold_for(th[head], c) if head in th else None,
                "candidates": cands.get(head, {}).get(c, 0),
                "quota": quotas[head][c],
                "queue": min(quotas[head][c], cands.get(head, {}).get(c, 0)),
            }
            for c in classes
        ]
    return {"thresholds": th, "quotas": quotas, "classes": table}


def open_round(
    store: Store,
    settings: Settings,
    *,
    project_id: int,
    model_version_id: int,
    thresholds: dict[str, Any] | float | None = None,
    strategy: str | None = None,
    budget: int | None = None,
    explicit: dict[str, dict[str, int]] | None = None,
    user: dict[str, Any] | None = None,
    queue_order: str = "confidence",
) -> int:
    """Open a review round with thresholds per head or per head and class (see
    :func:`round_plan`) and the per-class quotas of :func:`round_plan` (gold distribution
    fitted to the candidates). Returns the round id.

    ``queue_order`` is the order the round serves its cards in: ``confidence`` (most confident
    first, the paper's rule), ``uncertainty`` (least confident first), ``disagreement`` (heads or
    ensemble members disagree first) or ``rarest`` (rarest predicted class first, round robin);
    ``db.queries.queue`` defines each.

    Raises:
        PermissionDenied: ``user`` is given and is not an admin in the store.
        InputError: an unknown ``queue_order``; and see :func:`round_plan`.
    """
    if user is not None:
        require_admin(user, "open a review round", store=store)
    if queue_order not in q.QUEUE_ORDERS:
        raise InputError(
            f"queue order {queue_order!r} is not one of {', '.join(q.QUEUE_ORDERS)}",
            field="queue_order",
        )
    plan = round_plan(
        store,
        settings,
        project_id=project_id,
        model_version_id=model_version_id,
        thresholds=thresholds,
        strategy=strategy,
        budget=budget,
        explicit=explicit,
    )
    with store.write() as s:
        rnd = q.open_round(
            s,
            project_id=project_id,
            model_version_id=model_version_id,
            thresholds=plan["thresholds"],
            quotas=plan["quotas"],
            user_id=(user or {}).get("id"),
            queue_order=queue_order,
        )
        return rnd.id


def thresholds_from_evidence(
    store: Store, *, round_id: int, precision: float = 0.95, min_count: int = 20
) -> dict[str, Any]:
    """Per-class thresholds read from a round's human review decisions: for every head and
    predicted class, the lowest confidence at which reviewers accepted at least ``precision`` of
    the pseudo-labels at or above it, over at least ``min_count`` decisions
    (``pseudo.threshold_for_precision`` on ``db.evidence.review_observations``). A class without
    that much evidence keeps the round's own threshold.

    Returns:
        ``{"round_id", "precision", "min_count", "thresholds": {head: {class: float}},
        "rows": [{"head", "class", "reviewed", "accepted", "evidence", "current", "next"}]}``:
        ``evidence`` is the threshold the decisions support (None: not enough), ``current`` the
        round's, ``next`` the one a next round takes (``evidence`` else ``current``).
    Raises:
        InputError: an unknown round, a gold-label round, ``precision`` outside (0, 1] or
            ``min_count`` under 1.
    """
    from db.evidence import review_observations
    from meiju_core.pseudo import threshold_for_precision

    if isinstance(precision, bool) or not isinstance(precision, int | float):
        raise InputError(f"precision {precision!r} is not a number", field="precision")
    if not 0 < float(precision) <= 1:
        raise InputError(f"precision must be in (0, 1], got {precision}", field="precision")
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
        raise InputError(
            f"min_count must be a whole number >= 1, got {min_count!r}", field="min_count"
        )
    with store.read() as s:
        rnd = s.get(ReviewRound, round_id)
        if rnd is None or rnd.kind != "pseudo":
            raise InputError(f"round #{round_id} is not a pseudo-label round", field="round")
        obs = review_observations(s, round_id=round_id)
        current, project_id = dict(rnd.thresholds), rnd.project_id
    schema = schema_of(store, project_id)
    out: dict[str, Any] = {
        "round_id": round_id,
        "precision": float(precision),
        "min_count": min_count,
        "thresholds": {},
        "rows": [],
    }
    for head in schema.head_names:
        if head not in current:
            continue
        per: dict[str, float] = {}
        for cls in schema.classes(head):
            sub = [o for o in obs if o["head"] == head and o["predicted"] == cls]
            conf = np.array([o["confidence"] for o in sub], dtype=np.float64)
            acc = np.array([o["accepted"] for o in sub], dtype=bool)
            t = (
                threshold_for_precision(conf, acc, precision=float(precision), min_count=min_count)
                if sub
                else None
            )
            now = thr.threshold_for(current[head], cls)
            per[cls] = round(t, 6) if t is not None else now
            out["rows"].append(
                {
                    "head": head,
                    "class": cls,
                    "reviewed": len(sub),
                    "accepted": int(acc.sum()),
                    "evidence": t,
                    "current": now,
                    "next": per[cls],
                }
            )
        out["thresholds"][head] = per
    return out


def open_round_from_evidence(
    store: Store,
    settings: Settings,
    *,
    round_id: int,
    precision: float = 0.95,
    min_count: int = 20,
    model_version_id: int | None = None,
    strategy: str | None = None,
    budget: int | None = None,
    user: dict[str, Any] | None,
) -> int:
    """Open the next pseudo-label round with the per-class thresholds that round ``round_id``'s
    review decisions support (:func:`thresholds_from_evidence`), on ``model_version_id`` (default:
    the project's promoted model, else its newest) with quotas as :func:`open_round` makes them.
    Admins only: the role is read from the store. Returns the new round's id.

    Raises:
        PermissionDenied: ``user`` is not an admin in the store (None is refused too).
        InputError: see :func:`thresholds_from_evidence` and :func:`round_plan`; a project with no
            model version.
    """
    require_admin(user, "open a review round", store=store)
    ev = thresholds_from_evidence(
        store, round_id=round_id, precision=precision, min_count=min_count
    )
    with store.read() as s:
        project_id = s.get(ReviewRound, round_id).project_id
        if model_version_id is None:
            mv = q.current_model(s, project_id=project_id)
            if mv is None:
                raise InputError("the project has no model version to review", field="model")
            model_version_id = mv.id
    return open_round(
        store,
        settings,
        project_id=project_id,
        model_version_id=model_version_id,
        thresholds=ev["thresholds"],
        strategy=strategy,
        budget=budget,
        user=user,
    )


def empty_queue_reasons(
    store: Store,
    *,
    round_id: int,
    flt: q.QueueFilter | None = None,
    user: dict[str, Any] | None = None,
) -> list[dict[str, str]]:
    """Why the review queue of ``round_id`` (under ``flt``) shows no card, in words a user reads:
    each reason is ``{"reason": what is true, "fix": what can change it}``, most basic first
    (no prediction reaches the threshold; the classes predicted have no quota left; every card
    is decided; cards are held by other annotators; the filter narrows the queue)."""
    flt = flt or q.QueueFilter()
    uid = (user or {}).get("id")
    out: list[dict[str, str]] = []
    with store.read() as s:
        rnd = s.get(ReviewRound, round_id)
        heads = [flt.head] if flt.head else list(rnd.thresholds)
        th = {h: rnd.thresholds[h] for h in heads if h in rnd.thresholds}
        mv_id = flt.model_version_id or rnd.model_version_id
        cands = q.class_candidates(s, model_version_id=mv_id, thresholds=th)
        status = q.quota_status(s, round_id=round_id)
        total = q.candidate_count(s, round_id=round_id, flt=flt)
        open_now = q.queue_size(s, round_id=round_id, flt=flt)
        now = utcnow()
        others = s.scalar(
            select(func.count())
            .select_from(ReviewLease)
            .where(
                ReviewLease.round_id == round_id,
                ReviewLease.expires_at > now,
                ReviewLease.user_id.is_distinct_from(uid),
            )
        )
    above = sum(sum(per.values()) for per in cands.values())
    th_text = ", ".join(f"{h} {thr.describe(t)}" for h, t in th.items())
    if above == 0:
        out.append(
            {
                "reason": f"No pool sample reaches the round's threshold ({th_text}).",
                "fix": "An admin can open a new round with a lower threshold: the open-round "
                "form shows how many cards each threshold gives.",
            }
        )
    else:
        full, n_open_classes = [], 0
        for head, per in cands.items():
            for label, n in sorted(per.items(), key=lambda kv: -kv[1]):
                accepted, quota = status.get(head, {}).get(label, (0, 0))
                if n and accepted >= quota:
                    full.append(f"{head} {label} ({accepted} of {quota})")
                elif n:
                    n_open_classes += 1
        if n_open_classes == 0:
            out.append(
                {
                    "reason": "Every class the model predicts above the threshold has no quota "
                    "left: " + ", ".join(full[:8]) + ("…" if len(full) > 8 else "") + ".",
                    "fix": "An admin can open a new round with a larger budget or other quotas.",
                }
            )
        elif total and not open_now and not others:
            out.append(
                {
                    "reason": f"All {total} cards of this queue are decided.",
                    "fix": "An admin can retrain with the accepted pseudo-labels and open the "
                    "next round.",
                }
            )
    if others:
        out.append(
            {
                "reason": f"{others} cards are being reviewed by other annotators right now.",
                "fix": "They come back if they are left undecided.",
            }
        )
    if flt != q.QueueFilter():
        out.append(
            {
                "reason": "Filters narrow the queue.",
                "fix": "Clear the filters to see the rest of the round.",
            }
        )
    return out


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
        require_admin(user, "replace another user's decision", store=store)
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


def auto_pseudo_label(
    store: Store,
    *,
    round_id: int,
    user: dict[str, Any] | None = None,
    progress: Progress = _noop,
    rule: str = "joint",
    confidence: str = "raw",
) -> dict[str, int]:
    """The paper's automatic mode (§II.B): accept the pool's most confident predictions at or
    above the round's thresholds within the remaining per-class quotas, through the same
    quota-checked decisions the review app makes. Returns {head: accepted}.

    Args:
        rule: ``"joint"``: a sample is accepted with both of its labels when every head passes
            (settings ``pseudo_rule``); ``"per_head"``: each head on its own
            (:func:`meiju_core.pseudo.select_joint`).
        confidence: ``"raw"``: the model's softmax confidence, as the paper (stored calibrated
            probabilities are turned back with the version's temperature); ``"calibrated"``: the
            stored temperature-scaled ones (ours, reported as its own row, never the default).
    Raises:
        InputError: an unknown rule or confidence.
    """
    from meiju_core.pseudo import apply_temperature, select_joint

    if rule not in ("joint", "per_head") or confidence not in ("raw", "calibrated"):
        raise InputError(
            f"rule must be joint or per_head and confidence raw or calibrated, got {rule!r}, "
            f"{confidence!r}",
            field="pseudo_rule",
        )
    with store.read() as s:
        rnd = s.get(ReviewRound, round_id)
        schema = schema_of(store, rnd.project_id)
        temperatures = (s.get(ModelVersion, rnd.model_version_id).config or {}).get(
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
        rule=rule,
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
    from meiju_core.pseudo import select as select_rows

    flt = flt or q.QueueFilter()
    with store.read() as s:
        rnd = s.get(ReviewRound, round_id)
        schema = LabelSchema.from_dict(
            s.scalar(select(Project.label_schema).where(Project.id == rnd.project_id))
        )
        cands = q.filtered_candidates(s, round_id=round_id, flt=flt, user_id=(user or {}).get("id"))
        accepted = q.accepted_counts(s, round_id=round_id)
        thresholds, quotas = dict(rnd.thresholds), dict(rnd.quotas)
    out: dict[str, Any] = {"items": [], "counts": {}, "candidates": {}, "remaining": {}}
    for head, rows in cands.items():
        classes = schema.classes(head)
        quota = np.array([quotas.get(head, {}).get(c, 0) for c in classes], dtype=np.int64)
        already = np.array([accepted.get(head, {}).get(c, 0) for c in classes], dtype=np.int64)
        out["candidates"][head] = len(rows)
        out["remaining"][head] = {
            c: int(max(0, n - a)) for c, n, a in zip(classes, quota, already, strict=True)
        }
        counts = dict.fromkeys(classes, 0)
        if rows:
            probs = np.array([r[1] for r in rows], dtype=np.float64)
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
                out["items"].append((rows[i][0], head, classes[k], float(probs[i, k])))
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
    require_admin(user, "bulk accept pseudo-labels", store=store)
    try:
        with store.write() as s:
            return q.bulk_accept(
                s,
                round_id=round_id,
                items=[tuple(it[:3]) for it in items],
                user_id=(user or {}).get("id"),
                model_version_id=model_version_id,
            )
    except q.QueueError as e:
        raise StoreError(str(e)) from e


# --------------------------------------------------------------------------- transcripts


def save_transcript(
    store: Store, *, sample_id: int, text: str, expected_version: int, user: dict[str, Any] | None
) -> int:
    """Save a transcript edit if nobody saved since ``expected_version``; records the edit with
    its kind (punctuation-only or lexical), editor and time. Returns the new version.
    Raises StaleEdit when the stored version moved on, InputError on HTML or a control or
    invisible character (NUL, a line break, U+202E)."""
    from meiju_core.text import has_html, is_punctuation_only_change
    from meiju_core.validate import text_problem

    if has_html(text):
        raise InputError("transcripts are plain text; remove the HTML markup", field="text")
    if text_problem(text):
        raise InputError(text_problem(text), field="text")
    with store.write() as s:
        tr = s.scalars(select(Transcript).where(Transcript.sample_id == sample_id)).one()
        if tr.version != expected_version:
            raise StaleEdit(
                f"transcript of sample {sample_id} was saved by someone else "
                f"(version {tr.version}, you edited {expected_version}); reload"
            )
        if tr.text == text:
            return tr.version
        kind = "punctuation" if is_punctuation_only_change(tr.text, text) else "lexical"
        s.add(
            TranscriptEdit(
                transcript_id=tr.id,
                before=tr.text,
                after=text,
                kind=kind,
                editor_id=(user or {}).get("id"),
            )
        )
        tr.text, tr.updated_at, tr.updated_by = text, utcnow(), (user or {}).get("id")
        if tr.source != "manual" and kind == "lexical":
            tr.source = "manual"
        s.flush()
        q.audit(
            s,
            user_id=(user or {}).get("id"),
            action="edit_transcript",
            entity="transcript",
            entity_id=tr.id,
            payload={"kind": kind},
        )
        return tr.version


# --------------------------------------------------------------------------- export


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


# --------------------------------------------------------------------------- demo


def build_demo(
    store: Store,
    settings: Settings,
    *,
    admin_password: str = "meiju-demo",
    epochs: int | None = None,
    progress: Progress = _noop,
) -> dict[str, Any]:
    """Build the demo project from real data end to end: import CPED + GRID + Mandarin speech,
    extract builtin features, train stage 1, predict, open the first review round. Idempotent:
    each step is skipped when its result is already stored."""
    from meiju_core.io.cped import build_demo as import_demo

    add_user(store, name="admin", role="admin", password=admin_password)
    summary = import_demo(store, project_name=settings.project, seed=settings.seed)
    info = project_info(store, name=settings.project)
    pid = info["id"]
    with store.write() as s:  # train the demo on the short schedule: stage 1 in about a minute
        project = s.get(Project, pid)
        project.settings = {"preset": "fast", **(project.settings or {})}
    make_media_playable(store, settings, project_id=pid)
    progress({"progress": 0.1, "message": "extracting features"})
    extract_features(store, settings, project_id=pid)
    with store.read() as s:
        mv = q.current_model(s, project_id=pid)
    if mv is None:
        progress({"progress": 0.3, "message": "training stage 1"})
        mv_id = train(store, settings, project_id=pid, stage=1, epochs=epochs, progress=progress)
        with store.write() as s:
            q.promote(s, model_version_id=mv_id)
    else:
        mv_id = mv.id
    with store.read() as s:
        rnd = q.active_round(s, project_id=pid)
    if rnd is None:
        open_round(
            store,
            settings,
            project_id=pid,
            model_version_id=mv_id,
            thresholds=demo_threshold(store, mv_id),
        )
    return {"project_id": pid, "model_version_id": mv_id, **summary}


BROWSER_VIDEO = (".mp4", ".webm")


def make_media_playable(store: Store, settings: Settings, *, project_id: int) -> int:
    """Give every video a browser can't play (e.g. MPEG-1 ``.mpg``) an H.264/AAC MP4 copy under
    ``<data_dir>/media`` and point the sample at it, so the review card can show it. Features are
    extracted from the same copy. Returns the number of clips transcoded; a clip that cannot be
    decoded is left as it is (its features will be marked missing)."""
    from meiju_core.errors import MediaError
    from meiju_core.media import transcode_mp4

    with store.read() as s:
        rows = s.execute(
            select(Sample.id, Sample.utt_id, Sample.video_path).where(
                Sample.project_id == project_id, Sample.video_path.is_not(None)
            )
        ).all()
    done = {}
    for sid, utt, path in rows:
        if Path(path).suffix.lower() in BROWSER_VIDEO:
            continue
        try:
            done[sid] = str(transcode_mp4(path, settings.data_dir / "media" / f"{utt}.mp4"))
        except MediaError:
            continue
    if done:
        with store.write() as s:
            for sid, path in done.items():
                s.get(Sample, sid).video_path = path
    return len(done)


DEMO_THRESHOLDS = (0.99, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5)


def demo_threshold(
    store: Store, model_version_id: int, *, min_candidates: int = 200
) -> dict[str, float]:
    """Per head, the paper's 0.99 when the model reaches it on at least ``min_candidates`` pool
    samples, else the highest of 0.95 / 0.9 / 0.8 / 0.7 / 0.6 / 0.5 that does, else 0.5 (a model
    trained on few labels rarely reaches 0.99, and its heads differ: the demo's intent head is
    far more confident than its emotion head). Returns {head: threshold}."""
    with store.read() as s:
        counts = candidate_counts_session(s, model_version_id, list(DEMO_THRESHOLDS))
    return {
        head: next((t for t in DEMO_THRESHOLDS if per[t] >= min_candidates), 0.5)
        for head, per in counts.items()
    }


def candidate_counts(
    store: Store, *, model_version_id: int, thresholds: list[float]
) -> dict[str, dict[float, int]]:
    """{head: {threshold: pool samples whose confidence reaches it}} for one model version."""
    with store.read() as s:
        return candidate_counts_session(s, model_version_id, thresholds)


def candidate_counts_session(s, model_version_id: int, thresholds: list[float]):
    """``candidate_counts`` inside an open session; every head of the model version appears, with
    0 where no pool sample reaches a threshold."""
    from sqlalchemy import func

    heads = s.scalars(
        select(Prediction.head).where(Prediction.model_version_id == model_version_id).distinct()
    ).all()
    out: dict[str, dict[float, int]] = {h: dict.fromkeys(thresholds, 0) for h in heads}
    for t in thresholds:
        for head, n in s.execute(
            select(Prediction.head, func.count())
            .join(Sample, Sample.id == Prediction.sample_id)
            .where(
                Prediction.model_version_id == model_version_id,
                Sample.split == "pool",
                Prediction.confidence >= t,
            )
            .group_by(Prediction.head)
        ):
            out[head][t] = n
    return out
