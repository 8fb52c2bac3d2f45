"""The paper's Table I on the demo project: every row, N seeds, CPU, builtin features.

Runs ``meiju_core.services.table1.run_table1`` (the code behind ``meiju table1``) on the demo project in
``--data-dir``. With ``--jobs N`` the seeds first train in N parallel processes (one CPU thread
each), then one call assembles the table from the cached runs; the wall time reported covers both.

Usage: ``python benchmarks/bench_table1.py [--data-dir data] [--seeds 3] [--jobs 3]``
(needs ``meiju demo`` first). Writes ``benchmarks/results/table1.json`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from meiju_core.services import projects  # noqa: E402
from meiju_core.services import table1 as t1  # noqa: E402
from meiju_core.settings import Settings  # noqa: E402


def _cell(row: dict, key: str) -> str:
    m, s = row["mean"][key], row["std"][key]
    return "—" if m is None else f"{m:.4f} ± {s:.4f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default=str(ROOT / "data"))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=1, help="seeds trained in parallel processes")
    ap.add_argument("--epochs", type=int, default=None, help="shorten every schedule (smoke runs)")
    args = ap.parse_args()
    settings = Settings.load(data_dir=args.data_dir, project="demo")
    store = projects.open_store(settings)
    info = projects.project_info(store, name="demo")
    if info is None:
        print("no demo project: run `meiju demo` first", file=sys.stderr)
        return 1
    seeds = tuple(settings.seed + i for i in range(args.seeds))
    t0 = time.perf_counter()
    load0 = os.getloadavg()[0]
    if args.jobs > 1:
        procs = []
        for seed in seeds:
            cmd = [sys.executable, "-m", "meiju_core.cli", "--data-dir", args.data_dir]
            cmd += ["table1", "--seeds", "1"]
            if args.epochs:
                cmd += ["--epochs", str(args.epochs)]
            env = {**os.environ, "MEIJU_SEED": str(seed), "OMP_NUM_THREADS": "1"}
            procs.append(subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL))
            while sum(p.poll() is None for p in procs) >= args.jobs:
                time.sleep(5)
        for p in procs:
            if p.wait() != 0:
                print(f"a seed run failed: {p.args}", file=sys.stderr)
                return 1
    opts = t1.Table1Options(seeds=seeds, epochs=args.epochs)
    result = t1.run_table1(store, project_id=info["id"], data_dir=Path(args.data_dir), options=opts)
    wall = time.perf_counter() - t0
    print(t1.markdown(result))
    print(f"\nwall time {wall:.0f} s ({args.jobs} parallel job(s)); load average {load0:.1f}")
    rows = result["rows"]
    base, ens, lin = rows["baseline"], rows["ensemble"], rows["linear"]
    summary = [
        {
            "figure": f"Table I: {rows[k]['label']} (test, demo)",
            "value": " / ".join(_cell(rows[k], c) for c in ("emotion", "intent", "joint")),
            "goal": "> baseline and linear by more than the spread" if k == "ensemble" else "",
            "note": "emotion F1 / intent F1 / joint, mean ± std over "
            f"{len(seeds)} seeds" + (f", {args.epochs} epochs" if args.epochs else ", presets"),
        }
        for k in (
            "baseline",
            "stage1",
            "control",
            "pseudo",
            "pseudo_1textcnn",
            "no_noise",
            "ensemble",
            "linear",
        )
    ]
    accepted = {
        seed: {k: v.get("accepted", 0) for k, v in per.items()}
        for seed, per in result["pseudo_labels"].items()
    }
    summary.append(
        {
            "figure": "Table I: whole table wall time (CPU)",
            "value": f"{wall / 60:.1f} min",
            "goal": "",
            "note": f"{len(seeds)} seeds x 8 systems x 2 stages + linear reference; "
            f"{args.jobs} parallel job(s), 1 thread each, 2 cores; pseudo-labels accepted at 0.99 "
            f"(joint, raw): {accepted}",
        }
    )
    result["benchmark"] = {
        "wall_seconds": wall,
        "jobs": args.jobs,
        "load_average_start": load0,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "ensemble_beats_baseline_by_more_than_spread": ens["mean"]["joint"] - base["mean"]["joint"]
        > max(ens["std"]["joint"], base["std"]["joint"]),
        "ensemble_beats_linear_by_more_than_spread": ens["mean"]["joint"] - lin["mean"]["joint"]
        > max(ens["std"]["joint"], lin["std"]["joint"]),
    }
    result["summary"] = summary
    out = ROOT / "benchmarks" / "results" / "table1.json"
    out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    (ROOT / "benchmarks" / "results" / "table1.md").write_text(t1.markdown(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
