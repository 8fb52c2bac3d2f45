"""Jobs: the job row is the source of truth; a worker process runs queued jobs in subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from db import Store
from db.models import Job
from meiju_core.errors import JobError, StoreError
from meiju_core.services import jobs
from meiju_core.settings import Settings


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("MEIJU_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("MEIJU_DATABASE_URL", raising=False)
    settings = Settings.load()
    store = Store(settings.database_url)
    store.upgrade()
    yield settings, store
    store.dispose()


def _job(store: Store, job_id: int) -> Job:
    with store.read() as s:
        return s.get(Job, job_id)


def test_submit_writes_a_queued_row_and_refuses_a_second_retrain(env):
    settings, store = env
    jid = jobs.submit(store, settings, kind="train", params={"stage": 2}, enqueue=False)
    job = _job(store, jid)
    assert (job.status, job.kind, job.params) == ("queued", "train", {"stage": 2})
    with pytest.raises(StoreError, match="already queued"):
        jobs.submit(store, settings, kind="train", enqueue=False)
    with pytest.raises(StoreError, match="unknown job kind"):
        jobs.submit(store, settings, kind="nope", enqueue=False)


def test_execute_records_progress_and_result(env, monkeypatch):
    settings, store = env

    def fake(store_, settings_, project_id, params, user, reporter):
        for epoch in range(1, 4):
            reporter(
                {
                    "progress": epoch / 3,
                    "epoch": epoch,
                    "loss": 1.0 / epoch,
                    "message": f"epoch {epoch}",
                }
            )
        return {"model_version_id": 7}

    monkeypatch.setitem(jobs.RUNNERS, "train", fake)
    jid = jobs.submit(store, settings, kind="train", enqueue=False)
    assert jobs.execute(store, settings, jid) == {"model_version_id": 7}
    job = _job(store, jid)
    assert job.status == "succeeded" and job.progress == 1.0
    assert job.detail["epoch"] == 3 and job.detail["loss"] == pytest.approx(1 / 3)
    assert "epoch 3" in job.log and job.heartbeat_at is not None
    assert jobs.execute(store, settings, jid) is None  # a finished job never runs twice


def test_a_failing_job_says_why(env, monkeypatch):
    settings, store = env

    def boom(*_args):
        raise ValueError("features missing for sample 12")

    monkeypatch.setitem(jobs.RUNNERS, "extract", boom)
    jid = jobs.submit(store, settings, kind="extract", enqueue=False)
    jobs.execute(store, settings, jid)
    job = _job(store, jid)
    assert job.status == "failed"
    assert job.error == "ValueError: features missing for sample 12"
    assert "Traceback" in job.log


def test_cancel_stops_a_running_job_at_its_next_report(env, monkeypatch):
    settings, store = env
    monkeypatch.setattr(jobs, "PROGRESS_EVERY_S", 0.0)  # every report reads the cancel flag
    seen = []

    def long_job(store_, settings_, project_id, params, user, reporter):
        for epoch in range(100):
            if epoch == 2:
                jobs.cancel(store_, job_id=reporter.job_id)
            if reporter({"progress": epoch / 100, "epoch": epoch}) == "cancel":
                raise JobError("cancelled by request")
            seen.append(epoch)
        return {}

    monkeypatch.setitem(jobs.RUNNERS, "train", long_job)
    jid = jobs.submit(store, settings, kind="train", enqueue=False)
    jobs.execute(store, settings, jid)
    assert _job(store, jid).status == "cancelled"
    assert len(seen) < 5


def test_cancel_of_a_queued_job_is_immediate(env):
    settings, store = env
    jid = jobs.submit(store, settings, kind="train", enqueue=False)
    jobs.cancel(store, job_id=jid)
    assert _job(store, jid).status == "cancelled"
    assert jobs.execute(store, settings, jid) is None


def test_recover_fails_orphans_and_requeues(env):
    settings, store = env
    running = jobs.submit(store, settings, kind="extract", enqueue=False)
    with store.write() as s:
        s.get(Job, running).status = "running"
    queued = jobs.submit(store, settings, kind="export", enqueue=False)
    assert jobs.recover(store, settings, stale_after_s=0) == [queued]
    assert _job(store, running).status == "failed"
    assert "worker stopped" in _job(store, running).error
    assert len(jobs.get_huey(str(settings.queue_path), "io")) == 1
    assert len(jobs.get_huey(str(settings.queue_path), "train")) == 0


def test_training_and_io_jobs_go_to_separate_lanes(env):
    settings, store = env
    jobs.submit(store, settings, kind="train")
    jobs.submit(store, settings, kind="export")
    jobs.submit(store, settings, kind="import")
    assert len(jobs.get_huey(str(settings.queue_path), "train")) == 1
    assert len(jobs.get_huey(str(settings.queue_path), "io")) == 2
    assert [jobs.lane_of(k) for k in ("train", "demo", "predict", "extract")] == [
        "train",
        "train",
        "io",
        "io",
    ]
    with pytest.raises(JobError, match="unknown lane"):
        jobs.get_huey(str(settings.queue_path), "gpu")


def test_execute_records_pid_host_and_attempts(env, monkeypatch):
    settings, store = env
    seen = {}

    def fake(store_, settings_, project_id, params, user, reporter):
        seen.update(vars(_job(store_, reporter.job_id)))
        return {}

    monkeypatch.setitem(jobs.RUNNERS, "export", fake)
    jid = jobs.submit(store, settings, kind="export", enqueue=False)
    jobs.execute(store, settings, jid)
    assert (seen["pid"], seen["host"], seen["attempts"]) == (os.getpid(), jobs.HOST, 1)


def _running(store, job_id, *, pid, host=None, attempts=1):
    with store.write() as s:
        job = s.get(Job, job_id)
        job.status, job.pid, job.host, job.attempts = "running", pid, host or jobs.HOST, attempts
        job.started_at = job.heartbeat_at = jobs.utcnow()


def test_reap_requeues_a_train_job_whose_process_is_gone_and_fails_others(env):
    settings, store = env
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    train = jobs.submit(store, settings, kind="train", params={"stage": 2}, enqueue=False)
    export = jobs.submit(store, settings, kind="export", enqueue=False)
    alive = jobs.submit(store, settings, kind="extract", enqueue=False)
    _running(store, train, pid=dead.pid)
    _running(store, export, pid=dead.pid)
    # a live process that is not a job process (a recycled pid) counts as gone too;
    # this test process is a live meiju_core.services.jobs lookalike only if its command line says so
    _running(store, alive, pid=os.getpid())
    out = jobs.reap(store, settings)
    assert out == {"requeued": [train], "failed": [export, alive]}
    job = _job(store, train)
    assert job.status == "queued" and job.params == {"stage": 2, "resume": True}
    assert "re-queued to resume" in job.log
    assert len(jobs.get_huey(str(settings.queue_path), "train")) == 1
    assert f"pid {dead.pid}" in _job(store, export).error
    # the retrain button is free again once the row is no longer running... or queued again
    assert _job(store, export).finished_at is not None


def test_reap_leaves_a_live_job_alone_and_fails_after_max_attempts(env):
    settings, store = env
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)", "meiju_core.services.jobs"]
    )
    try:
        train = jobs.submit(store, settings, kind="train", enqueue=False)
        _running(store, train, pid=proc.pid)
        assert jobs.reap(store, settings) == {"requeued": [], "failed": []}
    finally:
        proc.kill()
        proc.wait()
    with store.write() as s:
        s.get(Job, train).attempts = jobs.MAX_ATTEMPTS
    assert jobs.reap(store, settings)["failed"] == [train]
    assert f"after {jobs.MAX_ATTEMPTS} starts" in _job(store, train).error


def test_a_job_on_another_host_is_reaped_only_when_its_heartbeat_is_stale(env):
    settings, store = env
    jid = jobs.submit(store, settings, kind="export", enqueue=False)
    _running(store, jid, pid=1, host="gpu-box")
    assert jobs.reap(store, settings)["failed"] == []
    assert jobs.reap(store, settings, stale_after_s=0)["failed"] == [jid]
    assert "no heartbeat since" in _job(store, jid).error


def test_clean_checkpoints_removes_only_unreferenced_old_folders(env):
    from db.fixtures import build_fixture
    from db.models import ModelVersion

    settings, store = env
    ids = build_fixture(store, n_pool=5)
    root = settings.checkpoint_dir / f"project{ids.project_id}"
    used, active, orphan, fresh = (root / n for n in ("used", "stage2-paper-job9", "old", "new"))
    for folder in (used, active, orphan, fresh):
        folder.mkdir(parents=True)
        (folder / "best_joint.pt").write_bytes(b"x")
    with store.write() as s:
        s.get(ModelVersion, ids.model_version_id).checkpoint_path = str(used / "best_joint.pt")
        s.add(Job(id=9, kind="train", status="running", params={}, project_id=ids.project_id))
    old = time.time() - 2 * jobs.CHECKPOINT_GRACE_S
    for folder in (used, active, orphan):
        os.utime(folder / "best_joint.pt", (old, old))
        os.utime(folder, (old, old))
    assert jobs.clean_checkpoints(store, settings) == [orphan]
    assert used.is_dir() and active.is_dir() and fresh.is_dir() and not orphan.exists()


def test_worker_process_runs_a_queued_job_in_a_subprocess(env):
    """A real `meiju worker` takes the job from the queue file and records its outcome."""
    settings, store = env
    # A predict job for a model version that does not exist fails fast inside the subprocess.
    jid = jobs.submit(store, settings, kind="predict", params={"model_version_id": 999})
    worker = subprocess.Popen(
        [sys.executable, "-m", "meiju_core.cli", "worker"],
        env={**os.environ, "MEIJU_DATA_DIR": str(settings.data_dir)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _job(store, jid).status in ("queued", "running"):
            time.sleep(0.3)
    finally:
        worker.terminate()
        out = worker.communicate(timeout=20)[0].decode(errors="replace")
    job = _job(store, jid)
    assert job.status == "failed", out
    assert job.started_at is not None and job.finished_at is not None
    assert job.error


def test_job_processes_yield_the_cpu_by_job_nice(env, monkeypatch):
    """A job's process runs ``job_nice`` steps nicer than the worker, so a retrain leaves the CPU
    to the app's key presses first."""
    settings, store = env
    base = os.nice(0)
    preexec = jobs._die_with_parent(os.getpid(), nice=7)
    out = subprocess.run(
        [sys.executable, "-c", "import os; print(os.nice(0))"],
        preexec_fn=preexec,
        capture_output=True,
        text=True,
        check=True,
    )
    assert int(out.stdout) == min(19, base + 7)
    # run_subprocess asks for the setting's niceness
    asked = []
    monkeypatch.setattr(
        jobs, "_die_with_parent", lambda pid, nice=0: asked.append(nice) or (lambda: None)
    )
    jid = jobs.submit(store, settings, kind="predict", params={"model_version_id": 999})
    jobs.run_subprocess(settings.with_(job_nice=12), jid, poll_s=0.1)
    assert asked == [12]
    assert Settings.load().job_nice == 10  # the default
