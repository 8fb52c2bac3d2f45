"""Baseline preset vs the paper model, stage 1 vs stage 2 with automatic pseudo-labels, on the demo
project (real CPED utterances), over several seeds; plus the precision of the accepted
pseudo-labels per class against the pool's withheld labels, and training throughput.

Every figure comes from the functions the product runs (``training.train``,
``rounds.open_round``, ``decisions.auto_pseudo_label``). Scores are on the demo's test split.

Stage 2 starts from each seed's stage-1 checkpoint and trains on gold + the pseudo-labels an
automatic round accepted (``--strategy``, default ``proportional``: the skewed demo gives the
majority classes no quota under ``balanced``; thresholds per head by the demo rule, or
``--threshold``).

Usage: ``python benchmarks/bench_model.py [--seeds 336 337 338] [--epochs N] [--threshold T]
[--strategy proportional|balanced] [--budget N] [--no-calibrate] [--name NAME]``
Writes ``benchmarks/results/model.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sqlalchemy import select

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from db.models import ModelVersion, PseudoLabel, Sample  # noqa: E402
from meiju_core.services import decisions, demo, extraction, projects, rounds, training  # noqa: E402
from meiju_core.settings import Settings  # noqa: E402


def _metrics(store, mv_id: int) -> dict:
    with store.read() as s:
        mv = s.get(ModelVersion, mv_id)
        m = mv.metrics["test"]
        return {
            "emotion_f1": m["emotion_f1"],
            "intent_f1": m["intent_f1"],
            "joint": m["joint"],
            "seconds": mv.train_seconds,
            "samples_per_second": mv.config.get("samples_per_second"),
        }


def _precision(store, round_id: int) -> dict:
    """Accepted pseudo-labels vs the withheld CPED labels, per head and class."""
    with store.read() as s:
        rows = s.execute(
            select(PseudoLabel.head, PseudoLabel.label, Sample.withheld)
            .join(Sample, Sample.id == PseudoLabel.sample_id)
            .where(PseudoLabel.round_id == round_id, PseudoLabel.state == "accepted")
        ).all()
    out: dict = {}
    for head, label, withheld in rows:
        truth = (withheld or {}).get(head)
        cell = out.setdefault(head, {}).setdefault(
            label, {"accepted": 0, "checked": 0, "correct": 0}
        )
        cell["accepted"] += 1
        if truth:
            cell["checked"] += 1
            cell["correct"] += int(truth == label)
    for per_class in out.values():
        for cell in per_class.values():
            cell["precision"] = cell["correct"] / cell["checked"] if cell["checked"] else None
    return out


def run(
    seeds: list[int],
    epochs: int | None,
    threshold: float | None,
    budget: int,
    strategy: str,
    calibrate: bool = True,
) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="meiju-bench-"))
    settings = Settings.load(
        data_dir=str(tmp), database_url="", project="demo", calibrate=calibrate
    )
    store = projects.open_store(settings)
    from meiju_core.io.cped import build_demo as import_demo

    import_demo(store, project_name="demo", seed=settings.seed)
    pid = projects.project_info(store, name="demo")["id"]
    demo.make_media_playable(store, settings, project_id=pid)
    extraction.extract_features(store, settings, project_id=pid)
    runs = []
    for seed in seeds:
        s_settings = settings.with_(seed=seed)
        row: dict = {"seed": seed}
        base = training.train(
            store, s_settings, project_id=pid, stage=1, preset="baseline", epochs=epochs
        )
        row["baseline"] = _metrics(store, base)
        print(f"seed {seed} baseline stage 1: {row['baseline']}", flush=True)
        paper = training.train(
            store, s_settings, project_id=pid, stage=1, preset="paper", epochs=epochs
        )
        row["paper_stage1"] = _metrics(store, paper)
        print(f"seed {seed} paper stage 1:    {row['paper_stage1']}", flush=True)
        t = threshold if threshold is not None else demo.demo_threshold(store, paper)
        rid = rounds.open_round(
            store,
            s_settings,
            project_id=pid,
            model_version_id=paper,
            thresholds=t,
            strategy=strategy,
            budget=budget,
        )
        accepted = decisions.auto_pseudo_label(store, round_id=rid)
        row["round"] = {"threshold": t, "accepted": accepted, "precision": _precision(store, rid)}
        stage2 = training.train(
            store, s_settings, project_id=pid, stage=2, preset="paper", round_id=rid, epochs=epochs
        )
        row["paper_stage2"] = _metrics(store, stage2)
        print(
            f"seed {seed} paper stage 2:    {row['paper_stage2']} "
            f"(thresholds {t}, accepted {accepted})",
            flush=True,
        )
        runs.append(row)
    return {"runs": runs, "data_dir": str(tmp)}


def _thresholds(runs: list[dict]) -> str:
    """The rounds' thresholds, e.g. ``emotion 0.5, intent 0.9`` (``0.5-0.6`` where seeds differ)."""
    per: dict[str, set[float]] = {}
    for r in runs:
        t = r["round"]["threshold"]
        for head, v in t.items() if isinstance(t, dict) else [("all", t)]:
            per.setdefault(head, set()).add(float(v))
    return ", ".join(
        f"{h} {min(v):g}" + (f"-{max(v):g}" if len(v) > 1 else "") for h, v in per.items()
    )


def _accepted(runs: list[dict]) -> str:
    """Accepted pseudo-labels per seed, e.g. ``E 412 / I 1,980; ...``."""
    return "; ".join(
        " / ".join(f"{h[0].upper()} {n:,}" for h, n in r["round"]["accepted"].items()) for r in runs
    )


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(result: dict, args: argparse.Namespace) -> dict:
    runs = result["runs"]
    table = {}
    for key, label in (
        ("baseline", "baseline preset, stage 1"),
        ("paper_stage1", "paper model, stage 1"),
        ("paper_stage2", "paper model, stage 2"),
    ):
        table[label] = {
            m: _mean_sd([r[key][m] for r in runs])
            for m in ("emotion_f1", "intent_f1", "joint", "samples_per_second")
        }
    print(
        f"\n{'test split, mean ± sd over ' + str(len(runs)) + ' seeds':44s} "
        f"{'emotion F1':>16s} {'intent F1':>16s} {'joint':>16s} {'samples/s':>12s}"
    )
    for label, m in table.items():
        print(
            f"{label:44s} "
            + " ".join(
                f"{m[k][0]:8.4f} ± {m[k][1]:.4f}" for k in ("emotion_f1", "intent_f1", "joint")
            )
            + f" {m['samples_per_second'][0]:12.0f}"
        )
    precision = {}
    for head in ("emotion", "intent"):
        merged: dict = {}
        for r in runs:
            for label, cell in r["round"]["precision"].get(head, {}).items():
                m = merged.setdefault(label, {"accepted": 0, "checked": 0, "correct": 0})
                for k in m:
                    m[k] += cell[k]
        precision[head] = {
            c: {**v, "precision": (v["correct"] / v["checked"] if v["checked"] else None)}
            for c, v in merged.items()
        }
        print(f"\npseudo-label precision vs withheld labels, {head} (all seeds):")
        for c, v in sorted(precision[head].items()):
            p = "n/a" if v["precision"] is None else f"{v['precision']:.3f}"
            print(
                f"  {c:14s} accepted {v['accepted']:5d}  checked {v['checked']:5d}  precision {p}"
            )

    def fmt(label: str, key: str) -> str:
        mean, sd = table[label][key]
        return f"{mean:.4f} ± {sd:.4f}"

    b, p1, p2 = "baseline preset, stage 1", "paper model, stage 1", "paper model, stage 2"
    sched = f"{args.epochs} epochs" if args.epochs else "preset schedules"
    summary = [
        {
            "figure": "Joint score, baseline preset (test, demo)",
            "value": fmt(b, "joint"),
            "goal": "",
            "note": f"{len(runs)} seeds, {sched}, builtin features, CPU",
        },
        {
            "figure": "Joint score, paper model stage 1",
            "value": fmt(p1, "joint"),
            "goal": "> baseline by more than the spread",
            "note": "",
        },
        {
            "figure": "Joint score, paper model stage 2 (auto pseudo-labels)",
            "value": fmt(p2, "joint"),
            "goal": "> stage 1 by more than the spread",
            "note": f"{'calibrated' if args.calibrate else 'raw'} confidences, thresholds "
            f"{_thresholds(runs)}, {args.strategy} quotas, budget "
            f"{args.budget}; accepted per seed {_accepted(runs)}",
        },
        {
            "figure": "Training throughput, paper model (CPU)",
            "value": f"{table[p1]['samples_per_second'][0]:.0f} samples/s",
            "goal": "",
            "note": "2 cores",
        },
    ]
    return {
        "benchmark": "model",
        "summary": summary,
        "table": {k: {m: list(v) for m, v in t.items()} for k, t in table.items()},
        "pseudo_label_precision": precision,
        "runs": runs,
        "config": {
            "seeds": args.seeds,
            "epochs": args.epochs,
            "threshold": args.threshold,
            "budget": args.budget,
            "strategy": args.strategy,
            "calibrate": args.calibrate,
        },
        "machine": {
            "cpus": __import__("os").cpu_count(),
            "load_average_1min_at_end": __import__("os").getloadavg()[0],
            "platform": platform.platform(),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        },
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[336, 337, 338])
    ap.add_argument("--epochs", type=int, default=None, help="shorten every schedule to N epochs")
    ap.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="pseudo-label threshold (default: 0.99 if reached, else the demo rule)",
    )
    ap.add_argument("--budget", type=int, default=2000)
    ap.add_argument("--strategy", choices=["proportional", "balanced"], default="proportional")
    ap.add_argument(
        "--calibrate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="temperature-scale each head on valid before thresholds apply (the default)",
    )
    ap.add_argument("--name", default="model", help="results file: benchmarks/results/NAME.json")
    args = ap.parse_args()
    t0 = time.perf_counter()
    load_at_start = __import__("os").getloadavg()[0]
    result = run(
        args.seeds, args.epochs, args.threshold, args.budget, args.strategy, args.calibrate
    )
    out = summarise(result, args)
    out["seconds"] = time.perf_counter() - t0
    out["machine"]["load_average_1min_at_start"] = load_at_start
    path = ROOT / "benchmarks" / "results" / f"{args.name}.json"
    path.write_text(json.dumps(out, indent=2, default=float), encoding="utf-8")
    print(f"\nwrote {path} in {out['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    raise SystemExit(main())
