"""The round's queue order on the Review page (issue 11.2), headless with AppTest: an admin opens
a round with an order from the form, the store keeps it, the round panel names the active order
and the first card is the first of that order's queue. Same set-up as ``test_app_pages.py``."""

from __future__ import annotations

from _apptest import signed_in
from sqlalchemy import select
from streamlit.testing.v1 import AppTest

from db import queries as q
from db.models import ReviewRound
from meiju_core.services import rounds
from meiju_core.settings import Settings


def round_caption(at: AppTest) -> str:
    return next(c.value for c in at.caption if c.value.startswith("Round **#"))


def test_a_round_without_a_chosen_order_shows_confidence_first(fx):
    _store, ids = fx
    at = signed_in(ids)
    assert "queue order **most confident first**" in round_caption(at)


def test_admin_opens_a_round_in_an_order_and_review_serves_it(fx):
    store, ids = fx
    at = signed_in(ids)
    radio = at.radio(key="rv_new_order")
    assert radio.options == [
        "most confident first",
        "least confident first",
        "disagreements first",
        "rarest class first",
    ]
    assert radio.value == "confidence"  # the paper's rule by default
    radio.set_value("uncertainty")
    at.number_input(key=f"rv_new_th_{ids.model_version_id}_emotion").set_value(0.3)
    at.number_input(key=f"rv_new_th_{ids.model_version_id}_intent").set_value(0.3)
    at.run()
    at.button(key="rv_open_round").click().run()
    assert not at.exception, at.exception
    with store.read() as s:
        rnd = s.scalars(select(ReviewRound).order_by(ReviewRound.id.desc())).first()
        assert rnd.status == "open" and rnd.queue_order == "uncertainty"
        first = q.queue(s, round_id=rnd.id, user_id=ids.admin_id, limit=1)
    assert any(f"Round #{rnd.id} is open." in x.value for x in at.success)
    assert any("least confident first" in x.value for x in at.success)
    assert "queue order **least confident first**" in round_caption(at)
    assert at.session_state["rv_card"] == first[0]
    # the least confident card comes first: its best head is the lowest of the queue
    with store.read() as s:
        confs = {
            sid: min(
                p["confidence"]
                for p in q.load_cards(s, model_version_id=ids.model_version_id, sample_ids=[sid])[
                    0
                ].predictions.values()
                if p["confidence"] >= 0.3
            )
            for sid in q.queue(s, round_id=rnd.id, user_id=ids.admin_id, limit=1000)
        }
    assert confs[first[0]] == min(confs.values())


def test_annotators_see_the_active_order_but_not_the_form(fx):
    store, ids = fx
    settings = Settings.load(database_url=str(store.url), project="fixture")
    admin = {"id": ids.admin_id, "name": "admin", "role": "admin"}
    rounds.open_round(
        store,
        settings,
        project_id=ids.project_id,
        model_version_id=ids.model_version_id,
        thresholds=0.0,
        user=admin,
        queue_order="rarest",
    )
    at = signed_in(ids, role="annotator")
    assert "queue order **rarest class first**" in round_caption(at)
    assert not [r for r in at.radio if r.key == "rv_new_order"]
