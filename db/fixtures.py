"""A small, valid project built by package code, shared by unit tests, AppTest, browser tests and
benchmarks: users, samples with Chinese transcripts, gold labels, one model version with
predictions for every sample, and an open review round.

Predictions are drawn from a seeded Dirichlet so confidences spread over (0, 1); no training is
involved, so this builds in well under a second for a few hundred samples (and scales to 100k for
the queue benchmarks).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
from sqlalchemy import column, insert, select, table
from sqlalchemy.orm import Session

from db.engine import Store
from db.models import (
    GoldLabel,
    ModelVersion,
    Project,
    ReviewRound,
    Sample,
    User,
    utcnow,
)

EMOTIONS = ["happy", "surprise", "sad", "disgust", "anger", "fear", "neutral"]
INTENTS = [
    "questioning",
    "agreeing",
    "acknowledging",
    "encouraging",
    "consoling",
    "suggesting",
    "wishing",
    "neutral",
]
TEXTS = [
    "怎么了",
    "撞车了吗",
    "我这堵着车 你倒睡着了",
    "你说什么呢",
    "好的 我知道了",
    "谢谢你",
    "别担心 会好的",
    "明天见",
    "他为什么不来",
    "这是谁的书",
]


DISAGREE_RATE = 0.15  # share of intent predictions whose two paths disagree


def _fast_insert(s, name: str, rows: list[dict]) -> None:
    """Insert plain rows (JSON values already serialised) through a lightweight table, skipping
    the ORM and type processing: a 100,000-sample fixture builds in seconds."""
    if not rows:
        return
    conn = s.connection()
    if conn.dialect.name == "sqlite":  # straight to the driver: no per-row parameter processing
        names = list(rows[0])
        sql = f"INSERT INTO {name} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
        conn.connection.driver_connection.executemany(sql, [tuple(r.values()) for r in rows])
    else:
        s.execute(insert(table(name, *map(column, rows[0]))), rows)


def _predictions(
    model_version_id: int, sample_ids: list[int], rng: np.random.Generator, seed: int
) -> list[dict]:
    """Prediction rows, two per sample: Dirichlet(0.3) probabilities per head, their argmax and
    confidence; intent rows carry the argmax of a one-head and a two-head path (``paths``), which
    disagree on about ``DISAGREE_RATE`` of them.

    Vectorised: one (N, 7 + 8) gamma draw normalised per head is exactly what N alternating
    ``rng.dirichlet`` calls drew (the earlier, per-sample version of this fixture).
    """
    n, ke = len(sample_ids), len(EMOTIONS)
    gam = rng.standard_gamma(0.3, size=(n, ke + len(INTENTS)))
    path_rng = np.random.default_rng([seed, 2])  # its own stream: the draws above stay put
    flip = path_rng.random(n) < DISAGREE_RATE
    shift = path_rng.integers(1, len(INTENTS), size=n)
    rows: list[dict] = []
    for head, classes, g in (
        ("emotion", EMOTIONS, gam[:, :ke]),
        ("intent", INTENTS, gam[:, ke:]),
    ):
        p = g / g.sum(axis=1, keepdims=True)
        arg = p.argmax(axis=1)
        conf = p[np.arange(n), arg]
        probs = [json.dumps(r) for r in np.round(p, 6).tolist()]
        other = (arg + np.where(flip, shift, 0)) % len(classes)
        for i, sid in enumerate(sample_ids):
            label = classes[arg[i]]
            rows.append(
                {
                    "model_version_id": model_version_id,
                    "sample_id": sid,
                    "head": head,
                    "label": label,
                    "confidence": float(conf[i]),
                    "probs": probs[i],
                    "paths": json.dumps([label, classes[other[i]]]) if head == "intent" else None,
                }
            )
    return rows


@dataclass
class FixtureIds:
    project_id: int
    admin_id: int
    annotator_id: int
    model_version_id: int
    round_id: int
    pool_ids: list[int]


def build_fixture(
    store: Store,
    *,
    n_pool: int = 200,
    n_train: int = 60,
    n_valid: int = 30,
    n_test: int = 30,
    seed: int = 0,
    quota: int = 5,
    threshold: float = 0.3,
    password_hash: str | None = None,
) -> FixtureIds:
    """Create a project named ``fixture`` with predictions and an open round; returns the ids.

    Every class of both heads gets quota ``quota``; both heads' threshold is ``threshold``.
    """
    rng = np.random.default_rng(seed)
    now = utcnow().strftime("%Y-%m-%d %H:%M:%S.%f")  # as SQLAlchemy stores a DateTime on SQLite
    with store.write() as s:
        project = Project(
            name="fixture", label_schema={"emotion": EMOTIONS, "intent": INTENTS}, settings={}
        )
        admin = User(name="admin", role="admin", password_hash=password_hash)
        annotator = User(name="ann", role="annotator", password_hash=password_hash)
        s.add_all([project, admin, annotator])
        s.flush()
        splits = {"train": n_train, "valid": n_valid, "test": n_test, "pool": n_pool}
        samples = _add_samples(s, project.id, splits, now)
        _add_gold(s, samples, rng)  # draws from rng first, then the predictions do
        mv = ModelVersion(
            project_id=project.id,
            name="fixture-model",
            stage=1,
            status="promoted",
            config={"schema": {"emotion": EMOTIONS, "intent": INTENTS}},
            metrics={},
            snapshot={},
        )
        s.add(mv)
        s.flush()
        _fast_insert(s, "prediction", _predictions(mv.id, [sid for sid, _ in samples], rng, seed))
        rnd = ReviewRound(
            project_id=project.id,
            model_version_id=mv.id,
            thresholds={"emotion": threshold, "intent": threshold},
            quotas={
                "emotion": dict.fromkeys(EMOTIONS, quota),
                "intent": dict.fromkeys(INTENTS, quota),
            },
            created_by=admin.id,
        )
        s.add(rnd)
        s.flush()
        return FixtureIds(
            project_id=project.id,
            admin_id=admin.id,
            annotator_id=annotator.id,
            model_version_id=mv.id,
            round_id=rnd.id,
            pool_ids=[sid for sid, split in samples if split == "pool"],
        )


def _add_samples(
    s: Session, project_id: int, splits: dict[str, int], now: str
) -> list[tuple[int, str]]:
    """``splits[split]`` samples per split, each with a transcript; returns (id, split) rows."""
    rows = [
        {
            "project_id": project_id,
            "utt_id": f"{split}_{i:06d}",
            "split": split,
            "source": "fixture",
            "group_id": f"{split}_{i // 5}",
            "created_at": now,
        }
        for split, n in splits.items()
        for i in range(n)
    ]
    _fast_insert(s, "sample", rows)
    samples = [
        (sid, split)
        for sid, split in s.execute(
            select(Sample.id, Sample.split)
            .where(Sample.project_id == project_id)
            .order_by(Sample.id)
        )
    ]
    _fast_insert(
        s,
        "transcript",
        [
            {
                "sample_id": sid,
                "original_text": TEXTS[k % len(TEXTS)],
                "text": TEXTS[k % len(TEXTS)],
                "source": "official",
                "version": 1,
                "updated_at": now,
            }
            for k, (sid, _) in enumerate(samples)
        ],
    )
    return samples


def _add_gold(s: Session, samples: list[tuple[int, str]], rng: np.random.Generator) -> None:
    """A random gold emotion and intent for every sample outside the pool."""
    gold = []
    for sid, split in samples:
        if split == "pool":
            continue
        for head, classes in (("emotion", EMOTIONS), ("intent", INTENTS)):
            label = classes[int(rng.integers(len(classes)))]
            gold.append({"sample_id": sid, "head": head, "source": "fixture", "label": label})
    s.execute(insert(GoldLabel), gold)
