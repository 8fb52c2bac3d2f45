"""The review queue's filters, bulk accept under quotas, and leases between two annotators.

Each test builds the fixture project (``db.fixtures.build_fixture``) in a fresh SQLite store and,
where a filter needs it, rewrites the gold labels and predictions so the expected cards are known
exactly. Timing is not tested here (``benchmarks/bench_queue.py`` measures it).
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from datetime import timedelta

import numpy as np
import pytest
from sqlalchemy import func, select, update

from db import queries as q
from db import thresholds as thr
from db.fixtures import EMOTIONS, INTENTS, build_fixture
from db.models import (
    Decision,
    GoldLabel,
    ModelVersion,
    Prediction,
    PseudoLabel,
    ReviewLease,
    ReviewRound,
    Sample,
    utcnow,
)
from meiju_core.errors import PermissionDenied
from meiju_core.ml.pseudo import select as select_rows
from meiju_core.services import decisions, rounds

ALL_PAIRS = set(itertools.product(EMOTIONS, INTENTS))


# the store, queue, quota, lease and concurrency tests run on both databases (tests/conftest.py)
STORE_BACKENDS = ("sqlite", "postgresql")


@pytest.fixture
def fx(store):
    return build_fixture(store, n_pool=60, quota=3, threshold=0.3)


def accepted(store, head: str, label: str) -> int:
    with store.read() as s:
        return s.scalar(
            select(func.count())
            .select_from(PseudoLabel)
            .where(PseudoLabel.head == head, PseudoLabel.label == label)
            .where(PseudoLabel.state == "accepted")
        )


def reference_queue(store, round_id: int, flt: q.QueueFilter) -> list[int]:
    """The queue computed in Python from every prediction: the order the store must return."""
    with store.read() as s:
        rnd = s.get(ReviewRound, round_id)
        mv = flt.model_version_id or rnd.model_version_id
        rows = s.execute(
            select(
                Prediction.sample_id,
                Prediction.head,
                Prediction.label,
                Prediction.confidence,
                Prediction.paths,
            )
            .join(Sample, Sample.id == Prediction.sample_id)
            .where(Prediction.model_version_id == mv, Sample.split == "pool")
        ).all()
        n_heads = len(rnd.thresholds)
        decided = set(  # a card leaves the queue once every head is decided
            s.scalars(
                select(PseudoLabel.sample_id)
                .where(PseudoLabel.round_id == rnd.id, PseudoLabel.head != q.SKIP_HEAD)
                .group_by(PseudoLabel.sample_id)
                .having(func.count() >= n_heads)
            )
        )
        skipped = list(  # skipped cards wait at the end, the earliest skip first
            s.scalars(
                select(PseudoLabel.sample_id)
                .where(PseudoLabel.round_id == rnd.id, PseudoLabel.head == q.SKIP_HEAD)
                .order_by(PseudoLabel.decision_id)
            )
        )
        head_done = set(
            s.execute(
                select(PseudoLabel.sample_id, PseudoLabel.head).where(
                    PseudoLabel.round_id == rnd.id
                )
            ).all()
        )
        thresholds = dict(rnd.thresholds)
        quotas = {h: dict(per) for h, per in rnd.quotas.items()}
        taken = dict(
            (tuple(k), n)
            for *k, n in s.execute(
                select(PseudoLabel.head, PseudoLabel.label, func.count())
                .where(PseudoLabel.round_id == rnd.id, PseudoLabel.state == "accepted")
                .group_by(PseudoLabel.head, PseudoLabel.label)
            ).all()
        )
    cards: dict[int, dict] = {}
    for sid, head, label, conf, paths in rows:
        cards.setdefault(sid, {})[head] = (label, conf, paths)
    ranked = {}
    for sid, preds in cards.items():
        if sid in decided or (flt.sample_ids is not None and sid not in flt.sample_ids):
            continue
        if flt.head and (sid, flt.head) in head_done:  # the filtered head is decided
            continue
        if flt.unseen_pairs is not None:
            pair = (preds["emotion"][0], preds["intent"][0])
            if pair not in set(flt.unseen_pairs):
                continue
        if flt.disagree and not any(p and len(set(p)) > 1 for _, _, p in preds.values()):
            continue
        confs = [
            conf
            for head, (label, conf, _) in preds.items()
            if (flt.head in (None, head))
            and conf >= thr.threshold_for(thresholds[head], label)
            and taken.get((head, label), 0) < quotas.get(head, {}).get(label, 0)
            and (flt.label is None or label == flt.label)
            and (flt.min_confidence is None or conf >= flt.min_confidence)
            and (flt.max_confidence is None or conf <= flt.max_confidence)
        ]
        if confs:
            ranked[sid] = max(confs)
    main = sorted((i for i in ranked if i not in skipped), key=lambda i: (-ranked[i], i))
    return main + [i for i in skipped if i in ranked]


def set_pool_pairs(store, fx) -> dict[int, tuple[str, str]]:
    """Give pool sample k the predicted pair (EMOTIONS[k % 7], INTENTS[k // 7 % 8]), confident
    enough for the queue; returns {sample id: pair}."""
    pairs = {
        sid: (EMOTIONS[k % len(EMOTIONS)], INTENTS[k // len(EMOTIONS) % len(INTENTS)])
        for k, sid in enumerate(fx.pool_ids)
    }
    with store.write() as s:
        for sid, (emo, intent) in pairs.items():
            for head, label in (("emotion", emo), ("intent", intent)):
                s.execute(
                    update(Prediction)
                    .where(Prediction.sample_id == sid, Prediction.head == head)
                    .values(label=label, confidence=0.5 + sid % 17 / 100)
                )
    return pairs


# --------------------------------------------------------------------------- filters


def test_queue_merges_the_per_head_scans_in_confidence_order(store, fx):
    with store.write() as s:  # decide a few so the scans skip rows
        for sid in fx.pool_ids[:10:3]:
            q.decide(s, round_id=fx.round_id, sample_id=sid, action="reject", user_id=None)
    for flt in (
        q.QueueFilter(),
        q.QueueFilter(head="emotion"),
        q.QueueFilter(min_confidence=0.5, max_confidence=0.8),
        q.QueueFilter(label="neutral"),  # a class name of both heads
    ):
        expected = reference_queue(store, fx.round_id, flt)
        with store.read() as s:
            assert q.queue(s, round_id=fx.round_id, flt=flt, limit=7) == expected[:7]
            assert q.queue(s, round_id=fx.round_id, flt=flt, limit=500) == expected
            assert q.queue_size(s, round_id=fx.round_id, flt=flt) == len(expected)
            base = q.candidate_count(s, round_id=fx.round_id, flt=flt)
            assert q.queue_size(s, round_id=fx.round_id, flt=flt, base=base) == len(expected)


def test_a_card_whose_every_head_predicts_a_full_class_leaves_the_queue(store, fx):
    pairs = set_pool_pairs(store, fx)
    full_emo, full_int = "happy", "questioning"
    # fill both classes' quotas (3 each in the fixture) with cards of other pairs
    fill = {"emotion": full_emo, "intent": full_int}
    with store.write() as s:
        for head, label in fill.items():
            for sid in [i for i, p in pairs.items() if label in p][:3]:
                q.decide(
                    s,
                    round_id=fx.round_id,
                    sample_id=sid,
                    action="accept",
                    heads=[head],
                    user_id=None,
                )
        assert q.open_classes(s, round_id=fx.round_id)["emotion"].count(full_emo) == 0
    both_full = {sid for sid, p in pairs.items() if p == (full_emo, full_int)}
    one_full = {sid for sid, p in pairs.items() if (p[0] == full_emo) != (p[1] == full_int)}
    assert both_full and one_full
    expected = reference_queue(store, fx.round_id, q.QueueFilter())
    with store.read() as s:
        got = q.queue(s, round_id=fx.round_id, limit=1000)
        assert got == expected
        assert not both_full & set(got)  # nothing left to accept as predicted: skipped
        decided = set(s.scalars(select(PseudoLabel.sample_id)))
        assert one_full - decided <= set(got)  # the other head can still be accepted
        assert q.queue_size(s, round_id=fx.round_id) == len(expected)
        # asked for by id, a full card stays out too, unless the caller keeps full classes
        named = q.QueueFilter(sample_ids=tuple(both_full))
        assert q.queue(s, round_id=fx.round_id, flt=named, limit=100) == []
        kept = q.queue(s, round_id=fx.round_id, flt=named, limit=100, skip_full=False)
        assert set(kept) == both_full - decided


def test_unseen_pairs_are_the_zero_cells_of_the_gold_train_labels(store, fx):
    seen = [("happy", "agreeing"), ("sad", "neutral"), ("anger", "questioning")]
    with store.write() as s:
        train = s.scalars(select(Sample.id).where(Sample.split == "train")).all()
        for k, sid in enumerate(train):
            emo, intent = seen[k % len(seen)]
            s.execute(
                update(GoldLabel)
                .where(GoldLabel.sample_id == sid, GoldLabel.head == "emotion")
                .values(label=emo)
            )
            s.execute(
                update(GoldLabel)
                .where(GoldLabel.sample_id == sid, GoldLabel.head == "intent")
                .values(label=intent)
            )
        # valid labels do not count: only the train split defines what was seen
        valid = s.scalars(select(Sample.id).where(Sample.split == "valid")).first()
        s.execute(update(GoldLabel).where(GoldLabel.sample_id == valid).values(label="fear"))
    with store.read() as s:
        zeros = q.unseen_pairs(s, project_id=fx.project_id)
    assert set(zeros) == ALL_PAIRS - set(seen)
    assert len(zeros) == len(EMOTIONS) * len(INTENTS) - 3


def test_unseen_pair_filter_returns_exactly_the_zero_cell_cards(store, fx):
    pairs = set_pool_pairs(store, fx)
    zeros = (("happy", "questioning"), ("neutral", "neutral"), ("fear", "agreeing"))
    expected = {sid for sid, pair in pairs.items() if pair in zeros}
    assert 3 <= len(expected) < len(pairs)
    flt = q.QueueFilter(unseen_pairs=zeros)
    with store.read() as s:
        got = q.queue(s, round_id=fx.round_id, flt=flt, limit=1000)
        assert set(got) == expected
        assert got == reference_queue(store, fx.round_id, flt)
        assert q.queue_size(s, round_id=fx.round_id, flt=flt) == len(expected)
        # combined with a class: only the zero-cell cards predicted neutral for intent
        both = replace_flt(flt, head="intent", label="neutral")
        assert set(q.queue(s, round_id=fx.round_id, flt=both, limit=1000)) == {
            sid for sid in expected if pairs[sid][1] == "neutral"
        }
        nothing = q.QueueFilter(unseen_pairs=())
        assert q.queue(s, round_id=fx.round_id, flt=nothing, limit=10) == []
        assert q.queue_size(s, round_id=fx.round_id, flt=nothing) == 0


def replace_flt(flt: q.QueueFilter, **changes) -> q.QueueFilter:
    from dataclasses import replace

    return replace(flt, **changes)


def test_disagreement_filter_returns_exactly_the_cards_whose_paths_differ(store, fx):
    rng = np.random.default_rng(1)
    disagree = set(rng.choice(fx.pool_ids, size=12, replace=False).tolist())
    no_paths = set(fx.pool_ids[:5]) - disagree  # older predictions: no per-path labels at all
    with store.write() as s:
        for sid in fx.pool_ids:
            label = s.scalar(
                select(Prediction.label).where(
                    Prediction.sample_id == sid, Prediction.head == "intent"
                )
            )
            other = INTENTS[(INTENTS.index(label) + 1) % len(INTENTS)]
            paths = None if sid in no_paths else [label, other if sid in disagree else label]
            s.execute(
                update(Prediction)
                .where(Prediction.sample_id == sid, Prediction.head == "intent")
                .values(paths=paths)
            )
    flt = q.QueueFilter(disagree=True)
    expected = reference_queue(store, fx.round_id, flt)
    assert set(expected) <= disagree and len(expected) >= 8  # the threshold drops a few
    with store.read() as s:
        assert q.queue(s, round_id=fx.round_id, flt=flt, limit=1000) == expected
        assert q.queue_size(s, round_id=fx.round_id, flt=flt) == len(expected)
        cards = q.load_cards(s, model_version_id=fx.model_version_id, sample_ids=expected[:3])
    for c in cards:
        a, b = c.predictions["intent"]["paths"]
        assert a != b and c.predictions["emotion"]["paths"] is None


def test_model_version_filter_ranks_by_that_models_predictions(store, fx):
    with store.write() as s:
        mv = ModelVersion(project_id=fx.project_id, name="other", config={}, status="candidate")
        s.add(mv)
        s.flush()
        other = mv.id
        for k, sid in enumerate(fx.pool_ids[:20]):
            for head, classes in (("emotion", EMOTIONS), ("intent", INTENTS)):
                s.add(
                    Prediction(
                        model_version_id=other,
                        sample_id=sid,
                        head=head,
                        label=classes[0],
                        confidence=0.4 + k / 100,
                        probs=[1.0 / len(classes)] * len(classes),
                    )
                )
    flt = q.QueueFilter(model_version_id=other)
    with store.read() as s:
        got = q.queue(s, round_id=fx.round_id, flt=flt, limit=100)
    assert got == list(reversed(fx.pool_ids[:20]))
    with store.write() as s:  # an accept records that model's class and provenance
        q.decide(
            s,
            round_id=fx.round_id,
            sample_id=got[0],
            action="accept",
            user_id=fx.admin_id,
            heads=["emotion"],
            model_version_id=other,
        )
    with store.read() as s:
        pl = s.scalars(select(PseudoLabel).where(PseudoLabel.sample_id == got[0])).one()
    assert (pl.label, pl.model_version_id, pl.confidence) == ("happy", other, pytest.approx(0.59))


# --------------------------------------------------------------------------- bulk accept


def test_bulk_accept_stops_at_every_quota(store, fx):
    items = [(sid, "emotion", "happy") for sid in fx.pool_ids[:10]]
    items += [(sid, "intent", "wishing") for sid in fx.pool_ids[5:15]]
    with store.write() as s:
        res = q.bulk_accept(s, round_id=fx.round_id, items=items, user_id=fx.admin_id)
    assert (res.accepted, res.full, res.leased) == (6, 14, [])
    assert accepted(store, "emotion", "happy") == 3 and accepted(store, "intent", "wishing") == 3
    with store.read() as s:
        firsts = set(s.scalars(select(PseudoLabel.sample_id).where(PseudoLabel.label == "happy")))
    assert firsts == set(fx.pool_ids[:3])  # taken in the order given
    with store.write() as s:  # every quota is full now: nothing more
        assert q.bulk_accept(s, round_id=fx.round_id, items=items, user_id=None).accepted == 0
    with store.read() as s:
        assert s.scalar(select(func.count()).select_from(Decision)) == 6


def test_bulk_accept_skips_decided_cards_and_non_pool_samples(store, fx):
    with store.write() as s:
        q.decide(s, round_id=fx.round_id, sample_id=fx.pool_ids[0], action="skip", user_id=None)
        q.decide(
            s,
            round_id=fx.round_id,
            sample_id=fx.pool_ids[1],
            action="reject",
            user_id=None,
            heads=["emotion"],
        )
        train = s.scalars(select(Sample.id).where(Sample.split == "train")).first()
    items = [
        (fx.pool_ids[0], "emotion", "sad"),  # skipped card
        (fx.pool_ids[1], "emotion", "sad"),  # emotion rejected
        (fx.pool_ids[1], "intent", "neutral"),  # its intent is still open
        (train, "emotion", "sad"),  # gold-labelled, not a candidate
        (fx.pool_ids[2], "emotion", "sad"),
        (fx.pool_ids[2], "emotion", "sad"),  # a duplicate
    ]
    with store.write() as s:
        res = q.bulk_accept(s, round_id=fx.round_id, items=items, user_id=fx.admin_id)
    assert (res.accepted, res.decided) == (2, 2)
    with store.read() as s:
        rows = s.execute(
            select(PseudoLabel.sample_id, PseudoLabel.head, PseudoLabel.state).order_by(
                PseudoLabel.id
            )
        ).all()
    assert set(rows) == {
        (fx.pool_ids[0], "*", "skipped"),
        (fx.pool_ids[1], "emotion", "rejected"),
        (fx.pool_ids[1], "intent", "accepted"),
        (fx.pool_ids[2], "emotion", "accepted"),
    }


_DECIDER = """
import sys
import time
from db import Store
from db import queries as q
st = Store(sys.argv[1])
with st.read() as s:  # connect before saying so
    q.queue(s, round_id=int(sys.argv[2]), limit=1)
print("ready", flush=True)
sys.stdin.readline()  # both sides start together
ok = 0
for sid in map(int, sys.argv[3:]):
    try:
        with st.write() as s:
            q.decide(s, round_id=int(sys.argv[2]), sample_id=sid, action="accept", user_id=None,
                     heads=["emotion"], labels={"emotion": "anger"})
        ok += 1
    except q.QuotaFull:
        pass
    time.sleep(0.01)  # let the other process in between transactions
print(ok, flush=True)
"""


def test_bulk_accept_never_passes_a_quota_racing_a_decide_in_another_process(store, fx):
    """One process accepts cards one by one while this one bulk accepts the same class in short
    transactions; the quota (10) holds exactly, whoever wins each card."""
    with store.write() as s:
        rnd = s.get(ReviewRound, fx.round_id)
        rnd.quotas = {**rnd.quotas, "emotion": {**rnd.quotas["emotion"], "anger": 10}}
    ids = fx.pool_ids
    proc = subprocess.Popen(
        [sys.executable, "-c", _DECIDER, store.url, str(fx.round_id), *map(str, ids[0::2])],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "ready"
    proc.stdin.write("go\n")
    proc.stdin.flush()
    bulk = 0
    odd = ids[1::2]
    for start in range(0, len(odd), 2):
        with store.write() as s:
            bulk += q.bulk_accept(
                s,
                round_id=fx.round_id,
                items=[(sid, "emotion", "anger") for sid in odd[start : start + 2]],
                user_id=fx.admin_id,
            ).accepted
        time.sleep(0.01)
    single = int(proc.communicate(timeout=120)[0].strip())
    assert bulk + single == 10
    assert accepted(store, "emotion", "anger") == 10


def test_bulk_preview_is_the_automatic_rule_on_the_filtered_queue(store, fx):
    with store.write() as s:  # one class already has an acceptance: 2 of 3 left
        sid = q.queue(s, round_id=fx.round_id, limit=1)[0]
        label = s.scalar(
            select(Prediction.label).where(Prediction.sample_id == sid, Prediction.head == "intent")
        )
        q.decide(
            s, round_id=fx.round_id, sample_id=sid, action="accept", user_id=None, heads=["intent"]
        )
    flt = q.QueueFilter(head="intent", min_confidence=0.4)
    preview = decisions.bulk_preview(store, round_id=fx.round_id, flt=flt)
    with store.read() as s:
        cands = q.filtered_candidates(s, round_id=fx.round_id, flt=flt)["intent"]
    probs = np.array([p for _, p in cands], dtype=np.float64)
    probs /= probs.sum(axis=1, keepdims=True)
    already = [1 if c == label else 0 for c in INTENTS]
    idx = select_rows(probs, threshold=0.3, quotas=[3] * len(INTENTS), already_accepted=already)
    assert [i for i, *_ in preview["items"]] == [cands[k][0] for k in idx]
    assert set(preview["counts"]) == {"intent"}  # the filter names one head
    assert preview["counts"]["intent"][label] <= 2
    assert all(n <= 3 for n in preview["counts"]["intent"].values())
    assert preview["candidates"]["intent"] == len(cands)
    assert sid not in {i for i, *_ in preview["items"]}
    assert all(conf >= 0.4 for *_, conf in preview["items"])

    with pytest.raises(PermissionDenied):
        decisions.bulk_accept(
            store, round_id=fx.round_id, items=preview["items"], user={"id": 2, "role": "annotator"}
        )
    admin = {"id": fx.admin_id, "role": "admin"}
    n = decisions.bulk_accept(store, round_id=fx.round_id, items=preview["items"], user=admin)
    assert n.accepted == len(preview["items"])
    with store.read() as s:
        status = q.quota_status(s, round_id=fx.round_id)["intent"]
    assert all(a <= quota for a, quota in status.values())


# --------------------------------------------------------------------------- leases


def test_two_annotators_never_get_the_same_card(store, fx):
    users = (fx.admin_id, fx.annotator_id)
    shown: dict[int, list[int]] = {u: [] for u in users}
    for _ in range(6):
        for user in users:  # each takes the first card offered to them and leases it
            with store.read() as s:
                offered = q.queue(s, round_id=fx.round_id, user_id=user, limit=3)
            with store.write() as s:
                for sid in offered:
                    if q.lease(s, round_id=fx.round_id, sample_id=sid, user_id=user):
                        break
            shown[user].append(sid)
            other = users[1 - users.index(user)]
            with store.read() as s:  # the other one is no longer offered it
                assert sid not in q.queue(s, round_id=fx.round_id, user_id=other, limit=50)
            with store.write() as s:
                assert not q.lease(s, round_id=fx.round_id, sample_id=sid, user_id=other)
                q.decide(s, round_id=fx.round_id, sample_id=sid, action="skip", user_id=user)
    assert not set(shown[fx.admin_id]) & set(shown[fx.annotator_id])
    assert len(set(shown[fx.admin_id] + shown[fx.annotator_id])) == 12


def test_a_held_card_is_hidden_until_its_lease_expires(store, fx):
    with store.read() as s:
        first = q.queue(s, round_id=fx.round_id, user_id=fx.admin_id, limit=1)[0]
    with store.write() as s:
        assert q.lease(s, round_id=fx.round_id, sample_id=first, user_id=fx.admin_id)
    with store.read() as s:
        assert q.queue(s, round_id=fx.round_id, user_id=fx.annotator_id, limit=1) != [first]
        size = q.queue_size(s, round_id=fx.round_id)
    with store.write() as s:
        s.execute(update(ReviewLease).values(expires_at=utcnow() - timedelta(seconds=1)))
    with store.read() as s:
        assert q.queue(s, round_id=fx.round_id, user_id=fx.annotator_id, limit=1) == [first]
        assert q.queue_size(s, round_id=fx.round_id) == size + 1
    with store.write() as s:  # an expired lease can be taken over
        assert q.lease(s, round_id=fx.round_id, sample_id=first, user_id=fx.annotator_id)


# --------------------------------------------------------------------------- per-class thresholds


def per_class_round(store, fx) -> dict:
    """Give the fixture round per-class emotion thresholds (0.3, 0.45, 0.6, ... by class) and
    one intent threshold; returns the thresholds."""
    th = {
        "emotion": {c: round(0.3 + 0.15 * (k % 5), 2) for k, c in enumerate(EMOTIONS)},
        "intent": 0.5,
    }
    with store.write() as s:
        s.get(ReviewRound, fx.round_id).thresholds = th
        s.get(ReviewRound, fx.round_id).quotas = {
            "emotion": dict.fromkeys(EMOTIONS, 100),
            "intent": dict.fromkeys(INTENTS, 100),
        }
    return th


def test_per_class_thresholds_are_honoured_by_the_queue_and_its_counts(store, fx):
    th = per_class_round(store, fx)
    with store.read() as s:
        rows = s.execute(
            select(Prediction.head, Prediction.label, Prediction.confidence)
            .join(Sample, Sample.id == Prediction.sample_id)
            .where(Prediction.model_version_id == fx.model_version_id, Sample.split == "pool")
        ).all()
    direct: dict = {"emotion": {}, "intent": {}}
    for head, label, conf in rows:
        if conf >= thr.threshold_for(th[head], label):
            direct[head][label] = direct[head].get(label, 0) + 1
    # some emotion predictions pass one class's threshold but would fail another's
    assert any(
        0.3 <= conf < 0.9 and conf < thr.threshold_for(th["emotion"], label)
        for head, label, conf in rows
        if head == "emotion"
    )
    with store.read() as s:
        cands = q.class_candidates(s, model_version_id=fx.model_version_id, thresholds=th)
    assert {h: {c: n for c, n in per.items() if n} for h, per in cands.items()} == direct
    for flt in (
        q.QueueFilter(),
        q.QueueFilter(head="emotion"),
        q.QueueFilter(head="emotion", min_confidence=0.5),
        q.QueueFilter(label="neutral"),
    ):
        expected = reference_queue(store, fx.round_id, flt)
        with store.read() as s:
            assert q.queue(s, round_id=fx.round_id, flt=flt, limit=500) == expected
            assert q.queue_size(s, round_id=fx.round_id, flt=flt) == len(expected)
    with store.read() as s:  # the dashboard's candidates per class read the same thresholds
        from db.analytics import pseudo_label_classes

        table = pseudo_label_classes(s, round_id=fx.round_id)
    assert {r["class"]: r["candidates"] for r in table["emotion"] if r["candidates"]} == {
        c: n for c, n in direct["emotion"].items()
    }


def test_the_below_threshold_guard_reads_the_predicted_class_threshold(store, fx):
    th = per_class_round(store, fx)
    with store.read() as s:
        preds = s.execute(
            select(Prediction.sample_id, Prediction.label, Prediction.confidence)
            .join(Sample, Sample.id == Prediction.sample_id)
            .where(
                Prediction.model_version_id == fx.model_version_id,
                Prediction.head == "emotion",
                Sample.split == "pool",
            )
        ).all()
    below = next(
        (sid, label, c)
        for sid, label, c in preds
        if 0.3 <= c < thr.threshold_for(th["emotion"], label)
    )
    above = next(
        (sid, label, c)
        for sid, label, c in preds
        if thr.threshold_for(th["emotion"], label) <= c and sid != below[0]
    )
    with store.write() as s, pytest.raises(q.BelowThreshold) as e:
        q.decide(
            s,
            round_id=fx.round_id,
            sample_id=below[0],
            action="accept",
            user_id=fx.admin_id,
            heads=["emotion"],
            check_threshold=True,
        )
    assert e.value.threshold == thr.threshold_for(th["emotion"], below[1])
    with store.write() as s:
        d = q.decide(
            s,
            round_id=fx.round_id,
            sample_id=above[0],
            action="accept",
            user_id=fx.admin_id,
            heads=["emotion"],
            check_threshold=True,
        )
    assert d[0].override is None and d[0].label == above[1]


def test_open_round_takes_per_class_thresholds_and_refuses_bad_ones(store, fx):
    from meiju_core.errors import InputError
    from meiju_core.settings import Settings

    settings = Settings.load()
    admin = {"id": fx.admin_id, "role": "admin"}
    th = {"emotion": {"happy": 0.9, "*": 0.4}, "intent": {c: 0.6 for c in INTENTS}}
    plan = rounds.round_plan(
        store,
        settings,
        project_id=fx.project_id,
        model_version_id=fx.model_version_id,
        thresholds=th,
    )
    # a mapping names every class; one whose classes are all equal is stored as the number
    assert plan["thresholds"]["emotion"] == {c: (0.9 if c == "happy" else 0.4) for c in EMOTIONS}
    assert plan["thresholds"]["intent"] == 0.6
    row = next(r for r in plan["classes"]["emotion"] if r["class"] == "happy")
    assert row["threshold"] == 0.9
    rid = rounds.open_round(
        store,
        settings,
        project_id=fx.project_id,
        model_version_id=fx.model_version_id,
        thresholds=th,
        user=admin,
    )
    with store.read() as s:
        assert s.get(ReviewRound, rid).thresholds == plan["thresholds"]
    bad = [
        ({"emotion": {"happy": 1.5, "*": 0.4}}, "threshold emotion happy"),
        ({"emotion": {"joyful": 0.5, "*": 0.4}}, "threshold emotion"),
        ({"emotion": {"happy": 0.5}}, "threshold emotion"),  # the other classes have none
    ]
    for value, field in bad:
        with pytest.raises(InputError) as e:
            rounds.round_plan(
                store,
                settings,
                project_id=fx.project_id,
                model_version_id=fx.model_version_id,
                thresholds=value,
            )
        assert e.value.field == field, e.value
