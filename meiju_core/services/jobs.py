"""Background jobs: huey (``SqliteHuey``) dispatches, the ``job`` table is the source of truth.

The app never does heavy work in its own process. It calls ``submit``, which writes a ``job`` row
(status ``queued``) and enqueues its id on the job's **lane**: ``train`` (training and the demo
build, one at a time) or ``io`` (imports, exports, extraction, prediction, auto pseudo-labels), so
an export never waits behind a retrain. The worker (``meiju worker``) runs one huey consumer per
lane, each in its own process; a lane runs each job in a fresh subprocess (``python -m
meiju_core.services.jobs run ID``), so CUDA, memory and crashes stay out of the worker and a cancel can
always stop it. The subprocess writes its pid and host, status, progress, live figures, a log tail
and a heartbeat to the row, throttled to one short write transaction every ``PROGRESS_EVERY_S``
seconds; the app polls the row.

Crashes: lane processes and job processes die with their parent (``PR_SET_PDEATHSIG`` on Linux),
so a ``kill -9`` of the worker leaves no orphan training. A worker, at start and then every
``REAP_EVERY_S`` seconds, looks at every ``running`` row: a job whose process is gone (its pid on
this host is dead, or on another host its heartbeat is older than ``STALE_AFTER_S``) is re-queued
when it can resume (a train job continues from its last epoch checkpoint, up to
``MAX_ATTEMPTS`` starts) and failed with a reason otherwise. Checkpoint folders that no model
version and no queued or running job refers to are removed (``clean_checkpoints``).

Job kinds map to one service function each (``KINDS``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from db import Store
from db import queries as q
from db.models import Job, ModelVersion, utcnow
from meiju_core.errors import JobError, StoreError
from meiju_core.settings import Settings

PROGRESS_EVERY_S = 1.0
LOG_TAIL_CHARS = 20_000
KINDS = (
    "train",
    "extract",
    "predict",
    "auto_pseudo_label",
    "demo",
    "import",
    "export",
    "label_check",
)
SINGLETON_KINDS = ("train", "demo")  # at most one queued or running per project
# kinds only admins may submit from the app (exports are everyone's); a job submitted without a
# user (the command line, the worker itself) is trusted
ADMIN_KINDS = (
    "train",
    "extract",
    "predict",
    "auto_pseudo_label",
    "demo",
    "import",
    "label_check",
)

LANES = ("train", "io")
TRAIN_LANE_KINDS = ("train", "demo")  # one at a time; every other kind runs on the io lane
RESUMABLE_KINDS = ("train",)  # re-queued after a crash, continuing from the last epoch
MAX_ATTEMPTS = 5  # starts of one job before a crash fails it for good
REAP_EVERY_S = 5.0
STALE_AFTER_S = 60.0  # heartbeat age after which a job on another host counts as gone
CHECKPOINT_GRACE_S = 3600.0  # an unreferenced checkpoint folder younger than this is kept


def lane_of(kind: str) -> str:
    """The lane a job kind runs on: ``train`` for training and the demo build, else ``io``."""
    return "train" if kind in TRAIN_LANE_KINDS else "io"


# --------------------------------------------------------------------------- submit


def submit(
    store: Store,
    settings: Settings,
    *,
    kind: str,
    params: dict[str, Any] | None = None,
    project_id: int | None = None,
    user: dict[str, Any] | None = None,
    enqueue: bool = True,
) -> int:
    """Write a queued job row and hand its id to the queue. Returns the job id.

    Raises StoreError if ``kind`` is unknown, or if a job of a singleton kind (a retrain) is
    already queued or running for the project: the button can be pressed twice, the job runs once.
    Raises PermissionDenied when ``user`` is given, the kind is one of ``ADMIN_KINDS`` and the
    store does not have that user as an admin (the role is read from the store, not the page).
    """
    if kind not in KINDS:
        raise StoreError(f"unknown job kind {kind!r}; kinds are {list(KINDS)}")
    if user is not None and kind in ADMIN_KINDS:
        from meiju_core.services.users import require_admin

        require_admin(user, f"start a {kind} job", store=store)
    with store.write() as s:
        if kind in SINGLETON_KINDS:
            busy = q.active_job(s, kind=kind, project_id=project_id)
            if busy is not None:
                raise StoreError(f"a {kind} job (#{busy.id}) is already {busy.status}")
        job = Job(
            kind=kind,
            params=params or {},
            project_id=project_id,
            created_by=(user or {}).get("id"),
            log=f"queued by {(user or {}).get('name')}\n",
        )
        s.add(job)
        s.flush()
        q.audit(
            s,
            user_id=(user or {}).get("id"),
            action="submit_job",
            entity="job",
            entity_id=job.id,
            payload={"kind": kind, "params": params or {}},
        )
        job_id = job.id
    if enqueue:
        get_huey(str(settings.queue_path), lane_of(kind)).run_job(job_id)
    return job_id


def cancel(store: Store, *, job_id: int, user: dict[str, Any] | None = None) -> None:
    """Ask a job to stop: a queued job is cancelled at once, a running one at its next progress
    report (the worker also terminates its subprocess).

    Raises PermissionDenied when ``user`` is given and the store does not have that user as an
    admin (no user: the command line, trusted).
    """
    if user is not None:
        from meiju_core.services.users import require_admin

        require_admin(user, "cancel a job", store=store)
    with store.write() as s:
        job = s.get_one(Job, job_id)
        if job.status == "queued":
            job.status, job.finished_at = "cancelled", utcnow()
        job.cancel_requested = True
        q.audit(
            s, user_id=(user or {}).get("id"), action="cancel_job", entity="job", entity_id=job_id
        )


# --------------------------------------------------------------------------- the queue


@functools.cache
def get_huey(queue_path: str, lane: str = "io", immediate: bool = False):
    """The huey instance of one lane in a queue file, with the ``run_job`` task registered on it.
    Both lanes share the file (huey keeps a queue name per row). Raises JobError for an unknown
    lane."""
    from huey import SqliteHuey

    if lane not in LANES:
        raise JobError(f"unknown lane {lane!r}; lanes are {list(LANES)}")
    huey = SqliteHuey(f"meiju-{lane}", filename=queue_path, immediate=immediate)
    huey.run_job = huey.task(name="run_job")(_run_job_task)
    return huey


def _die_with_parent(parent_pid: int, *, nice: int = 0) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGKILL when its parent dies (Linux), so a job
    or lane process never outlives a killed worker, and adds ``nice`` to its niceness (a job
    yields the CPU to the app). None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None

    def preexec() -> None:
        import ctypes

        if nice:
            os.nice(nice)
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def _run_job_task(job_id: int) -> None:
    settings = Settings.load()
    run_subprocess(settings, job_id)


def run_subprocess(settings: Settings, job_id: int, *, poll_s: float = 0.5) -> int:
    """Run one job in a fresh Python process (niceness raised by ``settings.job_nice``);
    terminate it if a cancel is requested."""
    store = Store(settings.database_url)
    with store.read() as s:
        job = s.get(Job, job_id)
        if job is None or job.status != "queued":
            return 0
    env = {
        **os.environ,
        "MEIJU_DATA_DIR": str(settings.data_dir),
        "MEIJU_DATABASE_URL": settings.database_url,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "meiju_core.services.jobs", "run", str(job_id)],
        env=env,
        preexec_fn=_die_with_parent(os.getpid(), nice=settings.job_nice),
    )
    while proc.poll() is None:
        time.sleep(poll_s)
        with store.read() as s:
            wanted = s.get_one(Job, job_id).cancel_requested
        if wanted:
            _soft_wait(proc, 5.0)  # the job stops itself at its next progress report
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)
            _finish(store, job_id, "cancelled", error="cancelled by request")
    if proc.returncode not in (0, None):
        with store.read() as s:
            status = s.get_one(Job, job_id).status
        if status in ("queued", "running"):
            _finish(store, job_id, "failed", error=f"job process exited with {proc.returncode}")
    store.dispose()
    return proc.returncode or 0


def _soft_wait(proc: subprocess.Popen, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end and proc.poll() is None:
        time.sleep(0.1)
    return proc.poll() is None


HOST = socket.gethostname()


def process_alive(pid: int | None) -> bool:
    """Whether ``pid`` is a live job process on this host (a zombie or a recycled pid running
    something else counts as gone)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = f"/proc/{pid}"
    if os.path.isdir(proc):
        try:
            with open(f"{proc}/stat", encoding="ascii", errors="replace") as f:
                if f.read().rsplit(")", 1)[-1].split()[0] in ("Z", "X"):
                    return False
            with open(f"{proc}/cmdline", "rb") as f:
                return b"meiju_core.services.jobs" in f.read()
        except OSError:
            return False
    return True


def _gone(job: Job, cutoff) -> str | None:
    """Why a ``running`` job's process is gone, or None while it may still be working."""
    if job.host == HOST and job.pid:
        if not process_alive(job.pid):
            return f"its process (pid {job.pid} on {job.host}) is gone"
        return None
    beat = q._aware(job.heartbeat_at or job.started_at or job.created_at)
    if beat < cutoff:
        where = f"pid {job.pid} on {job.host}" if job.pid else "no process recorded"
        return f"no heartbeat since {beat:%H:%M:%S} UTC ({where})"
    return None


def reap(
    store: Store,
    settings: Settings,
    *,
    stale_after_s: float | None = None,
    enqueue: bool = True,
) -> dict[str, list[int]]:
    """Fail or re-queue every ``running`` job whose process is gone (see the module docstring).

    A resumable job (a train job) with fewer than ``MAX_ATTEMPTS`` starts goes back to ``queued``
    with ``params["resume"] = True`` and is enqueued on its lane; any other is failed with the
    reason on its row. Returns ``{"requeued": [ids], "failed": [ids]}``.
    """
    stale = STALE_AFTER_S if stale_after_s is None else stale_after_s
    cutoff = utcnow() - timedelta(seconds=stale)
    out: dict[str, list[int]] = {"requeued": [], "failed": []}
    with store.write() as s:
        for job in s.scalars(select(Job).where(Job.status == "running")):
            why = _gone(job, cutoff)
            if why is None:
                continue
            stamp = time.strftime("%H:%M:%S")
            if job.kind in RESUMABLE_KINDS and (job.attempts or 0) < MAX_ATTEMPTS:
                job.status, job.pid, job.host = "queued", None, None
                job.params = {**(job.params or {}), "resume": True}
                job.log = (job.log or "") + (
                    f"{stamp} the worker stopped: {why}; re-queued to resume from the last "
                    "finished epoch\n"
                )
                out["requeued"].append(job.id)
            else:
                job.status, job.finished_at = "failed", utcnow()
                tries = f" after {job.attempts} starts" if job.kind in RESUMABLE_KINDS else ""
                job.error = f"the worker stopped while this job was running{tries}: {why}"
                job.log = (job.log or "") + f"{stamp} {job.error}\n"
                out["failed"].append(job.id)
        kinds = {j.id: j.kind for j in s.scalars(select(Job).where(Job.id.in_(out["requeued"])))}
    if enqueue:
        for job_id in out["requeued"]:
            get_huey(str(settings.queue_path), lane_of(kinds[job_id])).run_job(job_id)
    return out


def recover(store: Store, settings: Settings, *, stale_after_s: float | None = None) -> list[int]:
    """Worker start-up: rebuild both lanes' queues from the job table (re-queue or fail jobs whose
    process is gone, enqueue every queued job), clean unreferenced checkpoint folders. Returns the
    ids enqueued."""
    for lane in LANES:
        get_huey(str(settings.queue_path), lane).flush()  # the job table is the truth
    reap(store, settings, stale_after_s=stale_after_s, enqueue=False)
    with store.read() as s:
        queued = [
            (j.id, j.kind)
            for j in s.scalars(select(Job).where(Job.status == "queued").order_by(Job.id))
        ]
    for job_id, kind in queued:
        get_huey(str(settings.queue_path), lane_of(kind)).run_job(job_id)
    with contextlib.suppress(OSError):
        clean_checkpoints(store, settings)
    return [job_id for job_id, _ in queued]


def clean_checkpoints(
    store: Store, settings: Settings, *, grace_s: float = CHECKPOINT_GRACE_S
) -> list[Path]:
    """Remove checkpoint folders (``<data_dir>/checkpoints/project*/*``) that no model version
    and no queued or running job refers to, and that nothing wrote to for ``grace_s`` seconds
    (a ``meiju train`` in progress registers its folder only at the end). Returns the removed
    folders."""
    root = settings.checkpoint_dir
    if not root.is_dir():
        return []
    keep: set[Path] = set()
    with store.read() as s:
        for path, config in s.execute(select(ModelVersion.checkpoint_path, ModelVersion.config)):
            for p in [path, *((config or {}).get("checkpoints") or {}).values()]:
                if p:
                    keep.add(Path(p).resolve().parent)
        active = [j.id for j in s.scalars(select(Job).where(Job.status.in_(q.ACTIVE_JOB_STATES)))]
    removed = []
    now = time.time()
    for folder in sorted(root.glob("project*/*")):
        if not folder.is_dir() or folder.resolve() in keep:
            continue
        if any(folder.name.endswith(f"-job{j}") for j in active):
            continue
        newest = max([folder.stat().st_mtime] + [f.stat().st_mtime for f in folder.iterdir()])
        if now - newest < grace_s:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def run_lane(settings: Settings, lane: str) -> None:
    """Run one lane's huey consumer in this process until SIGINT / SIGTERM: one job at a time,
    each in its own subprocess. Raises JobError for an unknown lane."""
    from huey.consumer import Consumer

    consumer = Consumer(
        get_huey(str(settings.queue_path), lane),
        workers=1,
        worker_type="thread",
        periodic=False,
        check_worker_health=True,
    )
    consumer.run()


def run_worker(settings: Settings, *, lanes: tuple[str, ...] = LANES) -> None:
    """``meiju worker``: recover, then run one lane process per lane (each dies with this process)
    and reap jobs whose process is gone every ``REAP_EVERY_S`` seconds, until SIGINT / SIGTERM.
    A lane process that exits on its own is restarted."""
    store = Store(settings.database_url)
    store.upgrade()
    recover(store, settings)
    env = {
        **os.environ,
        "MEIJU_DATA_DIR": str(settings.data_dir),
        "MEIJU_DATABASE_URL": settings.database_url,
        "MEIJU_QUEUE_PATH": str(settings.queue_path),
    }
    stop = threading.Event()

    def on_signal(signum, _frame) -> None:
        stop.set()

    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    procs: dict[str, subprocess.Popen] = {}

    def start(lane: str) -> None:
        procs[lane] = subprocess.Popen(
            [sys.executable, "-m", "meiju_core.services.jobs", "lane", lane],
            env=env,
            preexec_fn=_die_with_parent(os.getpid()),
        )

    try:
        for lane in lanes:
            start(lane)
        while not stop.wait(REAP_EVERY_S):
            for lane, proc in procs.items():
                if proc.poll() is not None and not stop.is_set():
                    start(lane)
            with contextlib.suppress(Exception):  # a busy store must not stop the worker
                reap(store, settings)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        for sig, handler in old.items():
            signal.signal(sig, handler)
        store.dispose()


# --------------------------------------------------------------------------- running one job


class JobReporter:
    """Progress callback that writes the job row: throttled, with heartbeat and log tail.

    Called with ``{"progress": 0..1, "message": str, ...}``; other keys (epoch, loss, validation
    scores, seconds_left) go to ``job.detail``. Returns ``"cancel"`` once a cancel was requested.
    """

    def __init__(self, store: Store, job_id: int, *, every_s: float | None = None) -> None:
        self.store, self.job_id = store, job_id
        self.every_s = PROGRESS_EVERY_S if every_s is None else every_s
        self._last = 0.0
        self._log: list[str] = []
        self._pending: dict[str, Any] = {}
        self.cancelled = False

    def __call__(self, event: dict[str, Any]) -> str | None:
        if event.get("message"):
            self._log.append(f"{time.strftime('%H:%M:%S')} {event['message']}")
        self._pending.update(event)
        if time.monotonic() - self._last >= self.every_s or event.get("progress") == 1.0:
            self.flush()
        return "cancel" if self.cancelled else None

    def flush(self) -> None:
        self._last = time.monotonic()
        with self.store.write() as s:
            job = s.get_one(Job, self.job_id)
            ev = self._pending
            if "progress" in ev:
                job.progress = float(min(1.0, max(0.0, ev["progress"])))
            job.detail = {
                **(job.detail or {}),
                **{
                    k: v
                    for k, v in ev.items()
                    if k not in ("progress",) and isinstance(v, (int, float, str, bool, type(None)))
                },
            }
            if self._log:
                job.log = (job.log + "\n".join(self._log) + "\n")[-LOG_TAIL_CHARS:]
            job.heartbeat_at = utcnow()
            self.cancelled = bool(job.cancel_requested)
        self._pending, self._log = {}, []


def execute(store: Store, settings: Settings, job_id: int) -> dict[str, Any] | None:
    """Run job ``job_id`` in this process: mark it running, call its service function with a
    progress reporter, store the result or the error. Returns the result dict."""
    with store.write() as s:
        job = s.get_one(Job, job_id)
        if job.status != "queued":
            return None
        job.status, job.started_at, job.heartbeat_at = "running", utcnow(), utcnow()
        job.pid, job.host, job.attempts = os.getpid(), HOST, (job.attempts or 0) + 1
        kind, params, project_id = job.kind, dict(job.params), job.project_id
        user = None
        if job.created_by:
            from db.models import User

            u = s.get_one(User, job.created_by)
            user = {"id": u.id, "name": u.name, "role": u.role}
    reporter = JobReporter(store, job_id)
    try:
        result = RUNNERS[kind](store, settings, project_id, params, user, reporter)
        reporter.flush()
        if reporter.cancelled:
            raise JobError("cancelled by request")
        _finish(store, job_id, "succeeded", result=result)
        return result
    except JobError as e:
        reporter.flush()
        _finish(store, job_id, "cancelled" if reporter.cancelled else "failed", error=str(e))
    except Exception as e:  # the job row must say why, whatever went wrong
        reporter._log.append(traceback.format_exc())
        reporter.flush()
        _finish(store, job_id, "failed", error=f"{type(e).__name__}: {e}")
    return None


def _finish(
    store: Store,
    job_id: int,
    status: str,
    *,
    result: dict[str, Any] | None = None,
    error: str | None = None,
) -> None:
    with store.write() as s:
        job = s.get_one(Job, job_id)
        if job.status in ("succeeded", "failed", "cancelled"):
            return
        job.status, job.finished_at, job.result, job.error = status, utcnow(), result, error
        if status == "succeeded":
            job.progress = 1.0


def _run_train(store, settings, project_id, params, user, reporter) -> dict[str, Any]:
    from meiju_core.services import training

    mv_id = training.train(
        store,
        settings,
        project_id=project_id,
        stage=int(params.get("stage", 2)),
        preset=params.get("preset"),
        round_id=params.get("round_id"),
        epochs=params.get("epochs"),
        job_id=reporter.job_id,
        progress=reporter,
        resume=bool(params.get("resume")),
        threads=settings.job_threads or None,
    )
    return {"model_version_id": mv_id}


def _run_extract(store, settings, project_id, params, user, reporter) -> dict[str, Any]:
    from meiju_core.services import extraction

    fs = extraction.extract_features(
        store,
        settings,
        project_id=project_id,
        set_name=params.get("set", "builtin"),
        progress=reporter,
        workers=params.get("workers"),
    )
    return {"feature_set_id": fs}


def _run_predict(store, settings, project_id, params, user, reporter) -> dict[str, Any]:
    from meiju_core.services import training

    n = training.predict(store, settings, model_version_id=int(params["model_version_id"]))
    training.evaluate(store, model_version_id=int(params["model_version_id"]))
    return {"predictions": n}


def _run_auto(store, settings, project_id, params, user, reporter) -> dict[str, Any]:
    from meiju_core.services import decisions

    return decisions.auto_pseudo_label(
        store,
        round_id=int(params["round_id"]),
        user=user,
        progress=reporter,
        rule=params.get("rule") or settings.pseudo_rule,
        confidence=params.get("confidence") or settings.pseudo_confidence,
    )


def _run_label_check(store, settings, project_id, params, user, reporter) -> dict[str, Any]:
    """``params``: ``{"split"?: "train", "folds"?: 5}``. The result keeps the counts, not the
    flags (they are the round's ``label_issue`` rows)."""
    from meiju_core.services import label_check

    report = label_check.check_gold_labels(
        store,
        settings,
        project_id=project_id,
        split=params.get("split", "train"),
        folds=int(params.get("folds", 5)),
        progress=reporter,
        user=user,
    )
    return {k: report[k] for k in ("round_id", "split", "checked", "flagged")}


def _run_demo(store, settings, project_id, params, user, reporter) -> dict[str, Any]:
    from meiju_core.services import demo

    return demo.build_demo(store, settings, epochs=params.get("epochs"), progress=reporter)


NEW_IDS_MAX = 5000  # an import's result lists its new sample ids up to this many


def _run_import(store, settings, project_id, params, user, reporter) -> dict[str, Any]:
    """``params``: ``{"source": "csv", "path", "default_split"?}`` or ``{"source": "labels",
    "path", "split"}`` into the job's project, then (unless ``"prepare": False``) feature
    extraction and prediction with the current model, so the new utterances reach Review; or
    ``{"source": "release", "path", "project_name", "lang"?, "probe_media"?}`` (a new project).
    Admins only, checked again here. The import is all or nothing, as the import functions are.
    Returns the import summary plus ``{"prepared": {...}}`` (see
    :func:`meiju_core.services.extraction.prepare_new_samples`: ``new_cards`` in the Review queue) and
    ``"new_sample_ids"`` (the new samples' ids, None above ``NEW_IDS_MAX``)."""
    from meiju_core.io import imports
    from meiju_core.services import extraction, users

    users.require_admin(user, "import data")
    source = params.get("source", "csv")
    reporter({"progress": 0.02, "message": f"importing {Path(params['path']).name}"})
    before = None if project_id is None else extraction.open_cards(store, project_id=project_id)
    with store.read() as s:
        last_id = q.last_sample_id(s)
    summary = imports.run_import(store, project_id=project_id, params=params)
    if project_id is not None:  # the Data page links Review to the new utterances
        with store.read() as s:
            new_ids = q.sample_ids_after(
                s, project_id=project_id, after_id=last_id, limit=NEW_IDS_MAX + 1
            )
        summary["new_sample_ids"] = new_ids if len(new_ids) <= NEW_IDS_MAX else None
    reporter({"progress": 0.2, "message": f"imported {summary.get('samples', 0)} utterances"})
    if source != "release" and params.get("prepare", True):
        summary["prepared"] = extraction.prepare_new_samples(
            store, settings, project_id=project_id, progress=reporter, cards_before=before
        )
        new = summary["prepared"].get("new_cards")
        if new is not None:
            reporter({"message": f"{new} new cards in the Review queue"})
    reporter({"progress": 1.0, "message": "import finished"})
    return summary


def _run_export(store, settings, project_id, params, user, reporter) -> dict[str, Any]:
    """``params``: ``{"what": [export names], "model_version_id"?, "split"?, "round_id"?}``;
    files go to ``<data_dir>/exports/job<id>/``. Returns ``{"files": {name: {path, rows}}}``."""
    from meiju_core.io.export import export_dir, export_files

    files = export_files(
        store,
        settings,
        project_id=project_id,
        what=params.get("what") or [],
        folder=export_dir(settings) / f"job{reporter.job_id}",
        model_version_id=params.get("model_version_id"),
        split=params.get("split", "test"),
        round_id=params.get("round_id"),
        progress=reporter,
    )
    return {"files": files}


RUNNERS: dict[str, Callable[..., dict[str, Any]]] = {
    "train": _run_train,
    "extract": _run_extract,
    "predict": _run_predict,
    "auto_pseudo_label": _run_auto,
    "demo": _run_demo,
    "import": _run_import,
    "export": _run_export,
    "label_check": _run_label_check,
}


def main(argv: list[str] | None = None) -> int:
    """``python -m meiju_core.services.jobs run JOB_ID``: the job subprocess entry point;
    ``python -m meiju_core.services.jobs lane train|io``: one lane's consumer (started by the worker)."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] not in ("run", "lane"):
        print(
            "usage: python -m meiju_core.services.jobs run JOB_ID | lane train|io", file=sys.stderr
        )
        return 2
    settings = Settings.load()
    if argv[0] == "lane":
        run_lane(settings, argv[1])
        return 0
    store = Store(settings.database_url)
    execute(store, settings, int(argv[1]))
    return 0


if __name__ == "__main__":
    # run the imported module, not __main__: huey names tasks by module (meiju_core.services.jobs.run_job)
    from meiju_core.services.jobs import main as _main

    raise SystemExit(_main())
