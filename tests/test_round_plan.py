"""A round's quotas yield cards: quotas fitted to the candidates, the plan the open-round form
shows, and the reason an empty queue gives (issue 9, item 1)."""

from __future__ import annotations

import pytest
from sqlalchemy import update

from db import queries as q
from db.fixtures import EMOTIONS, build_fixture
from db.models import GoldLabel, Prediction, ReviewRound
from meiju_core.errors import InputError, PermissionDenied
from meiju_core.ml.quota_fit import fit_to_candidates
from meiju_core.services import rounds
from meiju_core.settings import Settings


def test_fit_gives_budget_freed_by_empty_classes_to_classes_with_candidates():
    classes = ["a", "b", "c"]
    gold = {"a": 100, "b": 10, "c": 0}
    # balanced water-filling: a (largest) gets 0, b and c share the budget
    quotas = {"a": 0, "b": 45, "c": 55}
    fitted = fit_to_candidates(
        quotas, gold=gold, candidates={"a": 500, "b": 5}, budget=100, classes=classes
    )
    assert fitted == {"a": 95, "b": 5, "c": 0}  # b capped at its 5, c has none: a takes 95


def test_fit_keeps_quotas_the_pool_can_fill_and_levels_the_rest():
    classes = ["a", "b", "c"]
    fitted = fit_to_candidates(
        {"a": 0, "b": 30, "c": 30},
        gold={"a": 50, "b": 20, "c": 20},
        candidates={"a": 100, "b": 100, "c": 10},
        budget=60,
        classes=classes,
    )
    # c capped at 10; its 20 freed labels level b (gold 20 + 30) and a (gold 50) up to 60
    assert fitted["c"] == 10 and sum(fitted.values()) == 60
    assert fitted == {"a": 10, "b": 40, "c": 10}


def test_fit_spends_the_budget_when_gold_quotas_are_all_zero_and_never_exceeds_it():
    fitted = fit_to_candidates(
        {"a": 0, "b": 0},
        gold={"a": 5, "b": 5},
        candidates={"a": 3, "b": 50},
        budget=20,
        classes=["a", "b"],
    )
    assert fitted == {"a": 3, "b": 17}
    with pytest.raises(ValueError, match="budget"):
        fit_to_candidates({}, gold={}, candidates={}, budget=-1, classes=["a"])


def _only_majority_predicted(store, fx) -> None:
    """Gold: happy is by far the largest emotion class; every pool emotion prediction is happy
    and confident: the demo's shape, where balanced quotas give the predicted class 0."""
    with store.write() as s:
        s.execute(update(GoldLabel).where(GoldLabel.head == "emotion").values(label=EMOTIONS[1]))
        first = s.scalars(
            GoldLabel.__table__.select().with_only_columns(GoldLabel.id).limit(40)
        ).all()
        s.execute(update(GoldLabel).where(GoldLabel.id.in_(first)).values(label="happy"))
        s.execute(
            update(Prediction)
            .where(Prediction.head == "emotion")
            .values(label="happy", confidence=0.97)
        )


def test_default_round_on_majority_predictions_has_cards(store, tmp_path):
    fx = build_fixture(store, n_pool=40, n_train=60)
    _only_majority_predicted(store, fx)
    settings = Settings.load(data_dir=str(tmp_path), database_url=store.url)
    plan = rounds.round_plan(
        store,
        settings,
        project_id=fx.project_id,
        model_version_id=fx.model_version_id,
        thresholds={"emotion": 0.9, "intent": 1.0},
        strategy="balanced",
        budget=30,
    )
    happy = next(r for r in plan["classes"]["emotion"] if r["class"] == "happy")
    assert happy["candidates"] == 40 and happy["queue"] == 30  # unfitted: quota 0, no card
    rid = rounds.open_round(
        store,
        settings,
        project_id=fx.project_id,
        model_version_id=fx.model_version_id,
        thresholds={"emotion": 0.9, "intent": 1.0},
        strategy="balanced",
        budget=30,
    )
    with store.read() as s:
        assert q.queue_size(s, round_id=rid) == 40  # cards of a class with quota left
        assert s.get(ReviewRound, rid).quotas["emotion"]["happy"] == 30


def test_round_plan_refuses_bad_thresholds_and_annotators(store, tmp_path):
    fx = build_fixture(store, n_pool=10)
    settings = Settings.load(data_dir=str(tmp_path), database_url=store.url)
    for bad in (-1.0, 5.0, float("nan")):
        with pytest.raises(InputError, match="threshold"):
            rounds.round_plan(
                store,
                settings,
                project_id=fx.project_id,
                model_version_id=fx.model_version_id,
                thresholds=bad,
            )
    with pytest.raises(PermissionDenied):
        rounds.open_round(
            store,
            settings,
            project_id=fx.project_id,
            model_version_id=fx.model_version_id,
            user={"id": fx.annotator_id, "role": "admin"},  # the page's copy says admin
        )


def test_empty_queue_names_the_real_reason(store):
    fx = build_fixture(store, n_pool=20, quota=1, threshold=0.3)
    with store.write() as s:  # threshold nobody reaches
        s.get(ReviewRound, fx.round_id).thresholds = {"emotion": 1.0, "intent": 1.0}
    reasons = rounds.empty_queue_reasons(store, round_id=fx.round_id)
    assert "threshold" in reasons[0]["reason"] and "lower threshold" in reasons[0]["fix"]
    with store.write() as s:  # reachable threshold, but every quota 0
        rnd = s.get(ReviewRound, fx.round_id)
        rnd.thresholds = {"emotion": 0.0, "intent": 0.0}
        rnd.quotas = {h: dict.fromkeys(per, 0) for h, per in rnd.quotas.items()}
    reasons = rounds.empty_queue_reasons(store, round_id=fx.round_id)
    assert "no quota left" in reasons[0]["reason"] and "budget" in reasons[0]["fix"]
    flt = q.QueueFilter(head="emotion", label="happy")
    assert rounds.empty_queue_reasons(store, round_id=fx.round_id, flt=flt)[-1]["reason"] == (
        "Filters narrow the queue."
    )
