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
from meiju_core import pipeline  # noqa: E402

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


def run(pool: int, n: int) -> dict:
    from playwright.sync_api import sync_playwright

    data_dir = Path(tempfile.mkdtemp(prefix="meiju-bench-"))
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
        password_hash=pipeline.hash_password("pw"),
    )
    print(f"fixture: {pool} pool samples in {time.perf_counter() - t:.1f} s")
    store.dispose()
    env = {"MEIJU_DATA_DIR": str(data_dir), "MEIJU_DATABASE_URL": url, "MEIJU_PROJECT": "fixture"}
    proc, app_url = start_app(data_dir, env)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.add_init_script(WS_HOOK)
            page.goto(app_url)
            page.wait_for_selector(IDLE, timeout=60_000)
            page.get_by_label("Name").fill("admin")
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", type=int, default=100_000, help="pool samples in the fixture")
    ap.add_argument("--n", type=int, default=40, help="timed key presses of each kind")
    args = ap.parse_args(argv)
    load_before = os.getloadavg()[0]
    result = run(args.pool, args.n)
    load_after = os.getloadavg()[0]
    width = max(len(k) for k in result["rows"])
    print(f"\n{'measure (ms)':<{width}}  median     p95     min     max")
    for name, s in result["rows"].items():
        print(
            f"{name:<{width}}  {s['median']:6.1f}  {s['p95']:6.1f}  {s['min']:6.1f}  {s['max']:6.1f}"
        )
    print(f"server peak RSS: {result['server_peak_rss_mb']:.0f} MB")
    print(f"load average (1 min) before / after: {load_before:.2f} / {load_after:.2f}")
    card = result["rows"]["accept: keydown -> next card painted"]
    bare = result["rows"]["bare page rerun (r): keydown -> run complete"]
    import streamlit

    ratio = card["median"] / bare["median"]
    out = {
        "benchmark": "review_latency",
        "summary": [
            {
                "figure": "Review: key press to next card (median / p95)",
                "value": f"{card['median']:.0f} / {card['p95']:.0f} ms",
                "goal": "median < 150 ms, ≤ 1.5× bare rerun",
                "note": f"{args.pool:,} pool samples, headless Chromium, {args.n} presses of `a`",
            },
            {
                "figure": "Review: bare page rerun (median / p95)",
                "value": f"{bare['median']:.0f} / {bare['p95']:.0f} ms",
                "goal": "",
                "note": "Streamlit's `r` key, whole page script, for comparison",
            },
            {
                "figure": "Review: next card / bare rerun (medians)",
                "value": f"{ratio:.2f}×",
                "goal": "≤ 1.5×",
                "note": f"load average {load_before:.1f} → {load_after:.1f} on "
                f"{os.cpu_count()} cores",
            },
        ],
        "rows_ms": result["rows"],
        "server_peak_rss_mb": result["server_peak_rss_mb"],
        "config": {"pool": args.pool, "n": args.n, "streamlit": streamlit.__version__},
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_1min": {"before": load_before, "after": load_after},
        },
        "samples_ms": {"accept": result["accept"], "rerun": result["rerun"]},
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {RESULT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
