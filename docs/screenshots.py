"""Take the README's screenshots from the real demo project, in headless Debian Chromium.

Builds the demo (``meiju demo``, default schedule) in a temporary folder, or uses the data folder
given with ``--data-dir`` (a copy of what ``make run`` built, e.g. ``data``), starts the app and
signs in as ``admin``, then writes:

- ``docs/review.png``: the first card of the demo's first round, as a new user meets it;
- ``docs/review_grid.png``: a GRID clip of the pool on its card (the speaker's face).

Usage: ``python docs/screenshots.py [--data-dir data] [--password meiju-demo]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "browser"))

from _server import CHROMIUM, CHROMIUM_ARGS, start_server, stop_server  # noqa: E402
from sqlalchemy import select  # noqa: E402

from db.models import Sample  # noqa: E402
from meiju_core.services import projects, rounds  # noqa: E402
from meiju_core.services.demo_copy import copy_built_demo  # noqa: E402
from meiju_core.settings import Settings  # noqa: E402

IDLE = "[data-testid='stApp'][data-test-script-state='notRunning']"
CARD = ".meiju-transcript"


def prepare(data_dir: Path | None, password: str) -> Path:
    """A data folder with the demo: a copy of ``data_dir`` (paths rewritten) or a new build."""
    work = Path(tempfile.mkdtemp(prefix="meiju-shots-"))
    if data_dir is None:
        env = {**os.environ, "MEIJU_DATA_DIR": str(work), "MEIJU_PROJECT": "demo"}
        env.pop("MEIJU_DATABASE_URL", None)
        subprocess.run(
            [sys.executable, "-m", "meiju_core.cli", "demo", "--password", password],
            cwd=ROOT, env=env, check=True,
        )  # fmt: skip
        return work
    return copy_built_demo(data_dir, work)  # the copy's store points into the copy's folders


def grid_card(store, settings: Settings) -> int | None:
    """A GRID clip of the pool made a card of the open round: the round is reopened with each
    head's threshold lowered to the clip's confidence (rounded down to 0.1) where it is higher.
    Returns the clip's sample id (None when the demo has no GRID clip in its pool)."""
    from db import queries as q
    from db.models import Prediction

    with store.read() as s:
        rnd = q.active_round(s, project_id=1)
        grid = s.scalar(
            select(Sample.id)
            .join(Prediction, Prediction.sample_id == Sample.id)
            .where(
                Sample.source == "grid",
                Sample.split == "pool",
                Prediction.model_version_id == rnd.model_version_id,
            )
            .order_by(Prediction.confidence.desc())
            .limit(1)
        )
        if grid is None:
            return None
        conf = {
            p.head: p.confidence
            for p in s.scalars(
                select(Prediction).where(
                    Prediction.sample_id == grid,
                    Prediction.model_version_id == rnd.model_version_id,
                )
            )
        }
        thresholds, mv_id, pid = dict(rnd.thresholds), rnd.model_version_id, rnd.project_id
    lowered = {  # a per-class threshold ({class: t}) is left as it is
        h: t if isinstance(t, dict) else min(float(t), int(conf[h] * 10) / 10)
        for h, t in thresholds.items()
    }
    if lowered != thresholds:
        rounds.open_round(
            store, settings, project_id=pid, model_version_id=mv_id, thresholds=lowered
        )
    return grid


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=None, help="a built demo's data folder")
    ap.add_argument("--password", default="meiju-demo", help="the demo admin's password")
    args = ap.parse_args(argv)
    from playwright.sync_api import sync_playwright

    work = prepare(args.data_dir, args.password)
    settings = Settings.load(data_dir=str(work), database_url="", project="demo")
    store = projects.open_store(settings)
    env = {"MEIJU_DATA_DIR": str(work), "MEIJU_DATABASE_URL": "", "MEIJU_PROJECT": "demo"}
    proc, url, _log = start_server(work, env)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(url)
            page.wait_for_selector(IDLE, timeout=60_000)
            page.get_by_label("Name").fill("admin")
            page.get_by_label("Password", exact=True).fill(args.password)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_selector(CARD, timeout=120_000)
            page.get_by_role("button", name="Reject [X]").wait_for(timeout=60_000)
            page.wait_for_selector(IDLE, timeout=60_000)
            page.get_by_text("quota", exact=False).first.wait_for(timeout=60_000)
            page.wait_for_timeout(1000)
            page.screenshot(path=str(ROOT / "docs" / "review.png"))
            grid = grid_card(store, settings)
            if grid is not None:
                page.goto(f"{url}?samples={grid}")
                page.wait_for_selector("[data-testid='stVideo']", timeout=120_000)
                page.get_by_text("quota", exact=False).first.wait_for(timeout=60_000)
                page.wait_for_selector(IDLE, timeout=60_000)
                page.wait_for_timeout(1500)  # the first frame of the clip
                page.screenshot(path=str(ROOT / "docs" / "review_grid.png"))
            browser.close()
    finally:
        stop_server(proc)
        store.dispose()
    print("wrote docs/review.png" + (" and docs/review_grid.png" if grid else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
