"""Dashboard panel: what review decisions say about the model's confidence.

Per head and predicted class, the share of reviewed pseudo-labels that people accepted, by
confidence bin (a reliability diagram drawn from human decisions, with counts and 95 % Wilson
intervals), and the lowest threshold at which the accepted share reaches a chosen precision;
admins open the next round with those per-class thresholds in one click.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from db.evidence import review_observations
from meiju_core.ml.pseudo import acceptance_by_confidence
from meiju_core.services import rounds
from pages import _common as common


@st.cache_data(ttl=30, show_spinner=False)
def _observations(url: str, round_id: int) -> list[dict[str, Any]]:
    with common.store_at(url).read() as s:
        return review_observations(s, round_id=round_id)


@st.cache_data(ttl=30, show_spinner=False)
def _thresholds(url: str, round_id: int, precision: float, min_count: int) -> dict[str, Any]:
    return rounds.thresholds_from_evidence(
        common.store_at(url), round_id=round_id, precision=precision, min_count=min_count
    )


def _open_next_round(round_id: int, precision: float, min_count: int) -> None:
    """Button callback: open the next round with the evidence's per-class thresholds (the
    service checks the role)."""
    rid = common.flash_outcome(
        lambda: rounds.open_round_from_evidence(
            common.store(),
            common.settings(),
            round_id=round_id,
            precision=precision,
            min_count=min_count,
            user=common.user(),
        ),
        lambda rid: (
            f"Round #{rid} is open with per-class thresholds from round #{round_id}'s "
            "review decisions: Review shows its cards."
        ),
        key="db_flash",
    )
    if rid is not None:
        st.cache_data.clear()


def next_round_button(ev: dict[str, Any]) -> None:
    """Admins: one click opens the next round with the ``next round`` column's thresholds."""
    taken = sum(r["evidence"] is not None for r in ev["rows"])
    if not common.is_admin(common.user()):
        st.caption("An admin can open the next round with these thresholds.")
        return
    if not taken:
        st.caption(
            "No class reaches the precision over enough decisions yet: lower the precision or "
            "the decisions per class, or review more cards, to take thresholds from review."
        )
    st.button(
        f"Open the next round with these thresholds ({taken} classes from review)",
        key="ev_next_round",
        type="primary",
        icon=":material/add_circle:",
        on_click=_open_next_round,
        args=(ev["round_id"], ev["precision"], ev["min_count"]),
        disabled=not taken,
        help="Opens a pseudo-label round on the current model with the per-class thresholds "
        "of the 'next round' column (classes without enough decisions keep this round's); "
        "quotas as the Review page's form makes them. The open round is closed.",
    )


def reliability_figure(bins: list[dict[str, Any]], title: str) -> go.Figure:
    """Acceptance rate per confidence bin with Wilson error bars; the diagonal is 'calibrated'."""
    shown = [b for b in bins if b["n"]]
    mid = [(b["lo"] + b["hi"]) / 2 for b in shown]
    rate = [b["rate"] for b in shown]
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=[0, 1],
            y=[0, 1],
            mode="lines",
            line={"dash": "dot", "color": "#999"},
            name="confidence = acceptance",
            hoverinfo="skip",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=mid,
            y=rate,
            mode="markers+text",
            text=[str(b["n"]) for b in shown],
            textposition="top center",
            marker={"color": "#2e7d32", "size": 9},
            error_y={
                "type": "data",
                "symmetric": False,
                "array": [b["high"] - b["rate"] for b in shown],
                "arrayminus": [b["rate"] - b["low"] for b in shown],
            },
            name="accepted share (n above)",
        )
    )
    fig.update_layout(
        title=title,
        xaxis={"title": "model confidence", "range": [0, 1.02]},
        yaxis={"title": "accepted by reviewers", "range": [0, 1.1]},
        height=340,
        margin={"l": 40, "r": 10, "t": 40, "b": 40},
        showlegend=False,
    )
    return fig


def evidence_tab(url: str, round_id: int, heads: dict[str, list[str]]) -> None:
    """The panel for one round (see the module docstring)."""
    obs = _observations(url, round_id)
    if not obs:
        st.info(
            "No reviewed pseudo-labels in this round yet: decisions made on the Review page "
            "show up here."
        )
        return
    left, right = st.columns(2)
    precision = left.number_input(
        "Precision to reach",
        0.5,
        1.0,
        0.95,
        0.01,
        key="ev_precision",
        help="The threshold shown per class is the lowest confidence at which at least this "
        "share of the reviewed pseudo-labels at or above it was accepted.",
    )
    min_count = right.number_input(
        "Least decisions per class",
        1,
        10_000,
        20,
        1,
        key="ev_min_count",
        help="A class needs this many reviewed pseudo-labels at or above its threshold; a "
        "class with fewer keeps the round's threshold.",
    )
    ev = _thresholds(url, round_id, float(precision), int(min_count))
    rows = [
        {
            "head": r["head"],
            "class": r["class"],
            "reviewed": r["reviewed"],
            "accepted": r["accepted"],
            "threshold": r["evidence"] if r["evidence"] is not None else float("nan"),
            "round's": r["current"],
            "next round": r["next"],
        }
        for r in ev["rows"]
        if r["reviewed"]
    ]
    st.dataframe(
        pd.DataFrame(rows),
        hide_index=True,
        key="ev_table",
        column_config={
            "threshold": st.column_config.NumberColumn(
                format="%.3f", help="Lowest confidence reaching the precision (empty: too few)"
            ),
            "round's": st.column_config.NumberColumn(format="%.3f"),
            "next round": st.column_config.NumberColumn(format="%.3f"),
        },
    )
    next_round_button(ev)
    left, right = st.columns(2)
    head = left.selectbox("Head", list(heads), key="ev_head")
    seen = sorted({o["predicted"] for o in obs if o["head"] == head})
    cls = right.selectbox("Predicted class", ["all", *seen], key="ev_class")
    sub = [o for o in obs if o["head"] == head and (cls == "all" or o["predicted"] == cls)]
    bins = acceptance_by_confidence(
        np.array([o["confidence"] for o in sub]), np.array([o["accepted"] for o in sub])
    )
    st.plotly_chart(reliability_figure(bins, f"{head}: {cls}"), key="ev_chart")
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "confidence": f"{b['lo']:.1f}–{b['hi']:.1f}",
                    "reviewed": b["n"],
                    "accepted": b["accepted"],
                    "share": b["rate"],
                    "95% low": b["low"],
                    "95% high": b["high"],
                }
                for b in bins
                if b["n"]
            ]
        ),
        hide_index=True,
        key="ev_bins",
        column_config={
            k: st.column_config.NumberColumn(format="%.2f")
            for k in ("share", "95% low", "95% high")
        },
    )
    st.caption(
        "Per confidence bin: the reviewed pseudo-labels of this head (and class) and the share "
        "accepted, with its 95 % Wilson interval (the error bars above)."
    )
