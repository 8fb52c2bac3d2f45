"""``db.analytics`` on constructed data with known answers: decisions at known times with known
``ms_spent``, hand-placed gold and pseudo-labels, hand-written metrics, and confusion cells checked
against the matrix ``training.evaluate`` stores."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import insert, select, update

from db import analytics as A
from db import queries as q
from db.fixtures import EMOTIONS, INTENTS, build_fixture
from db.models import (
    Decision,
    GoldLabel,
    ModelVersion,
    Prediction,
    Project,
    Sample,
)
from meiju_core.services import decisions as decisions_service
from meiju_core.services import training

T0 = datetime(2026, 1, 5, 10, 5, tzinfo=UTC)


@pytest.fixture
def fx(store):
    return build_fixture(store, n_pool=40, quota=5, threshold=0.3)


def _card(s, round_id, sample_id, action, *, at, user_id, ms=None, heads=("emotion", "intent")):
    """Decision rows of one card, written together (one per head, or one for a skip)."""
    rows = [
        Decision(
            round_id=round_id,
            sample_id=sample_id,
            head=None if action == "skip" else head,
            label=None if action == "skip" else "neutral",
            action=action,
            user_id=user_id,
            ms_spent=ms,
            created_at=at,
        )
        for head in ((None,) if action == "skip" else heads)
    ]
    s.add_all(rows)
    s.flush()
    return rows


def _undo(s, decisions, *, at, user_id):
    for d in decisions:
        s.add(
            Decision(
                round_id=d.round_id,
                sample_id=d.sample_id,
                head=d.head,
                label=d.label,
                action="undo",
                undoes_id=d.id,
                user_id=user_id,
                created_at=at,
            )
        )


# --------------------------------------------------------------------------- pseudo-labels


def test_pseudo_label_classes_counts_candidates_decisions_and_quota(store, fx):
    pool = fx.pool_ids
    with store.write() as s:  # exactly at the threshold counts as a candidate
        s.execute(
            update(Prediction)
            .where(Prediction.sample_id == pool[0], Prediction.head == "emotion")
            .values(confidence=0.3, label="fear")
        )
    with store.read() as s:
        preds = s.execute(
            select(Prediction.head, Prediction.label, Prediction.confidence)
            .join(Sample, Sample.id == Prediction.sample_id)
            .where(Sample.split == "pool", Prediction.model_version_id == fx.model_version_id)
        ).all()
    expected = Counter((h, c) for h, c, conf in preds if conf >= 0.3)
    admin = {"id": fx.admin_id}
    rid = fx.round_id
    both = {"emotion": "happy", "intent": "agreeing"}
    decisions_service.decide(
        store, round_id=rid, sample_id=pool[1], action="accept", user=admin, labels=both
    )
    decisions_service.decide(
        store, round_id=rid, sample_id=pool[2], action="accept", user=admin, labels=both
    )
    decisions_service.decide(
        store, round_id=rid, sample_id=pool[3], action="reject", user=admin, labels=both
    )
    decisions_service.decide(  # undone: counts nowhere
        store, round_id=rid, sample_id=pool[4], action="accept", user=admin, labels=both
    )
    decisions_service.undo(store, round_id=rid, user=admin)
    with store.read() as s:
        got = A.pseudo_label_classes(s, round_id=rid)
    assert list(got) == ["emotion", "intent"]
    assert [r["class"] for r in got["emotion"]] == EMOTIONS
    assert [r["class"] for r in got["intent"]] == INTENTS
    for head, rows in got.items():
        for r in rows:
            assert r["candidates"] == expected[(head, r["class"])], (head, r)
            assert r["quota"] == 5
    emotion = {r["class"]: r for r in got["emotion"]}
    intent = {r["class"]: r for r in got["intent"]}
    assert (emotion["happy"]["accepted"], emotion["happy"]["rejected"]) == (2, 1)
    assert (intent["agreeing"]["accepted"], intent["agreeing"]["rejected"]) == (2, 1)
    assert emotion["happy"]["left"] == 3 and emotion["sad"]["left"] == 5
    assert sum(r["accepted"] for r in got["emotion"]) == 2
    assert expected[("emotion", "fear")] >= 1


def test_pseudo_label_classes_of_an_unknown_round_is_empty(store, fx):
    with store.read() as s:
        assert A.pseudo_label_classes(s, round_id=999) == {}


# --------------------------------------------------------------------------- over time


def test_acceptance_over_time_buckets_by_hour_and_day_and_drops_undone(store, fx):
    rid, uid, pool = fx.round_id, fx.admin_id, fx.pool_ids
    with store.write() as s:
        _card(s, rid, pool[0], "accept", at=T0, user_id=uid)  # 10:05, two heads
        _card(s, rid, pool[1], "reject", at=T0 + timedelta(minutes=35), user_id=uid)  # 10:40
        _card(s, rid, pool[2], "skip", at=T0 + timedelta(minutes=45), user_id=uid)  # 10:50
        undone = _card(s, rid, pool[3], "accept", at=T0 + timedelta(minutes=65), user_id=uid)
        _undo(s, undone, at=T0 + timedelta(minutes=75), user_id=uid)  # 11:10 undone at 11:20
        _card(
            s,
            rid,
            pool[4],
            "reject",
            at=T0 + timedelta(minutes=85),
            user_id=uid,
            heads=("emotion",),
        )  # 11:30
        _card(
            s, rid, pool[5], "accept", at=T0 + timedelta(hours=23), user_id=uid, heads=("intent",)
        )
    with store.read() as s:
        hourly = A.acceptance_over_time(s, round_id=rid, bucket="hour")
        daily = A.acceptance_over_time(s, round_id=rid, bucket="day")
    assert [(r["start"], r["accepted"], r["rejected"], r["skipped"]) for r in hourly] == [
        (datetime(2026, 1, 5, 10, tzinfo=UTC), 2, 2, 1),
        (datetime(2026, 1, 5, 11, tzinfo=UTC), 0, 1, 0),
        (datetime(2026, 1, 6, 9, tzinfo=UTC), 1, 0, 0),
    ]
    assert [r["rate"] for r in hourly] == [0.5, 0.0, 1.0]
    assert [(r["start"].day, r["accepted"], r["rejected"], r["skipped"]) for r in daily] == [
        (5, 2, 3, 1),
        (6, 1, 0, 0),
    ]
    assert daily[0]["rate"] == pytest.approx(0.4)
    with pytest.raises(ValueError, match="bucket"):
        A.acceptance_over_time(s, round_id=rid, bucket="week")


# --------------------------------------------------------------------------- throughput


def test_annotator_throughput_median_and_rate_from_known_times(store, fx):
    rid, pool = fx.round_id, fx.pool_ids
    admin, ann = fx.admin_id, fx.annotator_id
    with store.write() as s:
        # admin: 4 cards 10 s apart, then a break (1000 s > 300 s idle gap), then one more
        for k, ms in enumerate((4000, 6000, 8000, 10000)):
            _card(
                s, rid, pool[k], "accept", at=T0 + timedelta(seconds=10 * k), user_id=admin, ms=ms
            )
        _card(s, rid, pool[4], "reject", at=T0 + timedelta(seconds=1000), user_id=admin, ms=2000)
        # ann: a card with no ms_spent, a skip 60 s later, and an undone card
        _card(s, rid, pool[5], "accept", at=T0, user_id=ann, ms=None)
        _card(s, rid, pool[6], "skip", at=T0 + timedelta(seconds=60), user_id=ann, ms=3000)
        gone = _card(s, rid, pool[7], "accept", at=T0 + timedelta(seconds=70), user_id=ann, ms=1)
        _undo(s, gone, at=T0 + timedelta(seconds=80), user_id=ann)
    with store.read() as s:
        rows = A.annotator_throughput(s, round_id=rid)
    by = {r["user"]: r for r in rows}
    assert [r["user"] for r in rows] == ["admin", "ann"]  # most cards first
    a = by["admin"]
    assert (a["cards"], a["accepted"], a["rejected"], a["skipped"]) == (5, 8, 2, 0)
    assert a["median_s"] == pytest.approx(6.0)  # median of 4, 6, 8, 10, 2 s
    # active time: first card's 4 s + three 10 s gaps + the card after the break's own 2 s
    assert a["active_min"] == pytest.approx(36 / 60)
    assert a["per_minute"] == pytest.approx(5 / (36 / 60))
    assert a["first_at"] == T0 and a["last_at"] == T0 + timedelta(seconds=1000)
    b = by["ann"]
    assert (b["cards"], b["accepted"], b["skipped"]) == (2, 2, 1)
    assert b["median_s"] == pytest.approx(3.0)
    assert b["per_minute"] == pytest.approx(2.0)  # 2 cards in 60 s


def test_annotator_throughput_by_round_or_whole_project(store, fx):
    with store.write() as s:
        _card(s, fx.round_id, fx.pool_ids[0], "accept", at=T0, user_id=fx.admin_id, ms=1000)
        other = q.open_round(
            s,
            project_id=fx.project_id,
            model_version_id=fx.model_version_id,
            thresholds={"emotion": 0.3, "intent": 0.3},
            quotas={},
        )
        _card(s, other.id, fx.pool_ids[1], "skip", at=T0, user_id=fx.admin_id, ms=3000)
    with store.read() as s:
        first = A.annotator_throughput(s, round_id=fx.round_id)
        both = A.annotator_throughput(s, project_id=fx.project_id)
        none = A.annotator_throughput(s, project_id=fx.project_id + 1)
    assert [r["cards"] for r in first] == [1]
    assert [(r["cards"], r["median_s"]) for r in both] == [(2, 2.0)]
    assert none == []


# --------------------------------------------------------------------------- co-occurrence


def test_cooccurrence_gold_counts_train_samples_with_both_heads(store):
    with store.write() as s:
        p = Project(name="p", label_schema={"emotion": EMOTIONS, "intent": INTENTS})
        s.add(p)
        s.flush()
        labels = [  # (split, emotion, intent)
            ("train", "happy", "agreeing"),
            ("train", "happy", "agreeing"),
            ("train", "sad", "neutral"),
            ("train", "fear", "questioning"),
            ("train", "anger", None),  # one head only: not counted
            ("valid", "happy", "neutral"),  # another split: not counted
        ]
        for k, (split, emo, intent) in enumerate(labels):
            sample = Sample(project_id=p.id, utt_id=f"u{k}", split=split)
            s.add(sample)
            s.flush()
            s.add(GoldLabel(sample_id=sample.id, head="emotion", label=emo))
            if intent:
                s.add(GoldLabel(sample_id=sample.id, head="intent", label=intent))
        pid = p.id
    with store.read() as s:
        got = A.cooccurrence_gold(s, project_id=pid)
        valid = A.cooccurrence_gold(s, project_id=pid, split="valid")
    assert got["rows"] == EMOTIONS and got["cols"] == INTENTS and got["n"] == 4
    cell = {
        (got["rows"][i], got["cols"][j]): n
        for i, row in enumerate(got["counts"])
        for j, n in enumerate(row)
        if n
    }
    assert cell == {("happy", "agreeing"): 2, ("sad", "neutral"): 1, ("fear", "questioning"): 1}
    assert valid["n"] == 1 and valid["counts"][0][INTENTS.index("neutral")] == 1


def test_cooccurrence_pseudo_needs_both_heads_accepted(store, fx):
    admin, rid, pool = {"id": fx.admin_id}, fx.round_id, fx.pool_ids
    hap = {"emotion": "happy", "intent": "agreeing"}
    decisions_service.decide(
        store, round_id=rid, sample_id=pool[0], action="accept", user=admin, labels=hap
    )
    decisions_service.decide(
        store, round_id=rid, sample_id=pool[1], action="accept", user=admin, labels=hap
    )
    decisions_service.decide(  # intent rejected: not counted
        store,
        round_id=rid,
        sample_id=pool[2],
        action="accept",
        user=admin,
        labels=hap,
        heads=["emotion"],
    )
    decisions_service.decide(
        store, round_id=rid, sample_id=pool[2], action="reject", user=admin, heads=["intent"]
    )
    decisions_service.decide(
        store,
        round_id=rid,
        sample_id=pool[3],
        action="accept",
        user=admin,
        labels={"emotion": "sad", "intent": "neutral"},
    )
    with store.read() as s:
        got = A.cooccurrence_pseudo(s, round_id=rid)
    assert got["n"] == 3
    counts = got["counts"]
    assert counts[EMOTIONS.index("happy")][INTENTS.index("agreeing")] == 2
    assert counts[EMOTIONS.index("sad")][INTENTS.index("neutral")] == 1
    assert sum(map(sum, counts)) == 3


# --------------------------------------------------------------------------- model versions


def _metrics(emotion: dict[str, float], joint: float, emotion_f1: float) -> dict:
    return {
        "valid": {
            "emotion_f1": emotion_f1,
            "intent_f1": 0.5,
            "joint": joint,
            "per_class": {
                "emotion": [{"class": c, "f1": f, "support": 3} for c, f in emotion.items()],
                "intent": [{"class": "neutral", "f1": 0.5, "support": 3}],
            },
        }
    }


def test_f1_change_per_class_and_overall():
    base = _metrics({"happy": 0.5, "sad": 0.2}, joint=0.30, emotion_f1=0.40)
    new = _metrics({"happy": 0.6, "sad": 0.1, "fear": 0.7}, joint=0.35, emotion_f1=0.45)
    got = A.f1_change_from_metrics(base, new, split="valid")
    emotion = {r["class"]: r for r in got["heads"]["emotion"]}
    assert emotion["happy"]["delta"] == pytest.approx(0.1)
    assert emotion["sad"]["delta"] == pytest.approx(-0.1)
    assert (emotion["fear"]["base"], emotion["fear"]["new"], emotion["fear"]["delta"]) == (
        None,
        0.7,
        None,
    )
    assert got["heads"]["intent"][0]["delta"] == 0.0
    assert got["overall"]["joint"]["delta"] == pytest.approx(0.05)
    assert got["overall"]["emotion_f1"]["delta"] == pytest.approx(0.05)
    assert list(got["overall"]) == ["emotion_f1", "intent_f1", "joint"]
    assert A.f1_change_from_metrics(base, new, split="test") == {
        "heads": {},
        "overall": {"joint": {"base": None, "new": None, "delta": None}},
    }


def test_f1_change_between_stored_versions(store, fx):
    with store.write() as s:
        s.get(ModelVersion, fx.model_version_id).metrics = _metrics(
            {"happy": 0.5}, joint=0.3, emotion_f1=0.4
        )
        mv = ModelVersion(
            project_id=fx.project_id,
            name="v2",
            metrics=_metrics({"happy": 0.25}, joint=0.2, emotion_f1=0.3),
        )
        s.add(mv)
        s.flush()
        new_id = mv.id
    with store.read() as s:
        got = A.f1_change(s, base_id=fx.model_version_id, new_id=new_id)
    assert got["heads"]["emotion"][0] == {
        "class": "happy",
        "base": 0.5,
        "new": 0.25,
        "delta": -0.25,
    }
    assert got["overall"]["joint"]["delta"] == pytest.approx(-0.1)


# --------------------------------------------------------------------------- confusion cells


def test_confusion_cell_samples_match_the_stored_matrix(store, fx):
    mv = fx.model_version_id
    metrics = training.evaluate(store, model_version_id=mv)
    with store.read() as s:
        for split in ("valid", "test"):
            for head, classes in (("emotion", EMOTIONS), ("intent", INTENTS)):
                matrix = metrics[split]["confusion"][head]
                for i, gold in enumerate(classes):
                    for j, pred in enumerate(classes):
                        ids = A.confusion_cell_samples(
                            s, model_version_id=mv, head=head, gold=gold, pred=pred, split=split
                        )
                        assert len(ids) == matrix[i][j], (split, head, gold, pred)
                        assert ids == sorted(ids)


def test_confusion_cell_samples_picks_exactly_the_cell(store, fx):
    mv = fx.model_version_id
    with store.read() as s:
        valid = s.scalars(
            select(Sample.id).where(Sample.split == "valid").order_by(Sample.id)
        ).all()
        test_id = s.scalars(select(Sample.id).where(Sample.split == "test")).first()
    chosen = valid[:3]
    with store.write() as s:  # three valid samples and one test sample: gold anger, predicted fear
        s.execute(
            update(Prediction)
            .where(Prediction.model_version_id == mv, Prediction.head == "emotion")
            .values(label="happy")
        )
        for sid in [*chosen, test_id]:
            s.execute(
                update(GoldLabel)
                .where(GoldLabel.sample_id == sid, GoldLabel.head == "emotion")
                .values(label="anger")
            )
            s.execute(
                update(Prediction)
                .where(
                    Prediction.sample_id == sid,
                    Prediction.head == "emotion",
                    Prediction.model_version_id == mv,
                )
                .values(label="fear")
            )
        other = ModelVersion(project_id=fx.project_id, name="other")
        s.add(other)
        s.flush()
        s.execute(  # another model's prediction of the same samples never counts
            insert(Prediction),
            [
                {
                    "model_version_id": other.id,
                    "sample_id": sid,
                    "head": "emotion",
                    "label": "fear",
                    "confidence": 0.9,
                    "probs": [],
                }
                for sid in valid
            ],
        )
    with store.read() as s:
        got = A.confusion_cell_samples(
            s, model_version_id=mv, head="emotion", gold="anger", pred="fear", split="valid"
        )
        test = A.confusion_cell_samples(
            s, model_version_id=mv, head="emotion", gold="anger", pred="fear", split="test"
        )
        none = A.confusion_cell_samples(
            s, model_version_id=mv, head="intent", gold="anger", pred="fear", split="valid"
        )
    assert got == sorted(chosen)
    assert test == [test_id]
    assert none == []


def test_rounds_newest_first(store, fx):
    with store.write() as s:
        q.open_round(
            s,
            project_id=fx.project_id,
            model_version_id=fx.model_version_id,
            thresholds={"emotion": 0.5},
            quotas={},
        )
    with store.read() as s:
        got = A.rounds(s, project_id=fx.project_id)
    assert [r["status"] for r in got] == ["open", "closed"]
    assert got[1]["id"] == fx.round_id
