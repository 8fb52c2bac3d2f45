"""A card is decided once (issue 10, item 1) and both heads are reviewed (issue 9, item 3).

Store-level rules: a lease refuses a decided card and lasts at least a second; a decision
refuses a card decided or held by another user (an admin may override, and it is logged); a
skip releases the lease and sends the card to the end of the queue; accepting one head keeps the
card for the other; bulk accept skips held cards, names them, is undone as one unit and counts
as one bulk action. The concurrency test runs 8 annotator processes x 200 decisions and a bulk
accept against one store and checks that nothing is lost, decided twice or past a quota.

``db_url`` is the store under test; it is parametrised so another database (PostgreSQL) can be
added as a parameter without changing the tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter

import pytest
from sqlalchemy import func, select, update

from db import Store
from db import analytics as A
from db import queries as q
from db.fixtures import build_fixture
from db.models import AuditEvent, Decision, Prediction, PseudoLabel, ReviewLease, ReviewRound, User
from meiju_core.errors import BelowThreshold, CardTaken, PermissionDenied
from meiju_core.services import decisions

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """The database URL each test runs on: a SQLite file, and a fresh database on the session's
    throw-away PostgreSQL server (``tests/conftest.py``)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'meiju.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def db(db_url):
    st = Store(db_url)
    st.upgrade()
    yield st
    st.dispose()


@pytest.fixture
def fx(db):
    return build_fixture(db, n_pool=40, quota=50, threshold=0.0)


def ann2(db) -> int:
    with db.write() as s:
        u = User(name="ann2", role="annotator")
        s.add(u)
        s.flush()
        return u.id


def queue(db, fx, user_id=None, limit=100) -> list[int]:
    with db.read() as s:
        return q.queue(s, round_id=fx.round_id, user_id=user_id, limit=limit)


# --------------------------------------------------------------------------- leases


def test_lease_refuses_a_decided_card_and_a_lease_under_one_second(db, fx):
    sid = fx.pool_ids[0]
    with db.write() as s:
        q.decide(s, round_id=fx.round_id, sample_id=sid, action="reject", user_id=fx.admin_id)
    with db.write() as s:
        assert not q.lease(s, round_id=fx.round_id, sample_id=sid, user_id=fx.annotator_id)
    for bad in (0, 0.5, -3, float("nan")):
        with pytest.raises(q.QueueError, match="at least 1 s"), db.write() as s:
            q.lease(s, round_id=fx.round_id, sample_id=fx.pool_ids[1], user_id=None, seconds=bad)


def test_skip_releases_the_lease_and_sends_the_card_to_the_end(db, fx):
    first = queue(db, fx)[0]
    with db.write() as s:
        assert q.lease(s, round_id=fx.round_id, sample_id=first, user_id=fx.annotator_id)
        q.decide(s, round_id=fx.round_id, sample_id=first, action="skip", user_id=fx.annotator_id)
    with db.read() as s:
        assert s.scalar(select(func.count()).select_from(ReviewLease)) == 0
    order = queue(db, fx)
    assert order[-1] == first and first not in order[:-1]  # still in the queue, at the end
    second = order[0]
    with db.write() as s:  # a later skip goes behind it
        q.decide(s, round_id=fx.round_id, sample_id=second, action="skip", user_id=None)
    assert queue(db, fx)[-2:] == [first, second]
    with db.write() as s:  # a skipped card is still decided normally
        q.decide(s, round_id=fx.round_id, sample_id=first, action="reject", user_id=None)
    assert first not in queue(db, fx)


# --------------------------------------------------------------------------- decided once


def test_decide_refuses_a_card_another_user_decided(db, fx):
    other = ann2(db)
    sid = fx.pool_ids[0]
    decisions.decide(
        db,
        round_id=fx.round_id,
        sample_id=sid,
        action="accept",
        user={"id": fx.annotator_id},
        confirm_below_threshold=True,
    )
    with pytest.raises(CardTaken, match="already accepted by ann") as e:
        decisions.decide(
            db, round_id=fx.round_id, sample_id=sid, action="reject", user={"id": other}
        )
    assert e.value.by == "ann" and e.value.decided
    with pytest.raises(CardTaken):  # one head named explicitly: refused as well
        decisions.decide(
            db,
            round_id=fx.round_id,
            sample_id=sid,
            action="reject",
            user={"id": other},
            heads=["intent"],
        )
    with pytest.raises(PermissionDenied):  # only an admin overrides
        decisions.decide(
            db,
            round_id=fx.round_id,
            sample_id=sid,
            action="reject",
            user={"id": other},
            admin_override=True,
        )
    with db.read() as s:
        assert set(s.scalars(select(PseudoLabel.state))) == {"accepted"}
    decisions.decide(
        db,
        round_id=fx.round_id,
        sample_id=sid,
        action="reject",
        user={"id": fx.admin_id, "role": "admin"},
        admin_override=True,
    )
    with db.read() as s:
        assert set(s.scalars(select(PseudoLabel.state))) == {"rejected"}
        logged = s.scalars(select(AuditEvent).where(AuditEvent.action == "admin_redecide")).one()
        assert logged.payload["replaced"]["emotion"][0] == "accepted"
        marks = s.scalars(select(Decision.override).where(Decision.action == "reject")).all()
    assert marks == ["admin_redecide", "admin_redecide"]


def test_decide_refuses_a_card_another_user_holds(db, fx):
    sid = fx.pool_ids[0]
    with db.write() as s:
        assert q.lease(s, round_id=fx.round_id, sample_id=sid, user_id=fx.annotator_id)
    with pytest.raises(CardTaken, match="being reviewed by ann") as e:
        decisions.decide(
            db, round_id=fx.round_id, sample_id=sid, action="reject", user={"id": fx.admin_id}
        )
    assert not e.value.decided
    decisions.decide(  # the holder decides
        db, round_id=fx.round_id, sample_id=sid, action="reject", user={"id": fx.annotator_id}
    )


def test_one_head_accepted_keeps_the_card_for_the_other(db, fx):
    sid = queue(db, fx)[0]
    with db.write() as s:
        q.lease(s, round_id=fx.round_id, sample_id=sid, user_id=fx.annotator_id)
        q.decide(
            s,
            round_id=fx.round_id,
            sample_id=sid,
            action="accept",
            user_id=fx.annotator_id,
            heads=["emotion"],
        )
    assert sid in queue(db, fx, user_id=fx.annotator_id)  # intent is still to review
    with db.read() as s:  # and the annotator keeps the card
        assert s.scalar(select(ReviewLease.user_id)) == fx.annotator_id
    with db.write() as s:  # X on the card now decides the head left, not emotion again
        (d,) = q.decide(
            s, round_id=fx.round_id, sample_id=sid, action="reject", user_id=fx.annotator_id
        )
        assert d.head == "intent"
    assert sid not in queue(db, fx)
    with db.read() as s:
        assert s.scalar(select(func.count()).select_from(ReviewLease)) == 0


def test_accept_below_the_threshold_asks_for_confirmation(db, fx):
    sid = fx.pool_ids[0]
    with db.write() as s:
        s.get(ReviewRound, fx.round_id).thresholds = {"emotion": 0.0, "intent": 0.0}
        s.execute(update(Prediction).where(Prediction.sample_id == sid).values(confidence=0.9))
        s.execute(
            update(Prediction)
            .where(Prediction.sample_id == sid, Prediction.head == "intent")
            .values(confidence=0.2)
        )
        s.get(ReviewRound, fx.round_id).thresholds = {"emotion": 0.5, "intent": 0.5}
    user = {"id": fx.annotator_id}
    with pytest.raises(BelowThreshold) as e:
        decisions.decide(db, round_id=fx.round_id, sample_id=sid, action="accept", user=user)
    assert (e.value.head, e.value.threshold) == ("intent", 0.5)
    with db.read() as s:
        assert s.scalar(select(func.count()).select_from(Decision)) == 0  # nothing written
    # a class chosen by the annotator is a human label: no confirmation
    decisions.decide(
        db, round_id=fx.round_id, sample_id=sid, action="accept", user=user, heads=["emotion"]
    )
    decisions.decide(
        db,
        round_id=fx.round_id,
        sample_id=sid,
        action="accept",
        user=user,
        confirm_below_threshold=True,
    )
    with db.read() as s:
        rows = s.execute(select(Decision.head, Decision.override).order_by(Decision.id)).all()
    assert rows == [("emotion", None), ("intent", "below_threshold")]


# --------------------------------------------------------------------------- bulk accept


def test_bulk_accept_skips_held_cards_undoes_as_one_and_counts_once(db, fx):
    held = fx.pool_ids[0]
    with db.write() as s:
        q.lease(s, round_id=fx.round_id, sample_id=held, user_id=fx.annotator_id)
    admin = {"id": fx.admin_id, "role": "admin"}
    items = [(sid, "emotion", "neutral") for sid in fx.pool_ids[:5]]
    with db.write() as s:  # predictions as the items say, so they are candidates
        s.execute(
            update(Prediction)
            .where(Prediction.sample_id.in_(fx.pool_ids[:5]), Prediction.head == "emotion")
            .values(label="neutral")
        )
    res = decisions.bulk_accept(db, round_id=fx.round_id, items=items, user=admin)
    assert res.accepted == 4 and res.leased == [held]
    decisions.decide(  # a card decision after the bulk
        db, round_id=fx.round_id, sample_id=fx.pool_ids[10], action="reject", user=admin
    )
    with db.read() as s:
        (row,) = A.annotator_throughput(s, round_id=fx.round_id)
    assert (row["cards"], row["bulk_actions"], row["bulk_accepted"]) == (1, 1, 4)
    assert decisions.undo(db, round_id=fx.round_id, user=admin) == fx.pool_ids[10]
    decisions.undo(db, round_id=fx.round_id, user=admin)  # the whole bulk in one undo
    with db.read() as s:
        assert s.scalar(select(func.count()).select_from(PseudoLabel)) == 0
        hist = q.history(s, round_id=fx.round_id, user_id=fx.admin_id)
        assert hist[1]["action"] == "bulk accept" and hist[1]["cards"] == 4
        assert hist[1]["undone"]
    assert decisions.undo(db, round_id=fx.round_id, user=admin) is None


# --------------------------------------------------------------------------- concurrency


_ANNOTATOR = r"""
import sys
from db import Store
from db import queries as q

url, round_id, user_id, n, leased = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1"
st = Store(url)
with st.read() as s:
    q.queue(s, round_id=round_id, limit=1)
print("ready", flush=True)
sys.stdin.readline()
done, refused, ids = 0, 0, []
while done < n:
    with st.read() as s:
        cards = q.queue(s, round_id=round_id, user_id=user_id, limit=8, skip_full=False)
    if not cards:
        break
    for k, sid in enumerate(cards):
        if done >= n:
            break
        if leased:  # the app's way: lease the card, then decide
            with st.write() as s:
                if not q.lease(s, round_id=round_id, sample_id=sid, user_id=user_id, seconds=30):
                    refused += 1
                    continue
        # without a lease: decide straight from a queue read that may be stale by now
        action = "accept" if (sid + user_id) % 3 else "reject"
        try:
            with st.write() as s:
                ds = q.decide(s, round_id=round_id, sample_id=sid, action=action, user_id=user_id)
                ids += [d.id for d in ds]
            done += 1
        except q.QuotaFull:  # the class filled meanwhile: reject the card instead
            try:
                with st.write() as s:
                    ds = q.decide(s, round_id=round_id, sample_id=sid, action="reject", user_id=user_id)
                    ids += [d.id for d in ds]
                done += 1
            except (q.AlreadyDecided, q.CardLeased):
                refused += 1
        except (q.AlreadyDecided, q.CardLeased):
            refused += 1
print(done, refused, ",".join(map(str, ids)), flush=True)
"""


def test_eight_annotators_and_a_bulk_accept_decide_every_card_once(db):
    """8 processes x 200 card decisions (half lease first, half decide from stale queue reads)
    and an admin's bulk accept: 0 decisions lost, 0 (sample, head) decided twice, 0 quotas
    passed."""
    n_procs, per_proc = 8, int(os.environ.get("MEIJU_CONCURRENCY_DECISIONS", "200"))
    fx = build_fixture(
        db,
        n_pool=n_procs * per_proc + 600,
        n_train=20,
        n_valid=5,
        n_test=5,
        quota=60,
        threshold=0.0,
    )
    users = []
    with db.write() as s:
        for k in range(n_procs):
            u = User(name=f"annotator{k}", role="annotator")
            s.add(u)
            s.flush()
            users.append(u.id)
    env = {**os.environ, "PYTHONPATH": REPO}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                _ANNOTATOR,
                db.url,
                str(fx.round_id),
                str(uid),
                str(per_proc),
                "1" if k % 2 == 0 else "0",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO,
        )
        for k, uid in enumerate(users)
    ]
    for p in procs:
        assert p.stdout.readline().strip() == "ready", p.stderr.read()
    with db.read() as s:  # the admin's bulk accept of the queue's top cards, the annotators' too
        top = q.queue(s, round_id=fx.round_id, user_id=fx.admin_id, limit=400)
        items = s.execute(
            select(Prediction.sample_id, Prediction.head, Prediction.label).where(
                Prediction.sample_id.in_(top), Prediction.model_version_id == fx.model_version_id
            )
        ).all()
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    # at once, while they start: a bulk accept sent 0.5 s later once waited for the write lock
    # until the annotators had decided 398 of its 400 cards (accepted 0) on a quiet machine
    bulk = decisions.bulk_accept(
        db, round_id=fx.round_id, items=list(items), user={"id": fx.admin_id}
    )
    returned: list[int] = []
    done = 0
    for p in procs:
        out, err = p.communicate(timeout=900)
        assert p.returncode == 0, err
        n, _refused, ids = out.split(" ", 2)
        done += int(n)
        returned += [int(i) for i in ids.strip().split(",") if i]
    assert done == n_procs * per_proc
    with db.read() as s:
        live = s.execute(
            select(Decision.id, Decision.sample_id, Decision.head).where(
                Decision.round_id == fx.round_id, Decision.action != "undo"
            )
        ).all()
        rnd = s.get(ReviewRound, fx.round_id)
        counts = q.accepted_counts(s, round_id=fx.round_id)
        states = s.scalar(
            select(func.count()).select_from(PseudoLabel).where(PseudoLabel.round_id == fx.round_id)
        )
    stored = {i for i, _, _ in live}
    assert set(returned) <= stored, "a committed decision was lost"
    assert len(stored) == len(returned) + bulk.accepted
    twice = [k for k, n in Counter((sid, h) for _, sid, h in live).items() if n > 1]
    assert twice == [], f"{len(twice)} (sample, head) decided twice"
    over = [
        (h, c, n, rnd.quotas[h].get(c, 0))
        for h, per in counts.items()
        for c, n in per.items()
        if n > rnd.quotas[h].get(c, 0)
    ]
    assert over == [], f"quota overruns: {over}"
    assert states == len(stored)
    assert bulk.accepted > 0
