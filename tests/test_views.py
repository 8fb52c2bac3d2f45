"""The Review page's reads in ``db/views.py`` on the fixture project (``db.fixtures``): the
round as the page shows it, the versions with predictions, linked samples outside the pool, a
card's decided heads and utterance ids."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from db import queries as q
from db import views
from db.fixtures import build_fixture
from db.models import ModelVersion, ReviewRound, Sample
from meiju_core.services import decisions

# plain reads, but the sample-id lists and the closed-round case run on both databases
STORE_BACKENDS = ("sqlite", "postgresql")


@pytest.fixture
def fx(store):
    return build_fixture(store, n_pool=20, n_train=6, n_valid=3, n_test=3, quota=3, threshold=0.0)


def _admin(fx) -> dict:
    return {"id": fx.admin_id, "name": "admin", "role": "admin"}


def test_review_round_and_active_round(store, fx):
    with store.read() as s:
        rnd = views.review_round(s, round_id=fx.round_id)
        active = views.active_review_round(s, project_id=fx.project_id)
        assert views.review_round(s, round_id=fx.round_id + 99) is None
        assert views.active_review_round(s, project_id=fx.project_id + 99) is None
    assert rnd == active
    assert rnd is not None
    assert rnd["id"] == fx.round_id
    assert rnd["model_version_id"] == fx.model_version_id
    assert rnd["model_name"] == "fixture-model"
    assert rnd["thresholds"] == {"emotion": 0.0, "intent": 0.0}
    assert rnd["quotas"]["intent"]["questioning"] == 3
    assert rnd["queue_order"] == "confidence"
    assert rnd["created_at"] is not None


def test_active_review_round_is_none_once_closed(store, fx):
    with store.write() as s:
        s.get(ReviewRound, fx.round_id).status = "closed"
    with store.read() as s:
        assert views.active_review_round(s, project_id=fx.project_id) is None
        assert views.review_round(s, round_id=fx.round_id)["id"] == fx.round_id


def test_predicted_versions_leaves_out_versions_without_predictions(store, fx):
    with store.write() as s:
        s.add(ModelVersion(project_id=fx.project_id, name="untrained", stage=1, status="candidate"))
    with store.read() as s:
        assert views.predicted_versions(s, project_id=fx.project_id) == [
            (fx.model_version_id, "fixture-model", "promoted")
        ]
        assert views.predicted_versions(s, project_id=fx.project_id + 99) == []


def test_outside_pool_keeps_link_order_and_drops_pool_and_unknown_ids(store, fx):
    with store.read() as s:
        split = dict(s.execute(select(Sample.id, Sample.split)).all())
        gold = [i for i, sp in split.items() if sp != "pool"]
        linked = [gold[3], fx.pool_ids[0], 10**9, gold[0]]
        assert views.outside_pool(s, sample_ids=linked) == (gold[3], gold[0])
        assert views.outside_pool(s, sample_ids=fx.pool_ids[:5]) == ()
        assert views.outside_pool(s, sample_ids=[]) == ()


def test_head_states_follow_decisions_and_undo(store, fx):
    sid = fx.pool_ids[0]
    admin = _admin(fx)
    with store.read() as s:
        assert views.head_states(s, round_id=fx.round_id, sample_id=sid) == {}
        card = q.load_cards(s, model_version_id=fx.model_version_id, sample_ids=[sid])[0]
    intent = card.predictions["intent"]["label"]
    decisions.decide(
        store, round_id=fx.round_id, sample_id=sid, action="accept", user=admin, heads=["intent"]
    )
    with store.read() as s:
        assert views.head_states(s, round_id=fx.round_id, sample_id=sid) == {
            "intent": ("accepted", intent)
        }
    decisions.decide(
        store, round_id=fx.round_id, sample_id=sid, action="reject", user=admin, heads=["emotion"]
    )
    with store.read() as s:
        states = views.head_states(s, round_id=fx.round_id, sample_id=sid)
    assert states["intent"] == ("accepted", intent)
    assert states["emotion"][0] == "rejected"
    decisions.undo(store, round_id=fx.round_id, user=admin)
    with store.read() as s:
        assert set(views.head_states(s, round_id=fx.round_id, sample_id=sid)) == {"intent"}


def test_head_states_leave_out_a_skip(store, fx):
    sid = fx.pool_ids[1]
    admin = _admin(fx)
    decisions.decide(store, round_id=fx.round_id, sample_id=sid, action="skip", user=admin)
    with store.read() as s:
        assert views.head_states(s, round_id=fx.round_id, sample_id=sid) == {}


def test_utt_ids(store, fx):
    ids = fx.pool_ids[:3]
    with store.read() as s:
        got = views.utt_ids(s, sample_ids=[*ids, 10**9])
        assert views.utt_ids(s, sample_ids=[]) == {}
    assert set(got) == set(ids)
    assert all(utt.startswith("pool_") for utt in got.values())
