"""Dashboard panel: what review decisions say about the model's confidence.

Per head and predicted class, the share of reviewed pseudo-labels that people accepted, by
confidence bin (a reliability diagram drawn from human decisions, with counts and 95 % Wilson
intervals), and the lowest threshold at which the accepted share reaches a chosen precision.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from db.evidence import review_observations
from meiju_core.pseudo import acceptance_by_confidence, threshold_for_precision
from pages import _common as common


@st.cache_data(ttl=30, show_spinner=False)
def _observations(url: str, round_id: int) -> list[dict[str, Any]]:
    with common.store_at(url).read() as s:
        return review_observations(s, round_id=round_id)


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
    precision = st.number_input(
        "Precision to reach",
        0.5,
        1.0,
        0.95,
        0.01,
        key="ev_precision",
        help="The threshold shown per class is the lowest confidence at which at least this "
        "share of reviewed pseudo-labels was accepted (over at least 20 decisions).",
    )
    rows = []
    for head, classes in heads.items():
        mine = [o for o in obs if o["head"] == head]
        for cls in classes:
            sub = [o for o in mine if o["predicted"] == cls]
            if not sub:
                continue
            conf = np.array([o["confidence"] for o in sub])
            acc = np.array([o["accepted"] for o in sub])
            t = threshold_for_precision(conf, acc, precision=precision)
            rows.append(
                {
                    "head": head,
                    "class": cls,
                    "reviewed": len(sub),
                    "accepted": int(acc.sum()),
                    "threshold": t,
                }
            )
    st.dataframe(
        pd.DataFrame(rows),
        hide_index=True,
        key="ev_table",
        column_config={"threshold": st.column_config.NumberColumn(format="%.3f")},
    )
    left, right = st.columns(2)
    head = left.selectbox("Head", list(heads), key="ev_head")
    seen = sorted({o["predicted"] for o in obs if o["head"] == head})
    cls = right.selectbox("Predicted class", ["all", *seen], key="ev_class")
    sub = [o for o in obs if o["head"] == head and (cls == "all" or o["predicted"] == cls)]
    bins = acceptance_by_confidence(
        np.array([o["confidence"] for o in sub]), np.array([o["accepted"] for o in sub])
    )
    st.plotly_chart(reliability_figure(bins, f"{head}: {cls}"), key="ev_chart")
