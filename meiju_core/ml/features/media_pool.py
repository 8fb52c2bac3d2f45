"""The media part of feature extraction, in worker processes: pure, no store.

:class:`MediaPool` hands out, in order, the media results of a list of samples (their video and
audio paths): for the ``builtin`` set the log-mel and HOG features ``{modality: (T, D)}``
(:class:`~meiju_core.ml.features.builtin.BuiltinExtractor`), for ``pretrained`` the model inputs
(16 kHz waves and face crops). With more than one worker it runs them in a spawned
``ProcessPoolExecutor``, each worker single-threaded; with one, in this process, single-threaded
as well, so the arrays are the same bits whatever the worker count. The job that plans the work
and writes files and rows is the service :mod:`meiju_core.services.extraction`.

The content keys that decide what is up to date (:func:`text_key`, :func:`media_key`) live here
too: they read files, never the store.
"""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing
import os
import sys
import types
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from meiju_core.errors import FeatureError, MediaError

__all__ = ["MEDIA_MODALITIES", "MediaPool", "MediaSpec", "media_key", "text_key"]

MEDIA_MODALITIES = ("audio", "visual")
LOOKAHEAD = 16  # media tasks queued per worker, so no worker waits for the parent


def text_key(text: str) -> str:
    """``content_hash`` of a text feature: SHA-256 hex of the transcript's UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def media_key(video_path: str | None, audio_path: str | None) -> str:
    """``content_hash`` of audio/visual features: SHA-256 hex of each media path with its size
    in bytes and modification time (ns); a file that is not there counts as ``missing``."""
    parts = []
    for p in (video_path, audio_path):
        if not p:
            parts.append("")
            continue
        try:
            st = os.stat(p)
            parts.append(f"{p}|{st.st_size}|{st.st_mtime_ns}")
        except OSError:
            parts.append(f"{p}|missing")
    return hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- media workers


@dataclass(frozen=True)
class MediaSpec:
    """What a media worker needs (picklable): which set, and its settings."""

    set_name: str
    every: int
    sr: int
    modalities: tuple[str, ...]
    lsa_path: str = ""  # builtin: the fitted text model (BuiltinExtractor requires one)


class _MediaWorker:
    """The per-sample media part. ``builtin``: features ``{modality: (T, D)}``; ``pretrained``:
    model inputs, ``{"audio": wave (S,), "visual": [crops]}``. Returns ``(arrays, missing,
    info)``; a file that cannot be decoded gives a reason in ``missing``, never an exception."""

    def __init__(self, spec: MediaSpec) -> None:
        self.spec = spec
        self.extractor = None
        if spec.set_name == "builtin":
            from meiju_core.ml.features.builtin import BuiltinExtractor, TextLSA

            self.extractor = BuiltinExtractor(
                TextLSA.load(spec.lsa_path), every=spec.every, sr=spec.sr
            )

    def __call__(self, paths: Mapping[str, str | None]) -> tuple[dict, dict, dict]:
        sample = {"video_path": paths.get("video_path"), "audio_path": paths.get("audio_path")}
        if self.extractor is not None:
            try:
                res = self.extractor.extract(sample)
            except FeatureError as e:  # e.g. audio holding NaN: mark both, keep the batch going
                return {}, dict.fromkeys(MEDIA_MODALITIES, str(e)), {}
            missing = {m: r for m, r in res.missing.items() if m in MEDIA_MODALITIES}
            arrays = {m: a for m, a in res.items() if m in MEDIA_MODALITIES}
            return arrays, missing, dict(res.info)
        return self._pretrained_inputs(sample)

    def _pretrained_inputs(self, sample: Mapping[str, Any]) -> tuple[dict, dict, dict]:
        from meiju_core.ml import media
        from meiju_core.ml.features.pretrained import face_crops

        arrays: dict[str, Any] = {}
        missing: dict[str, str] = {}
        info: dict[str, Any] = {}
        source = sample.get("audio_path") or sample.get("video_path")
        if "audio" in self.spec.modalities:
            if not source:
                missing["audio"] = "not in sample"
            else:
                try:
                    arrays["audio"] = media.load_audio(source, self.spec.sr)
                except MediaError as e:
                    missing["audio"] = str(e)
        if "visual" in self.spec.modalities:
            if not sample.get("video_path"):
                missing["visual"] = "not in sample"
            else:
                try:
                    frames, times = media.sample_frames(sample["video_path"], self.spec.every)
                    crops, choices = face_crops(frames)
                    arrays["visual"] = crops
                    info["visual_choices"], info["visual_times"] = choices, times.tolist()
                except MediaError as e:
                    missing["visual"] = str(e)
        return arrays, missing, info


_worker: _MediaWorker | None = None
_worker_limits: Any = None


def _single_threaded() -> Any:
    """Limit BLAS and OpenCV to one thread in this process (a worker is one core's share)."""
    import cv2
    from threadpoolctl import threadpool_limits

    cv2.setNumThreads(1)
    return threadpool_limits(limits=1, user_api="blas")


def _init_worker(spec: MediaSpec) -> None:
    global _worker, _worker_limits
    _worker_limits = _single_threaded()
    _worker = _MediaWorker(spec)


def _run_worker(paths: Mapping[str, str | None]) -> tuple[dict, dict, dict]:
    assert _worker is not None, "worker not initialised"
    return _worker(paths)


@contextlib.contextmanager
def _neutral_main() -> Any:
    """Hide the parent's ``__main__`` while worker processes are spawned.

    A spawned child re-runs the parent's main script before unpickling its task
    (``multiprocessing.spawn``'s ``_fixup_main_from_path``). That script may not be importable
    on its own: a Streamlit app page run in-process (Streamlit installs it as ``__main__``), a
    notebook, a test runner. The workers need nothing from it (their code is in this module), so
    while they start ``__main__`` is a bare module with no file or spec, which the child skips.
    """
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if main is not None:
            sys.modules["__main__"] = main


class MediaPool:
    """Media results of ``items``, one per ``next()``, in the order of ``items``.

    With more than one worker, a ``ProcessPoolExecutor`` (spawn) is started by
    :meth:`start` and kept ``LOOKAHEAD`` tasks per worker ahead of the parent, so that worker
    start-up and media work overlap the parent's own work (text features, writing files).
    Otherwise each item is computed in this process when asked for, single-threaded as in a
    worker, so that the arrays are the same bits whatever the worker count.
    """

    def __init__(self, items: Sequence[Mapping[str, str | None]], spec: MediaSpec, workers: int):
        self.items, self.spec = items, spec
        self.workers = min(workers, len(items))
        self._next = 0  # next item to hand out
        self._submitted = 0
        self._queue: deque[Future] = deque()
        self._pool: ProcessPoolExecutor | None = None
        self._local: _MediaWorker | None = None

    def start(self) -> MediaPool:
        if self.workers > 1 and self._pool is None:
            # spawn, not fork: forking a process whose threads hold locks (torch's OpenMP
            # pool, huey's consumer threads) can hang the children. Spawned workers start from
            # a fresh interpreter and import only this module (see _neutral_main).
            ctx = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=ctx,
                initializer=_init_worker,
                initargs=(self.spec,),
            )
            self._fill()
        return self

    def _fill(self) -> None:
        assert self._pool is not None
        with _neutral_main():  # a submit may spawn a worker (see _neutral_main)
            while self._submitted < len(self.items) and len(self._queue) < self.workers * LOOKAHEAD:
                self._queue.append(self._pool.submit(_run_worker, self.items[self._submitted]))
                self._submitted += 1

    def __next__(self) -> tuple[dict, dict, dict]:
        if self._next >= len(self.items):
            raise StopIteration
        self._next += 1
        if self.workers > 1:
            self.start()
            result = self._queue.popleft().result()
            self._fill()
            return result
        import cv2
        from threadpoolctl import threadpool_limits

        if self._local is None:
            self._local = _MediaWorker(self.spec)
        before = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            with threadpool_limits(limits=1, user_api="blas"):
                return self._local(self.items[self._next - 1])
        finally:
            cv2.setNumThreads(before)

    def close(self) -> None:
        """Stop the workers: queued tasks are dropped, running ones finish."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
            self._queue.clear()
