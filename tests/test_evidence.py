"""Thresholds from evidence (issue 11, item 3): review decisions as labelled observations of the
model's confidence, the per-class thresholds they support, and the next round that takes them.

The fixture project's round is decided by a rule whose answer is known (accept a head when its
confidence is at least 0.6, else reject), so the acceptance bins, the Wilson intervals and the
threshold per class can be computed directly and compared.
"""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import select

from db import queries as q
from db import thresholds as thr
from db.evidence import review_observations
from db.fixtures import EMOTIONS, build_fixture
from db.models import Prediction, PseudoLabel, ReviewRound, Sample
from meiju_core.errors import InputError, PermissionDenied
from meiju_core.ml.pseudo import acceptance_by_confidence, threshold_for_precision, wilson_interval
from meiju_core.services import rounds
from meiju_core.settings import Settings


@pytest.fixture
def decided(store, tmp_path):
    """The fixture round with 120 cards decided by (confidence >= 0.6 -> accept, else reject)
    per head; returns (ids, settings, {(sample, head): (label, confidence, accepted)})."""
    ids = build_fixture(store, n_pool=150, quota=1000, threshold=0.0)
    settings = Settings.load(data_dir=str(tmp_path), database_url=store.url)
    with store.read() as s:
        preds = {
            (sid, head): (label, conf)
            for sid, head, label, conf in s.execute(
                select(
                    Prediction.sample_id, Prediction.head, Prediction.label, Prediction.confidence
                )
                .join(Sample, Sample.id == Prediction.sample_id)
                .where(Prediction.model_version_id == ids.model_version_id, Sample.split == "pool")
            )
        }
    truth = {}
    with store.write() as s:
        for sid in ids.pool_ids[:120]:
            for head in ("emotion", "intent"):
                label, conf = preds[(sid, head)]
                ok = conf >= 0.6
                q.decide(
                    s,
                    round_id=ids.round_id,
                    sample_id=sid,
                    action="accept" if ok else "reject",
                    heads=[head],
                    user_id=ids.annotator_id,
                )
                truth[(sid, head)] = (label, conf, ok)
    return ids, settings, truth


def test_bins_from_the_store_equal_a_direct_computation(store, decided):
    ids, _settings, truth = decided
    with store.read() as s:
        obs = review_observations(s, round_id=ids.round_id)
    assert len(obs) == len(truth) == 240
    for head in ("emotion", "intent"):
        conf = np.array([c for (_, h), (_, c, _) in truth.items() if h == head])
        acc = np.array([a for (_, h), (_, _, a) in truth.items() if h == head])
        mine = [o for o in obs if o["head"] == head]
        bins = acceptance_by_confidence(
            np.array([o["confidence"] for o in mine]), np.array([o["accepted"] for o in mine])
        )
        for b in bins:  # a direct count per bin, and the Wilson formula written out
            inside = (conf >= b["lo"]) & ((conf < b["hi"]) | (b["hi"] == 1.0))
            n, k = int(inside.sum()), int(acc[inside].sum())
            assert (b["n"], b["accepted"]) == (n, k)
            if n:
                p, z = k / n, 1.96
                centre = (p + z * z / (2 * n)) / (1 + z * z / n)
                half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
                assert b["low"] == pytest.approx(max(0.0, centre - half))
                assert b["high"] == pytest.approx(min(1.0, centre + half))
                assert (b["low"], b["high"]) == wilson_interval(k, n)
        # the rule accepts from 0.6 up: bins wholly below are 0, wholly above are 1
        assert all(b["rate"] == 0 for b in bins if b["n"] and b["hi"] <= 0.6)
        assert all(b["rate"] == 1 for b in bins if b["n"] and b["lo"] >= 0.6)


def test_thresholds_from_evidence_per_class(store, decided):
    ids, _settings, truth = decided
    ev = rounds.thresholds_from_evidence(store, round_id=ids.round_id, precision=0.95, min_count=5)
    for row in ev["rows"]:
        sub = [
            (c, a)
            for (_, h), (lab, c, a) in truth.items()
            if h == row["head"] and lab == row["class"]
        ]
        assert row["reviewed"] == len(sub) and row["accepted"] == sum(a for _, a in sub)
        direct = (
            threshold_for_precision(
                np.array([c for c, _ in sub]), np.array([a for _, a in sub]), min_count=5
            )
            if sub
            else None
        )
        assert row["evidence"] == direct
        if direct is not None:  # perfect separation at 0.6: the lowest accepted confidence
            assert direct == min(c for c, a in sub if a)
            assert row["next"] == pytest.approx(direct)
        else:  # not enough decisions: the round's own threshold
            assert row["next"] == row["current"] == 0.0
        assert ev["thresholds"][row["head"]][row["class"]] == row["next"]
    assert sum(r["evidence"] is not None for r in ev["rows"]) >= 6
    with pytest.raises(InputError):
        rounds.thresholds_from_evidence(store, round_id=ids.round_id, precision=1.5)


def test_the_next_round_takes_the_evidence_in_one_call_admins_only(store, decided):
    ids, settings, _truth = decided
    annotator = {"id": ids.annotator_id, "name": "ann", "role": "admin"}  # the page may lie
    with pytest.raises(PermissionDenied):
        rounds.open_round_from_evidence(
            store, settings, round_id=ids.round_id, min_count=5, user=annotator
        )
    admin = {"id": ids.admin_id, "name": "admin", "role": "admin"}
    ev = rounds.thresholds_from_evidence(store, round_id=ids.round_id, min_count=5)
    rid = rounds.open_round_from_evidence(
        store, settings, round_id=ids.round_id, min_count=5, user=admin
    )
    with store.read() as s:
        new, old = s.get(ReviewRound, rid), s.get(ReviewRound, ids.round_id)
        assert old.status == "closed" and new.status == "open" and new.kind == "pseudo"
        for head, per in ev["thresholds"].items():
            stored = new.thresholds[head]
            for cls in EMOTIONS if head == "emotion" else per:
                assert thr.threshold_for(stored, cls) == pytest.approx(per[cls])
        # the new queue offers exactly the pool cards some head of which passes its class's
        # threshold
        expected = 0
        for sid in ids.pool_ids:
            for head in ("emotion", "intent"):
                p = s.scalars(
                    select(Prediction).where(
                        Prediction.model_version_id == new.model_version_id,
                        Prediction.sample_id == sid,
                        Prediction.head == head,
                    )
                ).one()
                if p.confidence >= thr.threshold_for(new.thresholds[head], p.label) and (
                    new.quotas[head].get(p.label, 0) > 0
                ):
                    expected += 1
                    break
        assert q.queue_size(s, round_id=rid) == expected


def test_pseudo_label_auto_takes_thresholds_from_review(store, decided, tmp_path):
    from typer.testing import CliRunner

    from meiju_core.cli import app

    ids, settings, _truth = decided
    ev = rounds.thresholds_from_evidence(store, round_id=ids.round_id, min_count=5)
    args = ["--database-url", store.url, "--data-dir", str(tmp_path), "--project", "fixture"]
    both = CliRunner().invoke(
        app, [*args, "pseudo-label", "--threshold", "0.5", "--thresholds-from-review", "1"]
    )
    assert both.exit_code != 0 and "not both" in both.output
    out = CliRunner().invoke(
        app,
        [
            *args,
            "pseudo-label",
            "--auto",
            "--rule",
            "per_head",
            "--thresholds-from-review",
            str(ids.round_id),
            "--min-decisions",
            "5",
        ],
    )
    assert out.exit_code == 0, out.output
    assert "(review;" in out.output and "accepted:" in out.output
    with store.read() as s:
        new = q.active_round(s, project_id=ids.project_id)
        assert new.id != ids.round_id
        for head, per in ev["thresholds"].items():
            for cls, t in per.items():
                assert thr.threshold_for(new.thresholds[head], cls) == pytest.approx(t)
        # every automatic acceptance reaches its class's threshold
        rows = s.execute(
            select(PseudoLabel.head, PseudoLabel.label, PseudoLabel.confidence).where(
                PseudoLabel.round_id == new.id, PseudoLabel.state == "accepted"
            )
        ).all()
    assert rows
    for head, label, conf in rows:
        assert conf >= thr.threshold_for(new.thresholds[head], label) - 1e-9
