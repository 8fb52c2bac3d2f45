"""The Review page's queue filter as plain logic: URL parameters, widget state, the queue filter
and its summary. No streamlit here; ``pages/review.py`` draws the widgets and calls these.

A filter travels three ways: as URL parameters (``?head=intent&label=questioning&min=0.6``,
strings, :data:`FILTER_KEYS`), as the filter widgets' state (keys ``rv_f_*``), and as the
``db.queries.QueueFilter`` the queue runs. :func:`clean_params` keeps the valid parameters of a
URL and drops the rest (the page shows the queue the link still describes);
:func:`widget_state` and :func:`params_from_widgets` go between parameters and widgets;
:func:`queue_filter` builds the filter; :func:`summary_text` puts it in words with its link.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from db import queries as q
from meiju_core.validate import db_id, db_ids, unit_interval_problem

FILTER_KEYS = ("head", "label", "min", "max", "unseen", "disagree", "model", "samples")
# ``pred`` is the dashboard's name for the predicted class, read as ``label``
URL_KEYS = (*FILTER_KEYS, "pred")
TRUE_WORDS = ("1", "true", "yes", "on")
LINK_SHOWN = 120  # characters of a queue's link shown under the filters
ANY = "any"  # the selectboxes' "no filter" choice


def pair_heads(heads: Mapping[str, list[str]]) -> tuple[str, str] | None:
    """The two heads whose predicted pair the unseen-pair filter checks: emotion and intent when
    the schema has both, else its first two heads, else None (one head: no pairs)."""
    names = list(heads)
    if "emotion" in heads and "intent" in heads:
        return ("emotion", "intent")
    return (names[0], names[1]) if len(names) >= 2 else None


def url_params(query: Mapping[str, str]) -> dict[str, str]:
    """The filter parameters present in a URL's query (:data:`URL_KEYS`), unchecked."""
    return {k: query.get(k, "") for k in URL_KEYS if k in query}


def clean_params(
    raw: Mapping[str, str], heads: Mapping[str, list[str]], versions: Mapping[int, str]
) -> dict[str, str]:
    """Valid filter parameters from a URL; anything else is dropped.

    ``head`` must be a head of the schema and ``label`` (or ``pred``) one of its classes (a label
    without a valid head is dropped); ``min`` / ``max`` numbers in [0, 1], written short
    (``0.50`` -> ``0.5``); ``unseen`` / ``disagree`` on for any of :data:`TRUE_WORDS`; ``model``
    a key of ``versions`` (the versions with predictions); ``samples`` comma-separated database
    ids (``db_ids``: duplicates and non-ids dropped)."""
    out: dict[str, str] = {}
    head = raw.get("head", "")
    if head in heads:
        out["head"] = head
        label = raw.get("label") or raw.get("pred") or ""
        if label in heads[head]:
            out["label"] = label
    for key in ("min", "max"):
        try:
            v = float(raw.get(key, ""))
        except ValueError:
            continue
        if unit_interval_problem(v) is None:
            out[key] = f"{v:g}"
    for key in ("unseen", "disagree"):
        if raw.get(key, "").lower() in TRUE_WORDS:
            out[key] = "1"
    model = db_id(raw.get("model", ""))
    if model is not None and model in versions:
        out["model"] = str(model)
    ids = db_ids(raw.get("samples", ""))
    if ids:
        out["samples"] = ",".join(map(str, ids))
    return out


def widget_state(
    params: Mapping[str, str], heads: Mapping[str, list[str]], round_mv: int
) -> dict[str, Any]:
    """The filter widgets' state (session-state key -> value) for clean filter parameters: the
    head, each head's class selectbox (the filtered head's class, ``any`` elsewhere), the
    confidence slider, the two toggles, the model version (the round's when none) and the
    linked samples."""
    head = params.get("head", ANY)
    state: dict[str, Any] = {"rv_f_head": head}
    for h in heads:
        state[f"rv_f_label_{h}"] = params.get("label", ANY) if h == head else ANY
    state["rv_f_conf"] = (float(params.get("min", 0.0)), float(params.get("max", 1.0)))
    state["rv_f_unseen"] = params.get("unseen") == "1"
    state["rv_f_disagree"] = params.get("disagree") == "1"
    state["rv_f_model"] = int(params.get("model", round_mv))
    state["rv_f_samples"] = params.get("samples", "")
    return state


def params_from_widgets(
    state: Mapping[str, Any], heads: Mapping[str, list[str]], round_mv: int
) -> dict[str, str]:
    """Filter parameters from the widgets' state (the inverse of :func:`widget_state`): a
    filter at its default (any head, the full confidence range, the round's model version, a
    toggle off) is left out, so an unfiltered queue has no parameters."""
    out: dict[str, str] = {}
    head = state.get("rv_f_head", ANY)
    if head in heads:
        out["head"] = head
        label = state.get(f"rv_f_label_{head}", ANY)
        if label in heads[head]:
            out["label"] = label
    lo, hi = state.get("rv_f_conf", (0.0, 1.0))
    if lo > 0:
        out["min"] = f"{lo:g}"
    if hi < 1:
        out["max"] = f"{hi:g}"
    if state.get("rv_f_unseen"):
        out["unseen"] = "1"
    if state.get("rv_f_disagree"):
        out["disagree"] = "1"
    model = state.get("rv_f_model", round_mv)
    if model != round_mv:
        out["model"] = str(model)
    if state.get("rv_f_samples"):
        out["samples"] = state["rv_f_samples"]
    return out


def queue_filter(
    params: Mapping[str, str],
    *,
    pairs: tuple[tuple[str, str], ...] | None,
    pair_heads: tuple[str, str] | None,
) -> q.QueueFilter:
    """The queue filter of clean parameters. ``pairs``: the (a, b) class pairs never seen
    together in the gold labels of ``pair_heads``, used when ``unseen`` is on and the schema has
    a pair of heads."""
    ids = tuple(int(i) for i in params["samples"].split(",")) if "samples" in params else None
    return q.QueueFilter(
        head=params.get("head"),
        label=params.get("label"),
        min_confidence=float(params["min"]) if "min" in params else None,
        max_confidence=float(params["max"]) if "max" in params else None,
        sample_ids=ids,
        model_version_id=int(params["model"]) if "model" in params else None,
        unseen_pairs=tuple(pairs or ()) if "unseen" in params and pair_heads else None,
        pair_heads=pair_heads or ("emotion", "intent"),
        disagree="disagree" in params,
    )


def url_update(
    current: Mapping[str, str], params: Mapping[str, str]
) -> tuple[list[str], dict[str, str]]:
    """What turns the URL's filter parameters ``current`` into ``params``: the keys to delete
    and the keys to set (only those that change, so an unchanged URL is not rewritten)."""
    if dict(current) == dict(params):
        return [], {}
    gone = [k for k in URL_KEYS if k in current and k not in params]
    changed = {k: v for k, v in params.items() if current.get(k) != v}
    return gone, changed


def share_link(params: Mapping[str, str]) -> tuple[str, bool]:
    """The query string that opens this queue (``?head=...``, commas kept readable) and whether
    it was shortened: a link over :data:`LINK_SHOWN` characters (a long sample list) is cut at
    the last comma before that length (or at the length) and ends with ``…``."""
    link = "?" + urlencode(dict(params), safe=",")
    if len(link) <= LINK_SHOWN:
        return link, False
    cut = link.rfind(",", 0, LINK_SHOWN)
    return link[: cut if cut > 0 else LINK_SHOWN] + "…", True


def summary_parts(flt: q.QueueFilter) -> list[str]:
    """The active filters in words (Markdown), one part per filter kind."""
    parts = []
    if flt.head:
        parts.append(f"{flt.head}" + (f" = **{flt.label}**" if flt.label else ""))
    if flt.min_confidence is not None or flt.max_confidence is not None:
        parts.append(f"confidence {flt.min_confidence or 0:.2f}–{flt.max_confidence or 1:.2f}")
    if flt.model_version_id:
        parts.append(f"model #{flt.model_version_id}")
    if flt.unseen_pairs is not None:
        parts.append(f"unseen {flt.pair_heads[0]} × {flt.pair_heads[1]} pair")
    if flt.disagree:
        parts.append("ensemble members disagree")
    if flt.sample_ids is not None:
        parts.append(f"{len(flt.sample_ids)} linked samples")
    return parts


def summary_text(flt: q.QueueFilter, params: Mapping[str, str]) -> str | None:
    """The caption under the filters: ``Filtered: <parts> · link: `?...```, with a note when
    the link is shortened (the address bar holds the whole link); None with no parameters."""
    if not params:
        return None
    parts = summary_parts(flt)
    link, cut = share_link(params)
    if cut:
        parts.append("the address bar holds the whole link")
    return "Filtered: " + " · ".join(parts) + f" · link: `{link}`"
