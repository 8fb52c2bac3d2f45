"""Transcripts: find a transcript, fix it, save it with a version check.

Punctuation flags and the suggested fix come from ``meiju_core.text`` (rules, no model): doubled
or half-width marks, no final mark, a question with no question mark, a space used as a clause
break. Each save goes through ``pipeline.save_transcript``, which refuses a stale version (someone
saved first) and HTML, and records the edit with its kind (punctuation-only or lexical), editor
and time. Typing here never triggers the review shortcuts: Streamlit ignores shortcut keys while
a text field has focus, IME composition included.
"""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd
import streamlit as st

from meiju_core import pipeline, text
from meiju_core.errors import MeijuError, StaleEdit
from pages import _common as common

PAGE_SIZE = 20
SOURCES = ["any", "official", "asr", "manual"]
S = st.session_state


@st.cache_data(ttl=120, show_spinner=False, max_entries=4)
def _flag_counts(url: str, project_id: int, stamp: int) -> dict[int, int]:
    """{sample id: number of punctuation flags} for the project (``stamp`` changes on save)."""
    texts = common.all_transcript_texts(common.store_at(url), project_id=project_id)
    return {sid: len(text.flags(t or "")) for sid, t in texts.items()}


def diff_html(before: str, after: str) -> str:
    """Character diff as HTML: deletions struck through in red, insertions in green."""
    parts = []
    for op in text.char_diff(before, after):
        if op.op == "equal":
            parts.append(html.escape(op.before))
            continue
        if op.before:
            parts.append(f"<del>{html.escape(op.before)}</del>")
        if op.after:
            parts.append(f"<ins>{html.escape(op.after)}</ins>")
    return f"<div class='meiju-diff'>{''.join(parts) or '&nbsp;'}</div>"


def list_ui(store, project_id: int, url: str) -> int | None:
    """Search box and filters over the page, one page of transcripts in the left column;
    returns the picked sample id (the first row until another is selected)."""
    needle = st.text_input(
        "Search", key="ts_q", placeholder="utterance id or text", icon=":material/search:"
    ).strip()
    row = st.container(horizontal=True, vertical_alignment="bottom")
    source = row.selectbox("Source", SOURCES, key="ts_source")
    source = None if source == "any" else source
    page_slot = row.container(width=110)
    flagged_only = st.toggle("Flagged only", key="ts_flagged", help="Punctuation flags, see right")
    counts = _flag_counts(url, project_id, S.get("ts_stamp", 0))
    ids = sorted(i for i, n in counts.items() if n) if flagged_only else None
    found = {"project_id": project_id, "text": needle, "source": source, "sample_ids": ids}
    _, total = common.search_transcripts(store, **found, limit=0)
    pages = max(1, -(-total // PAGE_SIZE))
    page = int(page_slot.number_input("Page", 1, pages, 1, key="ts_page"))
    rows, total = common.search_transcripts(
        store, **found, offset=(page - 1) * PAGE_SIZE, limit=PAGE_SIZE
    )
    flagged = sum(1 for n in counts.values() if n)
    st.caption(f"{total} match · {flagged} flagged in the project · page {page} of {pages}")
    if not rows:
        st.info("No transcript matches.")
        return None
    table = pd.DataFrame(
        [
            {
                "utterance": r["utt_id"],
                "flags": counts.get(r["id"], 0),
                "text": r["text"],
            }
            for r in rows
        ]
    )
    picked = st.dataframe(
        table,
        hide_index=True,
        width="stretch",
        height=min(35 * (len(rows) + 1) + 3, 560),
        on_select="rerun",
        selection_mode="single-row",
        key=f"ts_table_{page}",
        column_config={"flags": st.column_config.NumberColumn(width="small")},
    )
    chosen = picked.selection.rows if picked is not None else []
    return rows[chosen[0]]["id"] if chosen and chosen[0] < len(rows) else rows[0]["id"]


def _use(key: str, value: str) -> None:
    S[key] = value


def _editor_state(tr: dict) -> tuple[str, dict]:
    """The text box's key and the saved version the edit started from.

    The box follows the store while it holds no edit of the user's own; once the user typed,
    their text stays (even if someone else saves meanwhile), and saving it checks the version it
    started from, so nobody's save is silently overwritten.
    """
    key, base_key = f"ts_text_{tr['sample_id']}", f"ts_base_{tr['sample_id']}"
    base = S.get(base_key)
    untouched = base is not None and S.get(key, base["text"]) == base["text"]
    if base is None or (base["version"] != tr["version"] and untouched):
        base = {"version": tr["version"], "text": tr["text"]}
        S[base_key], S[key] = base, tr["text"]
    elif key not in S:
        S[key] = base["text"]
    return key, base


def _reload(tr: dict) -> None:
    S[f"ts_base_{tr['sample_id']}"] = {"version": tr["version"], "text": tr["text"]}
    S[f"ts_text_{tr['sample_id']}"] = tr["text"]


def editor_ui(store, project_id: int, sample_id: int, user: dict) -> None:
    tr = common.transcript(store, sample_id=sample_id)
    if tr is None:
        st.warning("This sample has no transcript.")
        return
    st.subheader(tr["utt_id"], anchor=False)
    st.caption(
        f"{tr['split']} · source **{tr['source']}** · version {tr['version']} · "
        f"saved {common.ago(tr['updated_at'])}"
    )
    if tr["original_text"] != tr["text"]:
        st.caption(f"Original: {tr['original_text']}")
    _media(tr)
    key, base = _editor_state(tr)
    if base["version"] != tr["version"]:
        st.warning(
            f"Someone saved version {tr['version']} while you were editing version "
            f"{base['version']}: saving now would overwrite it."
        )
        st.button(
            "Load the saved version (drops your edit)",
            key="ts_reload",
            on_click=_reload,
            args=(tr,),
        )
    edited = st.text_area("Transcript", key=key, height=100) or ""
    suggestion = text.suggest(edited)
    row = st.container(horizontal=True)
    save = row.button("Save", type="primary", key="ts_save", icon=":material/save:")
    row.button(
        "Use suggestion",
        key="ts_suggest",
        disabled=suggestion == edited,
        on_click=_use,
        args=(key, suggestion),
        icon=":material/auto_fix_high:",
    )
    row.button(
        "Back to original",
        key="ts_original",
        disabled=tr["original_text"] == edited,
        on_click=_use,
        args=(key, tr["original_text"]),
        icon=":material/history:",
    )
    if save:
        _save(store, tr, base, edited, user)
    common.show_flash(key="ts_flash")
    if edited != base["text"]:
        st.markdown("**Your change**")
        st.markdown(diff_html(base["text"], edited), unsafe_allow_html=True)
    flags = text.flags(edited)
    left, right = st.columns(2)
    with left:
        st.markdown(f"**Punctuation flags** ({len(flags)})")
        for f in flags:
            st.markdown(f"- `{f.code}` {html.escape(f.message)}")
        if not flags:
            st.caption("None.")
    with right:
        if suggestion != edited:
            st.markdown("**Suggestion**")
            st.markdown(diff_html(edited, suggestion), unsafe_allow_html=True)
    st.markdown("**Edits of this transcript**")
    edits = common.transcript_edits(store, project_id=project_id, sample_id=sample_id)
    if not edits:
        st.caption("None yet.")
    for e in edits:
        st.markdown(
            f"{html.escape(e['before'])} → {html.escape(e['after'])}  \n"
            f"<small>{e['kind']} · {html.escape(e['editor'])} · {common.ago(e['at'])}</small>",
            unsafe_allow_html=True,
        )


def _media(tr: dict) -> None:
    start = int(tr["start_s"] or 0)
    if tr["video_path"] and Path(tr["video_path"]).exists():
        st.video(tr["video_path"], start_time=start)
    elif tr["audio_path"] and Path(tr["audio_path"]).exists():
        st.audio(tr["audio_path"], start_time=start)


def _save(store, tr: dict, base: dict, new_text: str, user: dict) -> None:
    try:
        version = pipeline.save_transcript(
            store,
            sample_id=tr["sample_id"],
            text=new_text,
            expected_version=base["version"],
            user=user,
        )
    except StaleEdit as e:
        st.error(f"{e} Your text is still in the box: load the saved version to start again.")
        return
    except MeijuError as e:  # InputError: HTML in the text, and the like
        st.error(str(e))
        return
    if version == base["version"]:
        common.flash("info", "Nothing changed.", key="ts_flash")
    else:
        before = base["text"]
        kind = "punctuation" if text.is_punctuation_only_change(before, new_text) else "lexical"
        common.flash("success", f"Saved ({kind} edit), version {version}.", key="ts_flash")
        S[f"ts_base_{tr['sample_id']}"] = {"version": version, "text": new_text}
        S["ts_stamp"] = S.get("ts_stamp", 0) + 1
    st.rerun()


def recent_edits(store, project_id: int) -> None:
    edits = common.transcript_edits(store, project_id=project_id, limit=15)
    st.subheader("Recent edits")
    if not edits:
        st.caption("No transcript has been edited yet.")
        return
    frame = pd.DataFrame(
        [
            {
                "utterance": e["utt_id"],
                "before": e["before"],
                "after": e["after"],
                "kind": e["kind"],
                "editor": e["editor"],
                "when": common.ago(e["at"]),
            }
            for e in edits
        ]
    )
    st.dataframe(frame, hide_index=True, width="stretch")


def main() -> None:
    user, store, project = common.require_user(), common.store(), common.project()
    st.title("Transcripts")
    listing, editor = st.columns([2, 3], gap="large")
    with listing:
        sample_id = list_ui(store, project["id"], common.settings().database_url)
    with editor:
        if sample_id is not None:
            editor_ui(store, project["id"], sample_id, user)
    st.divider()
    recent_edits(store, project["id"])


main()
