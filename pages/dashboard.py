"""Dashboard: how good is a model version, class by class, and how is the open round filling.

Figures come from ``model_version.metrics[split]`` as ``pipeline.evaluate`` stores them:
``<head>_f1``, ``joint``, ``per_class[head]`` (class, precision, recall, f1, support) and
``confusion[head]`` (K x K counts, rows gold, columns predicted). Classes with no support show as
empty rows (row-normalised values of 0), never as an error.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from db import queries as q
from pages import _common as common


def confusion_figure(matrix: np.ndarray, classes: list[str], *, normalised: bool) -> go.Figure:
    """A heatmap with gold classes as rows and predicted classes as columns."""
    if normalised:
        totals = matrix.sum(axis=1, keepdims=True)
        values = np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)
        text = [[f"{v:.2f}" for v in row] for row in values]
        colorbar = "share of gold row"
    else:
        values = matrix
        text = [[str(int(v)) for v in row] for row in matrix]
        colorbar = "samples"
    fig = go.Figure(
        go.Heatmap(
            z=values,
            x=classes,
            y=classes,
            text=text,
            texttemplate="%{text}",
            colorscale="Blues",
            zmin=0,
            zmax=1 if normalised else None,
            colorbar={"title": {"text": colorbar}},
            hovertemplate="gold %{y}<br>predicted %{x}<br>%{text}<extra></extra>",
        )
    )
    fig.update_layout(
        height=90 + 38 * len(classes),
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        xaxis={"title": "predicted", "side": "top", "tickangle": -35},
        yaxis={"title": "gold", "autorange": "reversed"},
    )
    return fig


def per_class_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["class", "precision", "recall", "f1", "support"])
    return frame.fillna({"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0})


def head_report(head: str, report: dict[str, Any], classes: list[str]) -> None:
    matrix = np.asarray(report.get("confusion", {}).get(head) or [], dtype=np.int64)
    if matrix.shape != (len(classes), len(classes)):
        st.caption(f"No confusion matrix for {head}.")
    else:
        left, right = st.columns(2)
        left.markdown("**Counts**")
        left.plotly_chart(
            confusion_figure(matrix, classes, normalised=False), key=f"db_cm_{head}_counts"
        )
        right.markdown("**Row-normalised** (recall on the diagonal)")
        right.plotly_chart(
            confusion_figure(matrix, classes, normalised=True), key=f"db_cm_{head}_norm"
        )
    table = per_class_frame(report.get("per_class", {}).get(head) or [])
    st.dataframe(
        table,
        hide_index=True,
        width="stretch",
        column_config={
            "precision": st.column_config.ProgressColumn(format="%.3f", min_value=0, max_value=1),
            "recall": st.column_config.ProgressColumn(format="%.3f", min_value=0, max_value=1),
            "f1": st.column_config.ProgressColumn(format="%.3f", min_value=0, max_value=1),
            "support": st.column_config.NumberColumn(format="%d"),
        },
        key=f"db_table_{head}",
    )


def acceptance_chart(quotas: dict[str, dict[str, tuple[int, int]]], heads: dict) -> None:
    """Accepted pseudo-labels against quota, per class, for the open round."""
    cols = st.columns(len(heads))
    for col, (head, classes) in zip(cols, heads.items(), strict=False):
        per = quotas.get(head, {})
        accepted = [per.get(c, (0, 0))[0] for c in classes]
        quota = [per.get(c, (0, 0))[1] for c in classes]
        fig = go.Figure(
            [
                go.Bar(name="quota", x=classes, y=quota, marker_color="#d6dde8"),
                go.Bar(name="accepted", x=classes, y=accepted, marker_color="#ff4b4b"),
            ]
        )
        fig.update_layout(
            barmode="overlay",
            height=260,
            title={"text": head, "x": 0.02},
            margin={"l": 10, "r": 10, "t": 40, "b": 10},
            legend={"orientation": "h", "y": 1.15, "x": 1, "xanchor": "right"},
        )
        col.plotly_chart(fig, key=f"db_quota_{head}")


def main() -> None:
    common.require_user()
    store, project = common.store(), common.project()
    heads = project["heads"]
    st.title("Dashboard")
    versions = common.model_versions(store, project_id=project["id"])
    if not versions:
        st.info("No model version yet: train one on the Training page.")
        return
    ids = [v["id"] for v in versions]
    by_id = {v["id"]: v for v in versions}
    promoted = next((v["id"] for v in versions if v["status"] == "promoted"), ids[0])
    row = st.container(horizontal=True, vertical_alignment="bottom")
    mv_id = row.selectbox(
        "Model version",
        ids,
        index=ids.index(promoted),
        format_func=lambda i: f"#{i} {by_id[i]['name']} ({by_id[i]['status']})",
        key="db_mv",
    )
    split = row.segmented_control(
        "Split", ["valid", "test"], default="valid", required=True, key="db_split"
    )
    report = by_id[mv_id]["metrics"].get(split or "valid")
    if not report:
        st.info(
            f"Model version #{mv_id} has no {split} metrics yet (they are written by "
            "`pipeline.evaluate` after training)."
        )
    else:
        tiles = st.columns(len(heads) + 2)
        for col, head in zip(tiles, heads, strict=False):
            col.metric(f"{head} weighted F1", common.fmt_score(report.get(f"{head}_f1")))
        tiles[len(heads)].metric("joint", common.fmt_score(report.get("joint")))
        tiles[len(heads) + 1].metric("samples", report.get("n", "–"))
        for tab, head in zip(st.tabs([h.capitalize() for h in heads]), heads, strict=False):
            with tab:
                head_report(head, report, list(heads[head]))
    with store.read() as s:
        rnd = q.active_round(s, project_id=project["id"])
        quotas = q.quota_status(s, round_id=rnd.id) if rnd else None
        round_id = rnd.id if rnd else None
    if quotas is not None:
        st.subheader(f"Pseudo-labels accepted in round #{round_id}")
        acceptance_chart(quotas, heads)


main()
