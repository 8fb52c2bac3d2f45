"""A flagged gold label relabelled by keyboard on the demo project, in Chromium (issue 11, item 4).

The module works on a copy of the demo the test run builds once (``built_demo``, tests/conftest.py).
An admin opens Review's "Gold label issues" queue and clicks "Run the check": the app only
writes a ``label_check`` job; the test runs that job in its own process, standing in for the
worker, and the page picks the new queue up by itself. Then R relabels the first flag to the
suggested class (the decision keeps the old label), U puts the old label back, and a digit key
relabels to the class it names. Screenshots: ``tests/artifacts/label_issue_*.png``.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from _server import CHROMIUM, start_server, stop_server
from sqlalchemy import select, update

from db import label_issues as li
from db import queries as q
from db.models import Decision, GoldLabel, Job, User
from meiju_core.services import jobs, projects

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(1800)]

IDLE = "[data-testid='stApp'][data-test-script-state='notRunning']"
CARD = ".meiju-transcript"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
SERVER_FIXTURE = "demo"  # the shared browser fixture starts after it


@pytest.fixture(scope="module")
def demo(built_demo, tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Debian's Chromium is not at {CHROMIUM} (apt-get install chromium)")
    data_dir = tmp_path_factory.mktemp("demo")
    settings, store, summary = built_demo.copy(data_dir)  # admin's password: "pw"
    env = {
        "MEIJU_DATA_DIR": str(data_dir),
        "MEIJU_DATABASE_URL": settings.database_url,
        "MEIJU_PROJECT": "demo",
    }
    proc, url, log_path = start_server(data_dir, env)
    yield settings, store, summary, url, log_path
    stop_server(proc)
    store.dispose()


def wait_idle(page, timeout_ms: int = 60_000) -> None:
    page.wait_for_selector(IDLE, timeout=timeout_ms)


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"label_issue_{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def shown(page) -> int | None:
    v = page.evaluate(f"() => document.querySelector({CARD!r})?.dataset.sample ?? null")
    return int(v) if v else None


def wait_for(predicate, timeout_s: float = 30.0):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def gold(store, sample_id: int, head: str) -> str:
    with store.read() as s:
        return s.scalar(
            select(GoldLabel.label).where(GoldLabel.sample_id == sample_id, GoldLabel.head == head)
        )


def press(page, key: str) -> None:
    page.keyboard.press(key)


def test_a_flagged_gold_label_is_relabelled_by_keyboard(demo, browser):
    settings, store, summary, url, log_path = demo
    page = browser.new_context(viewport={"width": 1400, "height": 1100}).new_page()
    page.goto(url)
    wait_idle(page)
    page.get_by_label("Name").fill("admin")
    page.get_by_label("Password", exact=True).fill("pw")
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_selector(CARD, timeout=60_000)
    wait_idle(page)
    page.get_by_text("Gold label issues", exact=True).click()
    wait_idle(page)
    page.locator("[data-testid='stExpander'] summary").filter(has_text="Check gold labels").click()
    page.get_by_role("button", name="Run the check").click()
    wait_idle(page)

    def queued_check():  # the click's rerun may start after the page looked idle
        with store.read() as s:
            return s.scalars(
                select(Job).where(Job.kind == "label_check").order_by(Job.id.desc())
            ).first()

    job = wait_for(queued_check)
    assert job is not None and job.status == "queued", log_path.read_text()[-3000:]
    # the worker's part, in this process: the app never runs the check itself
    result = jobs.execute(store, settings, job.id)
    assert result and sum(result["flagged"].values()) > 0, result
    rid = result["round_id"]
    # the page polls the job and opens the new queue by itself (a copied demo may hold an
    # older check's queue: wait for this job's)
    page.get_by_text(f"Last check (job #{job.id})").wait_for(timeout=60_000)
    wait_idle(page)
    page.get_by_role("button", name="Keep [K]").wait_for(state="visible", timeout=60_000)
    page.wait_for_selector(CARD, timeout=60_000)
    page.wait_for_function("() => !!(window.__meijuKeys && window.__meijuKeys.send)")
    wait_idle(page)
    with store.read() as s:
        admin_id = s.scalar(select(User.id).where(User.name == "admin"))
        first = li.queue(s, round_id=rid, limit=1, user_id=admin_id)[0]
    assert shown(page) == first["sample_id"]
    sid, head = first["sample_id"], first["head"]
    assert gold(store, sid, head) == first["given"]
    before = screenshot(page, "card")
    assert before.exists()

    press(page, "r")  # relabel to the suggested class
    assert wait_for(lambda: gold(store, sid, head) == first["suggested"]), log_path.read_text()[
        -3000:
    ]
    with store.read() as s:
        d = s.scalars(
            select(Decision).where(Decision.round_id == rid).order_by(Decision.id.desc())
        ).first()
    assert (d.sample_id, d.head, d.action, d.label, d.previous_label) == (
        sid,
        head,
        "relabel",
        first["suggested"],
        first["given"],
    )
    nxt = _next_sample(store, rid)  # the next flag is on screen
    if nxt is not None and nxt != sid:
        page.wait_for_function(
            f"p => document.querySelector({CARD!r})?.dataset.sample === String(p)",
            arg=nxt,
            timeout=60_000,
        )
    wait_idle(page)

    press(page, "u")  # undo: the old gold label returns and the flag is shown again
    assert wait_for(lambda: gold(store, sid, head) == first["given"])
    page.wait_for_function(
        f"p => document.querySelector({CARD!r})?.dataset.sample === String(p)",
        arg=sid,
        timeout=60_000,
    )
    wait_idle(page)

    classes = projects.schema_of(store, summary["project_id"]).classes(head)
    choice = next(c for c in classes if c not in (first["given"], first["suggested"]))
    press(page, str(classes.index(choice) + 1))  # the digit of another class
    assert wait_for(lambda: gold(store, sid, head) == choice)
    wait_idle(page)
    after = screenshot(page, "after")
    assert after.exists()
    with store.read() as s:
        actions = [
            (a, lab, prev)
            for a, lab, prev in s.execute(
                select(Decision.action, Decision.label, Decision.previous_label)
                .where(Decision.round_id == rid, Decision.sample_id == sid)
                .order_by(Decision.id)
            )
        ]
        left = li.counts(s, round_id=rid)
        # the pseudo-label round is still the open one of its kind
        assert q.active_round(s, project_id=summary["project_id"]).kind == "pseudo"
    assert actions == [
        ("relabel", first["suggested"], first["given"]),
        ("undo", first["given"], first["suggested"]),
        ("relabel", choice, first["given"]),
    ]
    assert left[head]["relabelled"] == 1
    # put the label back for any test after this one
    with store.write() as s:
        s.execute(
            update(GoldLabel)
            .where(GoldLabel.sample_id == sid, GoldLabel.head == head)
            .values(label=first["given"])
        )


def _next_sample(store, round_id: int) -> int | None:
    with store.read() as s:
        admin_id = s.scalar(select(User.id).where(User.name == "admin"))
        rows = li.queue(s, round_id=round_id, limit=1, user_id=admin_id)
    return rows[0]["sample_id"] if rows else None
