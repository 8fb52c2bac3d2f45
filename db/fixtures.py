"""A small, valid project built by package code, shared by unit tests, AppTest, browser tests and
benchmarks: users, samples with Chinese transcripts, gold labels, one model version with
predictions for every sample, and an open review round.

Predictions are drawn from a seeded Dirichlet so confidences spread over (0, 1); no training is
involved, so this builds in well under a second for a few hundred samples (and scales to 100k for
the queue benchmarks).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlalchemy import insert, select

from db.engine import Store
from db.models import (
    GoldLabel,
    ModelVersion,
    Prediction,
    Project,
    ReviewRound,
    Sample,
    Transcript,
    User,
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
    with store.write() as s:
        project = Project(
            name="fixture", label_schema={"emotion": EMOTIONS, "intent": INTENTS}, settings={}
        )
        admin = User(name="admin", role="admin", password_hash=password_hash)
        annotator = User(name="ann", role="annotator", password_hash=password_hash)
        s.add_all([project, admin, annotator])
        s.flush()
        rows = []
        for split, n in (
            ("train", n_train),
            ("valid", n_valid),
            ("test", n_test),
            ("pool", n_pool),
        ):
            rows += [
                {
                    "project_id": project.id,
                    "utt_id": f"{split}_{i:06d}",
                    "split": split,
                    "source": "fixture",
                    "group_id": f"{split}_{i // 5}",
                }
                for i in range(n)
            ]
        s.execute(insert(Sample), rows)
        samples = s.execute(
            select(Sample.id, Sample.split)
            .where(Sample.project_id == project.id)
            .order_by(Sample.id)
        ).all()
        s.execute(
            insert(Transcript),
            [
                {
                    "sample_id": sid,
                    "original_text": TEXTS[k % len(TEXTS)],
                    "text": TEXTS[k % len(TEXTS)],
                    "source": "official",
                    "version": 1,
                }
                for k, (sid, _) in enumerate(samples)
            ],
        )
        gold = []
        for sid, split in samples:
            if split != "pool":
                gold.append(
                    {
                        "sample_id": sid,
                        "head": "emotion",
                        "source": "fixture",
                        "label": EMOTIONS[int(rng.integers(len(EMOTIONS)))],
                    }
                )
                gold.append(
                    {
                        "sample_id": sid,
                        "head": "intent",
                        "source": "fixture",
                        "label": INTENTS[int(rng.integers(len(INTENTS)))],
                    }
                )
        s.execute(insert(GoldLabel), gold)
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
        preds = []
        for sid, _ in samples:
            for head, classes in (("emotion", EMOTIONS), ("intent", INTENTS)):
                p = rng.dirichlet(np.full(len(classes), 0.3))
                k = int(p.argmax())
                preds.append(
                    {
                        "model_version_id": mv.id,
                        "sample_id": sid,
                        "head": head,
                        "label": classes[k],
                        "confidence": float(p[k]),
                        "probs": [round(float(v), 6) for v in p],
                    }
                )
        for start in range(0, len(preds), 20_000):
            s.execute(insert(Prediction), preds[start : start + 20_000])
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
