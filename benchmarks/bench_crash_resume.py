"""Time from a worker crash to the job resumed.

Builds the demo project (``meiju demo --epochs 1``, the real CPED + GRID + speech data), queues a
stage-1 retrain (``--epochs`` on the ``fast`` preset) and starts ``meiju worker``. After the job
reports its first finished epoch, the worker is killed with SIGKILL (``kill -9``), and started
again at once; this is repeated ``--kills`` times. For each kill the script records:

- **to running**: from the kill until the job row is ``running`` again in a new process
  (the new worker saw the old process gone, re-queued the job, its train lane started it);
- **to next epoch**: from the kill until the resumed job reports an epoch past the one it was
  killed in (features loaded again, the resume file read, one more epoch trained).

Usage: ``python benchmarks/bench_crash_resume.py [--kills 3] [--epochs 8]``. Writes
``benchmarks/results/crash_resume.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from db.models import Job  # noqa: E402
from meiju_core.services import jobs, projects  # noqa: E402
from meiju_core.settings import Settings  # noqa: E402

RESULT = ROOT / "benchmarks" / "results" / "crash_resume.json"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=8)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MEIJU_")}
        env |= {"MEIJU_DATA_DIR": tmp, "MEIJU_PROJECT": "demo", "PYTHONPATH": str(ROOT)}
        subprocess.run(
            [sys.executable, "-m", "meiju_core.cli", "demo", "--epochs", "1"],
            env=env,
            check=True,
            capture_output=True,
        )
        settings = Settings.load(data_dir=tmp, database_url="", project="demo")
        store = projects.open_store(settings)
        project_id = projects.project_info(store, name="demo")["id"]
        job_id = jobs.submit(
            store,
            settings,
            kind="train",
            params={"stage": 1, "epochs": args.epochs},
            project_id=project_id,
            enqueue=False,
        )

        def row() -> Job:
            with store.read() as s:
                return s.get(Job, job_id)

        def wait(pred, timeout=600.0):
            end = time.monotonic() + timeout
            while time.monotonic() < end:
                if pred():
                    return
                time.sleep(0.1)
            raise RuntimeError("timed out")

        def start():
            return subprocess.Popen(
                [sys.executable, "-m", "meiju_core.cli", "worker"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

        worker, measured = start(), []
        try:
            for k in range(1, args.kills + 1):
                wait(lambda k=k: row().attempts == k and (row().detail or {}).get("epoch", 0) >= k)
                epoch = row().detail["epoch"]
                os.kill(worker.pid, signal.SIGKILL)
                t0 = time.perf_counter()
                worker.wait()
                worker = start()
                wait(lambda k=k: row().attempts == k + 1 and row().status == "running")
                to_running = time.perf_counter() - t0
                wait(lambda e=epoch: (row().detail or {}).get("epoch", 0) > e)
                to_epoch = time.perf_counter() - t0
                measured.append(
                    {"killed_after_epoch": epoch, "to_running_s": round(to_running, 2)}
                    | {"to_next_epoch_s": round(to_epoch, 2)}
                )
            wait(lambda: row().status in ("succeeded", "failed", "cancelled"), 1200)
            final = row()
        finally:
            worker.terminate()
            worker.wait(timeout=60)
            store.dispose()
    run_med = statistics.median(m["to_running_s"] for m in measured)
    epoch_med = statistics.median(m["to_next_epoch_s"] for m in measured)
    print(f"{'kill':>4s} {'after epoch':>11s} {'to running s':>12s} {'to next epoch s':>15s}")
    for k, m in enumerate(measured, start=1):
        print(
            f"{k:4d} {m['killed_after_epoch']:11d} {m['to_running_s']:12.2f} "
            f"{m['to_next_epoch_s']:15.2f}"
        )
    print(f"job {final.status} after {final.attempts} starts")
    note = (
        f"demo project (2,352 train utterances), fast preset, {args.epochs} epochs, "
        f"{args.kills} kill -9 of the worker; job {final.status} after {final.attempts} starts; "
        f"{os.cpu_count()} CPU cores shared"
    )
    RESULT.write_text(
        json.dumps(
            {
                "benchmark": "crash_resume",
                "summary": [
                    {
                        "figure": "Worker crash to the job running again (median)",
                        "value": f"{run_med:.1f} s",
                        "goal": "",
                        "note": note,
                    },
                    {
                        "figure": "Worker crash to the next epoch finished (median)",
                        "value": f"{epoch_med:.1f} s",
                        "goal": "",
                        "note": "features reloaded, resume file read, one epoch trained",
                    },
                ],
                "kills": measured,
                "final_status": final.status,
                "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    return 0 if final.status == "succeeded" else 1


if __name__ == "__main__":
    raise SystemExit(main())
