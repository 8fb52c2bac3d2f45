"""Peak memory of a 1 GB CSV import.

Writes a CSV of pool utterances (``utt_id,text,split``; each transcript 100 Chinese characters,
about 330 bytes a row) to a temporary folder until it reaches ``--size-mb``, then imports it
into a fresh SQLite store with ``meiju_core.io.tables.import_csv`` in a child process (the same
call the CLI and the import job make) and reads that process's peak resident memory
(``ru_maxrss``). The importer streams: it reads the file line by line and inserts batches of
5,000 rows inside one transaction, so memory holds one batch and the set of ids.

Usage: ``python benchmarks/bench_import_memory.py [--size-mb 1024]``. Goal: peak under 500 MB.
Writes ``benchmarks/results/import_memory.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RESULT = ROOT / "benchmarks" / "results" / "import_memory.json"
GOAL_MB = 500

CHILD = """
import resource, sys, time
from db import Store
from db.fixtures import build_fixture
from meiju_core.io.tables import import_csv
store = Store(sys.argv[1]); store.upgrade()
ids = build_fixture(store, n_pool=1)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
out = import_csv(store, sys.argv[2], project_id=ids.project_id)
print(out.samples, time.perf_counter() - t0, base, flush=True)
"""


def write_csv(path: Path, size_mb: int) -> int:
    rng = random.Random(0)
    chars = [chr(c) for c in range(0x4E00, 0x4E00 + 3000)]
    target, rows = size_mb * 1024 * 1024, 0
    with path.open("w", encoding="utf-8", newline="") as f:
        f.write("utt_id,text,split\n")
        while f.tell() < target:
            lines = []
            for _ in range(10_000):
                text = "".join(rng.choices(chars, k=99)) + "？"
                lines.append(f"big_{rows:08d},{text},pool\n")
                rows += 1
            f.write("".join(lines))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mb", type=int, default=1024)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        csv_path = Path(tmp) / "big.csv"
        rows = write_csv(csv_path, args.size_mb)
        size = csv_path.stat().st_size
        t0 = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", CHILD, f"sqlite:///{tmp}/meiju.db", str(csv_path)],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            check=False,
        )
        wall = time.perf_counter() - t0
        if out.returncode:
            print(out.stderr[-3000:])
            return 1
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        samples, seconds, base_kb = out.stdout.split()
    result = {
        "file_mb": round(size / 1024 / 1024, 1),
        "rows": rows,
        "imported": int(samples),
        "import_seconds": round(float(seconds), 1),
        "wall_seconds": round(wall, 1),
        "peak_rss_mb": round(peak_mb, 1),
        "rss_before_import_mb": round(int(base_kb) / 1024, 1),
        "rows_per_second": round(int(samples) / float(seconds)),
    }
    print(f"{'file MB':>8s} {'rows':>9s} {'seconds':>8s} {'peak MB':>8s} {'goal':>6s}")
    print(
        f"{result['file_mb']:8.1f} {rows:9d} {result['import_seconds']:8.1f} "
        f"{result['peak_rss_mb']:8.1f} {GOAL_MB:6d}"
    )
    RESULT.write_text(
        json.dumps(
            {
                "benchmark": "import_memory",
                "summary": [
                    {
                        "figure": f"Peak memory of a {result['file_mb']:.0f} MB CSV import",
                        "value": f"{result['peak_rss_mb']:.0f} MB",
                        "goal": f"< {GOAL_MB} MB",
                        "note": f"{rows:,} pool rows of 100 characters in "
                        f"{result['import_seconds']:.0f} s ({result['rows_per_second']:,} rows/s), "
                        "SQLite, peak RSS of the importing process",
                    }
                ],
                "result": result,
                "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
