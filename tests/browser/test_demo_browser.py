"""The demo project (the one ``meiju demo`` / ``make run`` builds) in Chromium, as a new user
meets it (issue 9, items 1-3 and 6; issue 10, item 4).

The module works on a copy of the real demo the test run builds once (``built_demo`` in
tests/conftest.py: CPED + GRID + Mandarin speech, builtin features, stage 1 on the short
2-epoch schedule, the first round opened with the defaults; or a copy of ``MEIJU_TEST_DEMO_DIR``). Then: the first sign-in shows a card; keys work after clicking each card
control; five presses 60 ms apart make five decisions in order; E then I decide one card; a bulk
accept is undone as one unit; a reload keeps the session and sign-out ends it; transcripts with
script, HTML and markdown payloads run nothing and fetch nothing. Screenshots land in
``tests/artifacts/demo_*.png``.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
from _server import (
    CARD,
    CHROMIUM,
    IDLE,
    AppServer,
    save_screenshot,
    sign_in_to_card,
    start_server,
    stop_server,
)
from sqlalchemy import func, select, update

from db import queries as q
from db.models import Decision, Prediction, PseudoLabel, ReviewRound, Sample, Transcript, User
from meiju_core.services import users

# building the demo takes about 2 minutes on a quiet 2-core machine, several under load
pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(1800)]

SERVER_FIXTURE = "demo"  # the shared browser fixture starts after it


@pytest.fixture(scope="module")
def demo(built_demo, tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Debian's Chromium is not at {CHROMIUM} (apt-get install chromium)")
    data_dir = tmp_path_factory.mktemp("demo")
    settings, store, summary = built_demo.copy(data_dir)  # admin's password: "pw"
    users.add_user(store, name="ann", role="annotator", password="pw")
    env = {
        "MEIJU_DATA_DIR": str(data_dir),
        "MEIJU_DATABASE_URL": settings.database_url,
        "MEIJU_PROJECT": "demo",
    }
    proc, url, log_path = start_server(data_dir, env)
    yield AppServer(url, store, None, proc, log_path), summary
    stop_server(proc)
    store.dispose()


@pytest.fixture
def page(page):
    """The shared page (conftest.py), recording in ``page.remote`` its requests to any host but
    the app's."""
    page.remote = []
    page.on(
        "request",
        lambda r: (
            page.remote.append(r.url)
            if urlparse(r.url).hostname not in ("127.0.0.1", None) and not r.url.startswith("data:")
            else None
        ),
    )
    return page


# --------------------------------------------------------------------------- helpers


def wait_idle(page, timeout_ms: int = 60_000) -> None:
    page.wait_for_selector(IDLE, timeout=timeout_ms)


def ready(page) -> None:
    wait_idle(page)
    try:
        page.get_by_role("button", name="Reject [X]").wait_for(state="visible", timeout=60_000)
    except Exception:
        raise AssertionError(f"no card buttons: {screenshot(page, 'not_ready')}") from None
    page.wait_for_function("() => !!(window.__meijuKeys && window.__meijuKeys.send)")
    wait_idle(page)


def shown(page) -> int | None:
    v = page.evaluate(f"() => document.querySelector({CARD!r})?.dataset.sample ?? null")
    return int(v) if v else None


def wait_card_change(page, previous: int | None, timeout_ms: int = 60_000) -> int:
    page.wait_for_function(
        f"p => {{ const e = document.querySelector({CARD!r}); "
        "return e !== null && e.dataset.sample !== String(p); }",
        arg=previous,
        timeout=timeout_ms,
    )
    ready(page)
    return shown(page)


def sign_in(page, url: str, name: str = "admin", password: str = "pw") -> None:
    sign_in_to_card(page, url, name, password, timeout_ms=60_000)
    ready(page)


def screenshot(page, name: str) -> Path:
    return save_screenshot(page, f"demo_{name}")


def card_decisions(store, sample_id: int) -> list[tuple[str | None, str]]:
    with store.read() as s:
        rows = s.execute(
            select(Decision.head, Decision.action)
            .where(Decision.sample_id == sample_id)
            .order_by(Decision.id)
        ).all()
    return [tuple(r) for r in rows]


def wait_for(predicate, timeout_s: float = 30.0):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def admin_id(store) -> int:
    with store.read() as s:
        return s.scalar(select(User.id).where(User.name == "admin"))


def round_of(store) -> ReviewRound:
    with store.read() as s:
        return q.active_round(s, project_id=1)


# --------------------------------------------------------------------------- tests


def test_first_sign_in_shows_a_card_and_a_reload_keeps_the_session(demo, page):
    server, _ = demo
    sign_in(page, server.url)
    first = shown(page)
    assert first is not None  # not "nothing left to review"
    screenshot(page, "first_card")
    page.reload()
    page.wait_for_selector(CARD, timeout=60_000)  # no sign-in form in between
    ready(page)
    assert page.get_by_label("Password", exact=True).count() == 0
    cookies = {c["name"]: c for c in page.context.cookies()}
    assert "meiju_session" in cookies and "pw" not in cookies["meiju_session"]["value"]
    assert "meiju_session" not in page.url and "token" not in page.url
    page.goto(server.url + "?min=0.01")  # a pasted link: still signed in
    page.wait_for_selector(CARD, timeout=60_000)
    page.get_by_role("button", name="Sign out").click()
    page.get_by_label("Password", exact=True).wait_for()
    stale = cookies["meiju_session"]
    page.reload()
    page.get_by_label("Password", exact=True).wait_for()
    # the old cookie, sent again, signs nobody in: sign-out ended the session in the store
    page.context.add_cookies([{k: stale[k] for k in ("name", "value", "domain", "path")}])
    page.reload()
    page.get_by_label("Password", exact=True).wait_for()
    assert page.locator(CARD).count() == 0


def test_keys_work_after_clicking_each_card_control(demo, page):
    server, _ = demo
    store = server.store
    rnd = round_of(store)
    with store.read() as s:  # a GRID clip (a video) and a Mandarin recording (audio)
        media = {
            src: s.scalar(
                select(Sample.id).where(Sample.source == src, Sample.split == "pool").limit(1)
            )
            for src in ("grid", "zh_speech")
        }
    with store.write() as s:  # make them cards of the round: confident on both heads
        s.execute(
            update(Prediction)
            .where(
                Prediction.sample_id.in_(list(media.values())),
                Prediction.model_version_id == rnd.model_version_id,
            )
            .values(confidence=0.999, label="neutral")
        )
    sign_in(page, server.url)
    controls = [  # the players first: their cards are the most confident of the queue now
        ("video player", None),
        ("audio player", None),
        ("words toggle", lambda: page.get_by_text("Words", exact=True).first.click()),
        ("digits head button", lambda: page.get_by_role("button", name="Digits").first.click()),
        ("class button", lambda: page.get_by_role("button", name="1 ").first.click()),
    ]
    for name, click in controls:
        if name.endswith("player"):
            sid = media["grid" if name == "video player" else "zh_speech"]
            page.goto(f"{server.url}?samples={sid}")
            try:
                page.wait_for_selector(CARD, timeout=60_000)
            except Exception:
                raise AssertionError(f"no card for {sid}: {screenshot(page, 'no_card')}") from None
            ready(page)
            kind = "stVideo" if name == "video player" else "stAudio"
            player = page.locator(f"[data-testid='{kind}']")
            player.wait_for(timeout=30_000)
            box = player.bounding_box()
            page.mouse.click(box["x"] + 20, box["y"] + box["height"] - 15)  # play / pause
            page.wait_for_timeout(300)
            page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] - 12)  # seek
            screenshot(page, name.replace(" ", "_"))
        else:
            click()
            wait_idle(page)
        before = shown(page)
        page.keyboard.press("x")
        wait_for(lambda b=before: card_decisions(store, b), 30)
        assert [a for _, a in card_decisions(store, before)][:2] == ["reject", "reject"], (
            f"X after clicking the {name} decided nothing"
        )
        if name == "audio player":  # back to the whole queue for the other controls
            page.goto(server.url)
            page.wait_for_selector(CARD, timeout=60_000)
            ready(page)
        elif not name.endswith("player"):
            wait_card_change(page, before)


def test_five_quick_presses_make_five_decisions_in_order(demo, page):
    server, _ = demo
    store = server.store
    sign_in(page, server.url)
    first = shown(page)
    rnd = round_of(store)
    with store.read() as s:
        expected = q.queue(s, round_id=rnd.id, user_id=admin_id(store), limit=6)
    assert expected[0] == first
    with store.read() as s:
        before = s.scalar(select(func.max(Decision.id))) or 0
    for _ in range(5):
        page.keyboard.press("x")
        page.wait_for_timeout(60)

    def rejected():
        with store.read() as s:
            rows = s.execute(
                select(Decision.sample_id)
                .where(Decision.id > before, Decision.action == "reject")
                .order_by(Decision.id)
            ).all()
        return list(dict.fromkeys(r[0] for r in rows))

    got = wait_for(lambda: len(rejected()) >= 5 and rejected(), 60)
    assert got == expected[:5], f"five presses decided {got}, queue order {expected[:5]}"
    wait_card_change(page, expected[4])
    assert shown(page) == expected[5]
    screenshot(page, "after_five")


def test_e_then_i_decide_one_card(demo, page):
    server, _ = demo
    store = server.store
    sign_in(page, server.url)
    sid = shown(page)
    rnd = round_of(store)
    with store.read() as s:
        conf = dict(
            s.execute(
                select(Prediction.head, Prediction.confidence).where(
                    Prediction.sample_id == sid,
                    Prediction.model_version_id == rnd.model_version_id,
                )
            ).all()
        )
    with store.write() as s:  # room in the quotas of the card's classes (a demo built on the
        # short schedule may give a head no quota at all)
        preds = dict(
            s.execute(
                select(Prediction.head, Prediction.label).where(
                    Prediction.sample_id == sid,
                    Prediction.model_version_id == rnd.model_version_id,
                )
            ).all()
        )
        row = s.get(ReviewRound, rnd.id)
        quotas = {h: dict(per) for h, per in row.quotas.items()}
        for head, label in preds.items():
            quotas[head][label] = max(int(quotas[head].get(label, 0)), 10)
        row.quotas = quotas
    for key, head in (("e", "emotion"), ("i", "intent")):
        page.keyboard.press(key)
        if conf[head] < rnd.thresholds[head]:  # under the threshold: a second press confirms
            page.get_by_text("again to accept it anyway").first.wait_for(timeout=30_000)
            screenshot(page, f"confirm_{head}")
            page.keyboard.press(key)
        wait_for(lambda h=head: (h, "accept") in card_decisions(store, sid), 30)
        if head == "emotion":
            page.get_by_text("(decided)").first.wait_for(timeout=30_000)
            ready(page)
            assert shown(page) == sid  # the card stays for intent
            screenshot(page, "one_head_decided")
    assert card_decisions(store, sid) == [("emotion", "accept"), ("intent", "accept")]
    wait_card_change(page, sid)


def test_bulk_accept_is_undone_as_one_unit(demo, page):
    server, _ = demo
    store = server.store
    sign_in(page, server.url + "?head=intent")
    with store.read() as s:
        start = s.scalar(select(func.count()).select_from(PseudoLabel))
    page.get_by_text("Bulk accept the filtered queue").click()
    page.get_by_role("button", name="Preview").click()
    confirm = page.get_by_role("button", name="pseudo-labels").filter(has_text="Accept")
    confirm.wait_for(timeout=60_000)
    n = int(re.search(r"Accept (\d+) pseudo-labels", confirm.inner_text()).group(1))
    assert n > 0
    confirm.click()
    page.get_by_text("Bulk accepted").first.wait_for(timeout=60_000)
    screenshot(page, "bulk_accepted")
    with store.read() as s:
        after = s.scalar(select(func.count()).select_from(PseudoLabel))
    assert after - start == n
    ready(page)
    page.keyboard.press("u")

    def count():
        with store.read() as s:
            return s.scalar(select(func.count()).select_from(PseudoLabel))

    assert wait_for(lambda: count() == start, 60), "the bulk was not undone as one unit"
    page.get_by_text("(undone)").first.wait_for(timeout=30_000)
    screenshot(page, "bulk_undone")


PAYLOADS = [
    "<script>window.__xss = 1</script>脚本",
    '<img src=x onerror="window.__xss = 2">图片',
    "<svg/onload=window.__xss=3>",
    "![track](http://example.invalid/pixel.png)你好",
    "前言\n\n![x](https://example.invalid/a.png)\n\n<iframe src='https://example.invalid'></iframe>",
    "[link](javascript:window.__xss=4) **粗体**",
]


def test_transcript_payloads_run_nothing_and_fetch_nothing(demo, page):
    server, _ = demo
    store = server.store
    rnd = round_of(store)
    with store.read() as s:
        ids = s.scalars(
            select(Sample.id)
            .where(Sample.split == "pool", Sample.source == "cped")
            .order_by(Sample.id.desc())
            .limit(len(PAYLOADS))
        ).all()
    with store.write() as s:
        for sid, text in zip(ids, PAYLOADS, strict=True):
            s.execute(update(Transcript).where(Transcript.sample_id == sid).values(text=text))
        s.execute(
            update(Prediction)
            .where(
                Prediction.sample_id.in_(ids), Prediction.model_version_id == rnd.model_version_id
            )
            .values(confidence=0.999, label="neutral")
        )
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    sign_in(page, f"{server.url}?samples={','.join(map(str, ids))}")
    for k in range(len(PAYLOADS)):
        sid = shown(page)
        text = page.locator(CARD).inner_text()
        expected = next(p for i, p in zip(ids, PAYLOADS, strict=True) if i == sid)
        assert " ".join(text.split()) == " ".join(expected.split())  # shown as typed
        page.get_by_text("Words", exact=True).first.click()  # the jieba words view too
        page.locator(f"{CARD}.words").wait_for(timeout=30_000)
        wait_idle(page)
        page.get_by_text("Words", exact=True).first.click()
        page.locator(f"{CARD}:not(.words)").wait_for(timeout=30_000)
        wait_idle(page)
        if k == 3:
            screenshot(page, "xss_markdown")
        page.keyboard.press("s")
        if k < len(PAYLOADS) - 1:
            wait_card_change(page, sid)
    for sid in ids[3:5]:  # the editor shows them too (the text, its diff against the original)
        page.goto(f"{server.url}transcripts?sample={sid}")
        page.get_by_label("Transcript", exact=True).wait_for(timeout=60_000)
        page.get_by_text("Original → current").first.wait_for(timeout=30_000)
        wait_idle(page)
    screenshot(page, "xss_editor")
    assert page.evaluate("() => window.__xss ?? null") is None
    assert dialogs == []
    assert page.remote == [], f"remote fetches: {page.remote}"


def test_editor_diff_follows_typing_and_back_returns_to_the_queue(demo, page):
    server, _ = demo
    sign_in(page, server.url + "?min=0.01")
    sid = shown(page)
    page.get_by_role("link", name="Edit transcript").click()
    box = page.get_by_label("Transcript", exact=True)
    box.wait_for(timeout=60_000)
    wait_idle(page)
    box.click()
    box.press("End")
    page.keyboard.type("吗？")  # no blur, no Ctrl+Enter: the script has not seen it
    live = page.locator(".meiju-live .live ins")
    live.first.wait_for(timeout=10_000)
    assert "".join(live.all_inner_texts()) == "吗？"
    screenshot(page, "editor_live_diff")
    page.keyboard.press("Tab")  # the box commits its text before the page is left
    wait_idle(page)
    page.get_by_role("link", name="Back to Review").click()
    try:
        page.wait_for_selector(CARD, timeout=60_000)
    except Exception:
        raise AssertionError(f"no card: {screenshot(page, 'back_no_card')}") from None
    ready(page)
    assert "min=0.01" in page.url  # the queue the user came from, not a one-card queue
    assert "samples=" not in page.url
    assert shown(page) == sid
