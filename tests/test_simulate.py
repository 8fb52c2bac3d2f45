"""The simulated annotator (issue 11.1) decides through the Review page's services: queue, lease,
``decisions.decide`` and ``decisions.undo``. On the fixture project with withheld labels written
into its pool, on SQLite and PostgreSQL: quotas are never passed, a card another annotator holds
is never decided, undos are compensated and the card decided again, and the verdicts follow the
withheld labels. The benchmark itself (stage 2 on the demo) is tested in test_pipeline.py."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
from sqlalchemy import func, select, update

from db import queries as q
from db.fixtures import EMOTIONS, INTENTS, build_fixture
from db.models import Decision, Prediction, PseudoLabel, ReviewLease, ReviewRound, Sample, utcnow
from meiju_core.errors import InputError
from meiju_core.services import simulate as sim

STORE_BACKENDS = ("sqlite", "postgresql")


@pytest.fixture
def fx(store):
    """60 pool cards; withheld labels: half equal to the prediction, a third of the rest with no
    intent label, one card with none at all."""
    ids = build_fixture(store, n_pool=60, quota=4, threshold=0.0)
    rng = np.random.default_rng(5)
    with store.write() as s:
        preds = {
            (sid, head): label
            for sid, head, label in s.execute(
                select(Prediction.sample_id, Prediction.head, Prediction.label)
            )
        }
        for k, sid in enumerate(ids.pool_ids):
            w = {}
            for head, classes in (("emotion", EMOTIONS), ("intent", INTENTS)):
                p = preds[(sid, head)]
                w[head] = (
                    p if rng.random() < 0.5 else classes[(classes.index(p) + 1) % len(classes)]
                )
            if k % 6 == 0:
                w["intent"] = None
            if k == 7:
                continue
            s.get(Sample, sid).withheld = {**w, "cped_emotion": "raw"}
    return ids


def truth_and_preds(store, fx):
    from meiju_core.services.simulate import withheld_labels

    truth = withheld_labels(store, project_id=fx.project_id)
    with store.read() as s:
        preds = {
            (sid, head): label
            for sid, head, label in s.execute(
                select(Prediction.sample_id, Prediction.head, Prediction.label).where(
                    Prediction.model_version_id == fx.model_version_id
                )
            )
        }
    return truth, preds


def live_labels(store, round_id: int) -> dict[tuple[int, str], tuple[str, str, int]]:
    with store.read() as s:
        return {
            (p.sample_id, p.head): (p.state, p.label, p.decision_id)
            for p in s.scalars(
                select(PseudoLabel).where(
                    PseudoLabel.round_id == round_id, PseudoLabel.head != q.SKIP_HEAD
                )
            )
        }


def test_withheld_labels_keep_schema_classes_only(store, fx):
    truth, _ = truth_and_preds(store, fx)
    assert len(truth) == 59 and fx.pool_ids[7] not in truth
    assert truth[fx.pool_ids[0]]["intent"] is None
    assert all(set(v) == {"emotion", "intent"} for v in truth.values())  # raw CPED keys dropped


def test_a_perfect_annotator_accepts_exactly_the_right_pseudo_labels_within_quotas(store, fx):
    opts = sim.ReviewerOptions(
        action="reject", error_rate=0.0, undo_rate=0.0, seconds_per_decision=2
    )
    log = sim.simulate_review(
        store, round_id=fx.round_id, truth=truth_and_preds(store, fx)[0], options=opts, budget=500
    )
    truth, preds = truth_and_preds(store, fx)
    labels = live_labels(store, fx.round_id)
    # every card once until the queue ran out (cards whose classes are all full leave it)
    assert log.exhausted and log.cards == len({sid for sid, _ in labels}) > 40
    with store.read() as s:
        assert q.queue(s, round_id=fx.round_id, limit=5) == []
    assert log.corrected == 0 and log.errors == 0
    for (sid, head), (state, label, _d) in labels.items():
        if state == "accepted":
            assert label == preds[(sid, head)] == truth[sid][head]
        else:  # rejected: wrong, unknown, or its class quota was full
            assert state == "rejected"
    with store.read() as s:
        counts = q.accepted_counts(s, round_id=fx.round_id)
    assert all(n <= 4 for per in counts.values() for n in per.values())  # the quota holds
    assert log.quota_refused > 0  # the fixture's quotas are small: the page's refusal was met
    assert log.accepted == sum(v[0] == "accepted" for v in labels.values())
    assert log.rejected == sum(v[0] == "rejected" for v in labels.values())
    assert log.seconds == pytest.approx(log.cards * 2)
    # the annotator's decisions carry the seconds per card, in milliseconds
    with store.read() as s:
        spent = set(s.scalars(select(Decision.ms_spent).where(Decision.action == "accept")))
    assert spent <= {2000}


def test_corrections_set_the_withheld_class_and_cost_twice(store, fx):
    opts = sim.ReviewerOptions(
        action="correct", error_rate=0.0, undo_rate=0.0, seconds_per_decision=3
    )
    with store.write() as s:  # quotas out of the way: every correction is taken
        rnd = s.get(ReviewRound, fx.round_id)
        rnd.quotas = {"emotion": dict.fromkeys(EMOTIONS, 99), "intent": dict.fromkeys(INTENTS, 99)}
    truth, preds = truth_and_preds(store, fx)
    log = sim.simulate_review(store, round_id=fx.round_id, truth=truth, options=opts, budget=40)
    labels = live_labels(store, fx.round_id)
    assert log.cards == 40 and not log.exhausted
    assert log.corrected > 0
    corrected_cards = set()
    for (sid, head), (state, label, _d) in labels.items():
        if truth.get(sid, {}).get(head) is None:
            assert state == "rejected"
        else:
            assert state == "accepted" and label == truth[sid][head]
            if label != preds[(sid, head)]:
                corrected_cards.add(sid)
    assert log.seconds == pytest.approx(3 * (40 + len(corrected_cards)))
    assert log.checkpoints[-1]["cards"] == 40


def test_errors_undos_and_a_held_card_go_through_the_services(store, fx):
    """A noisy annotator that presses undo often: every undo is a compensating decision and the
    card is decided again; a card another annotator holds is never decided; quotas hold."""
    with store.read() as s:
        top = q.queue(s, round_id=fx.round_id, limit=1)[0]
    with store.write() as s:  # the other annotator holds the first card for a while
        assert q.lease(s, round_id=fx.round_id, sample_id=top, user_id=fx.annotator_id, seconds=600)
    opts = sim.ReviewerOptions(action="correct", error_rate=0.3, undo_rate=0.3, seed=3)
    truth, _ = truth_and_preds(store, fx)
    log = sim.simulate_review(
        store, round_id=fx.round_id, truth=truth, options=opts, budget=30, every=10
    )
    user = sim.simulated_user(store)
    labels = live_labels(store, fx.round_id)
    with store.read() as s:
        undos = s.scalars(
            select(Decision).where(Decision.action == "undo", Decision.user_id == user["id"])
        ).all()
        undone = {d.undoes_id for d in undos}
        counts = q.accepted_counts(s, round_id=fx.round_id)
        by_sim = set(
            s.scalars(
                select(Decision.sample_id).where(
                    Decision.user_id == user["id"], Decision.action != "undo"
                )
            )
        )
        other_lease = s.scalars(select(ReviewLease).where(ReviewLease.sample_id == top)).one()
    assert log.undos > 0 and len(undos) >= log.undos and log.errors > 0
    assert log.service_calls["undo"] == log.undos
    assert log.service_calls["lease"] >= log.cards and log.service_calls["decide"] >= log.cards
    assert top not in by_sim and other_lease.user_id == fx.annotator_id  # held: never decided
    for (_sid, _head), (_state, _label, decision_id) in labels.items():
        assert decision_id not in undone  # the live state never points at an undone decision
    for d in undos:  # an undone card was decided again
        assert (d.sample_id, d.head) in labels
    assert all(n <= 4 for per in counts.values() for n in per.values())
    decided_cards = {sid for sid, _ in labels}
    assert len(decided_cards) == log.cards == 30
    assert [c["cards"] for c in log.checkpoints] == [10, 20, 30]
    assert log.checkpoints[-1]["labels"] == {
        f"{sid}:{h}": lab for (sid, h), (st, lab, _d) in labels.items() if st == "accepted"
    }


def test_an_expired_lease_of_another_annotator_does_not_block(store, fx):
    with store.read() as s:
        top = q.queue(s, round_id=fx.round_id, limit=1)[0]
    with store.write() as s:
        q.lease(s, round_id=fx.round_id, sample_id=top, user_id=fx.annotator_id, seconds=5)
        s.execute(
            update(ReviewLease)
            .where(ReviewLease.sample_id == top)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    opts = sim.ReviewerOptions(error_rate=0.0, undo_rate=0.0)
    sim.simulate_review(
        store, round_id=fx.round_id, truth=truth_and_preds(store, fx)[0], options=opts, budget=1
    )
    assert {sid for sid, _ in live_labels(store, fx.round_id)} == {top}


def test_seconds_default_to_the_dashboards_median_else_three(store, fx):
    assert sim.median_seconds(store, project_id=fx.project_id) == sim.DEFAULT_SECONDS
    with store.read() as s:
        cards = q.queue(s, round_id=fx.round_id, limit=3)
    for sid, ms in zip(cards, (4000, 6000, 9000), strict=True):
        with store.write() as s:
            q.decide(
                s,
                round_id=fx.round_id,
                sample_id=sid,
                action="reject",
                user_id=fx.annotator_id,
                ms_spent=ms,
            )
    assert sim.median_seconds(store, project_id=fx.project_id) == pytest.approx(6.0)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        (sim.ReviewerOptions(action="ignore"), "action"),
        (sim.ReviewerOptions(error_rate=1.5), "error_rate"),
        (sim.ReviewerOptions(undo_rate=-0.1), "undo_rate"),
        (sim.ReviewerOptions(seconds_per_decision=0), "seconds"),
    ],
)
def test_bad_options_are_refused_by_field(store, fx, options, field):
    with pytest.raises(InputError) as e:
        sim.simulate_review(store, round_id=fx.round_id, truth={}, options=options)
    assert e.value.field == field
    with store.read() as s:
        assert s.scalar(select(func.count()).select_from(Decision)) == 0


def test_budget_and_points_are_checked(store, fx):
    with pytest.raises(InputError) as e:
        sim.simulate_review(store, round_id=fx.round_id, truth={}, budget=0)
    assert e.value.field == "budget"
    with pytest.raises(InputError) as e:
        sim.ValueOptions(budget=1000, every=250, points=(300,)).check()
    assert e.value.field == "points"
    with pytest.raises(InputError) as e:
        sim.ValueOptions(orders=("newest",)).check()
    assert e.value.field == "orders"
    assert sim.ValueOptions(budget=1000, every=250).check() == (250, 500, 750, 1000)
    with pytest.raises(InputError) as e:
        sim.ValueOptions(combos=("confidence/skip",)).check()
    assert e.value.field == "combos"
    assert sim.ValueOptions(combos=("rarest/correct", "confidence/reject")).pairs() == [
        ("rarest", "correct"),
        ("confidence", "reject"),
    ]
    assert len(sim.ValueOptions().pairs()) == 8  # every order with every action


def test_the_automatic_rule_is_matched_to_the_card_count(tmp_path):
    """The joint rule under quotas on both heads takes fewer samples than its budget; the
    benchmark searches the budget for the most samples not over the card count."""
    from types import SimpleNamespace

    calls = []

    def auto_round(mv_id, budget):  # samples taken grow with the budget, slower than it
        calls.append(budget)
        n = int(budget * 0.6)
        return n, {f"{i}:emotion": "happy" for i in range(n)}

    fake = SimpleNamespace(
        cache=tmp_path, d=SimpleNamespace(pool_ids=list(range(5000))), _auto_round=auto_round
    )
    out = sim._Bench.automatic(fake, 336, 1, 500)
    assert out["samples"] <= 500 and out["samples"] >= 497 and out["cards"] == 500
    assert out["budget"] > 500 and len(out["labels"]) == out["samples"]
    assert len(calls) < 15
    again = sim._Bench.automatic(fake, 336, 1, 500)  # cached
    assert again == out and len(calls) == len(set(calls))
