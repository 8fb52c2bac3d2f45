"""The review flow in a real browser: sign in, decide with single keys, see the next card.

Keyboard shortcuts, the fragment rerun and the page layout need a browser; AppTest covers the rest
(``tests/app``). Screenshots land in ``tests/artifacts/`` (git-ignored) for a person to look at.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from db.models import Decision, Sample

pytestmark = pytest.mark.browser

IDLE = "[data-testid='stApp'][data-test-script-state='notRunning']"
CARD = ".meiju-transcript"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


def decisions(store, utt_id: str) -> list[tuple[str | None, str]]:
    with store.read() as s:
        rows = s.execute(
            select(Decision.head, Decision.action)
            .join(Sample, Sample.id == Decision.sample_id)
            .where(Sample.utt_id == utt_id)
            .order_by(Decision.id)
        ).all()
    return [tuple(r) for r in rows]


def wait_idle(page, timeout_ms: int = 30_000) -> None:
    page.wait_for_selector(IDLE, timeout=timeout_ms)


def shown_utt(page) -> str | None:
    return page.evaluate(f"() => document.querySelector({CARD!r})?.dataset.utt ?? null")


def wait_for_next_card(page, previous: str | None, timeout_ms: int = 15_000) -> str:
    """Wait until the card shows another utterance than ``previous``; returns the new id."""
    page.wait_for_function(
        f"prev => {{ const e = document.querySelector({CARD!r}); "
        "return e !== null && e.dataset.utt !== prev; }",
        arg=previous,
        timeout=timeout_ms,
    )
    return shown_utt(page)


def sign_in(page, url: str, name: str = "admin", password: str = "pw") -> None:
    page.goto(url)
    wait_idle(page)
    page.get_by_label("Name").fill(name)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_selector(CARD, timeout=30_000)
    wait_idle(page)


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path


def no_exception(page) -> None:
    errors = page.locator("[data-testid='stException']").all_inner_texts()
    assert errors == []


def test_sign_in_and_accept_with_the_a_key(app_server, page):
    sign_in(page, app_server.url)
    no_exception(page)
    first = shown_utt(page)
    assert first and first.startswith("pool_")
    page.get_by_role("button", name="Accept both").wait_for()
    video = page.locator("[data-testid='stVideo']")
    video.wait_for()
    page.wait_for_function(  # st.video(start_time=1) seeks the player to second 1
        "() => { const v = document.querySelector(\"[data-testid='stVideo']\");"
        " return v && v.readyState >= 1 && v.currentTime >= 1; }",
        timeout=15_000,
    )
    screenshot(page, "review")
    page.keyboard.press("a")
    second = wait_for_next_card(page, first)
    assert second != first
    assert decisions(app_server.store, first) == [("emotion", "accept"), ("intent", "accept")]
    wait_idle(page)
    page.get_by_text(first).first.wait_for()  # the history lists the decision
    screenshot(page, "review_after_accept")


def test_reject_skip_and_undo_keys(app_server, page):
    sign_in(page, app_server.url)
    first = shown_utt(page)
    page.keyboard.press("x")
    second = wait_for_next_card(page, first)
    assert decisions(app_server.store, first) == [("emotion", "reject"), ("intent", "reject")]
    page.keyboard.press("s")
    third = wait_for_next_card(page, second)
    assert decisions(app_server.store, second) == [(None, "skip")]
    page.keyboard.press("u")
    back = wait_for_next_card(page, third)
    assert back == second
    assert decisions(app_server.store, second) == [(None, "skip"), (None, "undo")]
    page.keyboard.press("e")
    after = wait_for_next_card(page, second)
    assert after != second
    assert decisions(app_server.store, second)[-1] == ("emotion", "accept")
    no_exception(page)


def test_every_page_renders(app_server, page):
    sign_in(page, app_server.url)
    for name in ("Transcripts", "Training", "Dashboard"):
        page.get_by_role("link", name=name).click()
        page.get_by_role("heading", name=name).first.wait_for()
        wait_idle(page)
        if name == "Dashboard":
            page.locator(".js-plotly-plot").first.wait_for()
        no_exception(page)
        screenshot(page, name.lower())
    page.get_by_role("button", name="Sign out").click()
    page.get_by_label("Password", exact=True).wait_for()


def test_typing_in_the_transcript_box_does_not_decide(app_server, page):
    sign_in(page, app_server.url)
    before = decisions(app_server.store, shown_utt(page))
    page.get_by_role("link", name="Transcripts").click()
    box = page.get_by_label("Transcript", exact=True)
    box.wait_for()
    box.click()
    page.keyboard.type("asxu")
    assert box.input_value().endswith("asxu")
    page.keyboard.press("Tab")  # commit the text before leaving the page
    wait_idle(page)
    page.get_by_role("link", name="Review").click()
    page.wait_for_selector(CARD)
    wait_idle(page)
    assert decisions(app_server.store, shown_utt(page)) == before == []
