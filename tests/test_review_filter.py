"""The Review page's filter logic (``pages/_review_filter.py``): URL parameters in and out, the
widget state, the queue filter and the summary under the filters. Plain functions, no Streamlit;
the page's AppTest (tests/app/test_review_page.py) and browser test cover the widgets."""

from __future__ import annotations

import subprocess
import sys

import pytest
from _paths import ROOT

from db import queries as q
from db.fixtures import EMOTIONS, INTENTS
from pages import _review_filter as rf

HEADS = {"emotion": list(EMOTIONS), "intent": list(INTENTS)}
VERSIONS = {3: "#3 second (candidate)", 1: "#1 first (promoted)"}
ROUND_MV = 1
PAIRS = (("happy", "consoling"), ("fear", "wishing"))


def _filter(params: dict[str, str]) -> q.QueueFilter:
    return rf.queue_filter(params, pairs=PAIRS, pair_heads=rf.pair_heads(HEADS))


# --------------------------------------------------------------------------- clean_params


def test_clean_params_keeps_every_valid_filter():
    raw = {
        "head": "intent",
        "label": "questioning",
        "min": "0.60",
        "max": "0.9",
        "unseen": "true",
        "disagree": "1",
        "model": "3",
        "samples": "7,8,9",
    }
    assert rf.clean_params(raw, HEADS, VERSIONS) == {
        "head": "intent",
        "label": "questioning",
        "min": "0.6",
        "max": "0.9",
        "unseen": "1",
        "disagree": "1",
        "model": "3",
        "samples": "7,8,9",
    }


@pytest.mark.parametrize(
    "raw",
    [
        {"head": "mood"},  # not a head of the schema
        {"label": "questioning"},  # a class with no head
        {"min": "abc", "max": "nan"},
        {"min": "-0.1", "max": "1.5"},
        {"min": "inf"},
        {"unseen": "0", "disagree": "no"},
        {"model": "2"},  # a version without predictions
        {"model": "x"},
        {"model": "-3"},
        {"samples": "a,b,-1,0"},
        {"samples": ""},
        {"queue": "issues", "sample": "3"},  # other pages' parameters are not filters
    ],
)
def test_clean_params_drops_invalid_values(raw):
    assert rf.clean_params(raw, HEADS, VERSIONS) == {}


def test_clean_params_drops_only_the_bad_part():
    raw = {"head": "emotion", "label": "questioning", "min": "0.5", "max": "2", "model": "9"}
    assert rf.clean_params(raw, HEADS, VERSIONS) == {"head": "emotion", "min": "0.5"}


def test_clean_params_reads_the_dashboards_pred_as_label():
    raw = {"head": "emotion", "pred": "sad"}
    assert rf.clean_params(raw, HEADS, VERSIONS) == {"head": "emotion", "label": "sad"}
    # an explicit label wins over pred
    raw = {"head": "emotion", "label": "fear", "pred": "sad"}
    assert rf.clean_params(raw, HEADS, VERSIONS)["label"] == "fear"


def test_clean_params_normalises_flags_and_sample_ids():
    raw = {"unseen": "Yes", "disagree": "ON", "samples": "5, 3,5,x"}
    out = rf.clean_params(raw, HEADS, VERSIONS)
    assert out["unseen"] == out["disagree"] == "1"
    assert out["samples"] == "5,3"


def test_url_params_picks_the_filter_keys_present():
    query = {"head": "intent", "pred": "agreeing", "queue": "pseudo", "samples": ""}
    assert rf.url_params(query) == {"head": "intent", "pred": "agreeing", "samples": ""}


# --------------------------------------------------------------------------- widgets


def test_widget_state_of_no_params_is_the_unfiltered_queue():
    state = rf.widget_state({}, HEADS, ROUND_MV)
    assert state == {
        "rv_f_head": "any",
        "rv_f_label_emotion": "any",
        "rv_f_label_intent": "any",
        "rv_f_conf": (0.0, 1.0),
        "rv_f_unseen": False,
        "rv_f_disagree": False,
        "rv_f_model": ROUND_MV,
        "rv_f_samples": "",
    }
    assert rf.params_from_widgets(state, HEADS, ROUND_MV) == {}


def test_widget_state_sets_the_class_of_the_filtered_head_only():
    state = rf.widget_state({"head": "intent", "label": "wishing"}, HEADS, ROUND_MV)
    assert state["rv_f_label_intent"] == "wishing"
    assert state["rv_f_label_emotion"] == "any"


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"head": "emotion"},
        {"head": "intent", "label": "questioning"},
        {"min": "0.6"},
        {"max": "0.95"},
        {"min": "0.25", "max": "0.75"},
        {"unseen": "1"},
        {"disagree": "1"},
        {"model": "3"},
        {"samples": "4,2,9"},
        {
            "head": "emotion",
            "label": "anger",
            "min": "0.5",
            "max": "0.99",
            "unseen": "1",
            "disagree": "1",
            "model": "3",
            "samples": "11",
        },
    ],
)
def test_params_round_trip_through_the_widgets(params):
    """URL -> clean parameters -> widget state -> parameters gives the same parameters."""
    clean = rf.clean_params(params, HEADS, VERSIONS)
    assert clean == params
    state = rf.widget_state(clean, HEADS, ROUND_MV)
    assert rf.params_from_widgets(state, HEADS, ROUND_MV) == params


def test_defaults_are_left_out_of_the_params():
    """A filter at its default is no parameter: the full confidence range, the round's model,
    a class of a head other than the one selected."""
    state = {
        "rv_f_head": "emotion",
        "rv_f_label_emotion": "any",
        "rv_f_label_intent": "questioning",  # left over from an earlier intent filter
        "rv_f_conf": (0.0, 1.0),
        "rv_f_model": ROUND_MV,
        "rv_f_unseen": False,
        "rv_f_samples": "",
    }
    assert rf.params_from_widgets(state, HEADS, ROUND_MV) == {"head": "emotion"}
    # an explicit min=0 / max=1 in a link is valid but is the default: the URL drops it
    clean = rf.clean_params({"min": "0", "max": "1"}, HEADS, VERSIONS)
    assert clean == {"min": "0", "max": "1"}
    state = rf.widget_state(clean, HEADS, ROUND_MV)
    assert rf.params_from_widgets(state, HEADS, ROUND_MV) == {}


# --------------------------------------------------------------------------- the queue filter


def test_queue_filter_of_no_params_filters_nothing():
    assert _filter({}) == q.QueueFilter()


def test_queue_filter_carries_every_param():
    flt = _filter(
        {
            "head": "intent",
            "label": "questioning",
            "min": "0.6",
            "max": "0.9",
            "unseen": "1",
            "disagree": "1",
            "model": "3",
            "samples": "7,8,9",
        }
    )
    assert flt == q.QueueFilter(
        head="intent",
        label="questioning",
        min_confidence=0.6,
        max_confidence=0.9,
        sample_ids=(7, 8, 9),
        model_version_id=3,
        unseen_pairs=PAIRS,
        pair_heads=("emotion", "intent"),
        disagree=True,
    )


def test_unseen_needs_a_pair_of_heads():
    one_head = {"emotion": list(EMOTIONS)}
    assert rf.pair_heads(one_head) is None
    flt = rf.queue_filter({"unseen": "1"}, pairs=(), pair_heads=None)
    assert flt.unseen_pairs is None
    # with a pair of heads and no unseen pair, the filter is on and matches nothing
    flt = rf.queue_filter({"unseen": "1"}, pairs=(), pair_heads=("emotion", "intent"))
    assert flt.unseen_pairs == ()


def test_pair_heads_prefers_emotion_and_intent():
    assert rf.pair_heads({"intent": ["a"], "topic": ["b"], "emotion": ["c"]}) == (
        "emotion",
        "intent",
    )
    assert rf.pair_heads({"topic": ["a"], "mood": ["b"], "style": ["c"]}) == ("topic", "mood")


# --------------------------------------------------------------------------- the URL


def test_url_update_changes_only_what_differs():
    current = {"head": "intent", "pred": "agreeing", "min": "0.5"}
    params = {"head": "intent", "label": "agreeing", "min": "0.6"}
    gone, changed = rf.url_update(current, params)
    assert gone == ["pred"]
    assert changed == {"label": "agreeing", "min": "0.6"}
    assert rf.url_update(params, dict(params)) == ([], {})
    gone, changed = rf.url_update(params, {})
    assert sorted(gone) == ["head", "label", "min"] and changed == {}


# --------------------------------------------------------------------------- the summary


def test_no_params_no_summary():
    assert rf.summary_text(q.QueueFilter(), {}) is None


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"head": "intent"}, "intent"),
        ({"head": "intent", "label": "questioning"}, "intent = **questioning**"),
        ({"min": "0.6"}, "confidence 0.60–1.00"),
        ({"max": "0.8"}, "confidence 0.00–0.80"),
        ({"min": "0.25", "max": "0.75"}, "confidence 0.25–0.75"),
        ({"model": "3"}, "model #3"),
        ({"unseen": "1"}, "unseen emotion × intent pair"),
        ({"disagree": "1"}, "ensemble members disagree"),
        ({"samples": "4,5,6"}, "3 linked samples"),
    ],
)
def test_summary_names_each_filter_kind(params, words):
    text = rf.summary_text(_filter(params), params)
    link = "?" + "&".join(f"{k}={v}" for k, v in params.items())
    assert text == f"Filtered: {words} · link: `{link}`"


def test_summary_joins_several_filters_in_order():
    params = {"head": "emotion", "label": "sad", "min": "0.7", "disagree": "1"}
    text = rf.summary_text(_filter(params), params)
    assert text == (
        "Filtered: emotion = **sad** · confidence 0.70–1.00 · ensemble members disagree"
        " · link: `?head=emotion&label=sad&min=0.7&disagree=1`"
    )


def test_summary_shortens_a_long_sample_link_at_a_comma():
    ids = list(range(100000, 100060))
    params = {"samples": ",".join(map(str, ids))}
    text = rf.summary_text(_filter(params), params)
    assert text is not None
    assert text.startswith("Filtered: 60 linked samples · the address bar holds the whole link")
    link = text.split("link: `")[1].rstrip("`")
    assert link.endswith("…") and len(link) <= rf.LINK_SHOWN + 1
    assert link.startswith("?samples=100000,100001,")
    shown = link[len("?samples=") : -1].split(",")
    assert all(len(i) == 6 for i in shown)  # cut between two ids, never inside one
    assert shown == [str(i) for i in ids[: len(shown)]]


def test_share_link_cuts_at_the_length_without_a_comma():
    params = {"label": "x" * 200}
    link, cut = rf.share_link(params)
    assert cut and link == ("?label=" + "x" * 200)[: rf.LINK_SHOWN] + "…"
    link, cut = rf.share_link({"head": "intent"})
    assert (link, cut) == ("?head=intent", False)


def test_filter_module_has_no_streamlit():
    """The module is plain logic: importing it loads no Streamlit."""

    code = "import pages._review_filter, sys; print('streamlit' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"
