"""Training over the store (DESIGN.md, "The loop the product serves": train stage 1, predict the
pool, retrain stage 2, compare, promote).

Loads a split's features and labels from the store (:func:`load_split`), trains stage 1 or stage 2
with :mod:`meiju_core.ml.train` (:func:`train`), predicts every sample (:func:`predict`), scores a
model version on valid and test (:func:`evaluate`) and promotes it (:func:`promote`). torch and the
model are imported inside the functions that need them, so importing this module is cheap enough
for the Streamlit process.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from db import Store, rows
from db import queries as q
from db.models import (
    FeatureFile,
    FeatureSet,
    GoldLabel,
    ModelVersion,
    Prediction,
    Project,
    PseudoLabel,
    ReviewRound,
    Sample,
)
from meiju_core.errors import InputError, JobError
from meiju_core.schema import MODALITIES, LabelSchema
from meiju_core.services import ensembles, projects, users
from meiju_core.services.projects import Progress, no_progress
from meiju_core.settings import Settings


@dataclass
class SplitData:
    """Arrays of one split, ready for ``meiju_core.ml.train``; ``sample_ids`` align with rows."""

    sample_ids: list[int]
    data: Any  # meiju_core.ml.train.TrainData


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
    from meiju_core.ml.train import TrainData

    splits = (split,) if isinstance(split, str) else tuple(split)
    with store.read() as s:
        samples = s.execute(
            select(Sample.id, Sample.utt_id)
            .where(Sample.project_id == project_id, Sample.split.in_(splits))
            .order_by(Sample.id)
        ).all()
        labels = _split_labels(s, project_id, splits, with_gold=with_gold, round_id=round_id)
        files = {
            (f.sample_id, f.modality): f.path
            for f in s.scalars(
                select(FeatureFile).where(FeatureFile.feature_set_id == feature_set_id)
            )
        }
        dims = dict(rows.get(s, FeatureSet, feature_set_id).dims or {})
    if round_id is not None:
        labelled = {sid for sid, _ in labels}
        samples = [r for r in samples if r.id in labelled]
    if only is not None:
        samples = [r for r in samples if r.id in only]
    ids = [r.id for r in samples]
    modalities = [m for m in MODALITIES if m in dims]
    feats = _load_features(ids, files, modalities, progress, span, what="+".join(splits))
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


def load_splits(
    store: Store,
    *,
    project_id: int,
    feature_set: str,
    splits: tuple[str, ...] = ("train", "valid", "test", "pool"),
) -> tuple[dict[str, SplitData], dict[str, int], LabelSchema]:
    """Every split of ``splits`` loaded once (gold labels, none for the pool), with the feature
    set's widths and the project's schema: what the benchmarks over one project (Table I, the
    simulated reviewer) start from. Returns ``({split: SplitData}, {modality: D}, schema)``.

    Raises:
        InputError: the project has no feature set ``feature_set``.
    """
    schema = projects.schema_of(store, project_id)
    fs_id = feature_set_id(store, project_id, feature_set)
    parts = {
        split: load_split(
            store,
            project_id=project_id,
            split=split,
            feature_set_id=fs_id,
            schema=schema,
            with_gold=split != "pool",
        )
        for split in splits
    }
    return parts, feature_dims(store, fs_id), schema


def _split_labels(
    s: Session, project_id: int, splits: tuple[str, ...], *, with_gold: bool, round_id: int | None
) -> dict[tuple[int, str], str]:
    """{(sample id, head): label} of the splits: gold labels (with ``with_gold``), then the
    pseudo-labels accepted in ``round_id`` where a head has no gold label."""
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
    return labels


def _load_features(
    ids: list[int],
    files: dict[tuple[int, str], str],
    modalities: list[str],
    progress: Progress | None,
    span: tuple[float, float],
    *,
    what: str,
) -> dict[str, list[np.ndarray | None]]:
    """Per modality, each sample's float32 ``(T, D)`` feature array (None where the sample has
    no file), in ``ids`` order; ``progress`` hears about once a second, mapped into ``span``."""
    feats: dict[str, list[np.ndarray | None]] = {m: [] for m in modalities}
    last = time.monotonic()
    for k, sid in enumerate(ids):
        if progress is not None and time.monotonic() - last >= 1.0:
            last = time.monotonic()
            lo, hi = span
            progress(
                {
                    "progress": lo + (hi - lo) * k / len(ids),
                    "message": f"loading {what} features: {k} of {len(ids)}",
                }
            )
        for m in feats:
            path = files.get((sid, m))
            feats[m].append(np.load(path) if path else None)
    return feats


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
    progress: Progress = no_progress,
    resume: bool = False,
    threads: int | None = None,
) -> int:
    """Train stage 1 (gold) or stage 2 (gold + accepted pseudo-labels of ``round_id``), register a
    model version with its metrics on valid and test, and predict every sample.

    Stage 2 starts from the round's model (or the current one) and keeps its architecture: the
    paper preset fine-tunes every stage-1 weight, the baseline preset takes the encoders and
    fusion layers of its pretrain model (``ModelConfig.stage2_init``). A job's checkpoints go to a
    folder named after the job (``stage2-paper-job17``), so with ``resume`` a re-queued job
    continues from its last finished epoch (``meiju_core.ml.resume``). ``threads`` caps torch's CPU
    threads (the worker passes its ``job_threads`` setting so a retrain does not starve the app).
    Returns the new model version id. Raises JobError when cancelled, InputError when the project
    has no features or no labels, or when stage 2 would start from an ensemble version (it has no
    weights of its own: open the round on one of its members), ValueError when the resume file
    belongs to another schedule.
    """
    from meiju_core.ml import resume as resume_state
    from meiju_core.ml import train as tr

    schema = projects.schema_of(store, project_id)
    if preset is None:  # the project's own choice (the CPU demo uses "fast"), else the paper's
        preset = _project_preset(store, project_id)
    fs_id = feature_set_id(store, project_id, settings.feature_set)
    if stage == 2 and round_id is None:
        round_id = _active_round_id(store, project_id)
    train_split, valid = _training_splits(
        store,
        project_id=project_id,
        fs_id=fs_id,
        schema=schema,
        stage=stage,
        round_id=round_id,
        progress=progress,
    )
    init_from, base_model = (None, None)
    if stage == 2:
        init_from, base_model = _stage1_checkpoint(store, project_id, round_id)
    model_config, train_config = _run_configs(
        store,
        settings,
        fs_id=fs_id,
        schema=schema,
        preset=preset,
        stage=stage,
        base_model=base_model,
        epochs=epochs,
        threads=threads,
    )
    name = f"stage{stage}-{preset}-" + (
        f"job{job_id}" if job_id is not None else time.strftime("%Y%m%d-%H%M%S")
    )
    out_dir = settings.checkpoint_dir / f"project{project_id}" / name
    t0 = time.perf_counter()
    result = tr.fit(
        train_split.data,
        valid.data,
        model_config=model_config,
        train_config=train_config,
        stage=stage,
        out_dir=out_dir,
        init_from=init_from,
        callback=_epoch_progress(progress, stage),
        schema=schema,
        resume=resume,
    )
    seconds = time.perf_counter() - t0
    if getattr(result, "cancelled", False):
        raise JobError("training was cancelled")
    resume_state.discard(out_dir)
    mv_id = _register_version(
        store,
        ModelVersion(
            project_id=project_id,
            name=name,
            stage=stage,
            preset=preset,
            config=_version_config(model_config, train_config, fs_id, schema, result),
            checkpoint_path=str(result.best_joint_path),
            snapshot=_snapshot(train_split.data, schema, round_id),
            job_id=job_id,
            train_seconds=seconds,
            metrics={},
        ),
    )
    progress({"progress": 0.92, "message": "predicting every sample"})
    predict(store, settings, model_version_id=mv_id, result=result)
    evaluate(store, model_version_id=mv_id)
    progress({"progress": 1.0, "message": f"model version {mv_id} ready"})
    return mv_id


def _project_preset(store: Store, project_id: int) -> str:
    """The project's preset setting (the CPU demo stores "fast"), else the paper's."""
    with store.read() as s:
        return (rows.get(s, Project, project_id).settings or {}).get("preset", "paper")


def _active_round_id(store: Store, project_id: int) -> int | None:
    """The id of the project's open review round, None when no round is open."""
    with store.read() as s:
        rnd = q.active_round(s, project_id=project_id)
        return rnd.id if rnd else None


def _training_splits(
    store: Store,
    *,
    project_id: int,
    fs_id: int,
    schema: LabelSchema,
    stage: int,
    round_id: int | None,
    progress: Progress,
) -> tuple[SplitData, SplitData]:
    """(train, valid) of one run: gold train labels, plus at stage 2 the pool samples with a
    pseudo-label accepted in ``round_id``. Loading reports into the first 5 % of ``progress``.

    Raises:
        InputError: no labelled train or no labelled valid sample.
    """
    progress({"progress": 0.0, "message": "loading features"})

    def split(name: str, span: tuple[float, float], round_id: int | None = None) -> SplitData:
        return load_split(
            store,
            project_id=project_id,
            split=name,
            feature_set_id=fs_id,
            schema=schema,
            round_id=round_id,
            with_gold=round_id is None,
            progress=progress,
            span=span,
        )

    train_split = split("train", (0.0, 0.03))
    if stage == 2 and round_id is not None:  # pool samples with an accepted pseudo-label
        train_split = _concat(train_split, split("pool", (0.03, 0.04), round_id=round_id))
    valid = split("valid", (0.04, 0.05))
    if not train_split.sample_ids or not valid.sample_ids:
        raise InputError("the project needs labelled train and valid samples to train")
    return train_split, valid


def _run_configs(
    store: Store,
    settings: Settings,
    *,
    fs_id: int,
    schema: LabelSchema,
    preset: str,
    stage: int,
    base_model: dict[str, Any] | None,
    epochs: int | None,
    threads: int | None,
) -> tuple[Any, Any]:
    """(ModelConfig, TrainConfig) of one run: the preset's, except that stage 2 keeps the
    architecture of the model it starts from (whatever its heads or text encoder) when that
    model was trained on features of the same widths."""
    dims = feature_dims(store, fs_id)
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
    if base_model is not None and base_model.get("input_dims") == dims:
        from meiju_core.ml.model import ModelConfig

        model_config = ModelConfig.from_dict({**base_model, "noise_scale": {}})
    return model_config, train_config


def _epoch_progress(progress: Progress, stage: int) -> Progress:
    """The ``fit`` callback: each epoch event forwarded to ``progress`` with the run's fraction
    mapped into 5-90 %; what ``progress`` returns (``"cancel"``) goes back to ``fit``."""

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

    return on_epoch


def _version_config(
    model_config: Any, train_config: Any, fs_id: int, schema: LabelSchema, result: Any
) -> dict[str, Any]:
    """The ``model_version.config`` of a trained run: both configs, the feature set, the label
    schema, head -> checkpoint (the best-joint epoch, or per-head bests when asked), the valid
    curve and the training speed."""
    return {
        "model": _plain(model_config),
        "train": train_config.to_dict(),
        "feature_set_id": fs_id,
        "schema": schema.to_dict(),
        "checkpoints": {h: str(p) for h, p in result.checkpoint_paths.items()},
        "valid_during_training": result.metrics,
        "samples_per_second": result.samples_per_second,
    }


def _register_version(store: Store, mv: ModelVersion) -> int:
    """Store a new model version row; returns its id."""
    with store.write() as s:
        s.add(mv)
        s.flush()
        return mv.id


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
    from meiju_core.ml.model import ModelConfig
    from meiju_core.ml.train import TrainConfig

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


def feature_set_id(store: Store, project_id: int, name: str) -> int:
    """The id of the project's feature set ``name`` (``builtin`` or ``pretrained``).

    Raises:
        InputError: the project has no such feature set (field ``feature_set``).
    """
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


def feature_dims(store: Store, fs_id: int) -> dict[str, int]:
    """{modality: feature width D} of a feature set, in the order of ``MODALITIES``."""
    with store.read() as s:
        dims = dict(rows.get(s, FeatureSet, fs_id).dims or {})
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
            mv = rows.get(s, ModelVersion, rows.get(s, ReviewRound, round_id).model_version_id)
        mv = mv or q.current_model(s, project_id=project_id)
        if mv is None:
            return None, None
        if mv.preset == ensembles.ENSEMBLE:
            members = sorted({m for ids in mv.config["members"].values() for m in ids})
            raise InputError(
                f"model version {mv.id} is an ensemble of versions {members}; stage 2 fine-tunes "
                "one trained system: open the round on one of its members",
                field="model_version",
            )
        return Path(mv.checkpoint_path), (mv.config or {}).get("model")


def _concat(a: SplitData, b: SplitData) -> SplitData:
    from meiju_core.ml.train import TrainData

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

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
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
    (``meiju_core.ml.pseudo.temperature_scale``; Guo et al. 2017; ours, not the paper's), recorded in
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
    from meiju_core.ml import train as tr

    job = _prediction_job(store, model_version_id, splits, missing_only=missing_only)
    if job.only is not None and not job.only:
        return 0
    if job.is_ensemble:  # members predicted where they lack rows, then every row re-averaged
        return ensembles.predict_ensemble(
            store, settings, model_version_id=model_version_id, splits=splits
        )
    schema = projects.schema_of(store, job.project_id)
    split = load_split(
        store,
        project_id=job.project_id,
        split=splits,
        feature_set_id=job.feature_set_id,
        schema=schema,
        with_gold=False,
        only=job.only,
    )
    probs = tr.predict(
        result if result is not None else job.checkpoint, split.data, device=settings.device
    )
    if job.only is not None:
        temperatures = dict(job.temperatures)
    elif settings.calibrate:
        temperatures = _fit_temperatures(store, job.project_id, schema, split.sample_ids, probs)
    else:
        temperatures = {}
    scaled = _calibrated(probs, temperatures, schema)
    n = write_predictions(
        store, model_version_id, schema, split.sample_ids, scaled, replace=job.only is None
    )
    if job.only is None:
        with store.write() as s:
            mv = rows.get(s, ModelVersion, model_version_id)
            mv.config = {**mv.config, "temperature": temperatures or None}
    return n


@dataclass
class _PredictionJob:
    """What :func:`predict` needs of a model version, read in one session."""

    project_id: int
    feature_set_id: int
    checkpoint: Any  # {head: path} or one path
    temperatures: dict[str, float]  # stored by an earlier predict
    is_ensemble: bool
    only: set[int] | None  # with missing_only: the samples without a prediction of this version


def _prediction_job(
    store: Store, model_version_id: int, splits: tuple[str, ...], *, missing_only: bool
) -> _PredictionJob:
    """The model version's project, feature set, checkpoints and stored temperatures, and with
    ``missing_only`` the ids of the samples of ``splits`` it has not predicted yet."""
    with store.read() as s:
        mv = rows.get(s, ModelVersion, model_version_id)
        only = None
        if missing_only:
            have = select(Prediction.sample_id).where(
                Prediction.model_version_id == model_version_id
            )
            only = set(
                s.scalars(
                    select(Sample.id).where(
                        Sample.project_id == mv.project_id,
                        Sample.split.in_(splits),
                        Sample.id.not_in(have),
                    )
                )
            )
        return _PredictionJob(
            project_id=mv.project_id,
            feature_set_id=mv.config["feature_set_id"],
            checkpoint=mv.config.get("checkpoints") or mv.checkpoint_path,
            temperatures=mv.config.get("temperature") or {},
            is_ensemble=mv.preset == ensembles.ENSEMBLE,
            only=only,
        )


def _calibrated(
    probs: dict[str, Any], temperatures: dict[str, float], schema: LabelSchema
) -> dict[str, np.ndarray]:
    """Per head, float64 ``(N, C)`` probabilities, renormalised and temperature-scaled where
    ``temperatures`` has the head (``meiju_core.ml.pseudo.apply_temperature``), else as given."""
    from meiju_core.ml.pseudo import apply_temperature

    scaled = {}
    for head in schema.head_names:
        p = np.asarray(probs[head], dtype=np.float64)
        if head in temperatures:
            p = apply_temperature(
                p / p.sum(axis=1, keepdims=True), temperatures[head], kind="probs"
            )
        scaled[head] = p
    return scaled


def _fit_temperatures(
    store: Store,
    project_id: int,
    schema: LabelSchema,
    sample_ids: list[int],
    probs: dict[str, Any],
) -> dict[str, float]:
    """{head: temperature} fitted on the valid samples among ``sample_ids`` (``probs[head]``
    rows, float (N, K)); a head with fewer than 20 valid gold labels is left uncalibrated."""
    from meiju_core.ml.pseudo import temperature_scale

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


def write_predictions(
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


def evaluate(store: Store, *, model_version_id: int) -> dict[str, Any]:
    """Score a model version's stored predictions against gold labels on valid and test; the
    report (weighted F1 per head, joint score, per-class figures, confusion matrices) is saved in
    ``model_version.metrics`` and returned."""
    from meiju_core.ml.metrics import evaluate as score

    with store.read() as s:
        mv = rows.get(s, ModelVersion, model_version_id)
        schema = LabelSchema.from_dict(mv.config["schema"])
        predicted = s.execute(
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
        for sp, sid, head, label in predicted:
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
        rows.get(s, ModelVersion, model_version_id).metrics = metrics
    return metrics


def promote(store: Store, *, model_version_id: int, user: dict[str, Any] | None) -> None:
    """Make ``model_version_id`` the promoted model (the previous one is archived).

    Raises:
        PermissionDenied: ``user`` is given and is not an admin in the store.
    """
    if user is not None:
        users.require_admin(user, "promote a model version", store=store)
    with store.write() as s:
        q.promote(s, model_version_id=model_version_id, user_id=(user or {}).get("id"))
