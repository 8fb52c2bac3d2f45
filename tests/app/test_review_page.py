"""The Review page's filters in the URL, class overrides by digit keys, bulk accept, the word
toggle and the link to the transcript editor, driven headless with ``streamlit.testing.v1.AppTest``.

Same set-up as ``test_app_pages.py``: the fixture project in a temporary SQLite store, caches
cleared around each test; decisions are checked in the database, not only on screen. Keyboard
shortcuts themselves need a browser (``tests/browser``); here the buttons they press are clicked.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs

import pytest
from sqlalchemy import func, select, update
from streamlit.testing.v1 import AppTest

from db import queries as q
from db.fixtures import EMOTIONS, INTENTS
from db.models import (
    Decision,
    GoldLabel,
    ModelVersion,
    Prediction,
    PseudoLabel,
    ReviewRound,
    Sample,
)
from meiju_core.ml.text import segment
from meiju_core.services import decisions, users

REPO = Path(__file__).resolve().parents[2]
APP = str(REPO / "app.py")
PASSWORD_HASH = users.hash_password("pw")
TIMEOUT = 30


def review(ids, role: str = "admin", params: dict[str, str] | None = None) -> AppTest:
    """The app signed in on the Review page, opened with ``params`` in the URL."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    uid, name = (ids.admin_id, "admin") if role == "admin" else (ids.annotator_id, "ann")
    at.session_state["user"] = {"id": uid, "name": name, "role": role}
    for key, value in (params or {}).items():
        at.query_params[key] = value
    at.run()
    assert not at.exception, at.exception
    return at


def card_id(at: AppTest) -> int | None:
    """The sample id on the card, None when the queue is empty."""
    return at.session_state.get("rv_card")


def prediction(store, sample_id: int, head: str, mv: int | None = None) -> Prediction:
    with store.read() as s:
        q_ = select(Prediction).where(Prediction.sample_id == sample_id, Prediction.head == head)
        if mv is not None:
            q_ = q_.where(Prediction.model_version_id == mv)
        return s.scalars(q_.order_by(Prediction.model_version_id)).first()


def pseudo(store, sample_id: int) -> dict[str, tuple[str, str]]:
    with store.read() as s:
        rows = s.scalars(select(PseudoLabel).where(PseudoLabel.sample_id == sample_id))
        return {p.head: (p.state, p.label) for p in rows}


def url_params(at: AppTest) -> dict[str, str]:
    out = {}
    for key in at.query_params:
        value = at.query_params[key]
        out[key] = value if isinstance(value, str) else value[-1]
    return out


def transcript_html(at: AppTest) -> str:
    return next(h.proto.body for h in at.get("html") if "meiju-transcript" in h.proto.body)


# --------------------------------------------------------------------------- filters in the URL


def test_a_link_opens_the_filtered_queue(fx):
    store, ids = fx
    chosen = ids.pool_ids[5:8]  # questioning, confident, and the two intent paths disagree
    with store.write() as s:
        s.execute(
            update(Prediction)
            .where(Prediction.sample_id.in_(chosen), Prediction.head == "intent")
            .values(label="questioning", confidence=0.8, paths=["questioning", "neutral"])
        )
    params = {"head": "intent", "label": "questioning", "min": "0.35", "disagree": "1"}
    at = review(ids, params=params)
    flt = at.session_state["rv_filter"]
    assert (flt.head, flt.label, flt.min_confidence, flt.disagree) == (
        "intent",
        "questioning",
        0.35,
        True,
    )
    assert at.selectbox(key="rv_f_head").value == "intent"
    assert at.selectbox(key="rv_f_label_intent").value == "questioning"
    assert at.slider(key="rv_f_conf").value == (0.35, 1.0)
    assert at.toggle(key="rv_f_disagree").value is True
    assert url_params(at) == params  # the URL keeps them
    with store.read() as s:
        expected = q.queue(s, round_id=ids.round_id, flt=flt, user_id=ids.admin_id, limit=1000)
    assert set(chosen) <= set(expected)
    sid = card_id(at)
    assert sid == expected[0]
    p = prediction(store, sid, "intent")
    assert p.label == "questioning" and p.confidence >= 0.35 and len(set(p.paths)) > 1
    assert f"**{len(expected)}** left in the queue" in "\n".join(m.value for m in at.markdown)


def test_unseen_pair_filter_from_the_url_shows_only_zero_cell_cards(fx):
    store, ids = fx
    at = review(ids, params={"unseen": "1"})
    flt = at.session_state["rv_filter"]
    with store.read() as s:
        zeros = set(q.unseen_pairs(s, project_id=ids.project_id))
    assert set(flt.unseen_pairs) == zeros and zeros
    assert at.toggle(key="rv_f_unseen").value is True
    for _ in range(4):
        if "rv_card" not in at.session_state:
            break
        sid = card_id(at)
        pair = (prediction(store, sid, "emotion").label, prediction(store, sid, "intent").label)
        assert pair in zeros
        at.button(key="rv_skip").click().run()


def test_changing_a_filter_writes_the_url_and_bad_params_are_dropped(fx):
    store, ids = fx
    at = review(ids, params={"head": "nope", "min": "2", "unseen": "maybe", "label": "happy"})
    assert url_params(at) == {}  # nothing valid survived
    assert at.session_state["rv_filter"] == q.QueueFilter(pair_heads=("emotion", "intent"))
    at.selectbox(key="rv_f_head").set_value("emotion").run()
    at.selectbox(key="rv_f_label_emotion").set_value("sad").run()
    at.toggle(key="rv_f_unseen").set_value(True).run()
    assert not at.exception
    assert url_params(at) == {"head": "emotion", "label": "sad", "unseen": "1"}
    assert "link: `?head=emotion&label=sad&unseen=1`" in "\n".join(c.value for c in at.caption)
    at.button(key="rv_f_clear").click().run()
    assert url_params(at) == {}
    assert at.selectbox(key="rv_f_head").value == "any"


def test_a_long_sample_link_is_shortened_under_the_filters(fx):
    """An import's link to its new cards names every sample: the caption shows its start and
    says where the whole link is, so the card stays on the first screen."""
    _store, ids = fx
    linked = ids.pool_ids[:40]
    at = review(ids, params={"samples": ",".join(map(str, linked))})
    caption = next(c.value for c in at.caption if c.value.startswith("Filtered:"))
    assert f"{len(linked)} linked samples" in caption
    assert "the address bar holds the whole link" in caption
    link = caption.split("link: `", 1)[1].rstrip("`")
    assert link.startswith(f"?samples={linked[0]},") and link.endswith("…")
    assert len(link) <= 125
    assert url_params(at)["samples"] == ",".join(map(str, linked))  # the URL keeps them all


def test_filters_survive_a_visit_to_another_page(fx):
    store, ids = fx
    at = review(ids, params={"head": "intent", "label": "neutral"})
    at.switch_page("pages/training.py").run()
    for key in list(at.query_params):
        del at.query_params[key]  # page navigation drops the query string
    at.switch_page("pages/review.py").run()
    assert not at.exception
    assert at.session_state["rv_filter"].label == "neutral"
    assert url_params(at) == {"head": "intent", "label": "neutral"}


def test_a_link_to_gold_labelled_samples_opens_the_inspect_view(fx):
    store, ids = fx
    with store.read() as s:
        valid = s.scalars(select(Sample.id).where(Sample.split == "valid").limit(3)).all()
        gold = select(GoldLabel.head, GoldLabel.label)
        truth = {
            sid: dict(s.execute(gold.where(GoldLabel.sample_id == sid)).all()) for sid in valid
        }
        utts = [s.get(Sample, sid).utt_id for sid in valid]
    link = {
        "samples": ",".join(map(str, [*valid, ids.pool_ids[0]])),
        "split": "valid",
        "head": "emotion",
        "gold": "sad",
        "pred": "happy",
        "model": str(ids.model_version_id),
    }
    at = review(ids, params=link)
    assert not at.exception
    assert "rv_card" not in at.session_state  # no queue card: the view is read-only
    table = next(d.value for d in at.dataframe if "utterance" in d.value.columns)
    assert list(table["utterance"]) == utts  # the gold-labelled ones only, in link order
    assert list(table["gold emotion"]) == [truth[sid]["emotion"] for sid in valid]
    expected_pred = [prediction(store, sid, "intent").label for sid in valid]
    assert list(table["predicted intent"]) == expected_pred
    assert any("gold **sad**, predicted **happy**" in m.value for m in at.markdown)
    assert any(utts[0] in m.value for m in at.markdown)  # the first sample's card
    at.button(key="rv_ins_next").click().run()  # J
    assert at.session_state["rv_ins_pos"] == 1
    assert any(utts[1] in m.value for m in at.markdown)
    at.button(key="rv_ins_prev").click().run().button(key="rv_ins_prev").click().run()  # K, K
    assert at.session_state["rv_ins_pos"] == 2  # wraps around
    with store.read() as s:
        n_decisions = s.scalar(select(func.count()).select_from(Decision))
    assert n_decisions == 0
    at.button(key="rv_ins_back").click().run()  # back to the queue, the cell's params gone
    assert not at.exception
    assert "samples" not in at.query_params and "gold" not in at.query_params
    assert "rv_card" in at.session_state


def test_model_version_filter_shows_and_accepts_that_models_classes(fx):
    store, ids = fx
    with store.write() as s:
        mv = ModelVersion(project_id=ids.project_id, name="second", config={}, status="candidate")
        s.add(mv)
        s.flush()
        other = mv.id
        for sid in ids.pool_ids:
            for head, classes in (("emotion", EMOTIONS), ("intent", INTENTS)):
                s.add(
                    Prediction(
                        model_version_id=other,
                        sample_id=sid,
                        head=head,
                        label=classes[1],
                        confidence=0.9,
                        probs=[
                            0.9 if k == 1 else 0.1 / (len(classes) - 1) for k in range(len(classes))
                        ],
                    )
                )
    at = review(ids, params={"model": str(other)})
    assert at.session_state["rv_filter"].model_version_id == other
    assert at.selectbox(key="rv_f_model").value == other
    first = card_id(at)
    assert any("predictions of model" in m.value for m in at.markdown)
    at.button(key="rv_accept").click().run()
    assert not at.exception
    assert pseudo(store, first) == {
        "emotion": ("accepted", "surprise"),
        "intent": ("accepted", "agreeing"),
    }


# --------------------------------------------------------------------------- overrides


def test_digit_keys_override_the_emotion_class_then_accept_records_it(fx):
    store, ids = fx
    at = review(ids)
    first = card_id(at)
    predicted = prediction(store, first, "emotion").label
    k = next(i for i, c in enumerate(EMOTIONS) if c != predicted)
    assert at.button(key=f"rv_digit_{k + 1}").label == f"{k + 1} {EMOTIONS[k]}"
    # the keys are the key listener's (pages/_keys.py); each button names its key
    assert at.button(key="rv_accept").label.endswith("[A]")
    assert at.button(key="rv_digit_head_btn").label.endswith("[H]")
    at.button(key=f"rv_digit_{k + 1}").click().run()
    assert at.session_state["rv_override"] == {"sample": first, "labels": {"emotion": EMOTIONS[k]}}
    assert any("(your class)" in m.value and EMOTIONS[k] in m.value for m in at.markdown)
    assert card_id(at) == first  # an override does not decide
    at.button(key="rv_accept").click().run()
    assert not at.exception
    intent = prediction(store, first, "intent").label
    assert pseudo(store, first) == {
        "emotion": ("accepted", EMOTIONS[k]),
        "intent": ("accepted", intent),
    }
    assert card_id(at) != first


def test_h_switches_the_digits_to_intent_and_0_clears(fx):
    store, ids = fx
    at = review(ids)
    first = card_id(at)
    assert at.button(key="rv_digit_head_btn").label == "Digits: emotion [H]"
    assert not [b for b in at.button if b.key == "rv_digit_8"]  # seven emotions
    at.button(key="rv_digit_head_btn").click().run()
    assert at.session_state["rv_digit_head"] == "intent"
    assert at.button(key="rv_digit_8").label == "8 neutral"
    predicted = prediction(store, first, "intent").label
    k = next(i for i, c in enumerate(INTENTS) if c != predicted)
    at.button(key=f"rv_digit_{k + 1}").click().run()
    at.button(key="rv_digit_0").click().run()  # clear
    assert at.session_state["rv_override"]["labels"] == {}
    at.button(key=f"rv_digit_{k + 1}").click().run()
    at.button(key="rv_accept_intent").click().run()
    assert not at.exception
    assert pseudo(store, first) == {"intent": ("accepted", INTENTS[k])}
    with store.read() as s:
        d = s.scalars(select(Decision).where(Decision.sample_id == first)).one()
    assert (d.head, d.label, d.action) == ("intent", INTENTS[k], "accept")
    keys = next(c.value for c in at.caption if c.value.startswith("Keys:"))
    assert "**1–8** set the intent class" in keys and "**H**" in keys


# --------------------------------------------------------------------------- the card


def test_words_toggle_shows_the_jieba_segmentation(fx):
    store, ids = fx
    at = review(ids)
    plain = transcript_html(at)
    assert "meiju-word" not in plain
    at.toggle(key="rv_words").set_value(True).run()
    assert not at.exception
    shown = transcript_html(at)
    sid = card_id(at)
    with store.read() as s:
        text = q.load_cards(s, model_version_id=ids.model_version_id, sample_ids=[sid])[0].text
    words = [w for w in segment(text) if w.strip()]
    assert shown.count("class='meiju-word'") == len(words) >= 2
    assert "data-utt='" in shown  # the card is still found by its utterance id
    at.button(key="rv_skip").click().run()  # the toggle stays on for the next card
    assert "meiju-word" in transcript_html(at)


def test_card_links_to_its_transcript_in_the_editor(fx):
    store, ids = fx
    at = review(ids)
    links = [e.proto for e in at.get("page_link")]
    link = next(p for p in links if p.label == "Edit transcript")
    assert link.page.endswith("transcripts")
    assert parse_qs(link.query_string) == {"sample": [str(card_id(at))]}


# --------------------------------------------------------------------------- bulk accept


def test_bulk_preview_then_one_confirmation_accepts_within_quotas(fx):
    store, ids = fx
    at = review(ids, params={"head": "emotion", "min": "0.5"})
    assert not [b for b in at.button if b.key == "rv_bulk_confirm"]  # preview first
    at.button(key="rv_bulk_preview").click().run()
    assert not at.exception
    preview = at.session_state["rv_bulk"]["result"]
    items = preview["items"]
    assert items and {h for _, h, _, _ in items} == {"emotion"}
    assert all(n <= 5 for n in preview["counts"]["emotion"].values())  # quota 5 per class
    counts = next(d.value for d in at.dataframe if list(d.value.index) == ["accept", "quota left"])
    assert list(counts.index) == ["accept", "quota left"]
    assert counts.loc["accept"].sum() == len(items)
    confirm = at.button(key="rv_bulk_confirm")
    assert confirm.label == f"Accept {len(items)} pseudo-labels"
    confirm.click().run()
    assert not at.exception
    assert any(f"Bulk accepted {len(items)} pseudo-labels" in x.value for x in at.success)
    with store.read() as s:
        rows = s.execute(
            select(PseudoLabel.sample_id, PseudoLabel.label).where(PseudoLabel.state == "accepted")
        ).all()
        status = q.quota_status(s, round_id=ids.round_id)
    assert sorted(rows) == sorted((i, c) for i, _, c, _ in items)
    assert all(a <= quota for per in status.values() for a, quota in per.values())
    assert "rv_bulk" not in at.session_state
    assert card_id(at) not in {i for i, *_ in items}  # accepted cards left the queue


def test_annotators_see_the_preview_but_cannot_bulk_accept(fx):
    store, ids = fx
    at = review(ids, role="annotator")
    at.button(key="rv_bulk_preview").click().run()
    assert not at.exception
    assert at.session_state["rv_bulk"]["result"]["items"]
    assert not [b for b in at.button if b.key == "rv_bulk_confirm"]
    assert any("Only admins can bulk accept." in c.value for c in at.caption)
    with pytest.raises(Exception, match="only admins"):
        decisions.bulk_accept(
            store,
            round_id=ids.round_id,
            items=at.session_state["rv_bulk"]["result"]["items"],
            user={"id": ids.annotator_id, "role": "annotator"},
        )
    with store.read() as s:
        assert s.scalar(select(func.count()).select_from(PseudoLabel)) == 0


def test_a_preview_is_dropped_when_the_filter_changes(fx):
    store, ids = fx
    at = review(ids)
    at.button(key="rv_bulk_preview").click().run()
    assert "rv_bulk" in at.session_state
    at.selectbox(key="rv_f_head").set_value("intent").run()
    assert "rv_bulk" not in at.session_state
    assert not [b for b in at.button if b.key == "rv_bulk_confirm"]


def test_a_quota_filled_since_the_preview_is_not_passed(fx):
    store, ids = fx
    at = review(ids, params={"head": "emotion"})
    at.button(key="rv_bulk_preview").click().run()
    items = at.session_state["rv_bulk"]["result"]["items"]
    with store.write() as s:  # meanwhile the round's quotas shrink to 1 per class
        rnd = s.get(ReviewRound, ids.round_id)
        rnd.quotas = {h: dict.fromkeys(per, 1) for h, per in rnd.quotas.items()}
    at.button(key="rv_bulk_confirm").click().run()
    assert not at.exception
    classes = {c for _, _, c, _ in items}
    assert any(
        f"Bulk accepted {len(classes)} pseudo-labels" in x.value
        and "over a quota filled since the preview" in x.value
        for x in at.success
    )
    with store.read() as s:
        per = q.accepted_counts(s, round_id=ids.round_id)["emotion"]
    assert per == dict.fromkeys(classes, 1)
