"""A CSV import through the browser reaches Review with predictions, on the demo project built by
``meiju demo`` (one epoch: shrunk in time, not in kind), with ``meiju worker`` beside the app.

The admin uploads a CSV of new pool utterances on the Data page; one import job stores them,
extracts their features and predicts them with the current model; the page says how many new
cards the Review queue got; Review opened on those utterances shows their cards and predictions.
Meanwhile a retrain runs on the train lane and the import does not wait for it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from _server import CHROMIUM, REPO, AppServer, start_server, stop_server
from sqlalchemy import select

from db import Store
from db import queries as q
from db.models import Job, Prediction, Sample
from meiju_core.services import jobs, projects, rounds
from meiju_core.settings import Settings

pytestmark = pytest.mark.browser

IDLE = "[data-testid='stApp'][data-test-script-state='notRunning']"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
NEW = [
    ("imp_001", "你到底想怎么样？"),
    ("imp_002", "太好了，我们赢了！"),
    ("imp_003", "别担心，会好的。"),
]


@pytest.fixture(scope="module")
def app_server(tmp_path_factory) -> Iterator[AppServer]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Debian's Chromium is not at {CHROMIUM} (apt-get install chromium)")
    data_dir = tmp_path_factory.mktemp("import")
    env = {"MEIJU_DATA_DIR": str(data_dir), "MEIJU_PROJECT": "demo"}
    full_env = {**os.environ, **env}
    full_env.pop("MEIJU_DATABASE_URL", None)
    subprocess.run(
        [sys.executable, "-m", "meiju_core.cli", "demo", "--epochs", "1", "--password", "pw"],
        cwd=REPO,
        env=full_env,
        check=True,
        capture_output=True,
    )
    settings = Settings.load(data_dir=str(data_dir), database_url="", project="demo")
    store = Store(settings.database_url)
    info = projects.project_info(store, name="demo")
    with store.read() as s:
        mv = q.current_model(s, project_id=info["id"])
    # an admin's round in which every class can take cards (the demo's first round gives the
    # classes a one-epoch model predicts a quota of 0)
    rounds.open_round(
        store,
        settings,
        project_id=info["id"],
        model_version_id=mv.id,
        thresholds=0.0,
        strategy="proportional",
        budget=5000,
    )
    worker_log = (data_dir / "worker.log").open("w", encoding="utf-8")
    worker = subprocess.Popen(
        [sys.executable, "-m", "meiju_core.cli", "worker"],
        cwd=REPO,
        env=full_env,
        stdout=worker_log,
        stderr=subprocess.STDOUT,
    )
    proc, url, log_path = start_server(data_dir, {**env, "MEIJU_DATABASE_URL": ""})
    server = AppServer(url, store, None, proc, log_path)  # type: ignore[arg-type]
    server.settings, server.project_id, server.data_dir = settings, info["id"], data_dir
    yield server
    stop_server(proc)
    stop_server(worker)
    worker_log.close()
    store.dispose()


def wait_idle(page, timeout_ms: int = 30_000) -> None:
    page.wait_for_selector(IDLE, timeout=timeout_ms)


def test_a_csv_import_through_the_browser_reaches_review_with_predictions(app_server, page):
    store, settings = app_server.store, app_server.settings
    csv_path = app_server.data_dir / "new_utterances.csv"
    csv_path.write_text(
        "utt_id,text,split\n" + "".join(f"{u},{t},pool\n" for u, t in NEW), encoding="utf-8"
    )
    # a retrain on the train lane: the import must not wait behind it
    retrain = jobs.submit(
        store,
        settings,
        kind="train",
        params={"stage": 1, "epochs": 30},
        project_id=app_server.project_id,
    )
    page.goto(app_server.url)
    wait_idle(page)
    page.get_by_label("Name").fill("admin")
    page.get_by_label("Password", exact=True).fill("pw")
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("link", name="Data").wait_for(timeout=30_000)
    page.get_by_role("link", name="Data").first.click()
    page.get_by_role("heading", name="Data").first.wait_for()
    wait_idle(page)
    page.locator(".st-key-dt_csv input[type='file']").set_input_files(str(csv_path))
    # the upload's rerun enables the button (the page may still look idle before it starts)
    page.locator(".st-key-dt_import_csv button:enabled").wait_for(timeout=30_000)
    wait_idle(page)
    page.locator(".st-key-dt_import_csv button").click()
    # the job's success alert (the fragment polls the job row); the same words are the progress
    # text while the job still runs, so the text alone could be read before the job succeeded
    message = page.locator("[data-testid='stAlert']", has_text="new cards in the Review queue")
    message.first.wait_for(timeout=240_000)
    shown = message.first.inner_text()
    with store.read() as s:
        job = s.scalars(select(Job).where(Job.kind == "import").order_by(Job.id.desc())).first()
        ids = list(s.scalars(select(Sample.id).where(Sample.utt_id.in_([u for u, _ in NEW]))))
        predicted = s.scalars(
            select(Prediction.sample_id).where(Prediction.sample_id.in_(ids))
        ).all()
        still_training = s.get(Job, retrain).status == "running"
    assert job.status == "succeeded", job.error
    assert len(ids) == len(NEW) and set(predicted) == set(ids)  # every head predicted
    new_cards = job.result["prepared"]["new_cards"]
    assert new_cards == len(NEW) and f"{new_cards} new cards" in shown.replace("*", "")
    assert still_training  # the import did not wait behind the retrain
    jobs.cancel(store, job_id=retrain)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "import_data.png"))
    # Review, opened from the message's link on the new utterances, shows their cards with the
    # model's predictions
    page.get_by_role("link", name="Review the new cards").click()
    page.get_by_text(f"{len(NEW)} linked samples").first.wait_for(timeout=60_000)
    main = page.locator("[data-testid='stMain']")
    # a card of the new utterances, not the page between two reruns
    main.get_by_text(re.compile("|".join(u for u, _ in NEW))).first.wait_for(timeout=60_000)
    wait_idle(page, 60_000)
    body = main.inner_text(timeout=30_000)
    assert any(u in body for u, _ in NEW), body[:2000]
    assert "Nothing left to review" not in body
    page.screenshot(path=str(ARTIFACTS / "import_review.png"))
    assert page.locator("[data-testid='stException']").all_inner_texts() == []
