"""Background jobs: huey (``SqliteHuey``) dispatches, the ``job`` table is the source of truth.

The app never does heavy work in its own process. It calls ``submit``, which writes a ``job`` row
(status ``queued``) and enqueues its id. The worker (``meiju worker``) takes the id and runs the
job in a fresh subprocess (``python -m meiju_core.jobs run ID``), so CUDA, memory and crashes stay
out of the worker and a cancel can always stop it. The subprocess writes status, progress, live
figures, a log tail and a heartbeat to the row, throttled to one short write transaction every
``PROGRESS_EVERY_S`` seconds; the app polls the row.

Job kinds map to one pipeline function each (``KINDS``). On start the worker re-enqueues jobs left
``queued`` and fails jobs left ``running`` by a worker that died, so the row never lies.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from db import Store
from db import queries as q
from db.models import Job, utcnow
from meiju_core.errors import JobError, StoreError
from meiju_core.settings import Settings

PROGRESS_EVERY_S = 1.0
LOG_TAIL_CHARS = 20_000
KINDS = ("train", "extract", "predict", "auto_pseudo_label", "demo", "import", "export")
SINGLETON_KINDS = ("train", "demo")  # at most one queued or running per project
# kinds only admins may submit from the app (exports are everyone's); a job submitted without a
# user (the command line, the worker itself) is trusted
ADMIN_KINDS = ("train", "extract", "predict", "auto_pseudo_label", "demo", "import")


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
        from meiju_core.pipeline import require_admin

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
        get_huey(str(settings.queue_path)).run_job(job_id)
    return job_id


def cancel(store: Store, *, job_id: int, user: dict[str, Any] | None = None) -> None:
    """Ask a job to stop: a queued job is cancelled at once, a running one at its next progress
    report (the worker also terminates its subprocess).

    Raises PermissionDenied when ``user`` is given and the store does not have that user as an
    admin (no user: the command line, trusted).
    """
    if user is not None:
        from meiju_core.pipeline import require_admin

        require_admin(user, "cancel a job", store=store)
    with store.write() as s:
        job = s.get(Job, job_id)
        if job.status == "queued":
            job.status, job.finished_at = "cancelled", utcnow()
        job.cancel_requested = True
        q.audit(
            s, user_id=(user or {}).get("id"), action="cancel_job", entity="job", entity_id=job_id
        )


# --------------------------------------------------------------------------- the queue


@functools.cache
def get_huey(queue_path: str, immediate: bool = False):
    """The huey instance for a queue file, with the ``run_job`` task registered on it."""
    from huey import SqliteHuey

    huey = SqliteHuey("meiju", filename=queue_path, immediate=immediate)
    huey.run_job = huey.task(name="run_job")(_run_job_task)
    return huey


def _run_job_task(job_id: int) -> None:
    settings = Settings.load()
    run_subprocess(settings, job_id)


def run_subprocess(settings: Settings, job_id: int, *, poll_s: float = 0.5) -> int:
    """Run one job in a fresh Python process; terminate it if a cancel is requested."""
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
    proc = subprocess.Popen([sys.executable, "-m", "meiju_core.jobs", "run", str(job_id)], env=env)
    while proc.poll() is None:
        time.sleep(poll_s)
        with store.read() as s:
            wanted = s.get(Job, job_id).cancel_requested
        if wanted:
            _soft_wait(proc, 5.0)  # the job stops itself at its next progress report
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)
            _finish(store, job_id, "cancelled", error="cancelled by request")
    if proc.returncode not in (0, None):
        with store.read() as s:
            status = s.get(Job, job_id).status
        if status in ("queued", "running"):
            _finish(store, job_id, "failed", error=f"job process exited with {proc.returncode}")
    store.dispose()
    return proc.returncode or 0


def _soft_wait(proc: subprocess.Popen, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end and proc.poll() is None:
        time.sleep(0.1)
    return proc.poll() is None


def recover(store: Store, settings: Settings, *, stale_after_s: float = 60.0) -> list[int]:
    """Worker start-up: fail jobs whose worker died, re-enqueue queued ones. Returns ids enqueued."""
    huey = get_huey(str(settings.queue_path))
    huey.flush()  # the job table is the truth; rebuild the queue from it
    cutoff = utcnow() - timedelta(seconds=stale_after_s)
    with store.write() as s:
        for job in s.scalars(select(Job).where(Job.status == "running")):
            beat = q._aware(job.heartbeat_at or job.started_at or job.created_at)
            if beat < cutoff:
                job.status, job.finished_at = "failed", utcnow()
                job.error = "the worker stopped while this job was running"
        queued = [
            j.id for j in s.scalars(select(Job).where(Job.status == "queued").order_by(Job.id))
        ]
    for job_id in queued:
        huey.run_job(job_id)
    return queued


def run_worker(settings: Settings, *, workers: int = 1) -> None:
    """Run the huey consumer in this process until interrupted (``meiju worker``)."""
    from huey.consumer import Consumer

    store = Store(settings.database_url)
    store.upgrade()
    recover(store, settings)
    consumer = Consumer(
        get_huey(str(settings.queue_path)),
        workers=workers,
        worker_type="thread",
        periodic=False,
        check_worker_health=True,
    )
    consumer.run()


# --------------------------------------------------------------------------- running one job


class JobReporter:
    """Progress callback that writes the job row: throttled, with heartbeat and log tail.

    Called with ``{"progress": 0..1, "message": str, ...}``; other keys (epoch, loss, validation
    scores, seconds_left) go to ``job.detail``. Returns ``"cancel"`` once a cancel was requested.
    """

    def __init__(self, store: Store, job_id: int, *, every_s: float | None = None) -> None:
        self.store, self.job_id = store, job_id
        self.every_s = PROGRESS_EVERY_S if every_s is None else every_s
        self._last, self._log, self._pending = 0.0, [], {}
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
            job = s.get(Job, self.job_id)
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
    """Run job ``job_id`` in this process: mark it running, call its pipeline function with a
    progress reporter, store the result or the error. Returns the result dict."""
    with store.write() as s:
        job = s.get(Job, job_id)
        if job.status != "queued":
            return None
        job.status, job.started_at, job.heartbeat_at = "running", utcnow(), utcnow()
        kind, params, project_id = job.kind, dict(job.params), job.project_id
        user = None
        if job.created_by:
            from db.models import User

            u = s.get(User, job.created_by)
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
        job = s.get(Job, job_id)
        if job.status in ("succeeded", "failed", "cancelled"):
            return
        job.status, job.finished_at, job.result, job.error = status, utcnow(), result, error
        if status == "succeeded":
            job.progress = 1.0


def _run_train(store, settings, project_id, params, user, reporter) -> dict[str, Any]:
    from meiju_core import pipeline

    mv_id = pipeline.train(
        store,
        settings,
        project_id=project_id,
        stage=int(params.get("stage", 2)),
        preset=params.get("preset"),
        round_id=params.get("round_id"),
        epochs=params.get("epochs"),
        job_id=reporter.job_id,
        progress=reporter,
    )
    return {"model_version_id": mv_id}


def _run_extract(store, settings, project_id, params, user, reporter) -> dict[str, Any]:
    from meiju_core import pipeline

    fs = pipeline.extract_features(
        store,
        settings,
        project_id=project_id,
        set_name=params.get("set", "builtin"),
        progress=reporter,
        workers=params.get("workers"),
    )
    return {"feature_set_id": fs}


def _run_predict(store, settings, project_id, params, user, reporter) -> dict[str, Any]:
    from meiju_core import pipeline

    n = pipeline.predict(store, settings, model_version_id=int(params["model_version_id"]))
    pipeline.evaluate(store, model_version_id=int(params["model_version_id"]))
    return {"predictions": n}


def _run_auto(store, settings, project_id, params, user, reporter) -> dict[str, Any]:
    from meiju_core import pipeline

    return pipeline.auto_pseudo_label(
        store,
        round_id=int(params["round_id"]),
        user=user,
        progress=reporter,
        rule=params.get("rule") or settings.pseudo_rule,
        confidence=params.get("confidence") or settings.pseudo_confidence,
    )


def _run_demo(store, settings, project_id, params, user, reporter) -> dict[str, Any]:
    from meiju_core import pipeline

    return pipeline.build_demo(store, settings, epochs=params.get("epochs"), progress=reporter)


def _run_import(store, settings, project_id, params, user, reporter) -> dict[str, Any]:
    """``params``: ``{"source": "csv", "path", "default_split"?}`` into the job's project, or
    ``{"source": "release", "path", "project_name", "lang"?, "probe_media"?}`` (a new project).
    Admins only, checked again here. All or nothing, as the import functions are."""
    import dataclasses
    import json

    from meiju_core import pipeline

    pipeline.require_admin(user, "import data")
    path = params["path"]
    reporter({"progress": 0.05, "message": f"importing {path}"})
    if params.get("source") == "release":
        from meiju_core.io.meiju import import_release

        summary = import_release(
            store,
            path,
            project_name=params["project_name"],
            lang=params.get("lang", "Mandarin"),
            probe_media=bool(params.get("probe_media", True)),
        )
    else:
        from meiju_core.io.tables import import_csv

        summary = import_csv(
            store, path, project_id=project_id, default_split=params.get("default_split")
        )
    reporter({"progress": 1.0, "message": f"imported {path}"})
    return json.loads(json.dumps(dataclasses.asdict(summary), default=str))


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
}


def main(argv: list[str] | None = None) -> int:
    """``python -m meiju_core.jobs run JOB_ID``: the subprocess entry point."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] != "run":
        print("usage: python -m meiju_core.jobs run JOB_ID", file=sys.stderr)
        return 2
    settings = Settings.load()
    store = Store(settings.database_url)
    execute(store, settings, int(argv[1]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
