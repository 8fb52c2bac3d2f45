"""Gold labels that are likely wrong: out-of-sample probabilities + confident learning (cleanlab).

The ML half of the gold-label check (the store half is :mod:`meiju_core.services.label_check`). For one head:

1. every utterance gets one vector: the mean over time of each modality, concatenated, with a 0/1
   presence flag per modality (missing modalities are zeros);
2. out-of-sample class probabilities come from stratified K-fold cross-validation of a
   standardised multinomial logistic regression (scikit-learn) on those vectors: each utterance is
   scored by a model that never saw it;
3. ``cleanlab.filter.find_label_issues`` (confident learning, Northcutt et al. 2021) flags the
   utterances whose given label disagrees with what the others imply; the suggested label is the
   out-of-sample argmax, and ``cleanlab.rank.get_label_quality_scores`` ranks them.

Nothing here re-implements confident learning; cleanlab does it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LabelIssue:
    """One flagged utterance of one head.

    Attributes:
        row: index into the arrays given to :func:`find_issues`.
        given: the gold class index; suggested: the out-of-sample argmax class index.
        quality: cleanlab's label quality score of the given label, in [0, 1] (low = doubtful).
        confidence: out-of-sample probability of the suggested class.
    """

    row: int
    given: int
    suggested: int
    quality: float
    confidence: float


def utterance_vectors(
    features: Mapping[str, Sequence[np.ndarray | None]], dims: Mapping[str, int]
) -> np.ndarray:
    """One float32 vector per utterance: per modality (in ``dims`` order) the mean over its steps
    (zeros where missing), then one presence flag per modality.

    Args:
        features: modality -> N arrays float (T, D) or None.
        dims: modality -> D.
    Returns:
        float32 (N, sum(D) + len(dims)).
    Raises:
        ValueError: modalities of different lengths or an array whose last dim is not D.
    """
    sizes = {len(xs) for m, xs in features.items() if m in dims}
    if len(sizes) > 1:
        raise ValueError(f"modalities have different lengths: {sorted(sizes)}")
    n = sizes.pop() if sizes else 0
    blocks, flags = [], []
    for m, d in dims.items():
        xs = features.get(m) or [None] * n
        block = np.zeros((n, d), np.float32)
        flag = np.zeros((n, 1), np.float32)
        for i, x in enumerate(xs):
            if x is None or np.asarray(x).size == 0:
                continue
            x = np.asarray(x, np.float32).reshape(-1, np.shape(x)[-1])
            if x.shape[1] != d:
                raise ValueError(f"{m} features of row {i} have dim {x.shape[1]}, expected {d}")
            block[i], flag[i] = x.mean(axis=0), 1.0
        blocks.append(block)
        flags.append(flag)
    return np.concatenate(blocks + flags, axis=1) if blocks else np.zeros((n, 0), np.float32)


def out_of_sample_probs(
    x: np.ndarray, labels: np.ndarray, *, folds: int = 5, seed: int = 0, c: float = 1.0
) -> np.ndarray:
    """Cross-validated class probabilities: each row scored by a model fitted on the other folds.

    Args:
        x: float (N, F) utterance vectors; labels: int (N,) class indices 0..K-1, every class
            present at least twice.
        folds: K of stratified K-fold (lowered to the smallest class count when needed, >= 2).
        c: inverse regularisation of the logistic regression.
    Returns:
        float64 (N, K) probabilities, rows summing to 1, columns in class-index order.
    Raises:
        ValueError: fewer than 2 classes, or a class with a single example.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = np.asarray(labels, dtype=np.int64)
    k = int(y.max()) + 1 if y.size else 0
    counts = np.bincount(y, minlength=k)
    if k < 2 or counts.min() < 2:
        raise ValueError(f"need >= 2 classes with >= 2 examples each, got counts {counts.tolist()}")
    n_folds = max(2, min(folds, int(counts.min())))
    probs = np.zeros((len(y), k))
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for train_idx, test_idx in splitter.split(x, y):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
        model.fit(x[train_idx], y[train_idx])
        probs[np.ix_(test_idx, model.classes_)] = model.predict_proba(x[test_idx])
    return probs


def find_issues(labels: np.ndarray, probs: np.ndarray, *, min_classes: int = 2) -> list[LabelIssue]:
    """Rows whose given label cleanlab finds likely wrong, most doubtful first.

    Args:
        labels: int (N,) given class indices (no missing labels).
        probs: float (N, K) out-of-sample probabilities.
    Returns:
        :class:`LabelIssue` list ranked by label quality, lowest first.
    Raises:
        ValueError: shapes that disagree.
    """
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != y.shape[0]:
        raise ValueError(f"probs of shape {p.shape} do not match {y.shape[0]} labels")
    if len(np.unique(y)) < min_classes:
        return []
    rows = find_label_issues(y, p, return_indices_ranked_by="self_confidence")
    quality = get_label_quality_scores(y, p)
    return [
        LabelIssue(
            row=int(i),
            given=int(y[i]),
            suggested=int(p[i].argmax()),
            quality=float(quality[i]),
            confidence=float(p[i].max()),
        )
        for i in rows
    ]
