"""Dashboard: how good is a model version class by class, what changed between two versions, how
the open round is filling, who reviews how fast, and how emotion and intent go together.

Five lazy tabs (``st.tabs(on_change="rerun")``: only the open tab runs, so a rerun stays short
with 100,000 pool samples):

- **Model**: per head, the confusion matrix (counts and row-normalised) and per-class precision,
  recall, F1 and support of one model version on valid or test, from ``model_version.metrics``
  (``training.evaluate``). Clicking a cell opens Review on the samples behind it (see
  :func:`review_params` for the query parameters sent).
- **Compare**: per-class F1 change between two model versions (``db.analytics.f1_change``).
- **Pseudo-labels**: per class, candidates at the round's threshold, accepted, rejected and
  quota, and acceptance over time (per hour or day).
- **Annotators**: cards per annotator, decisions per minute, median seconds per card.
- **Co-occurrence**: emotion x intent counts of gold train labels and of the round's accepted
  pseudo-labels.

Store reads go through ``st.cache_data`` keyed on the database URL and the round (``TTL_S``);
"Refresh" clears them. Classes with no support show as empty rows, never as an error.
"""

from __future__ import annotations

import functools
from datetime import timedelta
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from db import analytics as A
from pages import _common as common

TTL_S = 30
REVIEW_PAGE = "pages/review.py"
TABS = ["Model", "Compare", "Pseudo-labels", "Annotators", "Co-occurrence", "Evidence"]
PSEUDO_COLUMNS = {  # table column: (header, tooltip)
    "candidates": ("cand.", "pool samples predicted as this class at the round's threshold"),
    "accepted": ("acc.", "accepted pseudo-labels"),
    "rejected": ("rej.", "rejected pseudo-labels"),
    "quota": ("quota", "most this round may accept"),
    "left": ("left", "quota minus accepted"),
}
GREEN, RED, GREY, BLUE = "#21a366", "#e5484d", "#c9d2de", "#3d7fd9"
S = st.session_state


# --------------------------------------------------------------------------- cached reads


READS = {
    "rounds": A.rounds,
    "classes": A.pseudo_label_classes,
    "over_time": A.acceptance_over_time,
    "throughput": A.annotator_throughput,
    "cooccurrence_gold": A.cooccurrence_gold,
    "cooccurrence_pseudo": A.cooccurrence_pseudo,
}


@st.cache_data(ttl=TTL_S, show_spinner=False, max_entries=64)
def read(url: str, name: str, **kwargs: Any) -> Any:
    """One ``db.analytics`` read (``READS[name]``), cached per store and arguments: a tab runs
    only the reads it draws."""
    with common.store_at(url).read() as s:
        return READS[name](s, **kwargs)


def refresh() -> None:
    read.clear()


# --------------------------------------------------------------------------- confusion cells


def review_params(
    store, *, model_version_id: int, head: str, gold: str, pred: str, split: str
) -> dict[str, str]:
    """Query parameters for Review: the confusion cell and the ids of the samples in it.

    ``{"model": id, "head": head, "gold": class, "pred": class, "split": split,
    "samples": "id,id,..."}`` (sample ids ascending; ``samples`` is empty for an empty cell).
    """
    with store.read() as s:
        ids = A.confusion_cell_samples(
            s, model_version_id=model_version_id, head=head, gold=gold, pred=pred, split=split
        )
    return {
        "model": str(model_version_id),
        "head": head,
        "gold": gold,
        "pred": pred,
        "split": split,
        "samples": ",".join(map(str, ids)),
    }


def _go_to_cell(head: str, gold: str, pred: str, model_version_id: int, split: str) -> None:
    """Remember the cell; the next run (see :func:`main`) switches to Review."""
    params = review_params(
        common.store(),
        model_version_id=model_version_id,
        head=head,
        gold=gold,
        pred=pred,
        split=split,
    )
    if params["samples"]:
        S["db_goto"] = params
    else:
        message = f"No {split} sample is gold {gold} and predicted {pred}."
        common.flash("info", message, key="db_flash")


def _on_cell_click(key: str, head: str, model_version_id: int, split: str) -> None:
    state = S.get(key) or {}
    points = (state.get("selection") or {}).get("points") or []
    if points and len(points[0].get("customdata") or []) >= 2:
        gold, pred = points[0]["customdata"][:2]
        _go_to_cell(head, gold, pred, model_version_id, split)


# --------------------------------------------------------------------------- figures


def heatmap(
    matrix: np.ndarray,
    rows: list[str],
    cols: list[str],
    *,
    text: list[list[str]],
    colorscale: str = "Blues",
    zmax: float | None = None,
    row_title: str = "gold",
    col_title: str = "predicted",
    clickable: bool = False,
) -> go.Figure:
    """A heatmap, rows top to bottom. ``clickable`` lays an invisible marker on each cell, since
    a plotly heatmap itself cannot be selected; its ``customdata`` is ``[row, column, text]``."""
    fig = go.Figure(
        go.Heatmap(
            z=matrix,
            x=cols,
            y=rows,
            text=text,
            texttemplate="%{text}",
            colorscale=colorscale,
            zmin=0,
            zmax=zmax,
            showscale=False,
            hoverinfo="skip" if clickable else None,
            hovertemplate=None
            if clickable
            else f"{row_title} %{{y}}<br>{col_title} %{{x}}<br>%{{text}}<extra></extra>",
        )
    )
    if clickable:
        fig.add_trace(
            go.Scatter(
                x=[c for _ in rows for c in cols],
                y=[r for r in rows for _ in cols],
                mode="markers",
                marker={"symbol": "square", "size": 30, "opacity": 0},
                customdata=[
                    [r, c, text[i][j]] for i, r in enumerate(rows) for j, c in enumerate(cols)
                ],
                hovertemplate=f"{row_title} %{{customdata[0]}}<br>{col_title} %{{customdata[1]}}"
                "<br>%{customdata[2]}<br><b>click: review these samples</b><extra></extra>",
                showlegend=False,
            )
        )
    fig.update_layout(
        height=110 + 34 * len(rows),
        margin={"l": 10, "r": 10, "t": 10, "b": 10},
        xaxis={"title": col_title, "side": "top", "tickangle": -35, "fixedrange": True},
        yaxis={"title": row_title, "autorange": "reversed", "fixedrange": True},
        clickmode="event+select",
        dragmode=False,
    )
    return fig


def confusion_figure(matrix: np.ndarray, classes: list[str], *, normalised: bool) -> go.Figure:
    """Gold classes as rows, predicted classes as columns; clickable cells."""
    if normalised:
        totals = matrix.sum(axis=1, keepdims=True)
        values = np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)
        text = [[f"{v:.2f}" for v in row] for row in values]
        return heatmap(values, classes, classes, text=text, zmax=1, clickable=True)
    text = [[str(int(v)) for v in row] for row in matrix]
    return heatmap(matrix, classes, classes, text=text, clickable=True)


def per_class_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["class", "precision", "recall", "f1", "support"])
    return frame.fillna({"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0})


def _bar_layout(fig: go.Figure, *, height: int = 300, title: str | None = None) -> go.Figure:
    fig.update_layout(
        height=height,
        title={"text": title, "x": 0.01} if title else None,
        margin={"l": 10, "r": 10, "t": 40 if title else 10, "b": 10},
        legend={"orientation": "h", "y": 1.12, "x": 1, "xanchor": "right"},
    )
    return fig


def delta_figure(rows: list[dict[str, Any]], head: str) -> go.Figure:
    """Per-class F1 change (new - base), green up, red down."""
    deltas = [r["delta"] if r["delta"] is not None else 0.0 for r in rows]
    fig = go.Figure(
        go.Bar(
            x=[r["class"] for r in rows],
            y=deltas,
            marker_color=[GREEN if d >= 0 else RED for d in deltas],
            text=[
                f"{d:+.3f}" if r["delta"] is not None else "–"
                for d, r in zip(deltas, rows, strict=True)
            ],
            textposition="outside",
            hovertemplate="%{x}: %{text}<extra></extra>",
        )
    )
    fig.update_yaxes(title="Δ F1", zeroline=True, zerolinewidth=2)
    return _bar_layout(fig, title=head)


def pseudo_figure(rows: list[dict[str, Any]], head: str, *, log: bool) -> go.Figure:
    classes = [r["class"] for r in rows]
    fig = go.Figure(
        [
            go.Bar(name=name, x=classes, y=[r[key] for r in rows], marker_color=color)
            for name, key, color in (
                ("candidates", "candidates", GREY),
                ("quota", "quota", BLUE),
                ("accepted", "accepted", GREEN),
                ("rejected", "rejected", RED),
            )
        ]
    )
    fig.update_layout(barmode="group")
    if log:
        fig.update_yaxes(type="log", dtick=1)  # ticks at 1, 10, 100, ...
    return _bar_layout(fig, title=head)


def over_time_figure(rows: list[dict[str, Any]], bucket: str) -> go.Figure:
    """Stacked accepted / rejected head decisions per bucket, with the acceptance rate."""
    span = timedelta(hours=1) if bucket == "hour" else timedelta(days=1)
    x = [r["start"] + span / 2 for r in rows]  # each bar covers its whole bucket
    width = span.total_seconds() * 1000 * 0.9
    fig = go.Figure(
        [
            *(
                go.Bar(name=key, x=x, y=[r[key] for r in rows], width=width, marker_color=color)
                for key, color in (("accepted", GREEN), ("rejected", RED))
            ),
            go.Scatter(
                name="acceptance rate",
                x=x,
                y=[r["rate"] for r in rows],
                yaxis="y2",
                mode="lines+markers",
                line={"color": "#444"},
            ),
        ]
    )
    fig.update_layout(
        barmode="stack",
        xaxis={"type": "date", "range": [rows[0]["start"] - span, rows[-1]["start"] + 2 * span]},
        yaxis={"title": "head decisions"},
        yaxis2={
            "title": "acceptance rate",
            "overlaying": "y",
            "side": "right",
            "range": [0, 1.05],
            "tickformat": ".0%",
            "dtick": 0.25,
            "showgrid": False,
        },
    )
    return _bar_layout(fig)


# --------------------------------------------------------------------------- tabs


def versions_ui(versions: list[dict[str, Any]]) -> tuple[int, str]:
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
    return mv_id, split or "valid"


def head_report(head: str, report: dict[str, Any], classes: list[str], *, mv_id, split) -> None:
    matrix = np.asarray(report.get("confusion", {}).get(head) or [], dtype=np.int64)
    if matrix.shape != (len(classes), len(classes)):
        st.caption(f"No confusion matrix for {head}.")
    else:
        st.caption("Rows are gold classes, columns predicted. Click a cell to review its samples.")
        left, right = st.columns(2)
        for col, normalised, key, title in (
            (left, False, f"db_cm_{head}_counts", "**Counts**"),
            (right, True, f"db_cm_{head}_norm", "**Row-normalised** (recall on the diagonal)"),
        ):
            col.markdown(title)
            col.plotly_chart(
                confusion_figure(matrix, classes, normalised=normalised),
                key=key,
                on_select=functools.partial(_on_cell_click, key, head, mv_id, split),
                selection_mode="points",
                config={"displayModeBar": False},
            )
        open_cell_ui(head, classes, mv_id=mv_id, split=split)
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


def open_cell_ui(head: str, classes: list[str], *, mv_id: int, split: str) -> None:
    """The keyboard way to a confusion cell: pick gold and predicted class, open Review."""
    row = st.container(horizontal=True, vertical_alignment="bottom")
    gold_key, pred_key = f"db_cell_gold_{head}", f"db_cell_pred_{head}"
    row.selectbox("Gold", classes, key=gold_key, width=180)
    row.selectbox("Predicted", classes, key=pred_key, width=180)
    row.button(
        "Review these samples",
        key=f"db_cell_open_{head}",
        icon=":material/open_in_new:",
        on_click=lambda: _go_to_cell(head, S[gold_key], S[pred_key], mv_id, split),
    )


def model_tab(versions: list[dict[str, Any]], heads: dict[str, list[str]]) -> None:
    mv_id, split = versions_ui(versions)
    report = next(v for v in versions if v["id"] == mv_id)["metrics"].get(split)
    if not report:
        st.info(
            f"Model version #{mv_id} has no {split} metrics yet (they are written by "
            "`training.evaluate` after training)."
        )
        return
    tiles = st.columns(len(heads) + 2)
    for col, head in zip(tiles, heads, strict=False):
        col.metric(f"{head} weighted F1", common.fmt_score(report.get(f"{head}_f1")))
    tiles[len(heads)].metric("joint", common.fmt_score(report.get("joint")))
    tiles[len(heads) + 1].metric("samples", report.get("n", "–"))
    names = [h.capitalize() for h in heads]
    for tab, head in zip(st.tabs(names, key="db_head", on_change="rerun"), heads, strict=False):
        if tab.open:
            with tab:
                head_report(head, report, list(heads[head]), mv_id=mv_id, split=split)


def compare_tab(versions: list[dict[str, Any]]) -> None:
    if len(versions) < 2:
        st.info("Only one model version so far: train another to compare.")
        return
    ids = [v["id"] for v in versions]
    by_id = {v["id"]: v for v in versions}
    promoted = next((v["id"] for v in versions if v["status"] == "promoted"), None)
    base_default = promoted if promoted not in (None, ids[0]) else ids[1]
    label = lambda i: f"#{i} {by_id[i]['name']} ({by_id[i]['status']})"  # noqa: E731
    row = st.container(horizontal=True, vertical_alignment="bottom")
    base = row.selectbox(
        "Base", ids, index=ids.index(base_default), format_func=label, key="db_cmp_base"
    )
    new = row.selectbox("New", ids, index=0, format_func=label, key="db_cmp_new")
    split = (
        row.segmented_control(
            "Split", ["valid", "test"], default="valid", required=True, key="db_cmp_split"
        )
        or "valid"
    )
    change = A.f1_change_from_metrics(by_id[base]["metrics"], by_id[new]["metrics"], split=split)
    if not change["heads"]:
        st.info(f"Neither version has {split} metrics.")
        return
    tiles = st.columns(len(change["overall"]))
    for col, (key, v) in zip(tiles, change["overall"].items(), strict=False):
        delta = v["delta"]
        col.metric(
            key.replace("_f1", " weighted F1"),
            common.fmt_score(v["new"]),
            delta=f"{delta:+.4f}" if delta is not None else None,
            delta_color="off" if delta is not None and abs(delta) < 5e-5 else "normal",
            help=f"#{new} against #{base} on {split}",
        )
    cols = st.columns(len(change["heads"]))
    for col, (head, rows) in zip(cols, change["heads"].items(), strict=False):
        col.plotly_chart(delta_figure(rows, head), key=f"db_delta_{head}")
        col.dataframe(
            pd.DataFrame(rows, columns=["class", "base", "new", "delta"]),
            hide_index=True,
            width="stretch",
            column_config={
                "base": st.column_config.NumberColumn(f"F1 #{base}", format="%.3f"),
                "new": st.column_config.NumberColumn(f"F1 #{new}", format="%.3f"),
                "delta": st.column_config.NumberColumn("Δ", format="%+.3f"),
            },
            key=f"db_delta_table_{head}",
        )


def round_ui(rounds: list[dict[str, Any]]) -> int:
    ids = [r["id"] for r in rounds]
    by_id = {r["id"]: r for r in rounds}
    current = next((r["id"] for r in rounds if r["status"] == "open"), ids[0])
    return st.selectbox(
        "Round",
        ids,
        index=ids.index(current),
        format_func=lambda i: f"#{i} ({by_id[i]['status']}, model #{by_id[i]['model_version_id']})",
        key="db_round",
        width=320,
    )


def pseudo_tab(url: str, round_id: int) -> None:
    row = st.container(horizontal=True, vertical_alignment="bottom")
    bucket = (
        row.segmented_control(
            "Per", ["hour", "day"], default="hour", required=True, key="db_bucket"
        )
        or "hour"
    )
    log = row.toggle("Log scale", value=True, key="db_log")
    for head, rows in read(url, "classes", round_id=round_id).items():
        left, right = st.columns(2)
        left.plotly_chart(pseudo_figure(rows, head, log=log), key=f"db_pseudo_{head}")
        right.dataframe(
            pd.DataFrame(rows, columns=["class", *PSEUDO_COLUMNS]),
            hide_index=True,
            width="stretch",
            key=f"db_pseudo_table_{head}",
            column_config={
                c: st.column_config.NumberColumn(short, help=long)
                for c, (short, long) in PSEUDO_COLUMNS.items()
            },
        )
    st.markdown(f"**Acceptance over time** (per {bucket}, UTC; undone decisions left out)")
    over_time = read(url, "over_time", round_id=round_id, bucket=bucket)
    if over_time:
        st.plotly_chart(over_time_figure(over_time, bucket), key="db_over_time")
    else:
        st.caption("No decision in this round yet.")


def throughput_table(rows: list[dict[str, Any]]) -> None:
    if not rows:
        st.caption("No decision yet.")
        return
    frame = pd.DataFrame(
        rows,
        columns=[
            "user",
            "cards",
            "per_minute",
            "median_s",
            "accepted",
            "rejected",
            "skipped",
            "bulk_actions",
            "active_min",
            "last_at",
        ],
    )
    frame["last_at"] = [common.ago(t) for t in frame["last_at"]]
    st.dataframe(
        frame,
        hide_index=True,
        width="stretch",
        column_config={
            "cards": st.column_config.NumberColumn("cards", format="%d"),
            "per_minute": st.column_config.NumberColumn("cards / min", format="%.1f"),
            "median_s": st.column_config.NumberColumn("median s / card", format="%.1f"),
            "bulk_actions": st.column_config.NumberColumn(
                "bulk accepts", format="%d", help="Each bulk accept counts once, not per card"
            ),
            "active_min": st.column_config.NumberColumn("active min", format="%.1f"),
            "last_at": "last decision",
        },
    )


def annotators_tab(url: str, project_id: int, round_id: int | None) -> None:
    st.caption(
        "A card is one decision on one sample (both heads or a skip). Active time adds the gaps "
        f"between a person's cards up to {int(A.IDLE_GAP_S // 60)} min; a longer pause is a "
        "break. Undone decisions are left out."
    )
    if round_id is not None:
        st.markdown(f"**Round #{round_id}**")
        throughput_table(read(url, "throughput", round_id=round_id))
    st.markdown("**All rounds**")
    throughput_table(read(url, "throughput", project_id=project_id))


def cooccurrence_figure(data: dict[str, Any], colorscale: str) -> go.Figure:
    counts = np.asarray(data["counts"], dtype=np.int64)
    text = [[str(int(v)) if v else "" for v in row] for row in counts]
    return heatmap(
        counts,
        data["rows"],
        data["cols"],
        text=text,
        colorscale=colorscale,
        row_title="emotion",
        col_title="intent",
    )


def cooccurrence_tab(url: str, project_id: int, round_id: int | None) -> None:
    gold = read(url, "cooccurrence_gold", project_id=project_id)
    left, right = st.columns(2)
    left.markdown(f"**Gold labels**, train split · {gold['n']} samples")
    left.plotly_chart(cooccurrence_figure(gold, "Blues"), key="db_cooc_gold")
    if round_id is None:
        right.caption("No review round yet.")
        return
    pseudo = read(url, "cooccurrence_pseudo", round_id=round_id)
    right.markdown(
        f"**Accepted pseudo-labels**, round #{round_id} · {pseudo['n']} samples with both heads"
    )
    right.plotly_chart(cooccurrence_figure(pseudo, "Greens"), key="db_cooc_pseudo")


# --------------------------------------------------------------------------- page


def main() -> None:
    if "db_goto" in S:  # a confusion cell was clicked (or picked) in the last run
        st.switch_page(REVIEW_PAGE, query_params=S.pop("db_goto"))
    common.require_user()
    store, project = common.store(), common.project()
    url = common.settings().database_url
    heads = project["heads"]
    top = st.container(horizontal=True, vertical_alignment="center")
    top.title("Dashboard")
    top.button("Refresh", key="db_refresh", icon=":material/refresh:", on_click=refresh)
    common.show_flash(key="db_flash")
    versions = common.model_versions(store, project_id=project["id"])
    tabs = st.tabs(TABS, key="db_tab", on_change="rerun")
    if tabs[0].open or tabs[1].open:
        if not versions:
            target = tabs[0] if tabs[0].open else tabs[1]
            target.info("No model version yet: train one on the Training page.")
        elif tabs[0].open:
            with tabs[0]:
                model_tab(versions, heads)
        else:
            with tabs[1]:
                compare_tab(versions)
        return
    rounds = read(url, "rounds", project_id=project["id"])
    for tab, name in zip(tabs[2:], TABS[2:], strict=True):
        if not tab.open:
            continue
        with tab:
            round_id = round_ui(rounds) if rounds else None
            if name == "Pseudo-labels":
                if round_id is None:
                    st.info("No review round yet: open one on the Review page.")
                else:
                    pseudo_tab(url, round_id)
            elif name == "Annotators":
                annotators_tab(url, project["id"], round_id)
            elif name == "Co-occurrence":
                cooccurrence_tab(url, project["id"], round_id)
            elif name == "Evidence":
                if round_id is None:
                    st.info("No review round yet: open one on the Review page.")
                else:
                    from pages._evidence import evidence_tab

                    evidence_tab(url, round_id, heads)


main()
