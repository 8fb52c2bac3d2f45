"""A round's queue order (issue 11.2): each order serves the cards in its order, on constructed
predictions and gold labels, on SQLite and PostgreSQL; the order is a round setting (store,
service and command line). Timing: benchmarks/bench_queue.py."""

from __future__ import annotations

import pytest
from sqlalchemy import delete, func, select, update
from typer.testing import CliRunner

from db import queries as q
from db.fixtures import EMOTIONS, INTENTS, build_fixture
from db.models import GoldLabel, ModelVersion, Prediction, PseudoLabel, ReviewRound, Sample
from meiju_core.errors import InputError
from meiju_core.services import rounds

STORE_BACKENDS = ("sqlite", "postgresql")


@pytest.fixture
def fx(store):
    return build_fixture(store, n_pool=42, quota=100, threshold=0.0)


def set_order(store, round_id: int, order: str) -> None:
    with store.write() as s:
        s.execute(update(ReviewRound).where(ReviewRound.id == round_id).values(queue_order=order))


def predictions(store, fx) -> dict[int, dict[str, tuple[str, float, list | None]]]:
    with store.read() as s:
        rows = s.execute(
            select(
                Prediction.sample_id,
                Prediction.head,
                Prediction.label,
                Prediction.confidence,
                Prediction.paths,
            ).where(Prediction.model_version_id == fx.model_version_id)
        ).all()
    out: dict[int, dict] = {}
    for sid, head, label, conf, paths in rows:
        if sid in fx.pool_ids:
            out.setdefault(sid, {})[head] = (label, conf, paths)
    return out


def drain(store, fx, limit: int = 1000) -> list[int]:
    with store.read() as s:
        return q.queue(s, round_id=fx.round_id, limit=limit)


def test_confidence_order_is_the_highest_head_confidence_first(store, fx):
    preds = predictions(store, fx)
    best = {sid: max(c for _, c, _ in p.values()) for sid, p in preds.items()}
    expected = sorted(best, key=lambda i: (-best[i], i))
    assert drain(store, fx) == expected
    with store.read() as s:
        assert q.queue(s, round_id=fx.round_id, limit=5) == expected[:5]


def test_uncertainty_order_is_the_lowest_head_confidence_first(store, fx):
    set_order(store, fx.round_id, "uncertainty")
    preds = predictions(store, fx)
    low = {sid: min(c for _, c, _ in p.values()) for sid, p in preds.items()}
    expected = sorted(low, key=lambda i: (low[i], i))
    assert drain(store, fx) == expected
    with store.read() as s:
        assert q.queue(s, round_id=fx.round_id, limit=3) == expected[:3]
        # a threshold keeps its meaning: heads under it do not rank the card
        s.execute(
            update(ReviewRound)
            .where(ReviewRound.id == fx.round_id)
            .values(thresholds={"emotion": 0.6, "intent": 0.6})
        )
    lows = {
        sid: min(c for _, c, _ in p.values() if c >= 0.6)
        for sid, p in preds.items()
        if any(c >= 0.6 for _, c, _ in p.values())
    }
    assert drain(store, fx) == sorted(lows, key=lambda i: (lows[i], i))


def test_uncertainty_order_passes_decided_cards_and_keeps_skips_last(store, fx):
    set_order(store, fx.round_id, "uncertainty")
    first = drain(store, fx)
    with store.write() as s:
        q.decide(s, round_id=fx.round_id, sample_id=first[0], action="reject", user_id=None)
        q.decide(s, round_id=fx.round_id, sample_id=first[1], action="skip", user_id=None)
    assert drain(store, fx) == [*first[2:], first[1]]


def test_disagreement_order_puts_unseen_class_pairs_first(store, fx):
    """Cards whose (emotion, intent) pair never occurs in the gold train labels come first, most
    confident first, then every other card by confidence."""
    set_order(store, fx.round_id, "disagreement")
    with store.write() as s:  # gold train: only (neutral, questioning) and (happy, agreeing)
        train = s.scalars(
            select(Sample.id).where(Sample.project_id == fx.project_id, Sample.split == "train")
        ).all()
        s.execute(delete(GoldLabel).where(GoldLabel.sample_id.in_(train)))
        for k, sid in enumerate(train):
            emo, intent = (("neutral", "questioning"), ("happy", "agreeing"))[k % 2]
            s.add(GoldLabel(sample_id=sid, head="emotion", label=emo, source="fixture"))
            s.add(GoldLabel(sample_id=sid, head="intent", label=intent, source="fixture"))
        for k, sid in enumerate(fx.pool_ids):  # a third of the pool predicts a seen pair
            if k % 3 == 0:
                emo, intent = (("neutral", "questioning"), ("happy", "agreeing"))[k % 2]
                for head, label in (("emotion", emo), ("intent", intent)):
                    s.execute(
                        update(Prediction)
                        .where(Prediction.sample_id == sid, Prediction.head == head)
                        .values(label=label)
                    )
    preds = predictions(store, fx)
    best = {sid: max(c for _, c, _ in p.values()) for sid, p in preds.items()}
    seen = {("neutral", "questioning"), ("happy", "agreeing")}
    unseen = [i for i in best if (preds[i]["emotion"][0], preds[i]["intent"][0]) not in seen]
    rest = [i for i in best if i not in unseen]
    expected = sorted(unseen, key=lambda i: (-best[i], i)) + sorted(
        rest, key=lambda i: (-best[i], i)
    )
    assert len(rest) == 14 and drain(store, fx) == expected
    with store.read() as s:
        assert q.queue(s, round_id=fx.round_id, limit=30) == expected[:30]  # across the parts


def test_disagreement_order_puts_disagreeing_ensemble_members_first(store, fx):
    set_order(store, fx.round_id, "disagreement")
    with store.write() as s:  # every gold pair seen: only the members' disagreement ranks
        s.get(ModelVersion, fx.model_version_id).preset = "ensemble"
        train = s.scalars(
            select(Sample.id).where(Sample.project_id == fx.project_id, Sample.split == "train")
        ).all()
        s.execute(delete(GoldLabel).where(GoldLabel.sample_id.in_(train)))
        for k, (emo, intent) in enumerate((e, i) for e in EMOTIONS for i in INTENTS):
            sid = train[k % len(train)]
            if k < len(train):
                s.add(GoldLabel(sample_id=sid, head="emotion", label=emo, source="fixture"))
                s.add(GoldLabel(sample_id=sid, head="intent", label=intent, source="fixture"))
    with store.read() as s:
        pairs = set(q.unseen_pairs(s, project_id=fx.project_id))
    preds = predictions(store, fx)
    best = {sid: max(c for _, c, _ in p.values()) for sid, p in preds.items()}

    def part(sid: int) -> int:
        if any(p and len(set(p)) > 1 for _, _, p in preds[sid].values()):
            return 0
        return 1 if (preds[sid]["emotion"][0], preds[sid]["intent"][0]) in pairs else 2

    expected = sorted(best, key=lambda i: (part(i), -best[i], i))
    assert any(part(i) == 0 for i in best)  # the fixture's paths disagree on some cards
    assert drain(store, fx) == expected


def rarest_reference(store, fx) -> list[int]:
    """Round robin over (head, class) lists ordered by gold train + accepted labels."""
    preds = predictions(store, fx)
    with store.read() as s:
        gold = q.gold_counts(s, project_id=fx.project_id)
        accepted = q.accepted_counts(s, round_id=fx.round_id)
        done = set(
            s.execute(
                select(PseudoLabel.sample_id, PseudoLabel.head).where(
                    PseudoLabel.round_id == fx.round_id
                )
            ).all()
        )
        quotas = s.get(ReviewRound, fx.round_id).quotas
    keys = sorted(
        (gold.get(h, {}).get(c, 0) + accepted.get(h, {}).get(c, 0), h, c)
        for h, classes in (("emotion", EMOTIONS), ("intent", INTENTS))
        for c in classes
        if accepted.get(h, {}).get(c, 0) < quotas[h].get(c, 0)
    )
    lists = [
        sorted(
            (sid for sid, p in preds.items() if p[h][0] == c and (sid, h) not in done),
            key=lambda i, h=h: (-preds[i][h][1], i),
        )
        for _, h, c in keys
    ]
    out: list[int] = []
    for rank in range(max(map(len, lists))):
        for ids in lists:
            if rank < len(ids) and ids[rank] not in out:
                out.append(ids[rank])
    return out


def test_rarest_order_is_a_class_balanced_round_robin(store, fx):
    set_order(store, fx.round_id, "rarest")
    with store.write() as s:  # gold train: "fear" the rarest emotion, "neutral" the commonest
        train = s.scalars(
            select(Sample.id).where(Sample.project_id == fx.project_id, Sample.split == "train")
        ).all()
        s.execute(
            update(GoldLabel)
            .where(GoldLabel.sample_id.in_(train), GoldLabel.head == "emotion")
            .values(label="neutral")
        )
    expected = rarest_reference(store, fx)
    got = drain(store, fx)
    assert got == expected
    with store.read() as s:
        gold = q.gold_counts(s, project_id=fx.project_id)
        assert q.queue(s, round_id=fx.round_id, limit=4) == expected[:4]
    preds = predictions(store, fx)
    # the first cards each bring a class no earlier card brought; neutral (emotion) comes last
    assert gold["emotion"] == {"neutral": len(train)}
    first = preds[got[0]]
    assert first["emotion"][0] != "neutral" or first["intent"][0] != "neutral"


def test_rarest_order_follows_acceptances_and_full_quotas(store, fx):
    set_order(store, fx.round_id, "rarest")
    got = drain(store, fx)
    with store.write() as s:  # accept the first cards: their classes get commoner
        for sid in got[:6]:
            q.decide(s, round_id=fx.round_id, sample_id=sid, action="accept", user_id=None)
        rnd = s.get(ReviewRound, fx.round_id)
        quotas = {h: dict(v) for h, v in rnd.quotas.items()}
        quotas["emotion"]["happy"] = 0  # a full class leaves the round robin
        rnd.quotas = quotas
    assert drain(store, fx) == rarest_reference(store, fx)


def test_open_round_takes_a_queue_order_and_refuses_an_unknown_one(store, fx):
    from meiju_core.settings import Settings

    settings = Settings.load(data_dir=str(store.url), database_url="", project="fixture")
    admin = {"id": fx.admin_id, "name": "admin", "role": "admin"}
    rid = rounds.open_round(
        store,
        settings,
        project_id=fx.project_id,
        model_version_id=fx.model_version_id,
        thresholds=0.0,
        user=admin,
        queue_order="uncertainty",
    )
    with store.read() as s:
        assert s.get(ReviewRound, rid).queue_order == "uncertainty"
    with pytest.raises(InputError) as e:
        rounds.open_round(
            store,
            settings,
            project_id=fx.project_id,
            model_version_id=fx.model_version_id,
            user=admin,
            queue_order="random",
        )
    assert e.value.field == "queue_order" and "uncertainty" in str(e.value)
    with store.read() as s:  # nothing opened by the refused call
        assert s.scalar(select(func.count()).select_from(ReviewRound)) == 2
    with pytest.raises(q.QueueError, match="queue_order"), store.write() as s:
        q.open_round(
            s,
            project_id=fx.project_id,
            model_version_id=fx.model_version_id,
            thresholds={},
            quotas={},
            queue_order="newest",
        )


def test_a_round_opened_before_the_setting_serves_by_confidence(store, fx):
    with store.read() as s:
        assert s.get(ReviewRound, fx.round_id).queue_order == "confidence"


def test_cli_opens_a_round_with_an_order(tmp_path, monkeypatch):
    """``meiju pseudo-label --order`` on a fixture project in its own data folder."""
    from db.engine import Store
    from meiju_core.cli import app as cli_app

    data = tmp_path / "data"
    data.mkdir()
    st = Store(f"sqlite:///{data / 'meiju.db'}")
    st.upgrade()
    fx = build_fixture(st, n_pool=10)
    st.dispose()
    args = ["--data-dir", str(data), "--project", "fixture", "pseudo-label", "--threshold", "0"]
    out = CliRunner().invoke(cli_app, [*args, "--order", "rarest"])
    assert out.exit_code == 0, out.output
    assert "queue order: rarest" in out.output
    st = Store(f"sqlite:///{data / 'meiju.db'}")
    with st.read() as s:
        rnd = q.active_round(s, project_id=fx.project_id)
        assert rnd.queue_order == "rarest"
    bad = CliRunner().invoke(cli_app, [*args, "--order", "sideways"])
    assert bad.exit_code == 1 and "queue order 'sideways'" in bad.output
    st.dispose()
