"""The review flow in a real browser: sign in, decide with single keys, see the next card.

Keyboard shortcuts, the fragment rerun and the page layout need a browser; AppTest covers the rest
(``tests/app``). Twenty cards are reviewed with the keyboard only (accept, one head, reject, skip,
digit overrides of either head, undo), the database checked after every key; Chinese, pinyin
letters and digits typed into the transcript editor decide nothing. Screenshots land in
``tests/artifacts/review_*.png`` (git-ignored) for a person to look at.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from _server import CARD, IDLE, save_screenshot, sign_in_to_card
from sqlalchemy import func, select

from db.fixtures import EMOTIONS, INTENTS
from db.models import Decision, Prediction, Sample

pytestmark = pytest.mark.browser


FIXTURE_KWARGS = {"quota": 1000, "threshold": 0.0}  # many cards: no quota fills, no head
# under the threshold (an accept under it asks twice; tests/app covers that)


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


def wait_for_next_card(page, previous: str | None, timeout_ms: int = 30_000) -> str:
    """Wait until the card shows another utterance than ``previous``; returns the new id.

    On a timeout the failure says what the page shows (script state, flash messages) and a
    screenshot lands in ``tests/artifacts/timeout_<utt>.png``, so a lost key can be told from a
    refused decision or a slow rerun.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(
            f"prev => {{ const e = document.querySelector({CARD!r}); "
            "return e !== null && e.dataset.utt !== prev; }",
            arg=previous,
            timeout=timeout_ms,
        )
    except PlaywrightTimeout:
        shot = screenshot(page, f"timeout_{previous}")
        state = page.evaluate(
            "() => document.querySelector(\"[data-testid='stApp']\")?.dataset.testScriptState"
        )
        alerts = page.locator("[data-testid='stAlert'], [data-testid='stToast']").all_inner_texts()
        active = page.evaluate("() => document.activeElement?.outerHTML?.slice(0, 200)")
        raise AssertionError(
            f"card {previous} still shown after {timeout_ms} ms; script state {state!r}, "
            f"alerts {alerts}, focus {active!r}; screenshot {shot}"
        ) from None
    utt = shown_utt(page)
    ready(page)
    return utt


def ready(page) -> None:
    """Wait until the card's buttons are drawn and the app is idle, so a key press lands on
    registered shortcuts (the buttons register them when they mount)."""
    wait_idle(page)
    page.get_by_role("button", name="Reject").wait_for(state="visible", timeout=30_000)
    # the key listener (pages/_keys.py) is mounted
    page.wait_for_function("() => !!(window.__meijuKeys && window.__meijuKeys.send)")
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
    wait_idle(page)


def sign_in(page, url: str, name: str = "admin", password: str = "pw") -> None:
    sign_in_to_card(page, url, name, password, timeout_ms=30_000)
    ready(page)


def screenshot(page, name: str) -> Path:
    return save_screenshot(page, f"{name}")


def nav(page, name: str):
    """The sidebar's link to a page (pages may link to each other too)."""
    return page.get_by_test_id("stSidebarNavItems").get_by_role("link", name=name, exact=True)


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
    page.keyboard.press("e")  # one head: the card stays for the other head
    page.get_by_text("(decided)").first.wait_for(timeout=30_000)
    ready(page)
    assert shown_utt(page) == second
    assert decisions(app_server.store, second)[-1] == ("emotion", "accept")
    page.keyboard.press("i")
    after = wait_for_next_card(page, second)
    assert after != second
    assert decisions(app_server.store, second)[-2:] == [("emotion", "accept"), ("intent", "accept")]
    no_exception(page)


def test_every_page_renders(app_server, page):
    sign_in(page, app_server.url)
    for name in ("Transcripts", "Training", "Dashboard"):
        nav(page, name).click()
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
    nav(page, "Transcripts").click()
    box = page.get_by_label("Transcript", exact=True)
    box.wait_for()
    box.click()
    page.keyboard.type("asxu")
    assert box.input_value().endswith("asxu")
    page.keyboard.press("Tab")  # commit the text before leaving the page
    wait_idle(page)
    nav(page, "Review").click()
    page.wait_for_selector(CARD)
    wait_idle(page)
    assert decisions(app_server.store, shown_utt(page)) == before == []


# --------------------------------------------------------------------------- keyboard only


def labelled(store, utt_id: str) -> list[tuple[str | None, str, str | None]]:
    """(head, action, class) of every decision on the utterance, oldest first."""
    with store.read() as s:
        rows = s.execute(
            select(Decision.head, Decision.action, Decision.label)
            .join(Sample, Sample.id == Decision.sample_id)
            .where(Sample.utt_id == utt_id)
            .order_by(Decision.id)
        ).all()
    return [tuple(r) for r in rows]


def predicted(store, ids, utt_id: str) -> dict[str, str]:
    with store.read() as s:
        rows = s.execute(
            select(Prediction.head, Prediction.label)
            .join(Sample, Sample.id == Prediction.sample_id)
            .where(Sample.utt_id == utt_id, Prediction.model_version_id == ids.model_version_id)
        ).all()
    return dict(rows)


def n_decisions(store) -> int:
    with store.read() as s:
        return s.scalar(select(func.count()).select_from(Decision))


def press_and_wait(page, key: str, text: str) -> None:
    """Press a key that changes the card without deciding, and wait until ``text`` shows."""
    page.keyboard.press(key)
    page.get_by_text(text, exact=False).first.wait_for(timeout=15_000)
    wait_idle(page)


def other_class(classes: list[str], label: str) -> int:
    return next(k for k, c in enumerate(classes) if c != label)


def test_twenty_cards_by_keyboard_only_then_undo(app_server, page):
    """Each card is finished by a key sequence (one head at a time keeps the card for the
    other head); each key is checked in the database before the next one is pressed."""
    store, ids = app_server.store, app_server.ids
    sign_in(page, app_server.url)
    plan = ["a", "ei", "x", "s", "1a", "h1ix", "a", "ie", "x", "h1ei"] * 2
    digit_head = "emotion"
    before = n_decisions(store)
    current = shown_utt(page)
    done: list[str] = []
    made = 0
    for step, keys in enumerate(plan):
        pred = predicted(store, ids, current)
        assert labelled(store, current) == [], f"step {step}: {current} was offered twice"
        override: dict[str, str] = {}
        want: list[tuple] = []
        decisions_left = sum(k in "aeixs" for k in keys)
        for key in keys:
            if key == "h":  # switch the digits to the other head
                digit_head = "intent" if digit_head == "emotion" else "emotion"
                press_and_wait(page, "h", f"Digits: {digit_head}")
            elif key == "1":  # override the digit head's class with a digit key
                classes = EMOTIONS if digit_head == "emotion" else INTENTS
                k = other_class(classes, pred[digit_head])
                override[digit_head] = classes[k]
                press_and_wait(page, str(k + 1), "(your class)")
                if step == 4:
                    screenshot(page, "review_override")
            else:
                label = {**pred, **override}
                open_heads = [h for h in ("emotion", "intent") if h not in {w[0] for w in want}]
                want += {
                    "a": [(h, "accept", label[h]) for h in open_heads],
                    "e": [("emotion", "accept", label["emotion"])],
                    "i": [("intent", "accept", label["intent"])],
                    "x": [(h, "reject", pred[h]) for h in open_heads],
                    "s": [(None, "skip", None)],
                }[key]
                decisions_left -= 1
                page.keyboard.press(key)
                if decisions_left:  # the card stays for the other head
                    page.get_by_text("(decided)").first.wait_for(timeout=30_000)
                    ready(page)
                    assert shown_utt(page) == current, f"step {step} ({keys}): card left"
        nxt = wait_for_next_card(page, current)
        assert labelled(store, current) == want, f"step {step} ({keys})"
        made += len(want)
        done.append(current)
        current = nxt
    assert len(set(done)) == 20
    assert n_decisions(store) - before == made
    wait_idle(page)
    screenshot(page, "review_keyboard")
    page.keyboard.press("u")  # undo the last decision: its card comes back, compensated
    back = wait_for_next_card(page, current)
    assert back == done[-1]
    last = labelled(store, back)
    assert [a for _, a, _ in last] == ["accept", "accept", "undo"] and last[2][0] == "intent"
    wait_idle(page)
    page.get_by_text("(undone)").first.wait_for()
    no_exception(page)


def test_words_toggle_link_and_chinese_typing_decide_nothing(app_server, page):
    store = app_server.store
    sign_in(page, app_server.url)
    utt = shown_utt(page)
    page.get_by_text("Words").first.click()
    page.locator(".meiju-transcript.words .meiju-word").first.wait_for()
    wait_idle(page)
    assert shown_utt(page) == utt
    screenshot(page, "review_words")
    before = n_decisions(store)
    page.get_by_role("link", name="Edit transcript").click()
    box = page.get_by_label("Transcript", exact=True)
    box.wait_for()
    wait_idle(page)
    with store.read() as s:
        sid = s.scalar(select(Sample.id).where(Sample.utt_id == utt))
    assert f"sample={sid}" in page.url
    box.click()
    page.keyboard.press("End")
    typed = "你好吗 ni3hao3 axseiuh 1234567 0"
    page.keyboard.type(typed)
    page.keyboard.insert_text("（测试）")  # text committed the way an IME commits it
    assert box.input_value().endswith(typed + "（测试）")
    screenshot(page, "review_typing_in_editor")
    assert n_decisions(store) == before  # no letter or digit reached a Review shortcut
    no_exception(page)


def test_a_link_with_filters_opens_the_same_queue_after_sign_in(app_server, page):
    store, ids = app_server.store, app_server.ids
    query = "head=intent&label=neutral&min=0.35"
    sign_in(page, f"{app_server.url}?{query}")
    page.get_by_text(f"link: ?{query}").wait_for()
    assert query in page.url  # the address still carries the filters
    for step in range(2):
        utt = shown_utt(page)
        intent = predicted(store, ids, utt)["intent"]
        assert intent == "neutral"
        with store.read() as s:
            conf = s.scalar(
                select(Prediction.confidence)
                .join(Sample, Sample.id == Prediction.sample_id)
                .where(Sample.utt_id == utt, Prediction.head == "intent")
            )
        assert conf >= 0.35
        if step == 0:
            page.keyboard.press("s")
            wait_for_next_card(page, utt)
    screenshot(page, "review_filtered_link")
    no_exception(page)
