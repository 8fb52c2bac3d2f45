"""Keypress-to-next-card latency of the Review page, measured in a real browser.

Starts ``streamlit run app.py`` on a fixture store (100,000 pool samples by default), signs in with
headless Debian Chromium (Playwright, ``/usr/bin/chromium``), then presses the accept key ``a``
N times. Each press is timed in the page itself, on the page's clock (``performance.now()``):

- ``keydown -> next card``: from the key event to the DOM showing another utterance id (a
  MutationObserver on the card), and to the next animation frame after it (painted);
- ``keydown -> run complete``: until the last websocket message of the run arrived (the script
  finished message; the card fragment is done, history included).

For comparison, a bare rerun of the same page (Streamlit's own ``r`` key: the whole page script,
no decision, same card) is timed the same way, keydown to run complete. Five warm-up presses of
each come first. Prints a table (median, p95) and writes ``benchmarks/results/review_latency.json``.

Usage: ``python benchmarks/bench_review_latency.py [--pool 100000] [--n 40]``. Goal: median
keypress-to-next-card under 150 ms and within 1.5x the bare rerun's median.
"""

from __future__ import annotations

import argparse
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from db import Store  # noqa: E402
from db.fixtures import build_fixture  # noqa: E402
from meiju_core.services import demo, projects, rounds, users  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
IDLE = "[data-testid='stApp'][data-test-script-state='notRunning']"
RESULT = ROOT / "benchmarks" / "results" / "review_latency.json"

# Counts the app's websocket messages; installed before the page loads.
WS_HOOK = """
(() => {
  const Orig = window.WebSocket;
  window.__ws = { n: 0, last: null };
  window.WebSocket = function (...args) {
    const ws = new Orig(...args);
    ws.addEventListener("message", () => { window.__ws.n += 1; window.__ws.last = performance.now(); });
    return ws;
  };
  window.WebSocket.prototype = Orig.prototype;
  Object.assign(window.WebSocket, Orig);
})();
"""

# In-page probe: stamps the keydown and the card change (DOM, then the next frame).
PROBE = """
() => {
  const b = (window.__bench = { key: null, t0: null, dom: null, paint: null, prev: null, n0: 0 });
  const utt = () => document.querySelector(".meiju-transcript")?.dataset.utt ?? null;
  window.addEventListener("keydown", (e) => {
    b.key = e.key; b.t0 = performance.now(); b.prev = utt(); b.n0 = window.__ws.n;
    b.dom = b.paint = null;
  }, true);
  new MutationObserver(() => {
    if (b.t0 === null || b.dom !== null) return;
    const now = utt();
    if (now !== null && now !== b.prev) {
      b.dom = performance.now();
      requestAnimationFrame(() => { b.paint = performance.now(); });
    }
  }).observe(document.body, { subtree: true, childList: true, attributes: true,
                              attributeFilter: ["data-utt"] });
}
"""

# The run is complete when messages came after the key and none for QUIET_MS since, the app
# is idle, and (for a decision) the next card is painted; the last message marks the end.
QUIET_MS = 300
DONE = """
([waitCard, quiet]) => {
  const b = window.__bench, ws = window.__ws;
  const idle = document.querySelector("[data-testid='stApp']")
    .getAttribute("data-test-script-state") === "notRunning";
  return ws.n > b.n0 && performance.now() - ws.last > quiet && idle
    && (!waitCard || b.paint !== null);
}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(data_dir: Path, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = (data_dir / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1",
         "--server.fileWatcherType", "none", "--global.developmentMode", "false",
         "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        if proc.poll() is not None:
            raise RuntimeError((data_dir / "server.log").read_text())
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2):
                return proc, url + "/"
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("streamlit did not start in 60 s")


def peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def press(page, key: str, *, wait_card: bool) -> dict[str, float]:
    """Press ``key`` and wait for the run to complete; returns in-page milliseconds."""
    page.keyboard.press(key)
    page.wait_for_function(DONE, arg=[wait_card, QUIET_MS], timeout=30_000)
    b = page.evaluate("() => ({ ...window.__bench, last: window.__ws.last })")
    out = {"done": b["last"] - b["t0"]}
    if wait_card:
        out |= {"dom": b["dom"] - b["t0"], "paint": b["paint"] - b["t0"]}
    return out


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"median": statistics.median(ordered), "p95": p95, "min": ordered[0], "max": ordered[-1]}


def build_fixture_store(data_dir: Path, pool: int) -> dict[str, str]:
    """The synthetic fixture: ``pool`` pool samples, threshold 0 (each `a` accepts). Returns the
    app's environment."""
    url = f"sqlite:///{data_dir / 'meiju.db'}"
    store = Store(url)
    store.upgrade()
    t = time.perf_counter()
    # threshold 0: every head reaches it, so each `a` accepts (an accept under the threshold
    # asks for a second press)
    build_fixture(
        store,
        n_pool=pool,
        quota=10 * pool,
        threshold=0.0,
        password_hash=users.hash_password("pw"),
    )
    print(f"fixture: {pool} pool samples in {time.perf_counter() - t:.1f} s", flush=True)
    store.dispose()
    return {"MEIJU_DATA_DIR": str(data_dir), "MEIJU_DATABASE_URL": url, "MEIJU_PROJECT": "fixture"}


def build_demo_store(data_dir: Path, demo_from: Path | None) -> dict[str, str]:
    """The real demo project (``meiju demo``: CPED + GRID + Mandarin speech, builtin features, a
    stage-1 model), copied from ``demo_from`` when given, else built here. A round with threshold
    0 and room for every card is opened so each `a` accepts. Returns the app's environment."""
    from meiju_core.services.demo_copy import copy_built_demo
    from meiju_core.settings import Settings

    if demo_from is not None:  # the copy's store points into the copy's folders
        copy_built_demo(demo_from, data_dir)
    settings = Settings.load(data_dir=str(data_dir), database_url="", project="demo")
    store = Store(settings.database_url)
    store.upgrade()
    t = time.perf_counter()
    demo.build_demo(store, settings, admin_password="pw")  # idempotent on a copy
    users.add_user(store, name="bench", role="admin", password="pw")
    info = projects.project_info(store, name="demo")
    with store.read() as s:
        from db import queries as q

        mv = q.current_model(s, project_id=info["id"])
        schema = projects.schema_of(store, info["id"])
        heads = {h: list(schema.classes(h)) for h in schema.head_names}
    rounds.open_round(
        store,
        settings,
        project_id=info["id"],
        model_version_id=mv.id,
        thresholds=0.0,
        explicit={h: dict.fromkeys(classes, 100_000) for h, classes in heads.items()},
    )
    print(f"demo ready in {time.perf_counter() - t:.1f} s", flush=True)
    store.dispose()
    return {
        "MEIJU_DATA_DIR": str(data_dir),
        "MEIJU_DATABASE_URL": settings.database_url,
        "MEIJU_PROJECT": "demo",
    }


def start_retrain(data_dir: Path, env: dict[str, str]) -> tuple[subprocess.Popen, int]:
    """Start ``meiju worker`` and a long stage-2 train job on the demo; returns once the job
    trains (its first epoch reported)."""
    from db.models import Job
    from meiju_core.services import jobs
    from meiju_core.settings import Settings

    log = (data_dir / "worker.log").open("w")
    worker = subprocess.Popen(
        [sys.executable, "-m", "meiju_core.cli", "worker"],
        cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    settings = Settings.load(data_dir=str(data_dir), database_url="", project="demo")
    store = Store(settings.database_url)
    info = projects.project_info(store, name="demo")
    job_id = jobs.submit(
        store, settings, kind="train", params={"stage": 2, "epochs": 500},
        project_id=info["id"],
    )  # fmt: skip
    for _ in range(1200):
        with store.read() as s:
            job = s.get(Job, job_id)
            status, detail = job.status, dict(job.detail or {})
        if status in ("failed", "cancelled", "succeeded"):
            raise RuntimeError(f"the retrain job ended before the presses: {status}")
        if status == "running" and detail.get("epoch"):
            print(f"retrain job #{job_id} is training (epoch {detail['epoch']})", flush=True)
            store.dispose()
            return worker, job_id
        time.sleep(0.5)
    raise RuntimeError("the retrain job did not start training in 10 minutes")


def stop_retrain(data_dir: Path, worker: subprocess.Popen, job_id: int) -> str:
    """Cancel the retrain job, stop the worker; returns the job's status when cancelled (it
    must still be running for the measurement to count)."""
    from db.models import Job
    from meiju_core.services import jobs
    from meiju_core.settings import Settings

    settings = Settings.load(data_dir=str(data_dir), database_url="", project="demo")
    store = Store(settings.database_url)
    with store.read() as s:
        status = s.get(Job, job_id).status
    jobs.cancel(store, job_id=job_id)
    store.dispose()
    worker.terminate()
    worker.wait(timeout=60)
    return status


def measure(env: dict[str, str], data_dir: Path, n: int) -> dict:
    """Sign in, press `a` ``n`` times and `r` ``n`` times (after 5 warm-ups of each)."""
    from playwright.sync_api import sync_playwright

    proc, app_url = start_app(data_dir, env)
    user = "bench" if env["MEIJU_PROJECT"] == "demo" else "admin"
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.add_init_script(WS_HOOK)
            page.goto(app_url)
            page.wait_for_selector(IDLE, timeout=60_000)
            page.get_by_label("Name").fill(user)
            page.get_by_label("Password", exact=True).fill("pw")
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_selector(".meiju-transcript", timeout=60_000)
            page.wait_for_selector(IDLE)
            # the review keys' listener (pages/_keys.py) is mounted
            page.wait_for_function("() => !!(window.__meijuKeys && window.__meijuKeys.send)")
            page.evaluate(PROBE)
            for _ in range(5):
                press(page, "a", wait_card=True)
                press(page, "r", wait_card=False)
            accept = [press(page, "a", wait_card=True) for _ in range(n)]
            rerun = [press(page, "r", wait_card=False) for _ in range(n)]
            browser.close()
    finally:
        rss = peak_rss_mb(proc.pid)
        proc.terminate()
        proc.wait(timeout=20)
    rows = {
        "accept: keydown -> next card in DOM": summary([a["dom"] for a in accept]),
        "accept: keydown -> next card painted": summary([a["paint"] for a in accept]),
        "accept: keydown -> run complete": summary([a["done"] for a in accept]),
        "bare page rerun (r): keydown -> run complete": summary([r["done"] for r in rerun]),
    }
    return {"rows": rows, "server_peak_rss_mb": rss, "accept": accept, "rerun": rerun}


def floor(n: int) -> dict:
    """The bare Streamlit floor (``../shared/bench/streamlit_floor.py``, fragment variant): a key
    press that inserts one SQLite row and shows the count, in the same run as ours."""
    script = ROOT.parent / "shared" / "bench" / "streamlit_floor.py"
    if not script.exists():
        raise SystemExit(f"the floor script is missing: {script}")
    out = Path(tempfile.mkdtemp(prefix="meiju-floor-")) / "floor.json"
    env = {**os.environ, "STREAMLIT_BIN": str(Path(sys.executable).parent / "streamlit")}
    env["CHROMIUM"] = CHROMIUM
    subprocess.run(
        [sys.executable, str(script), "--variants", "fragment", "--starts", "1",
         "--presses", str(n), "--out", str(out)],
        check=True, env=env,
    )  # fmt: skip
    data = json.loads(out.read_text())
    r = data["results"]["fragment"]
    return {"press_in_page_ms": r["press_in_page_ms"], "check": r["check"]}


def run(args: argparse.Namespace) -> dict:
    results: dict[str, dict] = {}
    if not args.no_floor:
        results["floor"] = floor(args.n)
    if args.pool:
        data_dir = Path(tempfile.mkdtemp(prefix="meiju-bench-"))
        results["fixture, no retrain"] = measure(
            build_fixture_store(data_dir, args.pool), data_dir, args.n
        )
    if args.demo or args.retrain:
        data_dir = Path(tempfile.mkdtemp(prefix="meiju-bench-demo-"))
        env = build_demo_store(data_dir, args.demo_from)
        if args.demo:
            results["demo, no retrain"] = measure(env, data_dir, args.n)
        if args.retrain:
            worker, job_id = start_retrain(data_dir, env)
            try:
                results["demo, retrain running"] = measure(env, data_dir, args.n)
            finally:
                status = stop_retrain(data_dir, worker, job_id)
            if status != "running":
                raise RuntimeError(f"the retrain job was {status} before the presses ended")
    if not args.no_floor and "floor" in results:
        # run the floor again at the end, so load drift shows
        results["floor (after)"] = floor(args.n)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--pool", type=int, default=100_000, help="pool samples in the fixture (0: skip)"
    )
    ap.add_argument("--n", type=int, default=40, help="timed key presses of each kind")
    ap.add_argument("--demo", action="store_true", help="also measure on the real demo project")
    ap.add_argument("--retrain", action="store_true", help="also measure with a retrain running")
    ap.add_argument("--demo-from", type=Path, default=None, help="copy a built demo data folder")
    ap.add_argument("--no-floor", action="store_true", help="skip the Streamlit floor")
    args = ap.parse_args(argv)
    load_before = os.getloadavg()[0]
    results = run(args)
    load_after = os.getloadavg()[0]
    floors = [r["press_in_page_ms"] for k, r in results.items() if k.startswith("floor")]
    floor_med = statistics.median(f["median"] for f in floors) if floors else None
    floor_p95 = statistics.median(f["p95"] for f in floors) if floors else None
    print(f"\n{'setting':<24} {'measure (ms)':<46} median     p95     min     max")
    for setting, res in results.items():
        rows = (
            {"floor: keydown -> count in DOM": res["press_in_page_ms"]}
            if setting.startswith("floor")
            else res["rows"]
        )
        for name, s in rows.items():
            print(
                f"{setting:<24} {name:<46} {s['median']:6.1f}  {s['p95']:6.1f}  "
                f"{s['min']:6.1f}  {s['max']:6.1f}"
            )
    print(f"load average (1 min) before / after: {load_before:.2f} / {load_after:.2f}")
    import streamlit

    note_load = f"load average {load_before:.1f} → {load_after:.1f} on {os.cpu_count()} cores"
    summary_rows = []
    for setting, res in results.items():
        if setting.startswith("floor"):
            continue
        dom = res["rows"]["accept: keydown -> next card in DOM"]
        where = (
            f"{args.pool:,} pool samples" if setting.startswith("fixture") else "the demo project"
        )
        row = {
            "figure": f"Review key press to next card, {setting} (median / p95, DOM)",
            "value": f"{dom['median']:.0f} / {dom['p95']:.0f} ms",
            "goal": "p95 < 300 ms" if "retrain" in setting else "",
            "note": f"{where}, headless Chromium, {args.n} presses of `a`; {note_load}",
        }
        if floor_med:
            row["value"] += (
                f" = {dom['median'] / floor_med:.2f}× / {dom['p95'] / floor_p95:.2f}× the floor"
            )
            row["goal"] = ("≤ 1.3× / 2× the floor; " + row["goal"]).rstrip("; ")
        summary_rows.append(row)
    if floor_med:
        summary_rows.append(
            {
                "figure": "Bare Streamlit floor, same run (median / p95)",
                "value": f"{floor_med:.0f} / {floor_p95:.0f} ms",
                "goal": "",
                "note": "../shared/bench/streamlit_floor.py, fragment variant, key press to DOM; "
                "median of the runs before and after ours",
            }
        )
    out = {
        "benchmark": "review_latency",
        "summary": summary_rows,
        "settings": {
            k: (v["rows"] if "rows" in v else {"floor": v["press_in_page_ms"]})
            for k, v in results.items()
        },
        "server_peak_rss_mb": {
            k: v.get("server_peak_rss_mb") for k, v in results.items() if "rows" in v
        },
        "config": {
            "pool": args.pool,
            "n": args.n,
            "demo": args.demo,
            "retrain": args.retrain,
            "streamlit": streamlit.__version__,
        },
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_1min": {"before": load_before, "after": load_after},
        },
        "samples_ms": {
            k: {"accept": v["accept"], "rerun": v["rerun"]}
            for k, v in results.items()
            if "accept" in v
        },
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {RESULT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
