"""Pseudo-label selection (meiju_core.ml.pseudo): invariants by property, quotas and calibration by
known answers, validation by the messages it gives."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from meiju_core.errors import LabelError
from meiju_core.ml import pseudo
from meiju_core.ml.pseudo import (
    apply_temperature,
    candidates_per_class,
    candidates_per_threshold,
    compute_quotas,
    pseudo_label_precision,
    select,
    select_joint,
    temperature_scale,
)
from meiju_core.schema import EMOTIONS, INTENTS

# Track I Mandarin train counts, reference/meiju.md §2.4
TRACK1_EMOTION_TRAIN = [458, 246, 262, 281, 261, 281, 505]
TRACK1_INTENT_TRAIN = [551, 197, 153, 194, 254, 258, 212, 475]

THRESHOLDS = st.sampled_from([0.3, 0.5, 0.8, 0.9, 0.95, 0.99, 0.999, 1.0])
FAST = settings(max_examples=60, deadline=None)


# ------------------------------------------------------------------------------------------
# strategies


@st.composite
def prob_matrices(draw, max_n: int = 40, max_k: int = 5) -> np.ndarray:
    """(N, K) probabilities, many of them confident; small logit alphabets make exact ties."""
    n = draw(st.integers(0, max_n))
    k = draw(st.integers(2, max_k))
    logits = draw(hnp.arrays(np.float64, (n, k), elements=st.sampled_from([-8.0, -2, 0, 1, 3, 9])))
    scale = draw(st.sampled_from([0.5, 1.0, 2.0, 4.0]))
    return apply_temperature(logits, 1.0 / scale)


@st.composite
def selection_case(draw):
    """probs plus optional quotas, already-accepted counts and an eligibility mask."""
    p = draw(prob_matrices())
    n, k = p.shape
    quotas = draw(st.none() | hnp.arrays(np.int64, (k,), elements=st.integers(0, n + 1)))
    used = draw(st.none() | hnp.arrays(np.int64, (k,), elements=st.integers(0, n + 1)))
    eligible = draw(st.none() | hnp.arrays(np.bool_, (n,)))
    return p, quotas, used, eligible


def remaining(quotas, used, k: int) -> np.ndarray:
    if quotas is None:
        return np.full(k, np.iinfo(np.int64).max)
    return np.maximum(quotas - (0 if used is None else used), 0)


def candidates(p: np.ndarray, threshold: float, eligible) -> np.ndarray:
    ok = p.max(axis=1) >= threshold
    return ok if eligible is None else ok & eligible


# ------------------------------------------------------------------------------------------
# select: invariants


@FAST
@given(selection_case(), THRESHOLDS)
def test_select_respects_threshold_eligibility_and_remaining_quota(case, threshold):
    p, quotas, used, eligible = case
    idx = select(p, threshold=threshold, quotas=quotas, already_accepted=used, eligible=eligible)
    assert idx.dtype == np.int64
    assert np.unique(idx).size == idx.size
    assert (p[idx].max(axis=1) >= threshold).all()
    assert candidates(p, threshold, eligible)[idx].all()  # nothing below threshold, nothing barred
    per_class = np.bincount(p[idx].argmax(axis=1), minlength=p.shape[1])
    assert (per_class <= remaining(quotas, used, p.shape[1])).all()


@FAST
@given(selection_case(), THRESHOLDS, THRESHOLDS)
def test_raising_the_threshold_never_selects_more(case, t1, t2):
    p, quotas, used, eligible = case
    low, high = min(t1, t2), max(t1, t2)
    kw = {"quotas": quotas, "already_accepted": used, "eligible": eligible}
    at_low, at_high = select(p, threshold=low, **kw), select(p, threshold=high, **kw)
    assert at_high.size <= at_low.size
    assert set(at_high) <= set(at_low)


@FAST
@given(selection_case(), THRESHOLDS)
def test_select_is_deterministic_and_leaves_inputs_alone(case, threshold):
    p, quotas, used, eligible = case
    before = p.copy()
    kw = {"threshold": threshold, "quotas": quotas, "already_accepted": used, "eligible": eligible}
    first, second = select(p, **kw), select(p.copy(), **kw)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(p, before)


@FAST
@given(prob_matrices(), THRESHOLDS, st.booleans())
def test_unlimited_quota_selects_every_candidate(p, threshold, as_none):
    quotas = None if as_none else np.full(p.shape[1], p.shape[0])
    idx = select(p, threshold=threshold, quotas=quotas)
    np.testing.assert_array_equal(np.sort(idx), np.flatnonzero(p.max(axis=1) >= threshold))


@FAST
@given(selection_case(), THRESHOLDS)
def test_per_class_the_selected_rows_are_the_most_confident(case, threshold):
    p, quotas, used, eligible = case
    idx = select(p, threshold=threshold, quotas=quotas, already_accepted=used, eligible=eligible)
    conf, pred = p.max(axis=1), p.argmax(axis=1)
    chosen = np.zeros(p.shape[0], bool)
    chosen[idx] = True
    left_out = candidates(p, threshold, eligible) & ~chosen
    for c in range(p.shape[1]):
        taken, skipped = (
            np.flatnonzero(chosen & (pred == c)),
            np.flatnonzero(left_out & (pred == c)),
        )
        if taken.size and skipped.size:
            # (confidence desc, index asc) order: every taken row ranks before every skipped one
            worst_taken = max((-conf[i], i) for i in taken)
            best_skipped = min((-conf[i], i) for i in skipped)
            assert worst_taken < best_skipped


@FAST
@given(selection_case(), THRESHOLDS)
def test_result_order_is_confidence_desc_then_index(case, threshold):
    p, quotas, used, eligible = case
    kw = {"threshold": threshold, "quotas": quotas, "already_accepted": used, "eligible": eligible}
    idx = select(p, **kw)
    keys = [(-p[i].max(), i) for i in idx]
    assert keys == sorted(keys)
    np.testing.assert_array_equal(select(p, order="index", **kw), np.sort(idx))


@FAST
@given(prob_matrices(), prob_matrices(), THRESHOLDS)
def test_select_joint_is_select_per_head(pe, pi, threshold):
    n = min(pe.shape[0], pi.shape[0])
    pe, pi = pe[:n], pi[:n]
    classes = {"emotion": EMOTIONS[: pe.shape[1]], "intent": INTENTS[: pi.shape[1]]}
    quotas = {"emotion": {classes["emotion"][0]: 2}, "intent": None}
    got = select_joint(
        {"emotion": pe, "intent": pi}, classes=classes, thresholds=threshold, quotas=quotas
    )
    np.testing.assert_array_equal(
        got["emotion"], select(pe, threshold=threshold, quotas=[2] + [0] * (pe.shape[1] - 1))
    )
    np.testing.assert_array_equal(got["intent"], select(pi, threshold=threshold))


@st.composite
def joint_case(draw):
    """Two heads over the same N rows, quotas per head (or none), an optional mask."""
    pe, pi = draw(prob_matrices()), draw(prob_matrices())
    n = min(pe.shape[0], pi.shape[0])
    pe, pi = pe[:n], pi[:n]
    qe = draw(st.none() | hnp.arrays(np.int64, (pe.shape[1],), elements=st.integers(0, 4)))
    qi = draw(st.none() | hnp.arrays(np.int64, (pi.shape[1],), elements=st.integers(0, 4)))
    eligible = draw(st.none() | hnp.arrays(np.bool_, (n,)))
    return pe, pi, qe, qi, eligible


@FAST
@given(joint_case(), THRESHOLDS)
def test_joint_rule_takes_samples_with_both_labels_within_both_quotas(case, threshold):
    pe, pi, qe, qi, eligible = case
    classes = {"emotion": EMOTIONS[: pe.shape[1]], "intent": INTENTS[: pi.shape[1]]}
    got = select_joint(
        {"emotion": pe, "intent": pi},
        classes=classes,
        thresholds=threshold,
        quotas={"emotion": qe, "intent": qi},
        eligible=eligible,
        rule="joint",
    )
    rows = got["emotion"]
    np.testing.assert_array_equal(rows, got["intent"])  # one sample, both labels
    assert len(set(rows.tolist())) == len(rows)
    ok = (pe.max(1) >= threshold) & (pi.max(1) >= threshold)
    if eligible is not None:
        ok &= eligible
    assert ok[rows].all()  # both heads pass: never one label alone
    # class balance: no class of either head goes past its quota
    for p, q in ((pe, qe), (pi, qi)):
        if q is not None:
            counts = np.bincount(p.argmax(1)[rows], minlength=p.shape[1])
            assert (counts <= q).all()
    # maximal: a candidate left out has a class whose quota is used up
    taken = set(rows.tolist())
    for i in np.flatnonzero(ok):
        if i in taken:
            continue
        full = []
        for p, q in ((pe, qe), (pi, qi)):
            if q is not None:
                c = p[i].argmax()
                full.append((p.argmax(1)[rows] == c).sum() >= q[c])
        assert any(full), i
    # most confident first: confidences (lowest head) never rise along the result
    conf = np.minimum(pe.max(1), pi.max(1))[rows]
    assert (np.diff(conf) <= 1e-12).all()


def test_joint_rule_on_a_constructed_case():
    pe = np.array([[0.995, 0.005], [0.999, 0.001], [0.001, 0.999], [0.5, 0.5]])
    pi = np.array([[0.999, 0.001], [0.9, 0.1], [0.001, 0.999], [0.999, 0.001]])
    classes = {"emotion": ("a", "b"), "intent": ("x", "y")}
    got = select_joint(
        {"emotion": pe, "intent": pi}, classes=classes, thresholds=0.99, rule="joint"
    )
    assert got["emotion"].tolist() == [2, 0]  # row 1 fails intent, row 3 fails emotion
    per_head = select_joint({"emotion": pe, "intent": pi}, classes=classes, thresholds=0.99)
    assert sorted(per_head["emotion"].tolist()) == [0, 1, 2]
    with pytest.raises(ValueError, match="rule"):
        select_joint({"emotion": pe, "intent": pi}, classes=classes, rule="both")


@FAST
@given(prob_matrices(max_n=60))
def test_candidate_counts_fall_as_the_threshold_rises(p):
    ts = pseudo.DEFAULT_THRESHOLDS
    counts = candidates_per_threshold(p, ts)
    assert list(counts) == list(ts)
    values = list(counts.values())
    assert values == sorted(values, reverse=True)
    assert values == [int((p.max(axis=1) >= t).sum()) for t in ts]
    by_class = candidates_per_class(p, ts)
    assert by_class.shape == (len(ts), p.shape[1])
    np.testing.assert_array_equal(by_class.sum(axis=1), values)
    if p.shape[0]:
        np.testing.assert_array_equal(
            by_class[0],
            np.bincount(  # 0.5 and up: argmax per class
                p.argmax(axis=1)[p.max(axis=1) >= ts[0]], minlength=p.shape[1]
            ),
        )


# ------------------------------------------------------------------------------------------
# select: known answers


def test_select_known_answer_with_quota_names_and_already_accepted():
    p = np.array(
        [
            [0.995, 0.005, 0.0],  # 0: class a, .995
            [0.999, 0.001, 0.0],  # 1: class a, .999
            [0.2, 0.8, 0.0],  # 2: below threshold
            [0.0, 0.001, 0.999],  # 3: class c, .999
            [0.0, 0.009, 0.991],  # 4: class c, .991
            [0.999, 0.0, 0.001],  # 5: class a, .999 (ties row 1; index breaks the tie)
        ]
    )
    classes = ["a", "b", "c"]
    got = select(p, quotas={"a": 3, "c": 1}, already_accepted={"a": 1}, classes=classes)
    np.testing.assert_array_equal(got, [1, 3, 5])  # a: 2 left -> rows 1, 5; c: 1 -> row 3
    got = select(p, quotas=[3, 0, 2], eligible=np.array([True, False, True, True, True, True]))
    np.testing.assert_array_equal(got, [3, 5, 0, 4])
    assert select(p, quotas={"a": 1}, already_accepted={"a": 5}, classes=classes).size == 0


def test_threshold_one_takes_only_certain_rows():
    p = np.array([[1.0, 0.0], [0.999999, 0.000001]])
    np.testing.assert_array_equal(select(p, threshold=1.0), [0])


def test_select_joint_accepts_a_sample_for_one_head_only():
    pe = np.array([[0.995, 0.005], [0.6, 0.4]])
    pi = np.array([[0.5, 0.5], [0.001, 0.999]])
    got = select_joint(
        {"emotion": pe, "intent": pi},
        classes={"emotion": ["x", "y"], "intent": ["u", "v"]},
        thresholds={"emotion": 0.99, "intent": 0.95},
        already_accepted={"intent": {"v": 0}},
    )
    np.testing.assert_array_equal(got["emotion"], [0])
    np.testing.assert_array_equal(got["intent"], [1])


def test_candidates_per_threshold_known_answer():
    p = np.array([[0.5, 0.5], [0.95, 0.05], [0.0, 1.0], [0.3, 0.7]])
    assert candidates_per_threshold(p, (0.5, 0.7, 0.99)) == {0.5: 4, 0.7: 3, 0.99: 1}
    np.testing.assert_array_equal(candidates_per_class(p, (0.5, 0.99)), [[2, 2], [0, 1]])
    mask = np.array([False, True, True, False])
    assert candidates_per_threshold(p, (0.5,), eligible=mask) == {0.5: 2}


# ------------------------------------------------------------------------------------------
# quotas


def quota_list(gold, classes, **kw) -> list[int]:
    return list(compute_quotas(gold, classes=classes, **kw).values())


def test_balanced_track1_emotion_fills_smallest_first():
    # 5 small classes levelled at 326; the leftover label goes to the smallest (surprise, 246)
    assert quota_list(TRACK1_EMOTION_TRAIN, EMOTIONS, budget=300) == [0, 81, 64, 45, 65, 45, 0]
    # budget over the total deficit (7 * 505 - 2294 = 1241): everyone up to neutral, rest unspent
    assert quota_list(TRACK1_EMOTION_TRAIN, EMOTIONS, budget=2000) == [
        47,
        259,
        243,
        224,
        244,
        224,
        0,
    ]
    spent = quota_list(TRACK1_EMOTION_TRAIN, EMOTIONS, budget=2000, spend_all=True)
    assert sum(spent) == 2000
    level = np.add(TRACK1_EMOTION_TRAIN, spent)
    assert level.max() - level.min() <= 1  # (2294 + 2000) / 7 = 613.4: six at 613, one at 614


def test_balanced_track1_intent_and_zero_budget():
    q = quota_list(TRACK1_INTENT_TRAIN, INTENTS, budget=500)
    assert sum(q) == 500 and q[0] == 0 and q[7] == 0
    assert quota_list(TRACK1_INTENT_TRAIN, INTENTS, budget=0) == [0] * 8


def test_balanced_with_a_zero_sample_class():
    # level 6 costs 6 + 1 = 7; the 8th label goes to the smaller of the two classes at the level
    assert quota_list({"b": 10, "c": 5}, ["a", "b", "c"], budget=8) == [7, 0, 1]
    assert quota_list([0, 0, 0], ["a", "b", "c"], budget=8) == [0, 0, 0]  # already level
    assert quota_list([0, 0, 0], ["a", "b", "c"], budget=8, spend_all=True) == [3, 3, 2]


def test_proportional_track1_emotion_largest_remainder():
    q = quota_list(TRACK1_EMOTION_TRAIN, EMOTIONS, strategy="proportional", budget=100)
    # exact shares 19.97 10.72 11.42 12.25 11.38 12.25 22.01: floors sum 97, +1 for .97 .72 .42
    assert q == [20, 11, 12, 12, 11, 12, 22]
    assert quota_list([0, 0, 0], ["a", "b", "c"], strategy="proportional", budget=10) == [4, 3, 3]
    assert quota_list([0, 5, 0], ["a", "b", "c"], strategy="proportional", budget=7) == [0, 7, 0]


def test_explicit_quotas():
    got = compute_quotas(None, classes=EMOTIONS, strategy="explicit", explicit={"fear": 30})
    assert got == {c: (30 if c == "fear" else 0) for c in EMOTIONS}
    with pytest.raises(LabelError, match="'joy'"):
        compute_quotas(None, classes=EMOTIONS, strategy="explicit", explicit={"joy": 3})
    with pytest.raises(ValueError, match="over the budget 10"):
        compute_quotas(None, classes=EMOTIONS, strategy="explicit", explicit={"sad": 11}, budget=10)
    with pytest.raises(ValueError, match="non-negative"):
        compute_quotas(None, classes=EMOTIONS, strategy="explicit", explicit={"sad": -1})


@FAST
@given(st.lists(st.integers(0, 600), min_size=2, max_size=9), st.integers(0, 3000), st.booleans())
def test_balanced_is_water_filling(gold, budget, spend_all):
    classes = [f"c{i}" for i in range(len(gold))]
    q = np.array(quota_list(gold, classes, budget=budget, spend_all=spend_all))
    g = np.array(gold)
    deficit = int((g.max() - g).sum())
    assert (q >= 0).all()
    assert q.sum() == (budget if spend_all else min(budget, deficit))
    if not spend_all:
        assert (g + q <= g.max()).all()
    level = g + q
    raised = q > 0
    if raised.any():  # nobody raised above anyone else by more than one label
        assert level[raised].max() <= level.min() + 1


@FAST
@given(st.lists(st.integers(0, 600), min_size=2, max_size=9), st.integers(0, 3000))
def test_proportional_sums_to_budget_within_one_of_exact_share(gold, budget):
    classes = [f"c{i}" for i in range(len(gold))]
    q = np.array(quota_list(gold, classes, strategy="proportional", budget=budget))
    weights = np.array(gold) if sum(gold) else np.ones(len(gold))
    assert q.sum() == budget
    assert (np.abs(q - budget * weights / weights.sum()) < 1).all()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"budget": 10, "strategy": "greedy"}, ValueError, "strategy"),
        ({}, ValueError, "needs a budget"),
        ({"budget": -1}, ValueError, "budget"),
        ({"budget": 10, "gold": [1, 2]}, ValueError, r"shape \(3,\)"),
        ({"budget": 10, "gold": [1, -2, 3]}, ValueError, "non-negative"),
        ({"budget": 10, "gold": {"zz": 1}}, LabelError, "'zz'"),
        ({"budget": 10, "strategy": "explicit"}, ValueError, "explicit="),
    ],
)
def test_compute_quotas_rejects_bad_input(kwargs, error, match):
    gold = kwargs.pop("gold", [1, 2, 3])
    with pytest.raises(error, match=match):
        compute_quotas(gold, classes=["a", "b", "c"], **kwargs)


# ------------------------------------------------------------------------------------------
# calibration


@pytest.mark.parametrize("t_true", [0.5, 1.0, 2.5])
def test_temperature_scale_recovers_a_known_temperature(t_true):
    rng = np.random.default_rng(7)
    logits = rng.normal(0.0, 3.0, size=(4000, 6))
    p_true = apply_temperature(logits, t_true)
    labels = (p_true.cumsum(axis=1) > rng.random((4000, 1))).argmax(axis=1)
    assert temperature_scale(logits, labels) == pytest.approx(t_true, rel=0.06)
    from_probs = temperature_scale(apply_temperature(logits, 1.0), labels, kind="probs")
    assert from_probs == pytest.approx(temperature_scale(logits, labels), rel=1e-4)


def test_temperature_helpers():
    p = np.array([[0.7, 0.2, 0.1], [0.0, 0.5, 0.5]])
    np.testing.assert_allclose(apply_temperature(p, 1.0, kind="probs"), p, atol=1e-12)
    soft = apply_temperature(p, 4.0, kind="probs")
    np.testing.assert_allclose(soft.sum(axis=1), 1.0)
    assert soft[0].max() < p[0].max()  # T > 1 softens
    # missing labels are dropped; separable data push T to the lower bound
    t = temperature_scale(np.array([[5.0, 0.0], [0.0, 5.0], [9.0, 9.0]]), np.array([0, 1, -1]))
    assert t == pytest.approx(0.01)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: temperature_scale(np.zeros((3, 2)), np.array([-1, -1, -1])), "no labelled row"),
        (lambda: temperature_scale(np.zeros((3, 2)), np.array([0, 1])), r"shape \(3,\)"),
        (lambda: temperature_scale(np.zeros((3, 2)), np.array([0, 1, 2])), r"\[-1, 1\]"),
        (lambda: temperature_scale(np.zeros((2, 2)), np.array([0, 1]), bounds=(2, 1)), "bounds"),
        (lambda: temperature_scale(np.zeros((2, 2)), np.array([0, 1]), kind="x"), "kind"),
        (lambda: apply_temperature(np.zeros((2, 2)), 0.0), "temperature"),
        (lambda: apply_temperature(np.full((2, 2), np.nan), 1.0), "NaN"),
    ],
)
def test_calibration_rejects_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ------------------------------------------------------------------------------------------
# precision against withheld labels


def test_pseudo_label_precision_known_answer():
    predicted = np.array([0, 0, 1, 1, 2, 2, 2, 0])
    withheld = np.array([0, 1, 1, -1, 2, 2, 0, 0])
    r = pseudo_label_precision(np.array([0, 1, 2, 3, 4, 5, 6]), predicted, withheld, 4)
    assert r.checked == [2, 1, 3, 0]
    assert r.correct == [1, 1, 2, 0]
    assert r.per_class[:3] == [0.5, 1.0, pytest.approx(2 / 3)]
    assert np.isnan(r.per_class[3])
    assert r.overall == pytest.approx(4 / 6)
    assert r.unknown == 1
    assert r.to_dict()["per_class"][3] is None
    empty = pseudo_label_precision(np.array([], np.int64), predicted, withheld, 4)
    assert np.isnan(empty.overall) and empty.to_dict()["overall"] is None


def test_precision_on_known_truth_data_rises_with_the_threshold():
    """cleanlab-style known truth: labels drawn from the (calibrated) model itself."""
    rng = np.random.default_rng(1)
    p = apply_temperature(rng.normal(0.0, 4.0, size=(3000, 5)), 1.0)
    truth = (p.cumsum(axis=1) > rng.random((3000, 1))).argmax(axis=1)
    precisions = [
        pseudo_label_precision(select(p, threshold=t), p.argmax(axis=1), truth, 5).overall
        for t in (0.5, 0.9, 0.99)
    ]
    assert precisions == sorted(precisions)
    assert precisions[-1] > 0.97  # calibrated: >= 0.99 confidence is about 99 % right


@pytest.mark.parametrize(
    ("selected", "predicted", "withheld", "match"),
    [
        ([0, 0], [0, 1], [0, 1], "repeated"),
        ([2], [0, 1], [0, 1], r"\[0, 1\] for N=2"),
        ([0], [0, 1, 1], [0, 1], r"shape \(3,\)"),
        ([0], [0, 3], [0, 1], "predicted"),
        ([0], [0, 1], [0, -2], "withheld"),
    ],
)
def test_precision_rejects_bad_input(selected, predicted, withheld, match):
    with pytest.raises(ValueError, match=match):
        pseudo_label_precision(np.array(selected), np.array(predicted), np.array(withheld), 2)


# ------------------------------------------------------------------------------------------
# validation of select / select_joint


GOOD = np.array([[0.995, 0.005], [0.4, 0.6]])


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: select(np.array([0.5, 0.5])), ValueError, r"2-D \(N, K\).*\(2,\)"),
        (lambda: select(np.ones((2, 2, 2)) / 2), ValueError, r"\(2, 2, 2\)"),
        (lambda: select(np.array([[0.5, 0.6]])), ValueError, "sum to 1.*1 of 1 rows"),
        (lambda: select(np.array([[np.nan, 1.0]])), ValueError, "NaN"),
        (lambda: select(np.array([[1.5, -0.5]])), ValueError, r"outside \[0, 1\]"),
        (lambda: select(GOOD, threshold=0.0), ValueError, r"threshold.*\(0, 1\]"),
        (lambda: select(GOOD, threshold=1.01), ValueError, "threshold"),
        (lambda: select(GOOD, threshold=float("nan")), ValueError, "threshold"),
        (lambda: select(GOOD, quotas=[1, -1]), ValueError, r"quotas\[1\].*non-negative"),
        (lambda: select(GOOD, quotas=[1, 1, 1]), ValueError, r"quotas must have shape \(2,\)"),
        (
            lambda: select(GOOD, quotas=[1, 1], already_accepted=[-1, 0]),
            ValueError,
            "already_accepted",
        ),
        (lambda: select(GOOD, eligible=np.array([True])), ValueError, r"eligible.*\(2,\)"),
        (lambda: select(GOOD, eligible=np.array([1, 0])), ValueError, "bool"),
        (lambda: select(GOOD, quotas={"a": 1}), ValueError, "classes="),
        (lambda: select(GOOD, quotas={"z": 1}, classes=["a", "b"]), LabelError, "'z'"),
        (lambda: select(GOOD, quotas={5: 1}), LabelError, "index 5"),
        (lambda: select(GOOD, classes=["a", "b", "c"]), ValueError, "3 names.*K=2"),
        (lambda: select(GOOD, order="random"), ValueError, "order"),
        (lambda: candidates_per_threshold(GOOD, (0.5, 2.0)), ValueError, "thresholds"),
    ],
)
def test_select_rejects_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


CLASSES = {"emotion": ["x", "y"], "intent": ["u", "v", "w"]}
PI = np.array([[0.98, 0.01, 0.01], [0.1, 0.1, 0.8]])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"probs_by_head": {"emotion": GOOD, "intent": PI[:1]}}, ValueError, "same N"),
        ({"probs_by_head": {"emotion": GOOD, "intent": GOOD}}, ValueError, "K=2.*3 classes"),
        ({"probs_by_head": {"mood": GOOD}}, LabelError, "'mood'"),
        ({"thresholds": {"emotion": 0.9}}, ValueError, r"no entry for head\(s\) \['intent'\]"),
        ({"thresholds": {"emotion": 0.9, "intent": 0.9, "x": 1}}, LabelError, "'x'"),
        ({"quotas": {"emotion": [1, 1]}}, ValueError, "quotas has no entry"),
        ({"already_accepted": {"mood": [0, 0]}}, LabelError, "'mood'"),
        ({"quotas": {"emotion": {"q": 1}, "intent": None}}, LabelError, "'q'"),
    ],
)
def test_select_joint_rejects_bad_input(kwargs, error, match):
    probs = kwargs.pop("probs_by_head", {"emotion": GOOD, "intent": PI})
    with pytest.raises(error, match=match):
        select_joint(probs, classes=CLASSES, **kwargs)


def test_docstring_examples_run():
    result = doctest.testmod(pseudo, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


# ------------------------------------------------------------------------------------------
# thresholds from review decisions


def test_wilson_interval_matches_the_formula():
    from meiju_core.ml.pseudo import wilson_interval

    low, high = wilson_interval(8, 10)
    # statsmodels' proportion_confint(8, 10, method="wilson") = (0.4902, 0.9433)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(5, 5)[1] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_acceptance_bins_equal_a_direct_count():
    from meiju_core.ml.pseudo import acceptance_by_confidence, wilson_interval

    rng = np.random.default_rng(0)
    conf = rng.uniform(0, 1, 500)
    conf[:3] = [0.0, 1.0, 0.5]
    acc = rng.uniform(0, 1, 500) < conf  # confident predictions are accepted more often
    bins = acceptance_by_confidence(conf, acc)
    assert len(bins) == 10 and sum(b["n"] for b in bins) == 500
    for b in bins:
        inside = (conf >= b["lo"]) & ((conf < b["hi"]) | ((b["hi"] == 1.0) & (conf <= 1.0)))
        assert b["n"] == inside.sum() and b["accepted"] == acc[inside].sum()
        assert (b["low"], b["high"]) == wilson_interval(b["accepted"], b["n"])
    rates = [b["rate"] for b in bins]
    assert rates[-1] > rates[0]
    with pytest.raises(ValueError, match="\\[0, 1\\]"):
        acceptance_by_confidence(np.array([1.5]), np.array([True]))


def test_threshold_from_precision_on_a_constructed_case():
    from meiju_core.ml.pseudo import threshold_for_precision

    # 40 decisions at 0.95-0.99 all accepted; 40 at 0.80-0.85 half accepted; 40 below, rejected
    conf = np.concatenate([np.linspace(0.95, 0.99, 40), np.linspace(0.80, 0.85, 40)])
    conf = np.concatenate([conf, np.linspace(0.3, 0.6, 40)])
    acc = np.concatenate([np.ones(40, bool), np.arange(40) % 2 == 0, np.zeros(40, bool)])
    t = threshold_for_precision(conf, acc, precision=0.95)
    # 40 sure accepts carry the first 4 of the half-accepted band (42 / 44 = 0.955); a fifth
    # drops it to 42 / 45 = 0.933
    assert t == pytest.approx(0.80 + 36 * 0.05 / 39)
    assert acc[conf >= t].mean() >= 0.95
    below = conf[conf < t].max()
    assert acc[conf >= below].mean() < 0.95
    t80 = threshold_for_precision(conf, acc, precision=0.75)
    assert 0.80 <= t80 < 0.85  # down into the half-accepted band, while 75 % still holds
    kept = conf >= t80
    assert acc[kept].mean() >= 0.75
    assert threshold_for_precision(conf, acc, precision=0.95, min_count=100) is None


def test_select_takes_a_threshold_per_predicted_class():
    from meiju_core.ml.pseudo import select, select_joint

    p = np.array([[0.95, 0.05], [0.85, 0.15], [0.30, 0.70], [0.10, 0.90], [0.02, 0.98], [0.6, 0.4]])
    # class a needs 0.9, class b 0.7: rows 0 (a 0.95), 2 (b 0.70), 3 (b 0.90), 4 (b 0.98)
    got = select(p, threshold={"a": 0.9, "b": 0.7}, classes=["a", "b"], order="index")
    assert got.tolist() == [0, 2, 3, 4]
    assert select(p, threshold=[0.9, 0.7], order="index").tolist() == [0, 2, 3, 4]
    # "*" covers the classes not named; a class neither named nor covered is never taken
    assert select(
        p, threshold={"b": 0.95, "*": 0.5}, classes=["a", "b"], order="index"
    ).tolist() == [
        0,
        1,
        4,
        5,
    ]
    assert select(p, threshold={"b": 0.5}, classes=["a", "b"], order="index").tolist() == [2, 3, 4]
    with pytest.raises(ValueError, match="threshold\\['a'\\]"):
        select(p, threshold={"a": 1.5, "b": 0.5}, classes=["a", "b"])
    with pytest.raises(LabelError):
        select(p, threshold={"c": 0.5}, classes=["a", "b"])
    # the joint rule applies each head's class threshold
    q = np.array([[0.9, 0.1]] * 6)
    rows = select_joint(
        {"e": p, "i": q},
        classes={"e": ["a", "b"], "i": ["x", "y"]},
        thresholds={"e": {"a": 0.9, "b": 0.7}, "i": 0.5},
        rule="joint",
        order="index",
    )
    assert rows["e"].tolist() == [0, 2, 3, 4]
