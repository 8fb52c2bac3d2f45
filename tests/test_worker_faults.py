"""The real worker on the real demo project: lanes and crashes.

- An export finishes while a retrain runs (training has its own lane).
- ``kill -9`` of the worker during a training job, three times: the job's process dies with the
  worker, the restarted worker re-queues the job, training resumes from its last finished epoch,
  the job ends ``succeeded``, the Retrain button is never stuck, and every checkpoint loads.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from db import queries as q
from db.models import Job, ModelVersion
from meiju_core.services import jobs
from meiju_core.settings import Settings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(built_demo, tmp_path_factory):
    settings, store, summary = built_demo.copy(tmp_path_factory.mktemp("faults"))
    yield settings, store, summary["project_id"]
    store.dispose()


def _job(store, job_id: int) -> Job:
    with store.read() as s:
        return s.get(Job, job_id)


def _start_worker(settings: Settings, log: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "MEIJU_DATA_DIR": str(settings.data_dir),
        "MEIJU_DATABASE_URL": settings.database_url,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "meiju_core.cli", "worker"],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def _stop(worker: subprocess.Popen) -> None:
    if worker.poll() is None:
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def _wait(predicate, timeout: float, what: str, log: Path | None = None, store=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    tail = log.read_text(errors="replace")[-3000:] if log else ""
    rows = ""
    if store is not None:
        with store.read() as s:
            rows = "\n".join(
                f"job {j.id} {j.kind} {j.status} attempts={j.attempts} pid={j.pid} "
                f"epoch={(j.detail or {}).get('epoch')}\n{j.log[-800:]}"
                for j in s.query(Job).order_by(Job.id.desc()).limit(2)
            )
    raise AssertionError(f"timed out waiting for {what}\n{rows}\n{tail}")


def test_an_export_finishes_while_a_retrain_runs(demo, tmp_path):
    settings, store, project_id = demo
    log = tmp_path / "worker.log"
    train = jobs.submit(
        store,
        settings,
        kind="train",
        params={"stage": 1, "epochs": 40},
        project_id=project_id,
    )
    worker = _start_worker(settings, log)
    try:
        _wait(lambda: _job(store, train).status == "running", 120, "the retrain to start", log)
        export = jobs.submit(
            store, settings, kind="export", params={"what": ["labels"]}, project_id=project_id
        )
        done = _wait(
            lambda: _job(store, export).status in ("succeeded", "failed"),
            120,
            "the export",
            log,
        )
        assert done
        assert _job(store, export).status == "succeeded", _job(store, export).error
        assert _job(store, train).status == "running"  # it did not wait behind the retrain
        jobs.cancel(store, job_id=train)
        _wait(lambda: _job(store, train).status == "cancelled", 120, "the cancel", log)
    finally:
        _stop(worker)


def _epochs_logged(log_text: str) -> list[int]:
    return [int(m) for m in re.findall(r"stage 1 epoch (\d+)/", log_text)]


def test_kill_9_of_the_worker_three_times_resumes_training_to_success(demo, tmp_path):
    settings, store, project_id = demo
    log = tmp_path / "worker.log"
    epochs = 6
    train = jobs.submit(
        store,
        settings,
        kind="train",
        params={"stage": 1, "epochs": epochs},
        project_id=project_id,
        enqueue=False,  # the worker's start-up enqueues it from the table
    )
    worker = _start_worker(settings, log)
    try:
        for kill in range(1, 4):
            # wait until this attempt finished one more epoch, then kill the worker with -9
            _wait(
                lambda k=kill: (
                    _job(store, train).status == "running"
                    and (_job(store, train).attempts or 0) == k
                    and (_job(store, train).detail or {}).get("epoch", 0) >= k
                ),
                240,
                f"attempt {kill} to finish an epoch",
                log,
                store,
            )
            job_pid = _job(store, train).pid
            os.kill(worker.pid, signal.SIGKILL)
            worker.wait()
            # the training process dies with its worker: nothing runs unsupervised
            _wait(lambda p=job_pid: not jobs.process_alive(p), 30, "the job process to die")
            assert _job(store, train).status == "running"  # the row still says so ...
            worker = _start_worker(settings, log)
            # ... until the restarted worker sees the process is gone and re-queues the job
            _wait(
                lambda k=kill: (
                    _job(store, train).attempts == k + 1 or _job(store, train).status == "queued"
                ),
                60,
                "the job to be re-queued",
                log,
                store,
            )
            with store.read() as s:  # the Retrain button is never stuck on a dead job
                active = q.active_job(s, kind="train", project_id=project_id)
                assert active is not None and active.id == train
                assert active.status == "queued" or jobs.process_alive(active.pid)
        _wait(
            lambda: _job(store, train).status in ("succeeded", "failed", "cancelled"),
            600,
            "the job to finish",
            log,
        )
    finally:
        _stop(worker)
    job = _job(store, train)
    assert job.status == "succeeded", job.error
    assert job.attempts == 4 and job.log.count("re-queued to resume") == 3
    logged = _epochs_logged(job.log)
    # every attempt after the first starts after the epoch it was killed in, never from 1
    assert logged.count(1) == 1 and max(logged) == epochs, logged
    assert len(logged) < epochs + 3, logged  # at most one epoch redone per kill
    with store.read() as s:
        mv = s.get(ModelVersion, job.result["model_version_id"])
        folder = Path(mv.checkpoint_path).parent
        assert mv.config["train"]["threads"] == settings.job_threads == 1
    assert folder.name.endswith(f"-job{train}")
    files = sorted(folder.glob("*.pt"))
    assert {f.name for f in files} >= {"best_joint.pt", "best_emotion.pt", "best_intent.pt"}
    assert not (folder / "resume.pt").exists()  # removed once the stage finished
    for f in files:  # every checkpoint loads
        ckpt = torch.load(f, map_location="cpu", weights_only=True)
        assert ckpt["model_state"]
    # the button is free: the next retrain is accepted
    nxt = jobs.submit(
        store, settings, kind="train", params={"stage": 1}, project_id=project_id, enqueue=False
    )
    jobs.cancel(store, job_id=nxt)
