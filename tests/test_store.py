"""The store: migrations, pragmas, the review queue, decisions under quotas, undo, leases."""

from __future__ import annotations

import subprocess
import sys

import pytest
from sqlalchemy import func, inspect, select

from db import queries as q
from db.fixtures import build_fixture
from db.models import Base, Decision, PseudoLabel, ReviewRound

# the store, queue, quota, lease and concurrency tests run on both databases (tests/conftest.py)
STORE_BACKENDS = ("sqlite", "postgresql")


@pytest.fixture
def fx(store):
    return build_fixture(store, n_pool=60, quota=3, threshold=0.3)


def test_migration_creates_every_model_table(store):
    tables = set(inspect(store.read_engine).get_table_names())
    assert set(Base.metadata.tables) <= tables


def test_migration_matches_models(store):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with store.read_engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_sqlite_pragmas(store):
    if not store.is_sqlite:
        pytest.skip("SQLite only")
    with store.read() as s:
        conn = s.connection()
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000


def test_write_rolls_back_on_error(store, fx):
    with pytest.raises(RuntimeError), store.write() as s:
        q.decide(s, round_id=fx.round_id, sample_id=fx.pool_ids[0], action="skip", user_id=None)
        raise RuntimeError("boom")
    with store.read() as s:
        assert s.scalar(select(func.count()).select_from(Decision)) == 0


def test_queue_orders_by_confidence_and_skips_decided(store, fx):
    with store.read() as s:
        first = q.queue(s, round_id=fx.round_id, limit=5)
        cards = q.load_cards(s, model_version_id=fx.model_version_id, sample_ids=first)
    confs = [max(p["confidence"] for p in c.predictions.values()) for c in cards]
    assert confs == sorted(confs, reverse=True)
    assert all(c >= 0.3 for c in confs)
    with store.write() as s:
        q.decide(s, round_id=fx.round_id, sample_id=first[0], action="reject", user_id=fx.admin_id)
    with store.read() as s:
        assert q.queue(s, round_id=fx.round_id, limit=1) == [first[1]]


def test_accept_records_decisions_and_pseudo_labels(store, fx):
    with store.read() as s:
        sid = q.queue(s, round_id=fx.round_id, limit=1)[0]
        card = q.load_cards(s, model_version_id=fx.model_version_id, sample_ids=[sid])[0]
    with store.write() as s:
        ds = q.decide(
            s,
            round_id=fx.round_id,
            sample_id=sid,
            action="accept",
            user_id=fx.annotator_id,
            ms_spent=850,
        )
    assert [d.head for d in ds] == ["emotion", "intent"]
    with store.read() as s:
        pls = s.scalars(select(PseudoLabel).where(PseudoLabel.sample_id == sid)).all()
        assert {(p.head, p.label, p.state) for p in pls} == {
            ("emotion", card.predictions["emotion"]["label"], "accepted"),
            ("intent", card.predictions["intent"]["label"], "accepted"),
        }
        status = q.quota_status(s, round_id=fx.round_id)
        assert status["emotion"][card.predictions["emotion"]["label"]] == (1, 3)


def test_quota_is_never_exceeded(store, fx):
    with store.read() as s:
        ids = q.queue(s, round_id=fx.round_id, flt=q.QueueFilter(head="emotion"), limit=200)
    accepted = 0
    for sid in ids:
        try:
            with store.write() as s:
                q.decide(
                    s,
                    round_id=fx.round_id,
                    sample_id=sid,
                    action="accept",
                    user_id=fx.admin_id,
                    heads=["emotion"],
                    labels={"emotion": "happy"},
                )
            accepted += 1
        except q.QuotaFull as e:
            assert (e.head, e.label, e.quota, e.accepted) == ("emotion", "happy", 3, 3)
    assert accepted == 3
    with store.read() as s:
        assert q.accepted_counts(s, round_id=fx.round_id)["emotion"] == {"happy": 3}


_RACER = """
import sys
from db import Store
from db import queries as q
st = Store(sys.argv[1])
ok = 0
for sid in map(int, sys.argv[3:]):
    try:
        with st.write() as s:
            q.decide(s, round_id=int(sys.argv[2]), sample_id=sid, action="accept", user_id=None,
                     heads=["emotion"], labels={"emotion": "anger"})
        ok += 1
    except q.QuotaFull:
        pass
print(ok)
"""


def test_two_writers_cannot_pass_a_quota(store, fx):
    """Two processes race to accept the same class; the quota (3) holds exactly."""
    ids = fx.pool_ids[:40]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, store.url, str(fx.round_id), *map(str, part)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for part in (ids[0::2], ids[1::2])
    ]
    accepted = [int(p.communicate(timeout=120)[0].strip()) for p in procs]
    assert sum(accepted) == 3
    with store.read() as s:
        n = s.scalar(
            select(func.count())
            .select_from(PseudoLabel)
            .where(PseudoLabel.label == "anger", PseudoLabel.state == "accepted")
        )
    assert n == 3


def test_undo_is_a_compensating_decision(store, fx):
    with store.read() as s:
        sid = q.queue(s, round_id=fx.round_id, limit=1)[0]
    with store.write() as s:
        q.decide(s, round_id=fx.round_id, sample_id=sid, action="accept", user_id=fx.admin_id)
    with store.write() as s:
        assert q.undo(s, round_id=fx.round_id, user_id=fx.admin_id) == sid
    with store.read() as s:
        actions = [d.action for d in s.scalars(select(Decision).order_by(Decision.id))]
        assert actions == ["accept", "accept", "undo", "undo"]
        assert s.scalar(select(func.count()).select_from(PseudoLabel)) == 0
        assert q.queue(s, round_id=fx.round_id, limit=1) == [sid]
        hist = q.history(s, round_id=fx.round_id, user_id=fx.admin_id)
        assert hist[0]["sample_id"] == sid and hist[0]["undone"]
    with store.write() as s:  # nothing left to undo
        assert q.undo(s, round_id=fx.round_id, user_id=fx.admin_id) is None


def test_skip_leaves_queue_and_undo_restores(store, fx):
    with store.read() as s:
        a, b = q.queue(s, round_id=fx.round_id, limit=2)
    with store.write() as s:
        q.decide(s, round_id=fx.round_id, sample_id=a, action="skip", user_id=fx.admin_id)
    with store.read() as s:
        assert q.queue(s, round_id=fx.round_id, limit=1) == [b]
    with store.write() as s:
        q.undo(s, round_id=fx.round_id, user_id=fx.admin_id)
    with store.read() as s:
        assert q.queue(s, round_id=fx.round_id, limit=1) == [a]


def test_lease_hides_a_card_from_other_annotators(store, fx):
    with store.read() as s:
        first = q.queue(s, round_id=fx.round_id, user_id=fx.admin_id, limit=1)[0]
    with store.write() as s:
        assert q.lease(s, round_id=fx.round_id, sample_id=first, user_id=fx.admin_id)
    with store.write() as s:
        assert not q.lease(s, round_id=fx.round_id, sample_id=first, user_id=fx.annotator_id)
    with store.read() as s:
        assert q.queue(s, round_id=fx.round_id, user_id=fx.admin_id, limit=1) == [first]
        assert first not in q.queue(s, round_id=fx.round_id, user_id=fx.annotator_id, limit=5)


def test_closed_round_refuses_decisions(store, fx):
    with store.write() as s:
        s.get(ReviewRound, fx.round_id).status = "closed"
    with pytest.raises(q.QueueError, match="closed"), store.write() as s:
        q.decide(s, round_id=fx.round_id, sample_id=fx.pool_ids[0], action="reject", user_id=None)


def test_filters_by_head_class_and_confidence(store, fx):
    flt = q.QueueFilter(head="intent", label="questioning", min_confidence=0.4, max_confidence=0.9)
    with store.read() as s:
        ids = q.queue(s, round_id=fx.round_id, flt=flt, limit=100)
        cards = q.load_cards(s, model_version_id=fx.model_version_id, sample_ids=ids)
        assert q.queue_size(s, round_id=fx.round_id, flt=flt) == len(ids)
    assert cards, "the fixture should have some questioning predictions in range"
    for c in cards:
        p = c.predictions["intent"]
        assert p["label"] == "questioning" and 0.4 <= p["confidence"] <= 0.9


def test_candidate_counts_and_demo_threshold(store, fx):
    from meiju_core.services import demo, rounds

    counts = rounds.candidate_counts(
        store, model_version_id=fx.model_version_id, thresholds=[0.3, 0.999999]
    )
    assert set(counts) == {"emotion", "intent"}
    assert all(c[0.999999] == 0 for c in counts.values())  # nobody reaches it, still reported
    assert all(0 < c[0.3] <= 60 for c in counts.values())  # pool samples only (60 in the fixture)
    # the fixture's Dirichlet confidences reach 0.5 on far fewer than 200 pool samples per head
    assert demo.demo_threshold(store, fx.model_version_id) == {"emotion": 0.5, "intent": 0.5}
    # with a lower bar each head gets the highest threshold its own confidences reach
    per_head = demo.demo_threshold(store, fx.model_version_id, min_candidates=3)
    for head, t in per_head.items():
        reach = rounds.candidate_counts(
            store, model_version_id=fx.model_version_id, thresholds=list(demo.DEMO_THRESHOLDS)
        )[head]
        assert reach[t] >= 3
        assert all(reach[h] < 3 for h in demo.DEMO_THRESHOLDS if h > t)


def test_queue_offers_only_pool_samples(store, fx):
    with store.read() as s:
        ids = q.queue(s, round_id=fx.round_id, limit=1000)
    assert ids and set(ids) <= set(fx.pool_ids)


def test_undo_by_decision_id_restores_the_whole_card(store, fx):
    with store.read() as s:
        sid = q.queue(s, round_id=fx.round_id, limit=1)[0]
    with store.write() as s:
        emotion, _intent = q.decide(
            s, round_id=fx.round_id, sample_id=sid, action="accept", user_id=fx.admin_id
        )
    with store.write() as s:
        assert q.undo(s, round_id=fx.round_id, user_id=fx.admin_id, decision_id=emotion.id) == sid
    with store.read() as s:
        assert s.scalar(select(func.count()).select_from(PseudoLabel)) == 0
        assert sid in q.queue(s, round_id=fx.round_id, limit=5)


def test_racing_leases_of_one_card_give_it_to_one_annotator(store, fx):
    """Eight annotators lease the same card at once: one gets it, the others are refused, and no
    one gets a database error (on PostgreSQL the round row is locked, as BEGIN IMMEDIATE does
    on SQLite)."""
    import threading

    from db.models import User

    with store.write() as s:
        users = [User(name=f"racer{k}", role="annotator") for k in range(8)]
        s.add_all(users)
        s.flush()
        user_ids = [u.id for u in users]
    sid, results, errors = fx.pool_ids[0], [], []
    barrier = threading.Barrier(len(user_ids))

    def racer(uid: int) -> None:
        try:
            barrier.wait()
            with store.write() as s:
                results.append(q.lease(s, round_id=fx.round_id, sample_id=sid, user_id=uid))
        except Exception as e:  # noqa: BLE001 - the test reports any error
            errors.append(repr(e))

    threads = [threading.Thread(target=racer, args=(uid,)) for uid in user_ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and sorted(results) == [False] * 7 + [True]
