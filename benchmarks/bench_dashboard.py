"""How fast the Dashboard is on a big store, and how long the app takes to come up.

Builds a fixture store (``db.fixtures.build_fixture``) with 100,000 pool samples and the MEIJU
Track 1 Mandarin split sizes (2,294 train, 324 valid, 643 test), their predictions, a second
model version to compare, and a few thousand review decisions (three annotators, about four
seconds a card, accept / reject / skip with their pseudo-labels). Then it times:

1. each ``db.analytics`` function the dashboard calls (median of ``--runs``);
2. a full ``AppTest`` render of the dashboard, entry point and sidebar included, per tab: cold
   (``st.cache_data`` cleared first) and warm (median of ``--runs``);
3. server start to first page: ``streamlit run app.py`` headless, from process start until the
   login form is on screen in headless Chromium (median of ``--starts``);
4. in the same browser, signed in: a click on the Dashboard link until its charts are drawn.

Goals: dashboard render under 1 s, server start to login page under 5 s. Prints a table, writes
``benchmarks/results/dashboard.json``; then run ``benchmarks/update_readme.py``.

Usage: ``python benchmarks/bench_dashboard.py [--pool 100000] [--cards 3000] [--runs 7]``
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import insert, select  # noqa: E402

from db import Store  # noqa: E402
from db import analytics as A  # noqa: E402
from db.fixtures import build_fixture  # noqa: E402
from db.models import (  # noqa: E402
    Decision,
    ModelVersion,
    Prediction,
    PseudoLabel,
    ReviewRound,
    User,
)
from meiju_core.services import training  # noqa: E402
from meiju_core.services import users as users_service  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
IDLE = "[data-testid='stApp'][data-test-script-state='notRunning']"
RESULT = ROOT / "benchmarks" / "results" / "dashboard.json"
TABS = ["Model", "Compare", "Pseudo-labels", "Annotators", "Co-occurrence"]


# --------------------------------------------------------------------------- the store


def add_decisions(store: Store, ids, *, cards: int, seed: int = 0) -> None:
    """``cards`` review decisions on the first pool samples, as the review page writes them."""
    rng = np.random.default_rng(seed)
    with store.write() as s:
        extra = User(name="ann2", role="annotator")
        s.add(extra)
        s.flush()
        users = [ids.admin_id, ids.annotator_id, extra.id]
        sample_ids = ids.pool_ids[:cards]
        preds = {
            (sid, head): (label, conf)
            for sid, head, label, conf in s.execute(
                select(
                    Prediction.sample_id, Prediction.head, Prediction.label, Prediction.confidence
                ).where(
                    Prediction.model_version_id == ids.model_version_id,
                    Prediction.sample_id.in_(sample_ids),
                )
            )
        }
        rnd = s.get(ReviewRound, ids.round_id)
        rnd.quotas = {h: dict.fromkeys(q, cards) for h, q in rnd.quotas.items()}
        clock = {u: datetime(2026, 11, 20, 9, tzinfo=UTC) for u in users}
        rows = []
        for k, sid in enumerate(sample_ids):
            user = users[k % 3]
            pause = 1800 if rng.random() < 0.01 else float(rng.gamma(4.0, 1.0))  # rare breaks
            clock[user] += timedelta(seconds=pause)
            action = rng.choice(["accept", "reject", "skip"], p=[0.7, 0.25, 0.05])
            base = {
                "round_id": ids.round_id,
                "sample_id": sid,
                "action": str(action),
                "user_id": user,
                "ms_spent": int(rng.gamma(4.0, 900.0)),
                "created_at": clock[user],
            }
            if action == "skip":
                rows.append({**base, "head": None, "label": None})
            else:
                for head in ("emotion", "intent"):
                    rows.append({**base, "head": head, "label": preds[(sid, head)][0]})
        s.execute(insert(Decision), rows)
        pseudo = []
        for d in s.execute(select(Decision).where(Decision.round_id == ids.round_id)).scalars():
            if d.action == "skip":
                pseudo.append((d, "*", "", "skipped", None))
            else:
                state = "accepted" if d.action == "accept" else "rejected"
                pseudo.append((d, d.head, d.label, state, preds[(d.sample_id, d.head)][1]))
        s.execute(
            insert(PseudoLabel),
            [
                {
                    "round_id": ids.round_id,
                    "sample_id": d.sample_id,
                    "head": head,
                    "label": label,
                    "state": state,
                    "confidence": conf,
                    "decision_id": d.id,
                    "model_version_id": ids.model_version_id,
                }
                for d, head, label, state, conf in pseudo
            ],
        )


def add_second_version(store: Store, ids) -> int:
    """A newer model version whose per-class F1 moves by up to +-0.1."""
    rng = np.random.default_rng(1)
    with store.write() as s:
        metrics = copy.deepcopy(s.get(ModelVersion, ids.model_version_id).metrics)
        for split in metrics.values():
            for rows in split["per_class"].values():
                for r in rows:
                    r["f1"] = float(np.clip(r["f1"] + rng.uniform(-0.1, 0.1), 0, 1))
            split["joint"] = float(split["joint"]) + 0.02
        mv = ModelVersion(project_id=ids.project_id, name="stage2", stage=2, metrics=metrics)
        s.add(mv)
        s.flush()
        return mv.id


def build(data_dir: Path, pool: int, cards: int):
    url = f"sqlite:///{data_dir / 'meiju.db'}"
    store = Store(url)
    store.upgrade()
    t = time.perf_counter()
    ids = build_fixture(
        store,
        n_pool=pool,
        n_train=2294,
        n_valid=324,
        n_test=643,
        threshold=0.5,
        password_hash=users_service.hash_password("pw"),
    )
    training.evaluate(store, model_version_id=ids.model_version_id)
    new_id = add_second_version(store, ids)
    add_decisions(store, ids, cards=cards)
    print(f"store: {pool} pool samples, {cards} cards in {time.perf_counter() - t:.1f} s")
    return store, url, ids, new_id


# --------------------------------------------------------------------------- timing


def median_ms(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def time_analytics(store: Store, ids, new_id: int, runs: int) -> dict[str, float]:
    def read(fn, **kw):
        def call():
            with store.read() as s:
                fn(s, **kw)

        return call

    calls = {
        "pseudo_label_classes": read(A.pseudo_label_classes, round_id=ids.round_id),
        "acceptance_over_time (hour)": read(A.acceptance_over_time, round_id=ids.round_id),
        "annotator_throughput (round)": read(A.annotator_throughput, round_id=ids.round_id),
        "annotator_throughput (project)": read(A.annotator_throughput, project_id=ids.project_id),
        "cooccurrence_gold": read(A.cooccurrence_gold, project_id=ids.project_id),
        "cooccurrence_pseudo": read(A.cooccurrence_pseudo, round_id=ids.round_id),
        "f1_change": read(A.f1_change, base_id=ids.model_version_id, new_id=new_id),
        "confusion_cell_samples": read(
            A.confusion_cell_samples,
            model_version_id=ids.model_version_id,
            head="emotion",
            gold="neutral",
            pred="neutral",
            split="valid",
        ),
        "rounds": read(A.rounds, project_id=ids.project_id),
    }
    return {name: median_ms(fn, runs) for name, fn in calls.items()}


def time_apptest(url: str, data_dir: Path, ids, runs: int) -> dict[str, dict[str, float]]:
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    os.environ.update(MEIJU_DATA_DIR=str(data_dir), MEIJU_DATABASE_URL=url, MEIJU_PROJECT="fixture")
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.session_state["user"] = {"id": ids.admin_id, "name": "admin", "role": "admin"}
    at.run()
    at.switch_page("pages/dashboard.py").run()
    assert not at.exception, at.exception
    out = {}
    for tab in TABS:
        at.session_state["db_tab"] = tab
        st.cache_data.clear()
        t = time.perf_counter()
        at.run()
        cold = (time.perf_counter() - t) * 1000
        assert not at.exception, at.exception
        warm = median_ms(at.run, runs)
        out[tab] = {"cold": cold, "warm": warm}
        print(f"  AppTest {tab:<14} cold {cold:7.1f} ms   warm {warm:7.1f} ms")
    t = time.perf_counter()  # first visit: punctuation flags of every transcript are computed
    at.switch_page("pages/transcripts.py").run()
    cold = (time.perf_counter() - t) * 1000
    assert not at.exception, at.exception
    out["Transcripts page"] = {"cold": cold, "warm": median_ms(at.run, runs)}
    print(
        f"  AppTest Transcripts    cold {cold:7.1f} ms   warm {out['Transcripts page']['warm']:7.1f} ms"
    )
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data_dir: Path, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = (data_dir / "server.log").open("a")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1",
         "--server.fileWatcherType", "none", "--global.developmentMode", "false",
         "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    return proc, f"http://127.0.0.1:{port}"


def wait_health(proc: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(log.read_text())
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError("streamlit did not start in 120 s")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=20)


def time_browser(data_dir: Path, url: str, starts: int, runs: int) -> dict[str, list[float]]:
    """Server start to login form, ``starts`` times; then Dashboard link to charts, ``runs``."""
    from playwright.sync_api import sync_playwright

    env = {"MEIJU_DATA_DIR": str(data_dir), "MEIJU_DATABASE_URL": url, "MEIJU_PROJECT": "fixture"}
    out: dict[str, list[float]] = {"start_to_login_s": [], "health_s": [], "dashboard_click_ms": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for k in range(starts):
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            t0 = time.perf_counter()
            proc, app = start_server(data_dir, env)
            try:
                wait_health(proc, app, data_dir / "server.log")
                out["health_s"].append(time.perf_counter() - t0)
                page.goto(app + "/")
                page.get_by_role("button", name="Sign in").wait_for(timeout=60_000)
                out["start_to_login_s"].append(time.perf_counter() - t0)
                print(f"  start {k + 1}: login form after {out['start_to_login_s'][-1]:.2f} s")
                if k == starts - 1:  # signed in, time the dashboard (caches warm after the first)
                    page.get_by_label("Name").fill("admin")
                    page.get_by_label("Password", exact=True).fill("pw")
                    page.get_by_role("button", name="Sign in").click()
                    page.get_by_role("link", name="Dashboard").wait_for(timeout=120_000)
                    page.wait_for_selector(IDLE, timeout=120_000)
                    for _ in range(runs + 1):
                        page.get_by_role("link", name="Training").click()
                        page.get_by_role("heading", name="Training").first.wait_for()
                        page.wait_for_selector(IDLE, timeout=60_000)
                        t = time.perf_counter()
                        page.get_by_role("link", name="Dashboard").click()
                        page.locator(".js-plotly-plot .nsewdrag").first.wait_for(timeout=60_000)
                        page.wait_for_selector(IDLE, timeout=60_000)
                        out["dashboard_click_ms"].append((time.perf_counter() - t) * 1000)
                    out["dashboard_click_ms"] = out["dashboard_click_ms"][1:]  # first: cold
            finally:
                page.close()
                stop(proc)
        browser.close()
    return out


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", type=int, default=100_000, help="pool samples in the fixture")
    ap.add_argument("--cards", type=int, default=3000, help="review decisions (cards)")
    ap.add_argument("--runs", type=int, default=7, help="timed repeats per figure")
    ap.add_argument("--starts", type=int, default=3, help="server starts timed")
    args = ap.parse_args(argv)
    load_before = os.getloadavg()[0]
    data_dir = Path(tempfile.mkdtemp(prefix="meiju-bench-dash-"))
    store, url, ids, new_id = build(data_dir, args.pool, args.cards)
    functions = time_analytics(store, ids, new_id, args.runs)
    for name, ms in functions.items():
        print(f"  {name:<32} {ms:8.1f} ms")
    store.dispose()
    apptest = time_apptest(url, data_dir, ids, args.runs)
    browser = time_browser(data_dir, url, args.starts, args.runs)
    load_after = os.getloadavg()[0]

    import streamlit

    model = apptest["Model"]
    tabs = {k: v for k, v in apptest.items() if k in TABS}
    worst_warm = max(tabs.items(), key=lambda kv: kv[1]["warm"])
    worst_cold = max(tabs.items(), key=lambda kv: kv[1]["cold"])
    transcripts = apptest["Transcripts page"]
    start = statistics.median(browser["start_to_login_s"])
    click = statistics.median(browser["dashboard_click_ms"])
    slowest = max(functions.items(), key=lambda kv: kv[1])
    note = f"{args.pool:,} pool samples, {args.cards:,} cards; AppTest incl. app.py + sidebar"
    out = {
        "benchmark": "dashboard",
        "summary": [
            {
                "figure": "Dashboard render, Model tab (warm / cold cache)",
                "value": f"{model['warm']:.0f} / {model['cold']:.0f} ms",
                "goal": "< 1 s",
                "note": f"{note}; median of {args.runs}",
            },
            {
                "figure": "Dashboard render, slowest tab (warm / cold)",
                "value": f"{worst_warm[1]['warm']:.0f} ms ({worst_warm[0]}) / "
                f"{worst_cold[1]['cold']:.0f} ms ({worst_cold[0]})",
                "goal": "< 1 s",
                "note": "tabs are lazy: only the open one runs",
            },
            {
                "figure": "Dashboard data functions (slowest)",
                "value": f"{slowest[1]:.0f} ms ({slowest[0]})",
                "goal": "",
                "note": f"sum of all {len(functions)}: {sum(functions.values()):.0f} ms",
            },
            {
                "figure": "Server start to login page in Chromium",
                "value": f"{start:.2f} s",
                "goal": "< 5 s",
                "note": f"`streamlit run app.py` headless, median of {args.starts}; "
                f"load average {load_before:.1f} on {os.cpu_count()} cores (shared machine)",
            },
            {
                "figure": "Transcripts page render (warm / first visit)",
                "value": f"{transcripts['warm']:.0f} / {transcripts['cold']:.0f} ms",
                "goal": "",
                "note": f"first visit checks the punctuation of all {args.pool + 3261:,} transcripts",
            },
            {
                "figure": "Dashboard link click to charts drawn (Chromium)",
                "value": f"{click:.0f} ms",
                "goal": "",
                "note": f"signed in, warm cache, median of {args.runs}",
            },
        ],
        "analytics_ms": functions,
        "apptest_ms": apptest,
        "browser": browser,
        "config": {
            "pool": args.pool,
            "cards": args.cards,
            "runs": args.runs,
            "starts": args.starts,
            "splits": {"train": 2294, "valid": 324, "test": 643},
            "streamlit": streamlit.__version__,
        },
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_1min": {"before": load_before, "after": load_after},
        },
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    for row in out["summary"]:
        print(f"{row['figure']:<52} {row['value']:<30} goal {row['goal']}")
    print(f"load average (1 min) before / after: {load_before:.2f} / {load_after:.2f}")
    print(f"wrote {RESULT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
