"""One-click retrain in a real browser, with the real worker: the admin presses "Retrain (stage 2)"
on the Training page, ``meiju worker`` picks the job up and trains stage 2 in its own process,
the page follows the job row live until it succeeds, and the new model version appears in the
table. The project is small but real: 700 CPED utterances with builtin features, a stage-1 model
on the ``fast`` preset and an automatic round of accepted pseudo-labels.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from _paths import DEMO
from _server import CHROMIUM, REPO, AppServer, start_server, stop_server
from sqlalchemy import func, select

from db import Store
from db import queries as q
from db.models import Job, ModelVersion, Project, PseudoLabel
from meiju_core.io.cped import cped_rows
from meiju_core.io.tables import bulk_insert
from meiju_core.schema import LabelSchema
from meiju_core.services import decisions, extraction, rounds, training, users
from meiju_core.settings import Settings

pytestmark = pytest.mark.browser

IDLE = "[data-testid='stApp'][data-test-script-state='notRunning']"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
N_UTTERANCES = 700


@pytest.fixture(scope="module")
def app_server(tmp_path_factory) -> Iterator[AppServer]:
    """A small real project with a promoted stage-1 model and an open round, served by
    ``streamlit run`` with ``meiju worker`` beside it (both on the same data folder)."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Debian's Chromium is not at {CHROMIUM} (apt-get install chromium)")
    data_dir = tmp_path_factory.mktemp("retrain")
    settings = Settings.load(data_dir=str(data_dir), database_url="", project="small")
    store = Store(settings.database_url)
    store.upgrade()
    rows = cped_rows(DEMO / "cped" / "valid_split.csv")[:N_UTTERANCES]
    assert {r.split for r in rows} >= {"train", "valid", "test", "pool"}
    with store.write() as s:
        p = Project(
            name="small",
            label_schema=LabelSchema.meiju_track1().to_dict(),
            settings={"preset": "fast"},
        )
        s.add(p)
        s.flush()
        bulk_insert(s, p.id, rows)
        pid = p.id
    users.add_user(store, name="admin", role="admin", password="pw")
    extraction.extract_features(store, settings, project_id=pid, workers=1)
    mv_id = training.train(store, settings, project_id=pid, stage=1, epochs=3)
    with store.write() as s:
        q.promote(s, model_version_id=mv_id)
    round_id = rounds.open_round(
        store,
        settings,
        project_id=pid,
        model_version_id=mv_id,
        thresholds=0.3,
        strategy="proportional",
        budget=40,
    )
    # a 3-epoch model reaches 0.3 for intent only: per head, so intent pseudo-labels are taken
    decisions.auto_pseudo_label(store, round_id=round_id, rule="per_head", confidence="calibrated")
    env = {
        "MEIJU_DATA_DIR": str(data_dir),
        "MEIJU_DATABASE_URL": settings.database_url,
        "MEIJU_PROJECT": "small",
    }
    worker_log = (data_dir / "worker.log").open("w", encoding="utf-8")
    worker = subprocess.Popen(
        [sys.executable, "-m", "meiju_core.cli", "worker"],
        cwd=REPO,
        env={**os.environ, **env},
        stdout=worker_log,
        stderr=subprocess.STDOUT,
    )
    proc, url, log_path = start_server(data_dir, env)
    yield AppServer(url, store, None, proc, log_path)  # type: ignore[arg-type]
    stop_server(proc)
    stop_server(worker)
    worker_log.close()
    store.dispose()


def wait_idle(page, timeout_ms: int = 30_000) -> None:
    page.wait_for_selector(IDLE, timeout=timeout_ms)


def test_one_click_retrain_runs_on_the_worker_and_shows_the_new_version(app_server, page):
    store = app_server.store
    with store.read() as s:
        accepted = s.scalar(
            select(func.count()).select_from(PseudoLabel).where(PseudoLabel.state == "accepted")
        )
        before = set(s.scalars(select(ModelVersion.id)))
    assert accepted > 0
    page.goto(app_server.url)
    wait_idle(page)
    page.get_by_label("Name").fill("admin")
    page.get_by_label("Password", exact=True).fill("pw")
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("heading", name="Review").first.wait_for(timeout=30_000)
    wait_idle(page)
    page.get_by_role("link", name="Training").first.click()
    page.get_by_role("heading", name="Training").first.wait_for()
    wait_idle(page)
    page.get_by_text(f"{accepted} accepted pseudo-labels", exact=False).first.wait_for()
    button = page.get_by_role("button", name="Retrain (stage 2)")
    button.click()
    page.get_by_text("Retrain queued as job", exact=False).first.wait_for(timeout=15_000)
    with store.read() as s:
        job = s.scalars(select(Job).where(Job.kind == "train").order_by(Job.id.desc())).first()
        assert job is not None and job.params.get("stage") == 2
        job_id = job.id
    # the live panel follows the job row (a fragment polling every 2 s) to the end
    page.get_by_text(f"Job #{job_id}", exact=False).first.wait_for()
    assert page.get_by_role("button", name="Retrain (stage 2)").is_disabled()
    page.get_by_text("succeeded", exact=False).first.wait_for(timeout=240_000)
    wait_idle(page)
    with store.read() as s:
        job = s.get(Job, job_id)
        assert job.status == "succeeded", job.error
        new = [mv for mv in s.scalars(select(ModelVersion)) if mv.id not in before]
    assert len(new) == 1 and new[0].stage == 2
    assert new[0].metrics["valid"]["joint"] >= 0
    assert job.result["model_version_id"] == new[0].id
    # in the versions table (a canvas grid: its cells are in the DOM for screen readers only)
    page.get_by_text(new[0].name, exact=False).first.wait_for(state="attached")
    assert page.get_by_role("button", name="Retrain (stage 2)").is_enabled()
    assert page.locator("[data-testid='stException']").count() == 0
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "retrain_finished.png"), full_page=True)
