"""What an hour of review buys, on the demo project: a simulated annotator per queue order and
action, against the automatic rule, gold labelling and stage 2 on gold alone (issue 11.1).

Runs ``meiju_core.services.simulate.run_review_value`` (the code behind ``meiju simulate-review``) on the
demo project in ``--data-dir``. With ``--jobs N`` the seeds first run in N parallel processes (one
CPU thread each; each seed works in its own copy of the store), then one call assembles the table
from the cached runs; the wall time reported covers both. Every run is cached under
``<data-dir>/review_value/``, so an interrupted benchmark resumes.

Usage: ``nice python benchmarks/bench_review_value.py [--data-dir data] [--seeds 3] [--jobs 2]
[--points 500,1000,2000]`` (needs ``meiju demo`` first). Writes
``benchmarks/results/review_value.json``, ``review_value.md`` and ``review_value.html`` (a plotly
figure that loads plotly.js from its CDN; a PNG beside it when kaleido is installed) and prints
the table.
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
from meiju_core.services import simulate as sim  # noqa: E402
from meiju_core.settings import Settings  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def _cell(cells: dict, p: str) -> str:
    c = cells.get(p)
    return "—" if c is None else f"{c['mean']:.4f} ± {c['std']:.4f}"


def summary_rows(result: dict, wall: float, load: list[float], jobs: int) -> list[dict]:
    """The README rows: per curve the test joint at each point, the goal at 1,000, the best
    order, decisions per joint point, the wall time."""
    sc = result["scores"]
    pts = [str(p) for p in result["points"]]
    n = len(result["seeds"])
    rows = []
    for name, cells in sc["curves"].items():
        rows.append(
            {
                "figure": f"Review value: test joint after {'/'.join(pts)} decisions, {name}",
                "value": " / ".join(_cell(cells, p) for p in pts),
                "goal": "",
                "note": f"demo, mean ± std over {n} seeds; stage 2 on gold alone "
                f"{sc['gold_only']['mean']:.4f} ± {sc['gold_only']['std']:.4f}",
            }
        )
    ref = "1000" if "1000" in pts else pts[-1]
    beats = {
        name: v[ref] for name, v in sc["vs_automatic"].items() if ref in v
    }  # reviewed - automatic at ref
    best_gain = max(beats.items(), key=lambda kv: kv[1]["gain"], default=(None, None))
    rows.append(
        {
            "figure": f"Review value: reviewed minus automatic rule at {ref} decisions (best)",
            "value": (
                f"{best_gain[0]}: {best_gain[1]['gain']:+.4f} (spread {best_gain[1]['spread']:.4f})"
                if best_gain[0]
                else "—"
            ),
            "goal": "> spread",
            "note": "reached" if best_gain[0] and best_gain[1]["beats"] else "NOT reached",
        }
    )
    best = sc["best"]
    dpp = sc["decisions_per_point"].get(best["curve"] or "", {}).get(ref)
    dpa = sc["decisions_per_point_vs_automatic"].get(best["curve"] or "", {}).get(ref)
    rows.append(
        {
            "figure": "Review value: best queue order and action",
            "value": f"{best['curve']} at {best['at']} decisions",
            "goal": "",
            "note": "decisions per joint point (0.01) gained: "
            + (f"{dpp:.0f} over stage 2 on gold alone" if dpp else "none over gold alone")
            + "; "
            + (f"{dpa:.0f} over the automatic rule" if dpa else "none over the automatic rule"),
        }
    )
    rows.append(
        {
            "figure": "Review value: benchmark wall time (CPU)",
            "value": f"{wall / 60:.1f} min",
            "goal": "≤ 45 min",
            "note": f"{n} seeds, reviewed curves {', '.join(sc['vs_automatic'])} + automatic "
            "+ gold labelling, "
            f"stage 2 at {'/'.join(pts)} ({result['options']['stage2_epochs']} epochs, "
            f"{result['options']['preset']} preset); {jobs} job(s); load average "
            f"{min(load):.1f}-{max(load):.1f} on 2 shared cores",
        }
    )
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default=str(ROOT / "data"))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=1, help="seeds run in parallel processes")
    ap.add_argument("--budget", type=int, default=2000)
    ap.add_argument("--every", type=int, default=250)
    ap.add_argument("--points", default=None, help="card counts for stage 2, e.g. 500,1000,2000")
    ap.add_argument("--stage2-epochs", type=int, default=4)
    ap.add_argument("--stage1-epochs", type=int, default=None)
    ap.add_argument(
        "--combos", default=None, help="order/action pairs, e.g. confidence/reject,rarest/correct"
    )
    ap.add_argument(
        "--started-at",
        type=float,
        default=None,
        help="resuming an interrupted run: count the wall time from this Unix time (its start)",
    )
    args = ap.parse_args()
    settings = Settings.load(data_dir=args.data_dir, project="demo")
    store = projects.open_store(settings)
    info = projects.project_info(store, name="demo")
    if info is None:
        print("no demo project: run `meiju demo` first", file=sys.stderr)
        return 1
    seeds = tuple(settings.seed + i for i in range(args.seeds))
    common = ["--budget", str(args.budget), "--every", str(args.every)]
    common += ["--stage2-epochs", str(args.stage2_epochs)]
    if args.points:
        common += ["--points", args.points]
    if args.stage1_epochs:
        common += ["--stage1-epochs", str(args.stage1_epochs)]
    if args.combos:
        common += ["--combos", args.combos]
    t0 = time.perf_counter() - (time.time() - args.started_at if args.started_at else 0.0)
    load = [os.getloadavg()[0]]
    if args.jobs > 1:
        procs = []
        for seed in seeds:
            cmd = [sys.executable, "-m", "meiju_core.cli", "--data-dir", args.data_dir]
            cmd += ["simulate-review", "--seeds", "1", *common]
            env = {**os.environ, "MEIJU_SEED": str(seed), "OMP_NUM_THREADS": "1"}
            procs.append(subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL))
            while sum(p.poll() is None for p in procs) >= args.jobs:
                time.sleep(5)
                load.append(os.getloadavg()[0])
        for p in procs:
            if p.wait() != 0:
                print(f"a seed run failed: {p.args}", file=sys.stderr)
                return 1
    opts = sim.ValueOptions(
        seeds=seeds,
        budget=args.budget,
        every=args.every,
        points=tuple(int(p) for p in args.points.split(",")) if args.points else None,
        stage1_epochs=args.stage1_epochs,
        stage2_epochs=args.stage2_epochs,
        combos=tuple(args.combos.split(",")) if args.combos else None,
    )

    def show(e: dict) -> None:
        load.append(os.getloadavg()[0])
        print(f"[{time.perf_counter() - t0:6.0f} s] {e.get('message', '')}", flush=True)

    result = sim.run_review_value(
        store, project_id=info["id"], data_dir=Path(args.data_dir), options=opts, progress=show
    )
    wall = time.perf_counter() - t0
    load.append(os.getloadavg()[0])
    text = sim.table(result)
    print(text)
    print(
        f"\nwall time {wall:.0f} s ({args.jobs} job(s)); load average {min(load):.1f}-{max(load):.1f}"
    )
    result["benchmark"] = {
        "wall_seconds": wall,
        "jobs": args.jobs,
        "load_average_min": min(load),
        "load_average_max": max(load),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    result["summary"] = summary_rows(result, wall, load, args.jobs)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "review_value.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    (RESULTS / "review_value.md").write_text(text + "\n")
    fig = sim.figure(result)
    fig.write_html(RESULTS / "review_value.html", include_plotlyjs="cdn")
    try:
        import kaleido  # noqa: F401

        fig.write_image(RESULTS / "review_value.png", width=1200, height=500)
    except Exception as e:  # kaleido missing or without a browser: the HTML is the figure
        print(f"no PNG ({type(e).__name__}); the HTML has the figure")
    return 0


if __name__ == "__main__":
    sys.exit(main())
