"""Review's inspect view: the gold-labelled samples behind a confusion-matrix cell.

The dashboard links a cell as ``?model=3&head=intent&gold=questioning&pred=neutral&split=valid&
samples=12,40,...``. Those samples are valid or test utterances: they have gold labels and are
never pseudo-labelled, so the review queue cannot show them. This view lists them (utterance,
transcript, gold and predicted classes of both heads with confidences) and shows one at a time
as a card (video or audio, transcript, the model's top three per head with the gold class
marked, a link to the transcript editor). Keys: J next, K previous. Nothing here writes.
"""

from __future__ import annotations

import html
from typing import Any

import pandas as pd
import streamlit as st

from db import analytics as A
from db import queries as q
from pages import _common as common

MAX_ROWS = 500  # a cell links at most this many samples into the view
CELL_KEYS = ("gold", "pred", "split", "samples")  # cleared by "Back to the queue"
TRANSCRIPTS_PAGE = "pages/transcripts.py"
S = st.session_state


@st.cache_data(ttl=30, show_spinner=False)
def _rows(url: str, model_version_id: int, sample_ids: tuple[int, ...]) -> list[dict[str, Any]]:
    with common.store_at(url).read() as s:
        return A.labelled_samples(s, model_version_id=model_version_id, sample_ids=sample_ids)


def _card(url: str, model_version_id: int, sample_id: int) -> q.Card | None:
    with common.store_at(url).read() as s:
        cards = q.load_cards(s, model_version_id=model_version_id, sample_ids=[sample_id])
    return cards[0] if cards else None


def _back_to_queue() -> None:
    for key in CELL_KEYS:
        if key in st.query_params:
            del st.query_params[key]
    S.pop("rv_ins_pos", None)


def _step(delta: int, n: int) -> None:
    S["rv_ins_pos"] = (S.get("rv_ins_pos", 0) + delta) % n


def _on_select() -> None:
    rows = ((S.get("rv_ins_table") or {}).get("selection") or {}).get("rows") or []
    if rows:
        S["rv_ins_pos"] = int(rows[0])


def _table(rows: list[dict[str, Any]], heads: dict[str, list[str]]) -> pd.DataFrame:
    data = []
    for r in rows:
        row: dict[str, Any] = {"utterance": r["utt_id"], "transcript": r["text"]}
        for head in heads:
            label, conf = r["pred"].get(head, (None, None))
            row[f"gold {head}"] = r["gold"].get(head)
            row[f"predicted {head}"] = label
            row[f"{head} confidence"] = conf
        data.append(row)
    return pd.DataFrame(data)


def _heads_panel(
    card: q.Card, heads: dict[str, list[str]], gold: dict[str, str], cell_head: str
) -> None:
    for col, (head, classes) in zip(st.columns(len(heads)), heads.items(), strict=False):
        with col:
            pred = card.predictions.get(head)
            truth = gold.get(head)
            mark = " ◆" if head == cell_head else ""  # the head of the confusion cell
            if pred is None:
                st.markdown(f"**{head.capitalize()}**{mark} · gold **{truth or '–'}**")
                st.caption("no prediction")
                continue
            colour = "green" if pred["label"] == truth else "red"
            st.markdown(
                f"**{head.capitalize()}**{mark} · gold **{truth or '–'}** · "
                f"predicted :{colour}[**{pred['label']}**]"
            )
            for label, p in common.top3(pred["probs"] or [], classes):
                star = " ✓ gold" if label == truth else ""
                st.progress(min(1.0, max(0.0, p)), text=f"{label} · {p:.2f}{star}")


def inspect_panel(
    project: dict[str, Any], sample_ids: list[int], model_version_id: int, params: dict[str, str]
) -> None:
    """Draw the inspect view of ``sample_ids`` (gold-labelled samples) with the predictions of
    ``model_version_id``; ``params`` are the link's query parameters (head, gold, pred, split)."""
    url = common.settings().database_url
    heads: dict[str, list[str]] = project["heads"]
    rows = _rows(url, model_version_id, tuple(sample_ids[:MAX_ROWS]))
    head, gold, pred = params.get("head", ""), params.get("gold", ""), params.get("pred", "")
    split = params.get("split") or (rows[0]["split"] if rows else "")
    top = st.container(horizontal=True, vertical_alignment="center")
    if head and gold and pred:
        title = (
            f"Confusion cell · **{head}**: gold **{html.escape(gold)}**, "
            f"predicted **{html.escape(pred)}**"
        )
    else:
        title = "Linked gold-labelled samples"
    top.markdown(
        f"{title} · model #{model_version_id} · {split} · **{len(rows)}** "
        + ("sample" if len(rows) == 1 else "samples"),
        width="stretch",
    )
    top.button(
        "Back to the queue",
        key="rv_ins_back",
        on_click=_back_to_queue,
        icon=":material/arrow_back:",
    )
    st.caption(
        "These samples have gold labels, so they are not pseudo-labelled: look for a wrong "
        "transcript or a doubtful gold label. J next · K previous · click a row to open it."
    )
    if len(sample_ids) > MAX_ROWS:
        st.caption(f"Showing the first {MAX_ROWS} of {len(sample_ids)} linked samples.")
    if not rows:
        st.info("None of the linked samples exists any more.")
        return
    pos = min(S.get("rv_ins_pos", 0), len(rows) - 1)
    S["rv_ins_pos"] = pos
    current = rows[pos]
    card = _card(url, model_version_id, current["sample_id"])
    nav = st.container(horizontal=True, vertical_alignment="center", key="rv_ins_nav")
    nav.button("Previous", key="rv_ins_prev", shortcut="K", on_click=_step, args=(-1, len(rows)))
    nav.button("Next", key="rv_ins_next", shortcut="J", on_click=_step, args=(1, len(rows)))
    nav.markdown(
        f"{pos + 1} of {len(rows)} · <span class='meiju-utt'>{html.escape(current['utt_id'])}"
        "</span>",
        unsafe_allow_html=True,
        width="stretch",
    )
    nav.page_link(
        TRANSCRIPTS_PAGE,
        label="Edit transcript",
        icon=":material/edit_note:",
        query_params={"sample": str(current["sample_id"])},
    )
    if card is not None:
        main, side = st.columns([3, 2], gap="large")
        with main:
            common.transcript_block(card)
            common.media_block(card)
        with side:
            _heads_panel(card, heads, current["gold"], head)
    st.dataframe(
        _table(rows, heads),
        key="rv_ins_table",
        on_select=_on_select,
        selection_mode="single-row",
        hide_index=True,
        width="stretch",
        column_config={
            f"{h} confidence": st.column_config.ProgressColumn(
                f"{h} confidence", min_value=0.0, max_value=1.0, format="%.2f"
            )
            for h in heads
        },
    )
