"""Transcripts: flagged transcripts first, one key per suggestion, a diff of every change, and
one rule applied to every match after a preview.

Punctuation flags and suggestions come from ``meiju_core.ml.text`` (rules, no model): doubled or
half-width marks, no final mark, a question with no question mark, a space used as a clause
break; ASR transcripts are flagged too (their words need a look). The list shows flagged
transcripts first. In the editor each flag has an "Apply" button with a digit key (1-9), "Accept
all & save" is ``A``, "Save" is ``S`` and "Next flagged" is ``N``; Streamlit ignores these keys
while a text field has focus, IME composition included, so typing Chinese never triggers them.

Each save goes through ``transcripts.save_transcript``, which refuses a stale version (someone saved
first) and HTML, and records the edit with its kind (punctuation-only or lexical), editor and
time. "Bulk fix" applies one rule (``meiju_core.ml.transcript_rules``) to every matching transcript:
a preview of the first changes, one confirmation, then one version-checked save per transcript;
the ones someone saved in between are skipped and listed.

``?sample=<id>`` opens that sample's transcript (the Review page links here that way, with
``back=`` holding its queue's filters); the URL follows the open transcript, and "Back to Review"
returns to the queue the user came from (its filters; the card is still the one shown), or, for a
transcript opened otherwise, to a queue of that sample (``?samples=<id>``).
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl

import pandas as pd
import streamlit as st

from db import views
from meiju_core.errors import MeijuError, StaleEdit
from meiju_core.ml import text
from meiju_core.ml import transcript_rules as TR
from meiju_core.services import transcripts
from meiju_core.services import transcripts as TS
from meiju_core.validate import db_id
from pages import _common as common
from pages._live_diff import live_diff

PAGE_SIZE = 20
PREVIEW_ROWS = 10
SOURCES = ["any", "official", "asr", "manual"]
REVIEW_PAGE = "pages/review.py"
S = st.session_state


# --------------------------------------------------------------------------- the flag index


@dataclass(frozen=True)
class Index:
    """Every transcript of the project, the flags most likely to change a label first
    (``transcript_rules.FLAG_IMPACT``), then by utterance id."""

    order: tuple[int, ...]
    utt: dict[int, str]
    source: dict[int, str]
    codes: dict[int, tuple[str, ...]]


@st.cache_resource(show_spinner=False, max_entries=2)
def _flag_memo(url: str, project_id: int) -> dict[tuple[int, int, str], tuple[str, ...]]:
    """Flag codes per (sample, version, source), kept across index rebuilds: after a save only
    the saved transcript is checked again."""
    return {}


@st.cache_resource(show_spinner="Checking punctuation…", ttl=600, max_entries=4)
def transcript_index(url: str, project_id: int, stamp: tuple[int, int, int]) -> Index:
    """The index for the store's current transcripts (``stamp`` changes on every save)."""
    with common.store_at(url).read() as s:
        rows = views.transcript_rows(s, project_id=project_id)
    memo = _flag_memo(url, project_id)
    fresh = {}
    for sid, _utt, source, version, t in rows:
        key = (sid, version, source)
        fresh[key] = memo.get(key) or TR.flag_codes(t or "", source=source)
    memo.clear()
    memo.update(fresh)
    codes = {sid: fresh[(sid, version, source)] for sid, _, source, version, _ in rows}
    utt = {sid: u for sid, u, *_ in rows}
    # most likely to change a label first (a question without ？ before a missing final 。)
    order = sorted(codes, key=lambda sid: (-TR.impact(codes[sid]), utt[sid]))
    return Index(tuple(order), utt, {sid: src for sid, _, src, *_ in rows}, codes)


def current_index(store, project_id: int) -> Index:
    url = common.settings().database_url
    with store.read() as s:
        stamp = views.transcripts_stamp(s)
    return transcript_index(url, project_id, stamp)


def flag_names(codes: tuple[str, ...]) -> str:
    return ", ".join(TR.FLAG_LABELS.get(c, c) for c in codes)


# --------------------------------------------------------------------------- the list


def _close() -> None:
    """A new search or filter: open its first row instead of the transcript picked before."""
    S.pop("ts_open", None)


def _pick(key: str, ids: list[int]) -> None:
    state = S.get(key) or {}
    rows = (state.get("selection") or {}).get("rows") or []
    if rows and rows[0] < len(ids):
        S["ts_open"] = ids[rows[0]]


def list_ui(store, project_id: int, index: Index) -> list[int]:
    """Search and filters, one page of transcripts; returns the ids listed (flagged first)."""
    st.text_input(
        "Search",
        key="ts_q",
        placeholder="utterance id or text",
        icon=":material/search:",
        on_change=_close,
    )
    needle = (S.get("ts_q") or "").strip()
    row = st.container(horizontal=True, vertical_alignment="bottom")
    source = row.selectbox("Source", SOURCES, key="ts_source", on_change=_close)
    codes = ["any", *TR.FLAG_LABELS]
    code = row.selectbox(
        "Flag",
        codes,
        key="ts_code",
        on_change=_close,
        format_func=lambda c: TR.FLAG_LABELS.get(c, c),
    )
    row = st.container(horizontal=True, vertical_alignment="center")
    flagged_only = row.toggle("Flagged only", key="ts_flagged", on_change=_close)
    page_slot = row.container(width=110)
    found = None
    if needle:
        with store.read() as s:
            found = views.matching_ids(s, project_id=project_id, needle=needle)
    ids = [
        sid
        for sid in index.order
        if (found is None or sid in found)
        and (source == "any" or index.source[sid] == source)
        and (code == "any" or code in index.codes[sid])
        and (not flagged_only or index.codes[sid])
    ]
    pages = max(1, -(-len(ids) // PAGE_SIZE))
    page = int(page_slot.number_input("Page", 1, pages, 1, key="ts_page"))
    shown = ids[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
    flagged = sum(1 for c in index.codes.values() if c)
    st.caption(
        f"{len(ids)} match · {flagged} of {len(index.order)} flagged in the project · "
        f"page {page} of {pages} · the flags most likely to change a label first"
    )
    shares = TR.flag_shares(index.codes.values())
    st.caption(
        "Flagged per kind: "
        + " · ".join(f"{TR.FLAG_LABELS.get(c, c)} **{p:.1%}** ({n})" for c, n, p in shares)
    )
    if not shown:
        st.info("No transcript matches.")
        return []
    rows, _ = common.search_transcripts(
        store, project_id=project_id, sample_ids=shown, limit=PAGE_SIZE
    )
    texts = {r["id"]: r["text"] for r in rows}
    table = pd.DataFrame(
        [
            {"utterance": index.utt[i], "text": texts.get(i), "flags": flag_names(index.codes[i])}
            for i in shown
        ]
    )
    key = f"ts_table_{page}"
    st.dataframe(
        table,
        hide_index=True,
        width="stretch",
        height=min(35 * (len(shown) + 1) + 3, 560),
        on_select=lambda: _pick(key, shown),
        selection_mode="single-row",
        key=key,
        column_config={"text": st.column_config.TextColumn(width="medium")},
    )
    return shown


def open_sample(index: Index, shown: list[int]) -> int | None:
    """The transcript to edit: ``?sample=`` when it changed, else the one picked, else the first
    listed. The URL is kept pointing at it."""
    asked = st.query_params.get("sample")
    if asked and asked != S.get("ts_qp_seen"):
        S["ts_qp_seen"] = asked
        if db_id(asked) is not None:
            S["ts_open"] = db_id(asked)
            S["ts_from_review"] = db_id(asked)
            if "back" in st.query_params:  # the Review queue it came from (its filters)
                S["ts_back"] = {"sample": db_id(asked), "params": st.query_params.get("back", "")}
                del st.query_params["back"]
    sid = S.get("ts_open") or (shown[0] if shown else None)
    if sid is not None and st.query_params.get("sample") != str(sid):
        S["ts_qp_seen"] = str(sid)
        st.query_params["sample"] = str(sid)
    return sid


# --------------------------------------------------------------------------- the editor


def diff_html(before: str, after: str, *, size: str | None = None) -> str:
    """Character diff as HTML: deletions struck through in red, insertions in green; ``size``
    overrides the CSS font size."""
    parts = []
    for op in text.char_diff(before, after):
        if op.op == "equal":
            parts.append(html.escape(op.before))
            continue
        if op.before:
            parts.append(f"<del>{html.escape(op.before)}</del>")
        if op.after:
            parts.append(f"<ins>{html.escape(op.after)}</ins>")
    style = f" style='font-size:{size}'" if size else ""
    return f"<div class='meiju-diff'{style}>{''.join(parts) or '&nbsp;'}</div>"


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


def _apply_flag(key: str, seen: str, span: tuple[int, int], suggestion: str) -> None:
    """Put one flag's suggestion into the box (if the box still holds the text it was found in)."""
    current = S.get(key, "")
    if current != seen:
        common.flash("warning", "The text changed; the flags are updated.", key="ts_flash")
        return
    start, end = span
    S[key] = current[:start] + suggestion + current[end:]


def _accept_all(tr: dict, key: str, user: dict) -> None:
    """One key: the full suggestion into the box and saved (version-checked)."""
    base = S[f"ts_base_{tr['sample_id']}"]
    fixed = text.suggest(S.get(key, ""))
    try:
        version = transcripts.save_transcript(
            common.store(),
            sample_id=tr["sample_id"],
            text=fixed,
            expected_version=base["version"],
            user=user,
        )
    except MeijuError as e:  # StaleEdit or refused text: the box keeps what it had
        common.flash("error", str(e), key="ts_flash")
        return
    S[key] = fixed
    _saved(tr["sample_id"], base, fixed, version)


def _saved(sample_id: int, base: dict, new_text: str, version: int) -> None:
    if version == base["version"]:
        common.flash("info", "Nothing changed.", key="ts_flash")
        return
    kind = "punctuation" if text.is_punctuation_only_change(base["text"], new_text) else "lexical"
    common.flash("success", f"Saved ({kind} edit), version {version}.", key="ts_flash")
    S[f"ts_base_{sample_id}"] = {"version": version, "text": new_text}


def _save(store, tr: dict, base: dict, new_text: str, user: dict) -> None:
    try:
        version = transcripts.save_transcript(
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
    _saved(tr["sample_id"], base, new_text, version)
    st.rerun()


def _next_flagged(index: Index, sample_id: int) -> int | None:
    flagged = [i for i in index.order if index.codes[i]]
    if sample_id in flagged:
        k = flagged.index(sample_id) + 1
        return flagged[k] if k < len(flagged) else None
    return flagged[0] if flagged else None


def _go(sample_id: int) -> None:
    S["ts_open"] = sample_id


def editor_ui(store, project_id: int, sample_id: int, user: dict, index: Index) -> None:
    """One transcript: where it comes from, its media, the editor with its actions, the diffs
    and flags of the text being edited, and its saved edits."""
    tr = common.transcript(store, sample_id=sample_id)
    if tr is None or sample_id not in index.codes:
        st.warning(f"Sample {sample_id} has no transcript in this project.")
        return
    _header_ui(tr, sample_id)
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
    if _actions_ui(tr, key, edited, suggestion, user, _next_flagged(index, sample_id)):
        _save(store, tr, base, edited, user)
    common.show_flash(key="ts_flash")
    _diffs_ui(tr, key, base, edited, suggestion)
    flags_ui(key, edited)
    _edits_ui(store, project_id, sample_id)


def _header_ui(tr: dict, sample_id: int) -> None:
    """The utterance id, a link back to the Review queue, the transcript's source and version."""
    head = st.container(horizontal=True, vertical_alignment="center")
    head.subheader(tr["utt_id"], anchor=False)
    came = S.get("ts_back") or {}
    if came.get("sample") == sample_id:  # back to the queue the user came from
        back = dict(parse_qsl(came.get("params", ""))) or None
    else:
        back = {"samples": str(sample_id)} if tr["split"] == "pool" else None
    head.page_link(
        REVIEW_PAGE, label="Back to Review", icon=":material/arrow_back:", query_params=back
    )
    st.caption(
        f"{tr['split']} · source **{tr['source']}** · version {tr['version']} · "
        f"saved {common.ago(tr['updated_at'])}"
    )
    if tr["source"] == "asr":
        st.caption("ASR transcript: check the words too, not only the punctuation.")


def _actions_ui(
    tr: dict, key: str, edited: str, suggestion: str, user: dict, nxt: int | None
) -> bool:
    """Save, accept all, use the suggestion, back to the original, next flagged (keys S, A, N);
    returns whether Save was clicked."""
    row = st.container(horizontal=True)
    save = row.button("Save", type="primary", key="ts_save", icon=":material/save:", shortcut="S")
    row.button(
        "Accept all & save",
        key="ts_accept",
        disabled=suggestion == edited,
        on_click=_accept_all,
        args=(tr, key, user),
        icon=":material/done_all:",
        shortcut="A",
    )
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
    row.button(
        "Next flagged",
        key="ts_next",
        disabled=nxt is None,
        on_click=_go,
        args=(nxt,),
        icon=":material/skip_next:",
        shortcut="N",
    )
    return save


def _diffs_ui(tr: dict, key: str, base: dict, edited: str, suggestion: str) -> None:
    """The unsaved change (live while typing), original -> current, and the full suggestion."""
    # follows the box while typing (a text area reaches the script only when it loses focus)
    live_diff(
        widget_key=key, base=base["text"], current=edited, label="Your change (not saved yet)"
    )
    if tr["original_text"] != edited:
        st.markdown("**Original → current**")
        st.html(diff_html(tr["original_text"], edited, size="1.15rem"))
    if suggestion != edited:
        st.markdown("**Full suggestion** (A accepts it and saves)")
        st.html(diff_html(edited, suggestion))


def _edits_ui(store, project_id: int, sample_id: int) -> None:
    st.markdown("**Edits of this transcript**")
    edits = common.transcript_edits(store, project_id=project_id, sample_id=sample_id)
    if not edits:
        st.caption("None yet.")
    for e in edits:
        st.html(  # plain text: html, never markdown (a transcript may hold markdown)
            f"<div>{html.escape(e['before'])} → {html.escape(e['after'])}<br>"
            f"<small>{e['kind']} · {html.escape(e['editor'])} · {common.ago(e['at'])}</small>"
            "</div>"
        )


def flags_ui(key: str, edited: str) -> None:
    """One row per flag: what is wrong, the fix in context, and an Apply button (keys 1-9)."""
    found = TR.unique_flags(edited)
    st.markdown(f"**Punctuation flags** ({len(found)})")
    if not found:
        st.caption("None.")
    for n, f in enumerate(found, 1):
        start, end = f.span
        context = (
            html.escape(edited[max(0, start - 8) : start])
            + (f"<del>{html.escape(edited[start:end])}</del>" if end > start else "")
            + f"<ins>{html.escape(f.suggestion)}</ins>"
            + html.escape(edited[end : end + 8])
        )
        row = st.container(horizontal=True, vertical_alignment="center", gap="small")
        row.button(
            f"Apply {n}" if n <= 9 else "Apply",
            key=f"ts_flag_{n}",
            on_click=_apply_flag,
            args=(key, edited, f.span, f.suggestion),
            shortcut=str(n) if n <= 9 else None,
            type="tertiary",
            icon=":material/check:",
        )
        row.html(
            f"<span class='meiju-diff' style='font-size:1.15rem'>{context}</span> &nbsp; "
            f"<small><code>{f.code}</code> {html.escape(f.message)}</small>",
            width="stretch",
        )


def _media(tr: dict) -> None:
    start = int(tr["start_s"] or 0)
    if tr["video_path"] and Path(tr["video_path"]).exists():
        st.video(tr["video_path"], start_time=start)
    elif tr["audio_path"] and Path(tr["audio_path"]).exists():
        st.audio(tr["audio_path"], start_time=start)


# --------------------------------------------------------------------------- bulk fix


def preview_table(changes: list[TS.Change]) -> str:
    """Before/after of each change as one compact HTML table (utterance id, character diff)."""
    rows = "".join(
        f"<tr><td class='meiju-utt'>{html.escape(c.utt_id)}</td>"
        f"<td>{diff_html(c.before, c.after, size='1.15rem')}</td></tr>"
        for c in changes
    )
    return f"<table style='width:100%'>{rows}</table>"


def _preview(store, project_id: int, index: Index) -> None:
    rule = TR.RULES[S["ts_rule"]]
    ids = [i for i in index.order if TR.rule_matches(index.codes[i], rule)]
    S["ts_bulk"] = {
        "rule": rule.name,
        "changes": TS.preview_rule(store, project_id=project_id, rule=rule, sample_ids=ids),
    }


def _cancel_bulk() -> None:
    S.pop("ts_bulk", None)


def bulk_ui(store, project_id: int, index: Index, user: dict) -> None:
    """Pick a rule, preview the first changes, confirm once, save each version-checked."""
    pending = S.get("ts_bulk")
    with st.expander("Bulk fix: apply one rule to every match", expanded=pending is not None):
        row = st.container(horizontal=True, vertical_alignment="bottom")
        name = row.selectbox(
            "Rule",
            list(TR.RULES),
            key="ts_rule",
            format_func=lambda r: TR.RULES[r].label,
            on_change=_cancel_bulk,
            width=380,
        )
        matches = sum(1 for c in index.codes.values() if TR.rule_matches(c, TR.RULES[name]))
        row.button(
            f"Preview ({matches} flagged)",
            key="ts_bulk_preview",
            icon=":material/preview:",
            disabled=matches == 0,
            on_click=_preview,
            args=(store, project_id, index),
        )
        if pending is None or pending["rule"] != name:
            st.caption(
                "Every save is checked against the version previewed; transcripts saved by "
                "someone else in between are skipped and listed."
            )
            return
        changes: list[TS.Change] = pending["changes"]
        if not changes:
            st.info("The rule changes no transcript.")
            return
        st.markdown(f"**{len(changes)} transcripts change**; the first {PREVIEW_ROWS}:")
        st.html(preview_table(changes[:PREVIEW_ROWS]))
        row = st.container(horizontal=True)
        confirm = row.button(
            f"Apply to all {len(changes)}",
            key="ts_bulk_apply",
            type="primary",
            icon=":material/done_all:",
        )
        row.button("Cancel", key="ts_bulk_cancel", on_click=_cancel_bulk)
        if confirm:
            bar = st.progress(0.0, text="Saving…")

            def progress(done: int, total: int) -> None:
                if done % 50 == 0 or done == total:
                    bar.progress(done / total, text=f"Saved {done} of {total}")

            result = TS.apply_changes(store, changes, user=user, progress=progress)
            S.pop("ts_bulk", None)
            message = f"{TR.RULES[name].label}: {result.saved} saved"
            if result.unchanged:
                message += f", {result.unchanged} unchanged"
            if result.stale:
                shown = ", ".join(result.stale[:5]) + (" …" if len(result.stale) > 5 else "")
                message += f"; {len(result.stale)} skipped (saved by someone else since): {shown}"
            if result.failed:
                message += f"; {len(result.failed)} refused: {result.failed[0][1]}"
            kind = "warning" if result.stale or result.failed else "success"
            common.flash(kind, message, key="ts_bulk_flash")
            st.rerun()


# --------------------------------------------------------------------------- page


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
    index = current_index(store, project["id"])
    listing, editor = st.columns([5, 6], gap="large")
    with listing:
        shown = list_ui(store, project["id"], index)
        sample_id = open_sample(index, shown)
    with editor:
        if sample_id is not None:
            editor_ui(store, project["id"], sample_id, user, index)
    st.divider()
    common.show_flash(key="ts_bulk_flash")
    bulk_ui(store, project["id"], index, user)
    recent_edits(store, project["id"])


main()
