"""The demo project built from scratch, step by step: import, playable media, features, stage-1
training, predictions; then the demo model's weighted F1 per head and joint score on the demo
test split. Times each step of ``demo.build_demo`` as the product runs it.

Usage: ``python benchmarks/bench_demo.py``; writes ``benchmarks/results/demo.json``.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from db import queries as q  # noqa: E402
from db.models import ModelVersion  # noqa: E402
from meiju_core.io.cped import build_demo as import_demo  # noqa: E402
from meiju_core.services import demo, projects  # noqa: E402
from meiju_core.settings import Settings  # noqa: E402


def main() -> int:
    settings = Settings.load(data_dir=tempfile.mkdtemp(prefix="meiju-demo-"), database_url="")
    store = projects.open_store(settings)
    steps: dict[str, float] = {}

    def timed(name, fn, *args, **kwargs):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        steps[name] = time.perf_counter() - t0
        print(f"{name:28s} {steps[name]:7.1f} s", flush=True)
        return out

    t_all = time.perf_counter()
    timed("import (CPED + media)", import_demo, store, project_name="demo")
    summary = timed("whole demo build", demo.build_demo, store, settings)
    total = time.perf_counter() - t_all
    with store.read() as s:
        mv = s.get(ModelVersion, summary["model_version_id"])
        rnd = q.active_round(s, project_id=summary["project_id"])
        metrics, train_s = mv.metrics, mv.train_seconds
        sps = mv.config.get("samples_per_second")
        threshold = rnd.thresholds
    test, valid = metrics["test"], metrics["valid"]
    print(f"\nstage-1 training: {train_s:.1f} s ({sps:.0f} samples/s), preset {mv.preset}")
    for split, m in (("valid", valid), ("test", test)):
        print(
            f"{split:5s} emotion F1 {m['emotion_f1']:.4f}  intent F1 {m['intent_f1']:.4f}  "
            f"joint {m['joint']:.4f}  (n={m['n']})"
        )
    print(f"first round threshold: {threshold}")
    result = {
        "benchmark": "demo",
        "summary": [
            {
                "figure": "Demo build from scratch (import, media, features, stage 1, predictions)",
                "value": f"{total:.0f} s",
                "goal": "",
                "note": "`meiju demo`, 2 CPU cores",
            },
            {
                "figure": "Demo stage-1 training",
                "value": f"{train_s:.1f} s",
                "goal": "< 120 s on CPU",
                "note": f"preset {mv.preset}, {sps:.0f} samples/s",
            },
            {
                "figure": "Demo test: emotion F1 / intent F1 / joint",
                "value": f"{test['emotion_f1']:.4f} / {test['intent_f1']:.4f} / {test['joint']:.4f}",
                "goal": "",
                "note": f"weighted F1, n={test['n']}, builtin text features",
            },
        ],
        "steps_seconds": steps,
        "total_seconds": total,
        "train_seconds": train_s,
        "samples_per_second": sps,
        "preset": mv.preset,
        "metrics": {"valid": valid, "test": test},
        "round_thresholds": threshold,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_1min_at_end": os.getloadavg()[0],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        },
    }
    out = ROOT / "benchmarks" / "results" / "demo.json"
    out.write_text(json.dumps(result, indent=2, default=float), encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
