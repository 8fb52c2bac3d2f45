"""Feature extraction as a resumable job: every sample of a project into the feature store.

``extract_features`` is what ``meiju extract``, the ``extract`` background job and the demo
build call. For each sample of the project it writes one float32 ``(T, D)`` file per modality
under ``<data_dir>/features/project<id>/<set>/<modality>/<utt_id>.npy``
(:class:`~meiju_core.ml.features.store.FeatureStore`) and one ``feature_file`` row per file; the
``feature_set`` row records the extractor, its settings and the width ``D`` per modality.

Feature sets
    ``builtin``: LSA text vectors fitted on the project's transcripts, 80-bin log-mel audio and
    HOG faces (:mod:`meiju_core.ml.features.builtin`); needs no download.
    ``pretrained``: RoBERTa, HuBERT and CLIP from local model folders
    (:mod:`meiju_core.ml.features.pretrained`, configured by ``PretrainedSettings.from_env()``).
    When a model is not on the machine, :class:`~meiju_core.errors.ModelUnavailable` is raised
    before anything is written.

What is up to date (skipped by a re-run)
    - text: the row's ``content_hash`` is the SHA-256 of the transcript, so a corrected
      transcript (e.g. a punctuation fix) is re-extracted at the next run and nothing else is;
    - audio and visual: the ``content_hash`` is the SHA-256 of the media paths with their size
      and modification time, so a replaced clip is re-extracted;
    - in both cases the file must still exist; a sample whose media could not be decoded has no
      media row and is tried again.

Resumable
    Rows are committed every ``chunk_size`` samples (default 200), each chunk one short write
    transaction, after its files are written. An interrupted run (cancel, crash, kill) keeps every
    chunk it finished, and the next run starts from there. A cancel (the progress callback returns
    ``"cancel"``) commits the samples already done, then raises :class:`JobError`.

Parallel
    The media part (decoding, log-mel, face detection and HOG; for ``pretrained``, decoding and
    face crops) runs in ``workers`` processes (``concurrent.futures.ProcessPoolExecutor``,
    spawned, each worker single-threaded; :mod:`meiju_core.ml.features.media_pool`, which holds no
    store code). Default: the ``extract_workers`` setting (``MEIJU_EXTRACT_WORKERS``), 0 meaning
    one per CPU this process may use. With one worker, or a single clip, everything runs
    in-process.
    Text (LSA transform, or RoBERTa batches) and the pretrained models run in the parent, which is
    also the only writer of files and rows. Results are identical whatever the worker count.

Progress
    ``progress`` gets ``{"progress": 0..1, "message": str, "samples_done", "samples_total",
    "samples_skipped", "samples_per_second"}`` at each committed chunk and at least every 0.25 s
    while samples complete; a modality that could not be extracted is reported once as a message
    naming the sample and the reason.

After an import
    :func:`prepare_new_samples` extracts what the new samples lack and predicts them with the
    project's model, so they reach the open round's Review queue (:func:`open_cards` counts it).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import delete, insert, select

from db import Store
from db import queries as q
from db.models import FeatureFile, FeatureSet, Sample, Transcript
from meiju_core.errors import InputError, JobError
from meiju_core.ml.features.media_pool import (
    MEDIA_MODALITIES,
    MediaPool,
    MediaSpec,
    media_key,
    text_key,
)
from meiju_core.services import projects, training
from meiju_core.services.projects import Progress, no_progress
from meiju_core.settings import Settings

__all__ = [
    "CHUNK_SIZE",
    "FEATURE_SETS",
    "resolve_workers",
    "extract_features",
    "open_cards",
    "prepare_new_samples",
    "media_key",
    "text_key",
]


FEATURE_SETS = ("builtin", "pretrained")
CHUNK_SIZE = 200  # samples per committed chunk of feature_file rows
PROGRESS_EVERY_S = 0.25
# builtin settings (the paper and the baseline: 1 frame in 30, 16 kHz mono audio)
BUILTIN_EVERY = 30
BUILTIN_SR = 16000
# pretrained settings whose change makes every stored feature of the set stale
PRETRAINED_SIGNATURE = (
    "text_model",
    "audio_model",
    "visual_model",
    "layers",
    "every",
    "sr",
    "max_text_tokens",
)


def resolve_workers(requested: int | None, settings: Settings) -> int:
    """The media worker count: ``requested``, else ``settings.extract_workers``
    (``MEIJU_EXTRACT_WORKERS``), where 0 means one per CPU this process may use.

    Raises:
        InputError: a negative count.
    """
    n = settings.extract_workers if requested is None else requested
    if n < 0:
        raise InputError(f"workers must be 0 (one per CPU) or more, got {n}", field="workers")
    if n == 0:
        try:
            n = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            n = os.cpu_count() or 1
    return max(1, n)


# --------------------------------------------------------------------------- the job


@dataclass
class _Todo:
    sample_id: int
    utt_id: str
    text: str | None  # the transcript to extract, None when its features are up to date
    text_hash: str
    media: dict[str, str | None] | None  # paths to extract, None when up to date or absent
    media_hash: str
    stored: frozenset[str]  # modalities with a feature_file row now (to be replaced)


def extract_features(
    store: Store,
    settings: Settings,
    *,
    project_id: int,
    set_name: str = "builtin",
    progress: Progress = no_progress,
    workers: int | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> int:
    """Extract the ``set_name`` features of every sample of the project; returns the feature set
    id. Skips what is up to date, commits rows every ``chunk_size`` samples, runs the media part
    in ``workers`` processes (default: the ``extract_workers`` setting, see
    :func:`resolve_workers`). See the module docstring.

    Raises:
        InputError: unknown feature set, a non-positive ``workers`` or ``chunk_size``, or a
            project without samples.
        ModelUnavailable: ``pretrained`` and a model is not on this machine (nothing written).
        FeatureError: ``builtin`` and no transcript has a token to fit the text model on.
        JobError: cancelled through ``progress``; the chunks finished so far are kept.
    """
    workers = _check_options(settings, set_name=set_name, workers=workers, chunk_size=chunk_size)
    from meiju_core.ml.features.store import FeatureStore

    pretrained = _open_pretrained() if set_name == "pretrained" else None  # before the store
    root = settings.feature_dir / f"project{project_id}"
    rows, fs_prev, known = _read_state(store, project_id, set_name)
    if not rows:
        raise InputError(f"project {project_id} has no samples to extract features from")
    if pretrained is None:
        setup = _builtin_setup(root / set_name, rows, fs_prev, known, seed=settings.seed)
    else:
        setup = _pretrained_setup(pretrained, fs_prev, known)
    todo = _plan(rows, setup.known, setup.modalities)
    if pretrained is not None and todo:  # load every model now: a missing weight fails here
        _load_models(pretrained, setup.modalities)
    fs_id = _upsert_feature_set(
        store,
        project_id=project_id,
        set_name=set_name,
        path=root / set_name,
        dims=setup.dims,
        settings=setup.fs_settings,
    )
    writer = _Writer(
        store, fs_id, FeatureStore(root, set_name), progress, len(todo), len(rows) - len(todo)
    )
    _run(todo, setup, writer, workers=workers, chunk_size=chunk_size)
    return fs_id


def _check_options(
    settings: Settings, *, set_name: str, workers: int | None, chunk_size: int
) -> int:
    """The media worker count, once the options are checked (see :func:`extract_features`)."""
    if set_name not in FEATURE_SETS:
        raise InputError(
            f"unknown feature set {set_name!r}; extractable sets are {list(FEATURE_SETS)}",
            field="set",
        )
    if workers is not None and workers < 1:
        raise InputError("workers must be at least 1", field="workers")
    workers = resolve_workers(workers, settings)
    if chunk_size < 1:
        raise InputError("chunk_size must be at least 1", field="chunk_size")
    return workers


# --------------------------------------------------------------------------- the two sets


@dataclass
class _Setup:
    """What a run extracts with: the feature set's dims and settings (for its row), the
    modalities, the media workers' spec, the stored rows still valid, and the text model
    (builtin: a fitted LSA) or the pretrained extractor."""

    dims: dict[str, int]
    fs_settings: dict[str, Any]
    modalities: tuple[str, ...]
    spec: MediaSpec
    known: dict[tuple[int, str], tuple[str, str]]
    lsa: Any = None
    pretrained: Any = None


def _open_pretrained() -> Any:
    """The pretrained extractor, its model configs read (fail fast: before the store is touched).

    Raises:
        ModelUnavailable: a config is not on this machine.
    """
    from meiju_core.ml.features.pretrained import PretrainedExtractor, PretrainedSettings

    pretrained = PretrainedExtractor(PretrainedSettings.from_env())
    _ = pretrained.dims  # raises ModelUnavailable when a config is absent
    return pretrained


def _builtin_setup(
    folder: Path,
    rows: Sequence[Any],
    fs_prev: FeatureSet | None,
    known: dict[tuple[int, str], tuple[str, str]],
    *,
    seed: int,
) -> _Setup:
    """The builtin set: the project's text model, loaded, or fitted on its transcripts the first
    time (then every stored text feature is stale)."""
    from meiju_core.ml.features.builtin import BuiltinExtractor, TextLSA

    lsa_path = folder / "text_lsa.npz"
    if fs_prev is not None and lsa_path.exists():
        lsa = TextLSA.load(lsa_path)
    else:  # first extraction: fit the text model on the project's transcripts
        lsa = TextLSA(seed=seed).fit([r.text or "" for r in rows])
        lsa.save(lsa_path)
        known = {k: v for k, v in known.items() if k[1] != "text"}
    return _Setup(
        dims=BuiltinExtractor(lsa).dims,
        fs_settings={
            "text_dim": lsa.dim,
            "frame_every": BUILTIN_EVERY,
            "audio_hz": BUILTIN_SR,
            "seed": lsa.seed,
            "vocabulary": len(lsa.vocab),
        },
        modalities=("text", "audio", "visual"),
        spec=MediaSpec("builtin", BUILTIN_EVERY, BUILTIN_SR, MEDIA_MODALITIES, str(lsa_path)),
        known=known,
        lsa=lsa,
    )


def _pretrained_setup(
    pretrained: Any, fs_prev: FeatureSet | None, known: dict[tuple[int, str], tuple[str, str]]
) -> _Setup:
    """The pretrained set: every stored feature is stale when the models or their settings
    (:data:`PRETRAINED_SIGNATURE`) changed since the last run."""
    ps = pretrained.settings
    fs_settings = {**ps.as_dict(), "frame_every": ps.every, "audio_hz": ps.sr}
    prev = (fs_prev.settings or {}) if fs_prev is not None else {}
    if any(k in prev and prev[k] != fs_settings[k] for k in PRETRAINED_SIGNATURE):
        known = {}  # other models or settings: every stored feature is stale
    modalities = tuple(ps.modalities)
    media = tuple(m for m in modalities if m in MEDIA_MODALITIES)
    return _Setup(
        dims=dict(pretrained.dims),
        fs_settings=fs_settings,
        modalities=modalities,
        spec=MediaSpec("pretrained", ps.every, ps.sr, media),
        known=known,
        pretrained=pretrained,
    )


def _load_models(pretrained: Any, modalities: Sequence[str]) -> None:
    """Load the weights of every model the run uses (a missing weight fails here, early)."""
    for modality, load in (
        ("text", lambda: pretrained.text_features([])),
        ("audio", lambda: pretrained.audio_features([])),
        ("visual", lambda: pretrained.visual_features([])),
    ):
        if modality in modalities:
            load()


# --------------------------------------------------------------------------- the run


class _Writer:
    """Writes a run's files at once and their rows in chunks (one short write transaction per
    :meth:`commit`), and reports progress: at each commit and at least every
    ``PROGRESS_EVERY_S`` while samples complete."""

    def __init__(
        self, store: Store, fs_id: int, fstore: Any, progress: Progress, total: int, skipped: int
    ) -> None:
        self.store, self.fs_id, self.fstore, self.progress = store, fs_id, fstore, progress
        self.total, self.skipped = total, skipped
        self.done = self.written = 0
        self.pending: list[tuple[_Todo, list[dict[str, Any]]]] = []
        self.started = self.last_report = time.perf_counter()

    def report(self, message: str = "") -> Any:
        """Send a progress event; returns what the callback returned (``"cancel"`` stops)."""
        self.last_report = time.perf_counter()
        elapsed = max(self.last_report - self.started, 1e-9)
        event: dict[str, Any] = {
            "progress": self.done / self.total if self.total else 1.0,
            "samples_done": self.done,
            "samples_total": self.total,
            "samples_skipped": self.skipped,
            "samples_per_second": round(self.done / elapsed, 2),
        }
        if message:
            event["message"] = message
        return self.progress(event)

    def save(
        self, t: _Todo, files: Mapping[str, tuple[np.ndarray, str]], missing: Mapping[str, str]
    ) -> None:
        """Write one sample's feature files; its rows wait for the next commit. A modality that
        could not be extracted is reported once, naming the sample and the reason."""
        new_rows = []
        for modality, (arr, key) in files.items():
            path, _digest = self.fstore.save(t.utt_id, modality, arr)
            new_rows.append(_row(t.sample_id, modality, path, key, arr))
        self.pending.append((t, new_rows))
        for modality, reason in missing.items():
            if reason not in ("not in sample", "not extracted"):
                self.progress({"message": f"{t.utt_id}: {modality} missing: {reason}"})

    def step(self, n: int, *, chunk_size: int) -> Any:
        """``n`` more samples done: commit a full chunk and report, or report when it is time.
        Returns what the progress callback returned, None when it was not called."""
        self.done += n
        if len(self.pending) >= chunk_size:
            self.commit()
            return self.report(f"features {self.done}/{self.total}")
        if time.perf_counter() - self.last_report >= PROGRESS_EVERY_S:
            return self.report()
        return None

    def commit(self) -> None:
        if self.pending:
            self.written += _commit(self.store, self.fs_id, self.pending)
            self.pending.clear()


def _run(
    todo: Sequence[_Todo], setup: _Setup, writer: _Writer, *, workers: int, chunk_size: int
) -> None:
    """Extract ``todo`` in batches (one sample for builtin, the extractor's batch for
    pretrained) while the media pool works ahead; whatever stops the run, the samples finished
    are committed first."""
    results = MediaPool([t.media for t in todo if t.media is not None], setup.spec, workers)
    batch = setup.pretrained.settings.batch_size if setup.pretrained is not None else 1
    total = len(todo)
    try:
        if (
            writer.report(f"features: {total} samples to extract, {writer.skipped} up to date")
            == "cancel"
        ):
            raise JobError("cancelled by request before any sample was extracted")
        results.start()  # workers start while this process works on the first samples' text
        for start in range(0, total, batch):
            part = todo[start : start + batch]
            outputs = _extract_part(part, results, setup.lsa, setup.pretrained)
            for t, (files, missing) in zip(part, outputs, strict=True):
                writer.save(t, files, missing)
            if writer.step(len(part), chunk_size=chunk_size) == "cancel":
                writer.commit()
                raise JobError(f"cancelled by request after {writer.done} of {total} samples")
    except BaseException:
        results.close()  # stop the workers
        with contextlib.suppress(Exception):  # the original error matters more
            writer.commit()  # keep what is finished, whatever stopped the run
        raise
    results.close()
    writer.commit()
    rate = writer.done / max(time.perf_counter() - writer.started, 1e-9)
    writer.report(
        f"features: {writer.written} files written for {writer.done} samples ({rate:.1f} samples/s)"
    )


def _read_state(
    store: Store, project_id: int, set_name: str
) -> tuple[Sequence[Any], FeatureSet | None, dict[tuple[int, str], tuple[str, str]]]:
    """Samples (id, utt_id, paths, transcript), the feature set row, and the stored rows
    ``{(sample_id, modality): (content_hash, path)}``."""
    with store.read() as s:
        rows = s.execute(
            select(Sample.id, Sample.utt_id, Sample.video_path, Sample.audio_path, Transcript.text)
            .outerjoin(Transcript, Transcript.sample_id == Sample.id)
            .where(Sample.project_id == project_id)
            .order_by(Sample.id)
        ).all()
        fs = s.scalars(
            select(FeatureSet).where(
                FeatureSet.project_id == project_id, FeatureSet.name == set_name
            )
        ).first()
        known: dict[tuple[int, str], tuple[str, str]] = {}
        if fs is not None:
            for sid, modality, content_hash, path in s.execute(
                select(
                    FeatureFile.sample_id,
                    FeatureFile.modality,
                    FeatureFile.content_hash,
                    FeatureFile.path,
                ).where(FeatureFile.feature_set_id == fs.id)
            ):
                known[(sid, modality)] = (content_hash, path)
    return rows, fs, known


def _plan(
    rows: Sequence[Any], known: Mapping[tuple[int, str], tuple[str, str]], modalities: Sequence[str]
) -> list[_Todo]:
    """The samples with something to extract, in sample order."""
    stored_by_sample: dict[int, set[str]] = {}
    for sid, modality in known:
        stored_by_sample.setdefault(sid, set()).add(modality)
    media_wanted = any(m in modalities for m in MEDIA_MODALITIES)
    todo = []
    for r in rows:
        stored = stored_by_sample.get(r.id, set())
        text = r.text or ""
        t_hash = text_key(text)
        need_text = "text" in modalities and not _fresh(known.get((r.id, "text")), t_hash)
        m_hash = ""
        need_media = False
        if media_wanted and (r.video_path or r.audio_path):
            m_hash = media_key(r.video_path, r.audio_path)
            media_rows = [known[(r.id, m)] for m in MEDIA_MODALITIES if (r.id, m) in known]
            need_media = not media_rows or not all(_fresh(k, m_hash) for k in media_rows)
        if need_text or need_media:
            todo.append(
                _Todo(
                    sample_id=r.id,
                    utt_id=r.utt_id,
                    text=text if need_text else None,
                    text_hash=t_hash,
                    media=(
                        {"video_path": r.video_path, "audio_path": r.audio_path}
                        if need_media
                        else None
                    ),
                    media_hash=m_hash,
                    stored=frozenset(stored),
                )
            )
    return todo


def _fresh(entry: tuple[str, str] | None, content_hash: str) -> bool:
    return entry is not None and entry[0] == content_hash and Path(entry[1]).is_file()


def _extract_part(
    part: Sequence[_Todo], results: MediaPool, lsa: Any, pretrained: Any
) -> list[tuple[dict[str, tuple[np.ndarray, str]], dict[str, str]]]:
    """Features of a few samples: per sample ``({modality: (array, content_hash)}, missing)``."""
    out: list[tuple[dict[str, tuple[np.ndarray, str]], dict[str, str]]] = [({}, {}) for _ in part]
    texts = [(i, t) for i, t in enumerate(part) if t.text is not None]
    if texts:
        if pretrained is None:
            arrays = [lsa.transform(t.text) for _, t in texts]
        else:
            arrays = pretrained.text_features([t.text for _, t in texts])
        for (i, t), arr in zip(texts, arrays, strict=True):
            out[i][0]["text"] = (arr, t.text_hash)
    media_idx = [i for i, t in enumerate(part) if t.media is not None]
    got = [(i, next(results)) for i in media_idx]
    if pretrained is None:
        for i, (media_arrays, missing, _info) in got:
            for modality, arr in media_arrays.items():
                out[i][0][modality] = (arr, part[i].media_hash)
            out[i][1].update(missing)
        return out
    for i, (_arrays, missing, _info) in got:
        out[i][1].update(missing)
    waves = [(i, a["audio"]) for i, (a, _m, _n) in got if "audio" in a]
    if waves:
        feats = pretrained.audio_features([w for _, w in waves])
        for (i, _w), arr in zip(waves, feats, strict=True):
            out[i][0]["audio"] = (np.ascontiguousarray(arr, dtype=np.float32), part[i].media_hash)
    owners: list[int] = []
    crops: list[np.ndarray] = []
    for i, (a, _m, _n) in got:
        if a.get("visual"):
            owners += [i] * len(a["visual"])
            crops += a["visual"]
    if crops:
        embeds = pretrained.visual_features(crops)
        owner = np.asarray(owners)
        for i in dict.fromkeys(owners):
            arr = np.ascontiguousarray(embeds[owner == i], dtype=np.float32)
            out[i][0]["visual"] = (arr, part[i].media_hash)
    return out


def _row(sample_id: int, modality: str, path: Path, key: str, arr: np.ndarray) -> dict[str, Any]:
    return {
        "sample_id": sample_id,
        "modality": modality,
        "path": str(path),
        "content_hash": key,
        "shape": [int(arr.shape[0]), int(arr.shape[1])],
    }


def _upsert_feature_set(
    store: Store,
    *,
    project_id: int,
    set_name: str,
    path: Path,
    dims: dict[str, int],
    settings: dict[str, Any],
) -> int:
    with store.write() as s:
        fs = s.scalars(
            select(FeatureSet).where(
                FeatureSet.project_id == project_id, FeatureSet.name == set_name
            )
        ).first()
        if fs is None:
            fs = FeatureSet(project_id=project_id, name=set_name, path=str(path))
            s.add(fs)
        fs.extractor = set_name
        fs.dims = dims
        fs.settings = settings
        s.flush()
        return fs.id


def _commit(store: Store, fs_id: int, done: Sequence[tuple[_Todo, list[dict[str, Any]]]]) -> int:
    """One write transaction: replace the rows of the modalities re-extracted for these samples.
    Returns the number of rows inserted."""
    replaced: dict[str, list[int]] = {}
    inserts: list[dict[str, Any]] = []
    for t, new_rows in done:
        redone = ({"text"} if t.text is not None else set()) | (
            set(MEDIA_MODALITIES) if t.media is not None else set()
        )
        for modality in redone & t.stored:
            replaced.setdefault(modality, []).append(t.sample_id)
        inserts += [{**r, "feature_set_id": fs_id} for r in new_rows]
    with store.write() as s:
        for modality, ids in replaced.items():
            for start in range(0, len(ids), 500):
                s.execute(
                    delete(FeatureFile).where(
                        FeatureFile.feature_set_id == fs_id,
                        FeatureFile.modality == modality,
                        FeatureFile.sample_id.in_(ids[start : start + 500]),
                    )
                )
        if inserts:
            s.execute(insert(FeatureFile), inserts)
    return len(inserts)


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
    progress: Progress = no_progress,
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
            progress=projects.scaled_progress(progress, 0.2, 0.8, "extracting features"),
        )
    if mv_id is None:
        out["note"] = (
            "the project has no model that can predict yet: train one to predict the new utterances"
        )
    else:
        progress({"progress": 0.85, "message": f"predicting with model version {mv_id}"})
        out["predictions"] = training.predict(
            store, settings, model_version_id=mv_id, missing_only=True
        )
        training.evaluate(store, model_version_id=mv_id)  # labelled imports change the scores
        out["model_version_id"] = mv_id
    after = open_cards(store, project_id=project_id)
    out["queue_cards"] = after
    out["new_cards"] = (
        None if after is None or cards_before is None else max(0, after - cards_before)
    )
    if after is None and out["note"] is None:
        out["note"] = "no review round is open: open one to review the new utterances"
    return out
