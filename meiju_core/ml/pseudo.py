"""Pseudo-label selection: a confidence threshold plus per-class quotas, one head at a time.

The Track I winner (reference/meiju.md §8) labels the unlabelled pool with a model trained on the
gold labels and adds the samples whose confidence is above 0.99 to training. Our rule adds a
per-class quota on top (reference/review-ux.md §3, item 1), so a round cannot flood training with
the classes the model is already sure of (the Track I class distributions are in meiju.md §2.4).

Everything here is a pure function over numpy arrays, in the style of cleanlab's ``filter.py``: the
automatic mode (:func:`select_joint`, which reproduces the paper without a person) and the review
app (its bulk-accept preview) call the same :func:`select`, so machine and human rounds obey one
rule. The store applies the result; nothing here touches it.

Notation: N samples (rows), K classes of one head, T thresholds. ``probs`` is an (N, K) float array
whose rows sum to 1; a row's *confidence* is its largest probability and its *predicted class* the
column of that probability (the lowest column on a tie, as ``np.argmax``). Class indices follow the
label schema (meiju_core.schema); ``-1`` marks an unknown label.

Validation happens here, at the boundary: a wrong shape, a length mismatch, NaN, a threshold outside
(0, 1] or a negative quota raises ``ValueError`` naming the field and the sizes; an unknown head or
class name raises :class:`meiju_core.errors.LabelError`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from meiju_core.errors import LabelError

__all__ = [
    "DEFAULT_THRESHOLDS",
    "PseudoLabelPrecision",
    "apply_temperature",
    "candidates_per_class",
    "candidates_per_threshold",
    "compute_quotas",
    "pseudo_label_precision",
    "select",
    "select_joint",
    "temperature_scale",
]

DEFAULT_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
ROW_SUM_ATOL = 1e-3  # how far a row of ``probs`` may sum from 1 (float32 softmax is well inside)
_TINY = np.finfo(np.float64).tiny  # log(0) guard when probabilities stand in for logits

QuotaLike = Mapping[int, int] | Mapping[str, int] | Sequence[int] | np.ndarray
Strategy = Literal["balanced", "proportional", "explicit"]


# --------------------------------------------------------------------------------------------
# validation (private)


def _check_probs(probs: Any, name: str = "probs") -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"{name} must be a 2-D (N, K) array with K >= 2, got shape {p.shape}")
    if not np.isfinite(p).all():
        raise ValueError(f"{name} has {int((~np.isfinite(p)).sum())} NaN or inf values")
    if (p < 0).any() or (p > 1 + ROW_SUM_ATOL).any():
        raise ValueError(f"{name} has values outside [0, 1]")
    sums = p.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1.0) > ROW_SUM_ATOL)
    if bad.size:
        raise ValueError(
            f"{name} rows must sum to 1 (±{ROW_SUM_ATOL}); {bad.size} of {p.shape[0]} rows do not, "
            f"e.g. row {bad[0]} sums to {sums[bad[0]]:.6f}"
        )
    return p


def _check_logits(logits: Any, name: str = "logits") -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] < 2:
        raise ValueError(f"{name} must be a 2-D (N, K) array with K >= 2, got shape {z.shape}")
    if not np.isfinite(z).all():
        raise ValueError(f"{name} has {int((~np.isfinite(z)).sum())} NaN or inf values")
    return z


def _check_threshold(threshold: float, name: str = "threshold") -> float:
    t = float(threshold)
    if not 0.0 < t <= 1.0:  # also rejects NaN
        raise ValueError(f"{name} must be in (0, 1], got {threshold!r}")
    return t


ThresholdLike = float | Mapping[str, float] | Sequence[float] | np.ndarray


def _threshold_vector(
    threshold: Any, k: int, classes: Sequence[str] | None, name: str = "threshold"
) -> np.ndarray:
    """(K,) float64 thresholds per predicted class from one number, an array (K,), or a mapping
    keyed by class name or index (``"*"``: every class not named; a class neither named nor
    covered by ``"*"`` gets ``inf``, so none of its rows is a candidate)."""
    if isinstance(threshold, Mapping):
        default = threshold.get("*")
        out = np.full(k, np.inf if default is None else _check_threshold(default, name))
        for key, value in threshold.items():
            if key == "*":
                continue
            out[_class_index(key, k, classes, name)] = _check_threshold(value, f"{name}[{key!r}]")
        return out
    if np.ndim(threshold) == 0:
        return np.full(k, _check_threshold(threshold, name))
    v = np.asarray(threshold, dtype=np.float64)
    if v.shape != (k,):
        raise ValueError(f"{name} must be one number or have shape ({k},) for K={k}, got {v.shape}")
    return np.array([_check_threshold(t, f"{name}[{i}]") for i, t in enumerate(v)])


def _check_count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not float(value).is_integer() or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def _check_labels(labels: Any, n: int, k: int, name: str, *, allow_missing: bool) -> np.ndarray:
    y = np.asarray(labels)
    if y.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match the other arrays, got {y.shape}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class indices, got dtype {y.dtype}")
    y = y.astype(np.int64)
    low = -1 if allow_missing else 0
    if y.size and (y.min() < low or y.max() >= k):
        raise ValueError(
            f"{name} must be in [{low}, {k - 1}] for K={k}, got [{y.min()}, {y.max()}]"
        )
    return y


def _check_mask(mask: Any, n: int, name: str) -> np.ndarray:
    m = np.asarray(mask)
    if m.shape != (n,) or m.dtype != np.bool_:
        raise ValueError(f"{name} must be a bool array of shape ({n},), got {m.dtype} {m.shape}")
    return m


def _class_vector(values: Any, k: int, classes: Sequence[str] | None, name: str) -> np.ndarray:
    """(K,) int64 counts from an array, or a mapping keyed by class index or name (absent = 0)."""
    if not isinstance(values, Mapping):
        v = np.asarray(values)
        if v.shape != (k,):
            raise ValueError(f"{name} must have shape ({k},) for K={k}, got {v.shape}")
        return np.array([_check_count(x, f"{name}[{i}]") for i, x in enumerate(v)], np.int64)
    out = np.zeros(k, np.int64)
    for key, value in values.items():
        out[_class_index(key, k, classes, name)] = _check_count(value, f"{name}[{key!r}]")
    return out


def _class_index(key: Any, k: int, classes: Sequence[str] | None, name: str) -> int:
    if isinstance(key, str):
        if classes is None:
            raise ValueError(f"{name} is keyed by class name {key!r}; pass classes= to resolve it")
        if key not in classes:
            raise LabelError(f"unknown class {key!r}; expected one of {list(classes)}", field=name)
        return list(classes).index(key)
    if isinstance(key, bool) or not isinstance(key, int | np.integer) or not 0 <= key < k:
        raise LabelError(f"class index {key!r} is not in [0, {k - 1}]", field=name)
    return int(key)


def _check_classes(classes: Sequence[str]) -> tuple[str, ...]:
    names = tuple(classes)
    if len(names) < 2 or len(set(names)) != len(names):
        raise ValueError(f"classes must be at least 2 distinct names, got {list(names)}")
    return names


# --------------------------------------------------------------------------------------------
# quotas


def compute_quotas(
    gold_counts: Mapping[str, int] | Sequence[int] | np.ndarray | None,
    *,
    classes: Sequence[str],
    strategy: Strategy = "balanced",
    budget: int | None = None,
    explicit: Mapping[str, int] | None = None,
    spend_all: bool = False,
) -> dict[str, int]:
    """Per-class quotas of one head for one pseudo-label round.

    Parameters
    ----------
    gold_counts : Mapping[str, int] or array-like of int, shape (K,)
        Gold labels per class (a class absent from a mapping has 0). May be None for
        ``strategy="explicit"``.
    classes : Sequence[str], length K
        The head's class names in schema order; the result is keyed and ordered by them.
    strategy : {"balanced", "proportional", "explicit"}
        - ``"balanced"``: fill the classes with the fewest gold labels first, up to the largest
          gold class (water-filling, below).
        - ``"proportional"``: split ``budget`` in proportion to the gold distribution.
        - ``"explicit"``: the counts in ``explicit``; classes it does not name get 0.
    budget : int, optional
        Most pseudo-labels the round may accept for this head (setting ``quota_budget``). Required
        for ``"balanced"`` and ``"proportional"``; with ``"explicit"``, if given, the explicit
        counts may not sum to more.
    explicit : Mapping[str, int], optional
        Class name -> quota, for ``strategy="explicit"``.
    spend_all : bool, default False
        ``"balanced"`` only: once every class reaches the largest gold class, keep water-filling
        until the whole budget is shared (gold + quota stays as level as possible).

    Returns
    -------
    dict[str, int]
        Class name -> quota (>= 0), in ``classes`` order.

    Raises
    ------
    ValueError
        Unknown strategy, missing or negative budget, negative or non-integer counts, a
        ``gold_counts`` array whose length is not K, explicit counts over ``budget``.
    LabelError
        A class name in ``gold_counts`` or ``explicit`` that is not in ``classes``.

    Notes
    -----
    Water-filling (``"balanced"``): let ``g`` be the gold counts and ``top = max(g)``. If the total
    deficit ``sum(top - g)`` fits in the budget, quota = ``top - g`` and the rest of the budget is
    left unspent (or water-filled further with ``spend_all``). Otherwise find the largest integer
    level ``L`` with ``sum(max(0, L - g)) <= budget``, set quota = ``max(0, L - g)``, and hand the
    ``r < #{g <= L}`` labels left over one each to the classes at the level, smallest gold count
    first, then lowest class index. The rule is deterministic; classes with 0 gold labels are fine.

    Largest remainder (``"proportional"``): quota = ``floor(budget * g / sum(g))``, then one more for
    the classes with the largest remainders (ties: lowest class index), so the quotas sum to
    ``budget`` exactly. If every gold count is 0 the budget is split evenly the same way.

    Source: class-balanced pseudo-label sampling, reference/meiju.md §8; Track I train
    distributions, meiju.md §2.4.

    Examples
    --------
    Track I Mandarin train emotion counts (meiju.md §2.4) and a budget of 300: the five small
    classes are raised to 326 (surprise, the smallest, to 327); happy and neutral get nothing.

    >>> from meiju_core.schema import EMOTIONS
    >>> gold = [458, 246, 262, 281, 261, 281, 505]
    >>> compute_quotas(gold, classes=EMOTIONS, budget=300)
    {'happy': 0, 'surprise': 81, 'sad': 64, 'disgust': 45, 'anger': 65, 'fear': 45, 'neutral': 0}
    >>> compute_quotas(gold, classes=EMOTIONS, strategy="proportional", budget=100)
    {'happy': 20, 'surprise': 11, 'sad': 12, 'disgust': 12, 'anger': 11, 'fear': 12, 'neutral': 22}
    """
    names = _check_classes(classes)
    if strategy == "explicit":
        return _explicit_quotas(explicit, names, budget)
    if strategy not in ("balanced", "proportional"):
        raise ValueError(f"strategy must be balanced, proportional or explicit, got {strategy!r}")
    if budget is None:
        raise ValueError(f"strategy {strategy!r} needs a budget")
    budget = _check_count(budget, "budget")
    if gold_counts is None:
        raise ValueError(f"strategy {strategy!r} needs gold_counts")
    gold = _class_vector(gold_counts, len(names), names, "gold_counts")
    if strategy == "balanced":
        quota = _water_fill(gold, budget, cap=None if spend_all else int(gold.max()))
    else:
        quota = _largest_remainder(gold if gold.sum() else np.ones_like(gold), budget)
    return {c: int(q) for c, q in zip(names, quota, strict=True)}


def _explicit_quotas(
    explicit: Mapping[str, int] | None, names: tuple[str, ...], budget: int | None
) -> dict[str, int]:
    if explicit is None:
        raise ValueError("strategy 'explicit' needs explicit={class: quota}")
    for key in explicit:
        if key not in names:
            raise LabelError(
                f"unknown class {key!r}; expected one of {list(names)}", field="explicit"
            )
    quota = {c: _check_count(explicit.get(c, 0), f"explicit[{c!r}]") for c in names}
    if budget is not None and sum(quota.values()) > _check_count(budget, "budget"):
        raise ValueError(f"explicit quotas sum to {sum(quota.values())}, over the budget {budget}")
    return quota


def _water_fill(gold: np.ndarray, budget: int, *, cap: int | None) -> np.ndarray:
    """Raise the lowest classes first; see compute_quotas, Notes."""

    def cost(level: int) -> int:
        return int(np.maximum(level - gold, 0).sum())

    if cap is not None and cost(cap) <= budget:
        return cap - gold
    lo, hi = int(gold.min()), int(gold.max()) + budget + 1  # cost(lo) <= budget < cost(hi)
    if cap is not None:
        hi = cap
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if cost(mid) <= budget else (lo, mid)
    quota = np.maximum(lo - gold, 0)
    at_level = np.flatnonzero(gold <= lo)
    at_level = at_level[np.argsort(gold[at_level], kind="stable")]  # smallest gold, then index
    quota[at_level[: budget - int(quota.sum())]] += 1
    return quota


def _largest_remainder(weights: np.ndarray, budget: int) -> np.ndarray:
    """Hamilton apportionment of ``budget`` by integer ``weights`` (exact integer arithmetic)."""
    total = int(weights.sum())
    share = [budget * int(w) for w in weights]  # Python ints: no overflow
    quota = np.array([s // total for s in share], np.int64)
    remainder = np.array([s % total for s in share], np.int64)
    order = np.lexsort((np.arange(weights.size), -remainder))  # largest remainder, lowest index
    quota[order[: budget - int(quota.sum())]] += 1
    return quota


# --------------------------------------------------------------------------------------------
# calibration


def _to_logits(scores: Any, kind: str) -> np.ndarray:
    if kind == "logits":
        return _check_logits(scores)
    if kind == "probs":
        return np.log(np.maximum(_check_probs(scores), _TINY))
    raise ValueError(f"kind must be 'logits' or 'probs', got {kind!r}")


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _nll(z: np.ndarray, y: np.ndarray) -> float:
    m = z.max(axis=1)
    lse = m + np.log(np.exp(z - m[:, None]).sum(axis=1))
    return float(np.mean(lse - z[np.arange(y.size), y]))


def temperature_scale(
    scores_valid: np.ndarray,
    labels_valid: np.ndarray,
    *,
    kind: Literal["logits", "probs"] = "logits",
    bounds: tuple[float, float] = (0.01, 100.0),
    tol: float = 1e-6,
) -> float:
    """Fit one temperature T by minimising the validation NLL of ``softmax(logits / T)``.

    Calibrating first makes "confidence >= 0.99" mean that about 99 % of such labels are right,
    which an over-confident network otherwise never delivers (Guo et al. 2017, "On Calibration of
    Modern Neural Networks"). Numpy only: a 61-point grid over log T, then golden-section search in
    the bracket around the best grid point. The NLL is convex in 1/T, hence unimodal in log T, so
    the search finds the global minimum within ``bounds``.

    Parameters
    ----------
    scores_valid : np.ndarray, float, shape (N, K)
        Logits, or probabilities with ``kind="probs"`` (their log is used as logits; exact zeros
        are clipped to the smallest positive float64).
    labels_valid : np.ndarray, int, shape (N,)
        Gold class indices; ``-1`` (missing) rows are dropped.
    kind : {"logits", "probs"}
        What ``scores_valid`` holds.
    bounds : (float, float)
        Search interval for T, ``0 < low < high``. A result at a bound means the data wanted more
        (e.g. separable data push T towards 0).
    tol : float
        Width of the final bracket in log T.

    Returns
    -------
    float
        The temperature T > 0; T > 1 softens an over-confident model.

    Raises
    ------
    ValueError
        ``scores_valid`` not 2-D or not finite, probabilities whose rows do not sum to 1, labels of
        the wrong length or out of range, no labelled row, bad ``bounds`` or ``kind``.
    """
    z = _to_logits(scores_valid, kind)
    y = _check_labels(labels_valid, z.shape[0], z.shape[1], "labels_valid", allow_missing=True)
    z, y = z[y >= 0], y[y >= 0]
    if y.size == 0:
        raise ValueError(f"labels_valid has no labelled row (all {z.shape[0]} are -1 or N = 0)")
    low, high = (float(b) for b in bounds)
    if not 0 < low < high or not np.isfinite(high):
        raise ValueError(f"bounds must satisfy 0 < low < high < inf, got {bounds!r}")

    def nll_at(log_t: float) -> float:
        return _nll(z / np.exp(log_t), y)

    return float(np.exp(_argmin_unimodal(nll_at, np.log(low), np.log(high), tol)))


def _argmin_unimodal(f: Any, a: float, b: float, tol: float, grid: int = 61) -> float:
    """Grid search, then golden-section refinement between the best point's neighbours."""
    xs = np.linspace(a, b, grid)
    i = int(np.argmin([f(x) for x in xs]))
    lo, hi = xs[max(i - 1, 0)], xs[min(i + 1, grid - 1)]
    inv_phi = (np.sqrt(5.0) - 1.0) / 2.0
    c, d = hi - inv_phi * (hi - lo), lo + inv_phi * (hi - lo)
    fc, fd = f(c), f(d)
    while hi - lo > tol:
        if fc <= fd:
            hi, d, fd = d, c, fc
            c = hi - inv_phi * (hi - lo)
            fc = f(c)
        else:
            lo, c, fc = c, d, fd
            d = lo + inv_phi * (hi - lo)
            fd = f(d)
    best = min((xs[i], f(xs[i])), ((lo + hi) / 2, f((lo + hi) / 2)), key=lambda t: t[1])
    return float(best[0])


def apply_temperature(
    scores: np.ndarray, temperature: float, *, kind: Literal["logits", "probs"] = "logits"
) -> np.ndarray:
    """Calibrated probabilities ``softmax(logits / T)``.

    Parameters
    ----------
    scores : np.ndarray, float, shape (N, K)
        Logits, or probabilities with ``kind="probs"`` (then ``log(probs)`` stands in for the
        logits, so ``T = 1`` returns the probabilities unchanged).
    temperature : float
        T > 0, e.g. from :func:`temperature_scale`.
    kind : {"logits", "probs"}

    Returns
    -------
    np.ndarray, float64, shape (N, K)
        Rows sum to 1.

    Raises
    ------
    ValueError
        Bad shape, NaN, probabilities whose rows do not sum to 1, ``T <= 0`` or not finite.
    """
    t = float(temperature)
    if not (np.isfinite(t) and t > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return _softmax(_to_logits(scores, kind) / t)


# --------------------------------------------------------------------------------------------
# selection


def select(
    probs: np.ndarray,
    *,
    threshold: ThresholdLike = 0.99,
    quotas: QuotaLike | None = None,
    already_accepted: QuotaLike | None = None,
    eligible: np.ndarray | None = None,
    classes: Sequence[str] | None = None,
    order: Literal["confidence", "index"] = "confidence",
) -> np.ndarray:
    """Rows of one head to accept as pseudo-labels: confident rows, per-class quotas respected.

    A row is a candidate if it is ``eligible`` and its confidence (max probability) is at least
    the threshold of its predicted class. Within each predicted class the candidates are taken by confidence, highest
    first (ties: lowest row index), up to the class's remaining quota
    ``max(quota - already_accepted, 0)``.

    Parameters
    ----------
    probs : np.ndarray, float, shape (N, K)
        Predicted class probabilities (rows sum to 1), ideally calibrated with
        :func:`apply_temperature`.
    threshold : float, array (K,) or Mapping[str | int, float], default 0.99
        Confidence a row needs, in (0, 1]; compared with ``>=``. The Track I winner used 0.99
        (reference/meiju.md §8). Per predicted class: an array in column order or a mapping by
        class name or index (``"*"`` for the classes not named; a class neither named nor
        covered is never selected), e.g. thresholds read from review evidence.
    quotas : array-like of int, shape (K,), or Mapping[int | str, int], optional
        Most labels per predicted class this round (a class absent from a mapping gets 0, as in
        the store's ``review_round.quotas``). None: no quota.
    already_accepted : array-like of int, shape (K,), or Mapping[int | str, int], optional
        Labels per class already accepted this round; they use up quota. None: zeros.
    eligible : np.ndarray, bool, shape (N,), optional
        False for rows that may not be picked (e.g. already decided by a person).
    classes : Sequence[str], optional
        Class names in column order; needed only when a mapping is keyed by name.
    order : {"confidence", "index"}
        Order of the result: confidence descending (ties: index ascending), or index ascending.
        The set of rows is the same.

    Returns
    -------
    np.ndarray, int64, shape (M,)
        Selected row indices, M <= N; each row's predicted class is ``probs[i].argmax()``.

    Raises
    ------
    ValueError
        ``probs`` not (N, K), NaN, rows not summing to 1; threshold outside (0, 1]; negative or
        non-integer quotas or counts; arrays of the wrong length; unknown ``order``.
    LabelError
        A mapping key that is not a class of the head.

    Examples
    --------
    >>> p = np.array([[0.995, 0.005], [0.999, 0.001], [0.2, 0.8], [0.001, 0.999]])
    >>> select(p, threshold=0.99, quotas=[1, 5])
    array([1, 3])
    """
    p = _check_probs(probs)
    n, k = p.shape
    per_class = _threshold_vector(threshold, k, classes)
    if order not in ("confidence", "index"):
        raise ValueError(f"order must be 'confidence' or 'index', got {order!r}")
    remaining = _remaining(quotas, already_accepted, k, classes)
    conf, pred = p.max(axis=1), p.argmax(axis=1)
    ok = conf >= per_class[pred]
    if eligible is not None:
        ok &= _check_mask(eligible, n, "eligible")
    rows = np.flatnonzero(ok)
    rows = rows[np.lexsort((rows, -conf[rows]))]  # confidence desc, then index asc
    if remaining is not None:
        keep = np.zeros(rows.size, dtype=bool)
        for c in range(k):
            keep[np.flatnonzero(pred[rows] == c)[: remaining[c]]] = True
        rows = rows[keep]
    return (np.sort(rows) if order == "index" else rows).astype(np.int64, copy=False)


def _remaining(
    quotas: QuotaLike | None,
    already: QuotaLike | None,
    k: int,
    classes: Sequence[str] | None,
) -> np.ndarray | None:
    if classes is not None and len(classes) != k:
        raise ValueError(f"classes has {len(classes)} names but probs has K={k} columns")
    used = np.zeros(k, np.int64)
    if already is not None:
        used = _class_vector(already, k, classes, "already_accepted")
    if quotas is None:
        return None
    return np.maximum(_class_vector(quotas, k, classes, "quotas") - used, 0)


def _confidence_by_class(
    probs: np.ndarray, thresholds: Sequence[float], eligible: np.ndarray | None
) -> np.ndarray:
    p = _check_probs(probs)
    ts = np.array([_check_threshold(t, "thresholds") for t in thresholds], np.float64)
    if eligible is not None:
        p = p[_check_mask(eligible, p.shape[0], "eligible")]
    onehot = np.eye(p.shape[1], dtype=np.int64)[p.argmax(axis=1)]  # (N, K)
    reach = (p.max(axis=1)[None, :] >= ts[:, None]).astype(np.int64)  # (T, N)
    return reach @ onehot  # (T, K)


def candidates_per_class(
    probs: np.ndarray,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    *,
    eligible: np.ndarray | None = None,
) -> np.ndarray:
    """How many rows reach each threshold, split by predicted class.

    A model trained on a few thousand labels rarely reaches 0.99; the review page shows this
    table so the threshold can be chosen knowing what it leaves.

    Parameters
    ----------
    probs : np.ndarray, float, shape (N, K)
    thresholds : Sequence[float], length T, each in (0, 1]
    eligible : np.ndarray, bool, shape (N,), optional
        Count only these rows.

    Returns
    -------
    np.ndarray, int64, shape (T, K)
        ``out[t, k]`` = rows predicted ``k`` with confidence >= ``thresholds[t]``.

    Raises
    ------
    ValueError
        Bad ``probs``, a threshold outside (0, 1], an ``eligible`` mask of the wrong length.
    """
    return _confidence_by_class(probs, thresholds, eligible)


def candidates_per_threshold(
    probs: np.ndarray,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    *,
    eligible: np.ndarray | None = None,
) -> dict[float, int]:
    """How many rows reach each threshold: ``{threshold: count}``, in ``thresholds`` order.

    The row sums of :func:`candidates_per_class`; same parameters and errors.

    >>> candidates_per_threshold(np.array([[0.5, 0.5], [0.95, 0.05], [0.0, 1.0]]), (0.5, 0.99))
    {0.5: 3, 0.99: 1}
    """
    counts = _confidence_by_class(probs, thresholds, eligible).sum(axis=1)
    return {float(t): int(c) for t, c in zip(thresholds, counts, strict=True)}


def _per_head(value: Any, heads: Sequence[str], name: str) -> dict[str, Any]:
    """Spread one value over every head, or check a {head: value} mapping names exactly them."""
    if not isinstance(value, Mapping):
        return dict.fromkeys(heads, value)
    unknown = [h for h in value if h not in heads]
    if unknown:
        raise LabelError(f"unknown head(s) {unknown}; heads are {list(heads)}", field=name)
    missing = [h for h in heads if h not in value]
    if missing:
        raise ValueError(f"{name} has no entry for head(s) {missing}")
    return dict(value)


def select_joint(
    probs_by_head: Mapping[str, np.ndarray],
    *,
    classes: Mapping[str, Sequence[str]],
    thresholds: float | Mapping[str, ThresholdLike] = 0.99,
    quotas: Mapping[str, QuotaLike | None] | None = None,
    already_accepted: Mapping[str, QuotaLike | None] | None = None,
    eligible: np.ndarray | Mapping[str, np.ndarray | None] | None = None,
    order: Literal["confidence", "index"] = "confidence",
    rule: Literal["per_head", "joint"] = "per_head",
) -> dict[str, np.ndarray]:
    """Automatic mode over one shared pool, by one of two rules (meiju.md §8 leaves per-task vs
    joint open; the product's setting ``pseudo_rule`` chooses, ``joint`` by default).

    - ``"per_head"``: :func:`select` on every head independently. A sample may be accepted for
      emotion and not for intent (the model masks the missing head in the loss).
    - ``"joint"``: a sample is taken with *both* of its labels, or not at all (our reading of the
      paper §II.B: "samples ... added to the training set as additional labeled data"). A row is a
      candidate when every head reaches its threshold and it is eligible for every head; candidates
      are taken by their lowest head confidence, highest first (ties: lowest index), and a row is
      taken only while *each* head's predicted class still has quota (class-balanced sampling when
      the quotas are balanced). The result is the same rows for every head.

    Parameters
    ----------
    probs_by_head : Mapping[str, np.ndarray]
        head -> (N, K_head) float probabilities; the same N rows (samples) for every head.
    classes : Mapping[str, Sequence[str]]
        head -> class names in column order, e.g. ``LabelSchema.heads``.
    thresholds : float or Mapping[str, threshold], default 0.99
        One threshold for all heads, or one per head, each a number or per predicted class as
        :func:`select` takes it (array (K,) or {class: float}).
    quotas : Mapping[str, quota], optional
        head -> quotas as :func:`select` takes them (array (K,) or {class: int}); must name every
        head (a value of None means no quota for that head). None: no quotas at all.
    already_accepted : Mapping[str, counts], optional
        head -> counts accepted this round, e.g. ``db.queries.accepted_counts``; absent heads count
        zero.
    eligible : np.ndarray (N,) bool, or Mapping[str, np.ndarray | None], optional
        One mask for all heads, or one per head.
    order : {"confidence", "index"}
        As in :func:`select` (for ``joint``, confidence is the lowest head confidence).
    rule : {"per_head", "joint"}
        See above.

    Returns
    -------
    dict[str, np.ndarray]
        head -> int64 selected row indices, in ``probs_by_head`` order (with ``joint`` the same
        array for every head).

    Raises
    ------
    ValueError
        Heads with different N, a head whose K differs from its class list, any error of
        :func:`select`, a per-head mapping missing a head.
    LabelError
        A head in any argument that is not in ``classes`` / ``probs_by_head``, or an unknown class.
    """
    heads = list(probs_by_head)
    for head in heads:
        if head not in classes:
            raise LabelError(f"unknown head {head!r}; heads are {list(classes)}", field="classes")
    sizes = {h: np.shape(probs_by_head[h]) for h in heads}
    if len({s[0] if s else None for s in sizes.values()}) > 1:
        raise ValueError(f"every head must score the same N rows, got shapes {sizes}")
    per_threshold = _per_head(thresholds, heads, "thresholds")
    per_quota = _per_head(quotas, heads, "quotas")
    per_used = dict.fromkeys(heads) | _check_heads(already_accepted, heads, "already_accepted")
    per_mask = _per_head(eligible, heads, "eligible")
    if rule not in ("per_head", "joint"):
        raise ValueError(f"rule must be 'per_head' or 'joint', got {rule!r}")
    for h in heads:
        if len(sizes[h]) == 2 and sizes[h][1] != len(classes[h]):
            raise ValueError(
                f"head {h!r}: probs has K={sizes[h][1]} columns but {len(classes[h])} classes"
            )
    if rule == "joint":
        rows = _select_both(
            {h: _check_probs(probs_by_head[h], f"probs[{h!r}]") for h in heads},
            thresholds={
                h: _threshold_vector(per_threshold[h], len(classes[h]), classes[h], "thresholds")
                for h in heads
            },
            remaining={
                h: _remaining(per_quota[h], per_used[h], len(classes[h]), classes[h]) for h in heads
            },
            masks={
                h: None
                if per_mask[h] is None
                else _check_mask(per_mask[h], sizes[h][0], "eligible")
                for h in heads
            },
            order=order,
        )
        return {h: rows.copy() for h in heads}
    out = {}
    for h in heads:
        out[h] = select(
            probs_by_head[h],
            threshold=per_threshold[h],
            quotas=per_quota[h],
            already_accepted=per_used[h],
            eligible=per_mask[h],
            classes=classes[h],
            order=order,
        )
    return out


def _select_both(
    probs: Mapping[str, np.ndarray],
    *,
    thresholds: Mapping[str, np.ndarray],
    remaining: Mapping[str, np.ndarray | None],
    masks: Mapping[str, np.ndarray | None],
    order: str,
) -> np.ndarray:
    """The ``joint`` rule of :func:`select_joint`: int64 rows taken with every head's label;
    ``thresholds``: head -> (K,) per predicted class."""
    heads = list(probs)
    n = next(iter(probs.values())).shape[0]
    ok = np.ones(n, dtype=bool)
    conf = np.full(n, np.inf)
    pred = {}
    for h in heads:
        c = probs[h].max(axis=1)
        pred[h] = probs[h].argmax(axis=1)
        ok &= c >= thresholds[h][pred[h]]
        if masks[h] is not None:
            ok &= masks[h]
        conf = np.minimum(conf, c)
    rows = np.flatnonzero(ok)
    rows = rows[np.lexsort((rows, -conf[rows]))]  # lowest head confidence desc, then index
    left = {h: None if remaining[h] is None else remaining[h].copy() for h in heads}
    taken = []
    for i in rows:
        if all(left[h] is None or left[h][pred[h][i]] > 0 for h in heads):
            for h in heads:
                if left[h] is not None:
                    left[h][pred[h][i]] -= 1
            taken.append(i)
    out = np.asarray(taken, dtype=np.int64)
    return np.sort(out) if order == "index" else out


def _check_heads(value: Mapping[str, Any] | None, heads: Sequence[str], name: str) -> dict:
    if value is None:
        return {}
    unknown = [h for h in value if h not in heads]
    if unknown:
        raise LabelError(f"unknown head(s) {unknown}; heads are {list(heads)}", field=name)
    return dict(value)


# --------------------------------------------------------------------------------------------
# quality


@dataclass(frozen=True)
class PseudoLabelPrecision:
    """Precision of selected pseudo-labels against withheld true labels, per predicted class.

    Attributes
    ----------
    per_class : list[float], length K
        ``correct[k] / checked[k]``; NaN where no selected row predicted ``k`` has a known label.
    overall : float
        ``sum(correct) / sum(checked)``; NaN if nothing could be checked.
    checked : list[int], length K
        Selected rows predicted ``k`` whose withheld label is known.
    correct : list[int], length K
        Of those, rows whose prediction equals the withheld label.
    unknown : int
        Selected rows whose withheld label is ``-1`` (not counted anywhere above).
    """

    per_class: list[float]
    overall: float
    checked: list[int]
    correct: list[int]
    unknown: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN becomes None)."""

        def clean(x: float) -> float | None:
            return None if np.isnan(x) else x

        return {
            "per_class": [clean(x) for x in self.per_class],
            "overall": clean(self.overall),
            "checked": self.checked,
            "correct": self.correct,
            "unknown": self.unknown,
        }


def pseudo_label_precision(
    selected: np.ndarray, predicted: np.ndarray, withheld: np.ndarray, num_classes: int
) -> PseudoLabelPrecision:
    """How many of the selected pseudo-labels are right, measured on withheld true labels.

    For benchmarks on data whose truth we hold back (style.md, "Known answers"): hide the gold
    labels of part of the training set, select from it, and score the selection.

    Parameters
    ----------
    selected : np.ndarray, int, shape (M,)
        Row indices chosen by :func:`select`; distinct, each in [0, N).
    predicted : np.ndarray, int, shape (N,)
        Predicted class of every row (``probs.argmax(axis=1)``).
    withheld : np.ndarray, int, shape (N,)
        True class of every row, ``-1`` where unknown.
    num_classes : int
        K.

    Returns
    -------
    PseudoLabelPrecision

    Raises
    ------
    ValueError
        Length mismatch between ``predicted`` and ``withheld``, labels outside their range,
        selected indices out of range or repeated, ``num_classes < 1``.

    Examples
    --------
    >>> r = pseudo_label_precision(np.array([0, 1, 2]), np.array([0, 0, 1, 1]),
    ...                            np.array([0, 1, -1, 1]), 2)
    >>> r.per_class[0], r.overall, r.unknown
    (0.5, 0.5, 1)
    """
    k = _check_count(num_classes, "num_classes")
    if k < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    pred = np.asarray(predicted)
    n = pred.shape[0] if pred.ndim == 1 else -1
    if n < 0:
        raise ValueError(f"predicted must be 1-D (N,), got shape {pred.shape}")
    pred = _check_labels(pred, n, k, "predicted", allow_missing=False)
    true = _check_labels(withheld, n, k, "withheld", allow_missing=True)
    idx = _check_selected(selected, n)
    p, t = pred[idx], true[idx]
    known = t >= 0
    checked = np.bincount(p[known], minlength=k)
    correct = np.bincount(p[known & (p == t)], minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(checked > 0, correct / np.maximum(checked, 1), np.nan)
    total = int(checked.sum())
    overall = float(correct.sum() / total) if total else float("nan")
    return PseudoLabelPrecision(
        [float(x) for x in per_class],
        overall,
        checked.tolist(),
        correct.tolist(),
        int((~known).sum()),
    )


def _check_selected(selected: Any, n: int) -> np.ndarray:
    idx = np.asarray(selected)
    if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
        raise ValueError(f"selected must be a 1-D integer array, got {idx.dtype} {idx.shape}")
    idx = idx.astype(np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise ValueError(
            f"selected indices must be in [0, {n - 1}] for N={n}, got [{idx.min()}, {idx.max()}]"
        )
    if np.unique(idx).size != idx.size:
        raise ValueError(f"selected has {idx.size - np.unique(idx).size} repeated indices")
    return idx


# --------------------------------------------------------------------------------------------
# thresholds from review decisions (ours: every accept / reject is a labelled observation of the
# model's confidence)


def wilson_interval(k: int, n: int, *, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion ``k / n`` (Wilson 1927), 95 % by default.

    Returns:
        (low, high) in [0, 1]; (0.0, 1.0) when ``n == 0``.
    Raises:
        ValueError: ``k`` outside [0, n] or a negative ``n``.
    """
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, float(centre - half)), min(1.0, float(centre + half))


def acceptance_by_confidence(
    confidence: np.ndarray, accepted: np.ndarray, *, edges: Sequence[float] | None = None
) -> list[dict[str, float]]:
    """A reliability diagram drawn from human decisions: per confidence bin, how many reviewed
    pseudo-labels were accepted, with a Wilson interval.

    Args:
        confidence: float (N,) the model's confidence of each reviewed prediction, in [0, 1].
        accepted: bool (N,) True = the reviewer accepted the predicted class.
        edges: bin edges, increasing, from 0 to 1 (default 0, 0.1, ..., 1); the last bin is
            closed on the right.
    Returns:
        One dict per bin: ``lo``, ``hi``, ``n``, ``accepted``, ``rate`` (None when empty), ``low``,
        ``high`` (the interval).
    Raises:
        ValueError: arrays of different lengths, confidences outside [0, 1] or NaN, bad edges.
    """
    c = np.asarray(confidence, dtype=np.float64)
    a = np.asarray(accepted, dtype=bool)
    if c.shape != a.shape or c.ndim != 1:
        raise ValueError(f"confidence {c.shape} and accepted {a.shape} must be equal 1-D shapes")
    if c.size and (np.isnan(c).any() or c.min() < 0 or c.max() > 1):
        raise ValueError("confidences must be in [0, 1]")
    e = np.asarray(edges if edges is not None else np.linspace(0, 1, 11), dtype=np.float64)
    if e.ndim != 1 or e.size < 2 or (np.diff(e) <= 0).any():
        raise ValueError(f"edges must increase, got {e.tolist()}")
    which = np.clip(np.searchsorted(e, c, side="right") - 1, 0, e.size - 2)
    out = []
    for b in range(e.size - 1):
        inside = which == b
        n, k = int(inside.sum()), int(a[inside].sum())
        low, high = wilson_interval(k, n)
        out.append(
            {
                "lo": float(e[b]),
                "hi": float(e[b + 1]),
                "n": n,
                "accepted": k,
                "rate": k / n if n else None,
                "low": low,
                "high": high,
            }
        )
    return out


def threshold_for_precision(
    confidence: np.ndarray,
    accepted: np.ndarray,
    *,
    precision: float = 0.95,
    min_count: int = 20,
) -> float | None:
    """The lowest confidence threshold at which the reviewed pseudo-labels at or above it were
    accepted at least ``precision`` of the time, over at least ``min_count`` decisions.

    Returns:
        The threshold (one of the observed confidences), or None when no threshold reaches the
        precision with enough decisions.
    Raises:
        ValueError: as :func:`acceptance_by_confidence`; ``precision`` outside (0, 1].
    """
    if not 0 < precision <= 1:
        raise ValueError(f"precision must be in (0, 1], got {precision}")
    c = np.asarray(confidence, dtype=np.float64)
    a = np.asarray(accepted, dtype=bool)
    acceptance_by_confidence(c, a, edges=[0.0, 1.0])  # same checks
    order = np.argsort(-c, kind="stable")
    c, a = c[order], a[order]
    hits = np.cumsum(a)  # accepted among the i+1 most confident
    counts = np.arange(1, c.size + 1)
    best = None
    for i in range(c.size):
        if i + 1 < c.size and c[i + 1] == c[i]:
            continue  # a threshold keeps every decision of equal confidence
        if counts[i] >= min_count and hits[i] / counts[i] >= precision:
            best = float(c[i])
    return best
