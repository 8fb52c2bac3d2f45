"""Stage-2 (fine-tune) schedule of the paper preset, chosen on the demo's *valid* split.

The paper fine-tunes its stage-1 model on gold + pseudo-labels but gives no learning rate or epochs.
This script trains the paper system (1textcnn, fusion heads 2/2) on gold for one seed at the preset
stage-1 schedule, takes the pool samples the paper's rule accepts (raw confidence >= 0.99 on both
heads, balanced quotas), and fine-tunes every stage-1 weight under a grid of schedules. The schedule
with the best validation joint score becomes ``meiju_core.ml.train.PAPER_STAGE2``; test scores are
printed beside it but never used for the choice.

Usage: ``python benchmarks/bench_stage2_schedule.py [--data-dir data] [--seed 336]``
(needs the demo project: ``meiju demo``). Writes ``benchmarks/results/stage2_schedule.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from meiju_core.ml import train as tr  # noqa: E402
from meiju_core.services import projects, training  # noqa: E402
from meiju_core.services import table1 as t1  # noqa: E402
from meiju_core.settings import Settings  # noqa: E402

GRID = [  # (flat epochs, decay epochs, lr)
    (5, 5, 1e-4),
    (5, 15, 1e-4),
    (5, 15, 2e-4),
    (10, 30, 1e-4),
    (5, 15, 5e-5),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default=str(ROOT / "data"))
    ap.add_argument("--seed", type=int, default=336)
    args = ap.parse_args()
    settings = Settings.load(data_dir=args.data_dir, project="demo")
    store = projects.open_store(settings)
    info = projects.project_info(store, name="demo")
    if info is None:
        print("no demo project: run `meiju demo` first", file=sys.stderr)
        return 1
    opts = t1.Table1Options(seeds=(args.seed,))
    data = t1._load(store, info["id"], opts.feature_set)
    cache = Path(args.data_dir) / "table1" / f"project{info['id']}"
    cache.mkdir(parents=True, exist_ok=True)
    runner = t1._Runner(data, opts, cache)
    system = next(s for s in t1.SYSTEMS if s.key == "pseudo_1textcnn")
    stage1 = runner.run(system, 1, args.seed, data.train)
    train, summary = runner.pseudo_labelled(stage1, "raw")
    print(f"stage 1 valid {stage1['valid']}  pseudo-labels {summary}", flush=True)
    rows = []
    for flat, decay, lr in GRID:
        mcfg, tcfg = training.presets(
            "paper",
            stage=2,
            input_dims=data.dims,
            num_classes=runner.classes,
            seed=args.seed,
            model_overrides=system.model,
            train_overrides={"threads": 1, "epochs_flat": flat, "epochs_decay": decay, "lr": lr},
        )
        t0 = time.perf_counter()
        out = Path(args.data_dir) / "table1" / "schedule" / f"{flat}-{decay}-{lr}"
        result = tr.fit(
            train,
            data.valid,
            model_config=mcfg,
            train_config=tcfg,
            stage=2,
            out_dir=out,
            init_from=stage1["checkpoint"],
            schema=data.schema,
        )
        test = tr.predict(result.best_joint_path, data.test, device="cpu")
        row = {
            "epochs_flat": flat,
            "epochs_decay": decay,
            "lr": lr,
            "valid_joint": result.metrics["joint"],
            "test": runner._scores(data.test, test),
            "best_epoch": result.best_epochs["joint"],
            "seconds": round(time.perf_counter() - t0, 1),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    best = max(rows, key=lambda r: r["valid_joint"])
    print("\n| flat | decay | lr | valid joint | test joint | best epoch | s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        mark = " (chosen)" if r is best else ""
        print(
            f"| {r['epochs_flat']} | {r['epochs_decay']} | {r['lr']:g} | "
            f"{r['valid_joint']:.4f}{mark} | {r['test']['joint']:.4f} | {r['best_epoch']} | "
            f"{r['seconds']} |"
        )
    result = {
        "stage1_valid": stage1["valid"],
        "pseudo_labels": summary,
        "rows": rows,
        "chosen": {k: best[k] for k in ("epochs_flat", "epochs_decay", "lr")},
        "machine": platform.machine(),
        "summary": [
            {
                "figure": "Paper preset stage-2 schedule (chosen on valid)",
                "value": f"{best['epochs_flat']} + {best['epochs_decay']} epochs at lr "
                f"{best['lr']:g}: valid joint {best['valid_joint']:.4f}",
                "goal": "",
                "note": f"demo, seed {args.seed}, grid of {len(rows)}; pseudo-labels accepted "
                f"at 0.99 joint: {summary.get('accepted', 0)}",
            }
        ],
    }
    path = ROOT / "benchmarks" / "results" / "stage2_schedule.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
