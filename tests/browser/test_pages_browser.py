"""Transcripts, Dashboard and Data in a real browser: Chinese typed into the transcript box and
saved, one-key accept of a suggestion, a click on a confusion-matrix cell that opens Review on its
samples, an export job followed to its download buttons. A screenshot of every page and tab goes
to ``tests/artifacts/pages_*.png`` for a person to look at.
"""

from __future__ import annotations

import copy
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from sqlalchemy import func, select

from db import analytics as A
from db.models import Job, ModelVersion, Sample, Transcript, TranscriptEdit
from meiju_core.ml import text
from meiju_core.services import decisions, jobs
from meiju_core.settings import Settings

pytestmark = pytest.mark.browser

IDLE = "[data-testid='stApp'][data-test-script-state='notRunning']"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
EMOTIONS = ["happy", "surprise", "sad", "disgust", "anger", "fear", "neutral"]
# Every URL the app puts in the address bar (Streamlit switches pages with the history API, and
# a page may tidy its query string right after), so a test can see the URL a click produced.
URL_HOOK = """
(() => {
  window.__urls = [];
  for (const name of ["pushState", "replaceState"]) {
    const orig = history[name].bind(history);
    history[name] = (state, title, url) => {
      if (url) window.__urls.push(String(new URL(url, location.href)));
      return orig(state, title, url);
    };
  }
})();
"""


def wait_idle(page, timeout_ms: int = 30_000) -> None:
    page.wait_for_selector(IDLE, timeout=timeout_ms)


def sign_in(page, url: str) -> None:
    page.goto(url)
    wait_idle(page)
    page.get_by_label("Name").fill("admin")
    page.get_by_label("Password", exact=True).fill("pw")
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("link", name="Dashboard").wait_for(timeout=30_000)
    wait_idle(page)


def go(page, name: str) -> None:
    page.get_by_role("link", name=name).first.click()
    page.get_by_role("heading", name=name).first.wait_for()
    wait_idle(page)


def screenshot(page, name: str, *, height: int = 1800) -> Path:
    """The page in a tall window (Streamlit scrolls inside its own container, so a full-page
    shot would stop at the window), then back to the test's window size."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"pages_{name}.png"
    size = page.viewport_size
    page.set_viewport_size({"width": size["width"], "height": height})
    page.wait_for_timeout(400)  # let the charts re-lay out
    page.screenshot(path=str(path))
    page.set_viewport_size(size)
    return path


def no_exception(page) -> None:
    assert page.locator("[data-testid='stException']").all_inner_texts() == []


def sample(store, utt: str) -> int:
    with store.read() as s:
        return s.scalars(select(Sample.id).where(Sample.utt_id == utt)).one()


def open_transcript(page, utt: str) -> None:
    go(page, "Transcripts")
    search = page.locator(".st-key-ts_q input")
    search.fill(utt)
    search.press("Enter")
    page.get_by_role("heading", name=utt).wait_for()
    wait_idle(page)


def test_type_chinese_into_a_transcript_and_save(app_server, page):
    store = app_server.store
    utt = "pool_000005"
    sid = sample(store, utt)
    sign_in(page, app_server.url)
    open_transcript(page, utt)
    no_exception(page)
    box = page.get_by_label("Transcript", exact=True)
    box.click()
    box.press("Control+a")
    box.press("Delete")
    typed = "今天天气很好，我们去公园吧。"
    page.keyboard.type(typed)  # non-ASCII goes in as text input, as an IME commits it
    assert box.input_value() == typed
    page.keyboard.press("Tab")  # commit the text area
    wait_idle(page)
    page.locator(".st-key-ts_save button").click()
    page.get_by_text("Saved (lexical edit), version 2.").wait_for()
    with store.read() as s:
        tr = s.scalars(select(Transcript).where(Transcript.sample_id == sid)).one()
        edit = s.scalars(select(TranscriptEdit).where(TranscriptEdit.transcript_id == tr.id)).one()
    assert (tr.text, tr.version, tr.source) == (typed, 2, "manual")
    assert (edit.after, edit.kind, edit.editor_id) == (typed, "lexical", app_server.ids.admin_id)
    assert "sample=" in page.url
    no_exception(page)
    screenshot(page, "transcripts")


def test_one_key_accepts_the_suggestion(app_server, page):
    store = app_server.store
    utt = "pool_000002"
    sid = sample(store, utt)
    with store.read() as s:
        before = s.scalars(select(Transcript.text).where(Transcript.sample_id == sid)).one()
    assert text.flags(before)
    sign_in(page, app_server.url)
    open_transcript(page, utt)
    page.locator(".st-key-ts_flag_1 button").wait_for()
    screenshot(page, "transcripts_flags")
    page.evaluate("() => document.activeElement?.blur()")  # focus off the text fields
    page.keyboard.press("a")
    page.get_by_text("Saved (punctuation edit)").wait_for()
    with store.read() as s:
        after = s.scalars(select(Transcript.text).where(Transcript.sample_id == sid)).one()
    assert after == text.suggest(before)
    # the bulk fix: a preview, then cancel (nothing written)
    page.get_by_text("Bulk fix: apply one rule to every match").click()
    page.locator(".st-key-ts_bulk_preview button").click()
    page.locator(".st-key-ts_bulk_apply button").wait_for()
    wait_idle(page)
    no_exception(page)
    screenshot(page, "transcripts_bulk_preview")
    page.locator(".st-key-ts_bulk_cancel button").click()
    page.locator(".st-key-ts_bulk_apply button").wait_for(state="detached")
    with store.read() as s:
        assert s.scalar(select(func.count()).select_from(TranscriptEdit)) <= 2


def _second_version(store, ids) -> None:
    with store.read() as s:
        metrics = copy.deepcopy(s.get(ModelVersion, ids.model_version_id).metrics)
    for split in metrics.values():
        for head in split["per_class"].values():
            for k, row in enumerate(head):
                row["f1"] = max(0.0, min(1.0, row["f1"] + (0.08 if k % 2 == 0 else -0.05)))
        split["joint"] += 0.03
    with store.write() as s:
        s.add(ModelVersion(project_id=ids.project_id, name="stage2-demo", stage=2, metrics=metrics))


def _decisions(store, ids) -> None:
    for k, sid in enumerate(ids.pool_ids[10:22]):
        user = {"id": ids.admin_id if k % 3 else ids.annotator_id}
        action = "reject" if k % 4 == 0 else "accept"
        decisions.decide(
            store,
            round_id=ids.round_id,
            sample_id=sid,
            action=action,
            user=user,
            ms_spent=1500 + 250 * k,
            confirm_below_threshold=True,  # set-up data: accepts under the threshold too
        )


def cell_center(page, chart: int, row: int, col: int, k: int) -> tuple[float, float]:
    """Pixel centre of confusion cell (row, col) of a K x K heatmap (rows top to bottom)."""
    box = page.locator(".js-plotly-plot .nsewdrag").nth(chart).bounding_box()
    return (
        box["x"] + (col + 0.5) * box["width"] / k,
        box["y"] + (row + 0.5) * box["height"] / k,
    )


def test_dashboard_tabs_and_a_confusion_click_opens_review(app_server, page):
    store, ids = app_server.store, app_server.ids
    _second_version(store, ids)
    _decisions(store, ids)
    page.add_init_script(URL_HOOK)
    sign_in(page, app_server.url)
    go(page, "Dashboard")
    page.locator(".js-plotly-plot").first.wait_for()
    no_exception(page)
    screenshot(page, "dashboard_model")
    for name in ("Compare", "Pseudo-labels", "Annotators", "Co-occurrence"):
        page.get_by_role("tab", name=name).click()
        wait_idle(page)
        if name != "Annotators":
            page.locator(".js-plotly-plot").first.wait_for()
        no_exception(page)
        screenshot(page, f"dashboard_{name.lower().replace('-', '_')}")
    page.get_by_role("tab", name="Model").click()
    wait_idle(page)
    page.locator(".js-plotly-plot .nsewdrag").first.wait_for()
    # the dashboard shows the promoted version (the fixture model); pick a filled off-diagonal cell
    with store.read() as s:
        matrix = s.get(ModelVersion, ids.model_version_id).metrics["valid"]["confusion"]["emotion"]
    i, j = next((i, j) for i in range(7) for j in range(7) if i != j and matrix[i][j] > 0)
    page.wait_for_timeout(300)  # plotly lays the chart out once more after the first paint
    x, y = cell_center(page, 0, i, j, 7)
    page.mouse.click(x, y)
    page.wait_for_function("() => window.__urls.some(u => u.includes('gold='))", timeout=20_000)
    page.get_by_role("heading", name="Review").first.wait_for()
    wait_idle(page)
    url = next(u for u in page.evaluate("() => window.__urls") if "gold=" in u)
    params = {k: v[0] for k, v in parse_qs(urlparse(url).query, keep_blank_values=True).items()}
    with store.read() as s:
        expected = A.confusion_cell_samples(
            s,
            model_version_id=ids.model_version_id,
            head="emotion",
            gold=EMOTIONS[i],
            pred=EMOTIONS[j],
            split="valid",
        )
    assert params == {
        "model": str(ids.model_version_id),
        "head": "emotion",
        "gold": EMOTIONS[i],
        "pred": EMOTIONS[j],
        "split": "valid",
        "samples": ",".join(map(str, expected)),
    }
    assert len(expected) == matrix[i][j]
    assert parse_qs(urlparse(page.url).query)["samples"] == [params["samples"]]  # Review kept it
    # the inspect view: the cell's first sample as a card, J steps to the next one
    with store.read() as s:
        utts = [s.get(Sample, sid).utt_id for sid in expected]
    card = ".meiju-transcript"
    page.wait_for_selector(card)
    first = page.evaluate(f"() => document.querySelector({card!r}).dataset.utt")
    assert first == utts[0]
    page.get_by_text(f"gold {EMOTIONS[i]}", exact=False).first.wait_for()
    no_exception(page)
    screenshot(page, "review_from_confusion_cell")
    if len(utts) > 1:
        page.keyboard.press("j")
        page.wait_for_function(
            f"u => document.querySelector({card!r})?.dataset.utt === u", arg=utts[1]
        )


def test_data_page_export_job_to_download(app_server, page):
    store = app_server.store
    sign_in(page, app_server.url)
    go(page, "Data")
    no_exception(page)
    page.locator(".st-key-dt_export button").click()
    page.get_by_text("export · queued").first.wait_for()
    with store.read() as s:
        job = s.scalars(select(Job).where(Job.kind == "export").order_by(Job.id.desc())).first()
    settings = Settings.load(database_url=store.url, data_dir=str(Path(store.url[10:]).parent))
    jobs.execute(store, settings, job.id)  # what the worker would do
    page.get_by_role("button", name="labels.csv").wait_for(timeout=15_000)  # the fragment polls
    with page.expect_download() as info:
        page.get_by_role("button", name="decisions.csv").click()
    path = info.value.path()
    assert Path(path).read_text(encoding="utf-8").startswith("decision_id,round_id,utt_id")
    no_exception(page)
    screenshot(page, "data")
