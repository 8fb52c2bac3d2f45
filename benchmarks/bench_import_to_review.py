"""Time from a browser import of 1,000 utterances to their cards in Review, on the demo project.

Builds the demo (``meiju demo --epochs 1``: the number of epochs does not change the import) in a
temporary folder, opens a round where every class takes cards, starts ``meiju worker`` and the
app, then, in headless Debian Chromium, an admin uploads a CSV of ``--n`` new pool utterances
(real CPED transcripts under new ids) on the Data page and presses Import. Timed on the
benchmark's clock:

- ``upload -> import done``: from the Import click to the page saying how many new cards the
  Review queue got (the one job stores the rows, extracts their features and predicts them);
- ``import done -> first card``: from that message to Review, opened from the message's link on
  the imported utterances, showing one of their cards.

Prints a table and writes ``benchmarks/results/import_to_review.json``.
Usage: ``python benchmarks/bench_import_to_review.py [--n 1000]``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "browser"))

from _server import CHROMIUM, CHROMIUM_ARGS, start_server, stop_server  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from db import Store  # noqa: E402
from db import queries as q  # noqa: E402
from db.models import Prediction, Sample  # noqa: E402
from meiju_core.services import projects, rounds  # noqa: E402
from meiju_core.settings import Settings  # noqa: E402

IDLE = "[data-testid='stApp'][data-test-script-state='notRunning']"
RESULT = ROOT / "benchmarks" / "results" / "import_to_review.json"


def transcripts(n: int) -> list[str]:
    """``n`` real CPED transcripts (repeated if the file has fewer)."""
    with (ROOT / "demo" / "cped" / "valid_split.csv").open(encoding="utf-8-sig") as f:
        texts = [row["Utterance"] for row in csv.DictReader(f) if row["Utterance"].strip()]
    return [texts[i % len(texts)] for i in range(n)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="utterances in the imported CSV")
    args = ap.parse_args(argv)
    from playwright.sync_api import sync_playwright

    load_before = os.getloadavg()[0]
    data_dir = Path(tempfile.mkdtemp(prefix="meiju-import-bench-"))
    env = {"MEIJU_DATA_DIR": str(data_dir), "MEIJU_PROJECT": "demo"}
    full_env = {**os.environ, **env}
    full_env.pop("MEIJU_DATABASE_URL", None)
    t = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "meiju_core.cli", "demo", "--epochs", "1", "--password", "pw"],
        cwd=ROOT, env=full_env, check=True, capture_output=True,
    )  # fmt: skip
    print(f"demo built in {time.perf_counter() - t:.0f} s", flush=True)
    settings = Settings.load(data_dir=str(data_dir), database_url="", project="demo")
    store = Store(settings.database_url)
    info = projects.project_info(store, name="demo")
    with store.read() as s:
        mv = q.current_model(s, project_id=info["id"])
    rounds.open_round(
        store, settings, project_id=info["id"], model_version_id=mv.id, thresholds=0.0,
        strategy="proportional", budget=100_000,
    )  # fmt: skip
    csv_path = data_dir / "new_utterances.csv"
    rows = [(f"imp_{i:05d}", text) for i, text in enumerate(transcripts(args.n))]
    with csv_path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["utt_id", "text", "split"])
        w.writerows([(u, text, "pool") for u, text in rows])
    worker_log = (data_dir / "worker.log").open("w", encoding="utf-8")
    worker = subprocess.Popen(
        [sys.executable, "-m", "meiju_core.cli", "worker"],
        cwd=ROOT, env=full_env, stdout=worker_log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    proc, url, _log = start_server(data_dir, {**env, "MEIJU_DATABASE_URL": ""})
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            page.wait_for_selector(IDLE, timeout=60_000)
            page.get_by_label("Name").fill("admin")
            page.get_by_label("Password", exact=True).fill("pw")
            page.get_by_role("button", name="Sign in").click()
            page.get_by_role("link", name="Data").first.wait_for(timeout=60_000)
            page.get_by_role("link", name="Data").first.click()
            page.get_by_role("heading", name="Data").first.wait_for()
            page.wait_for_selector(IDLE)
            page.locator(".st-key-dt_csv input[type='file']").set_input_files(str(csv_path))
            page.wait_for_selector(IDLE)
            t0 = time.perf_counter()
            page.locator(".st-key-dt_import_csv button").click()
            message = page.get_by_text("new cards in the Review queue").first
            message.wait_for(timeout=1_800_000)
            t1 = time.perf_counter()
            shown = message.inner_text()
            link = page.get_by_role("link", name="Review the new cards")
            if link.count():
                link.first.click()
            else:  # no link on the page: open Review on the imported utterances by address
                with store.read() as s:
                    ids = s.scalars(select(Sample.id).where(Sample.utt_id.like("imp_%"))).all()
                page.goto(f"{url}?samples={','.join(map(str, sorted(ids)))}")
            page.wait_for_function(
                "() => [...document.querySelectorAll('.meiju-transcript')]"
                ".some(e => (e.dataset.utt || '').startsWith('imp_'))",
                timeout=300_000,
            )
            t2 = time.perf_counter()
            shots = ROOT / "tests" / "artifacts"
            shots.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shots / "import_1000_review.png"))
            browser.close()
    finally:
        stop_server(proc)
        stop_server(worker)
        worker_log.close()
    with store.read() as s:
        n_predicted = s.scalar(
            select(func.count(func.distinct(Prediction.sample_id)))
            .join(Sample, Sample.id == Prediction.sample_id)
            .where(Sample.utt_id.like("imp_%"))
        )
    store.dispose()
    load_after = os.getloadavg()[0]
    import_s, review_s = t1 - t0, t2 - t1
    print(f"\n{'step':<34} seconds")
    print(f"{'upload -> import done':<34} {import_s:7.1f}")
    print(f"{'import done -> first card':<34} {review_s:7.1f}")
    print(f"{'total':<34} {import_s + review_s:7.1f}")
    print(f"page said: {shown!r}; {n_predicted} of {args.n} utterances predicted")
    print(f"load average (1 min) before / after: {load_before:.2f} / {load_after:.2f}")
    note = (
        f"{args.n:,} CPED transcripts as new pool utterances, builtin features, headless "
        f"Chromium; load average {load_before:.1f} → {load_after:.1f} on {os.cpu_count()} cores"
    )
    out = {
        "benchmark": "import_to_review",
        "summary": [
            {
                "figure": f"Browser import of {args.n:,} utterances to their cards in Review",
                "value": f"{import_s + review_s:.0f} s (import job {import_s:.0f} s, "
                f"Review {review_s:.1f} s)",
                "goal": "",
                "note": note,
            }
        ],
        "seconds": {"import": import_s, "to_first_card": review_s},
        "predicted": n_predicted,
        "page_message": shown,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_1min": {"before": load_before, "after": load_after},
        },
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {RESULT.relative_to(ROOT)}")
    return 0 if n_predicted == args.n else 1


if __name__ == "__main__":
    raise SystemExit(main())
