"""Review: one card at a time, one key per decision, the next card already chosen.

The round panel (and, for admins, the form that opens a new round) runs with the page; the card
runs in an ``st.fragment``, so a decision reruns only the card. Each button calls
``pipeline.decide`` / ``pipeline.undo`` in its ``on_click`` callback (the decision and its quota
check commit in that call, before the card re-renders), then the fragment reruns once and shows
the next card.

Keeping the rerun short: the page keeps the ids of the next few cards (``rv_ahead``), and each
rerun re-checks only those ids against the queue (an indexed lookup), loads one card, the quota
counts and the history in one read session, and leases the card in one short write. The full
queue query and the queue count run only when the ids run out.
"""

from __future__ import annotations

import html
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from db import queries as q
from db.models import ModelVersion, ReviewRound
from meiju_core import pipeline
from meiju_core.errors import MeijuError, QuotaExceeded
from pages import _common as common

PREFETCH = 8  # card ids fetched ahead in one queue query
THRESHOLD_STEPS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
RESERVED_KEYS = {"A", "X", "S", "U", "C", "R"}  # C and R are Streamlit's own
BROWSER_VIDEO = {".mp4", ".m4v", ".webm", ".ogv", ".mov"}
S = st.session_state


# --------------------------------------------------------------------------- state


def _reset_cards() -> None:
    """Forget the card ids kept for the queue (after a new round or a filter change)."""
    for key in ("rv_card", "rv_ahead", "rv_left", "rv_focus", "rv_leased", "rv_shown"):
        S.pop(key, None)


def _head_keys(heads: list[str]) -> dict[str, str]:
    """A shortcut key per head for "accept this head only": E / I for MEIJU, else a free letter."""
    preferred = {"emotion": "E", "intent": "I"}
    used, out = set(RESERVED_KEYS), {}
    for head in heads:
        for key in [preferred.get(head, "")] + [c.upper() for c in head if c.isalpha()]:
            if key and key not in used:
                out[head] = key
                used.add(key)
                break
    return out


# --------------------------------------------------------------------------- round panel


@st.cache_data(ttl=120, show_spinner=False)
def _candidate_counts(url: str, model_version_id: int) -> dict[str, dict[float, int]]:
    return pipeline.candidate_counts(
        common.store_at(url), model_version_id=model_version_id, thresholds=list(THRESHOLD_STEPS)
    )


def _default_threshold(counts: dict[float, int]) -> float:
    """The highest step that still yields 200 candidates (the paper's 0.99 when it does)."""
    for t in sorted(THRESHOLD_STEPS, reverse=True):
        if counts.get(t, 0) >= 200:
            return t
    return THRESHOLD_STEPS[0]


def round_summary(rnd: dict[str, Any] | None) -> None:
    if rnd is None:
        st.info("No review round is open.")
        return
    th = " · ".join(f"{h} ≥ {t:.2f}" for h, t in rnd["thresholds"].items())
    budget = {h: sum(int(v) for v in per.values()) for h, per in rnd["quotas"].items()}
    quota = " · ".join(f"{h} {n}" for h, n in budget.items())
    st.caption(
        f"Round **#{rnd['id']}** · model **{rnd['model_name']}** (#{rnd['model_version_id']}) · "
        f"thresholds {th} · quota totals {quota} · opened {common.ago(rnd['created_at'])}"
    )


def open_round_ui(store, settings, project: dict[str, Any], user: dict[str, Any], has_round: bool):
    """Admins: pick a model version, thresholds per head and a quota strategy; open the round."""
    with st.expander("Open a new round", expanded=not has_round, icon=":material/add_circle:"):
        versions = common.model_versions(store, project_id=project["id"])
        if not versions:
            st.info("No model version yet: train one on the Training page first.")
            return
        ids = [v["id"] for v in versions]
        names = {v["id"]: f"#{v['id']} {v['name']} ({v['status']})" for v in versions}
        promoted = next((v["id"] for v in versions if v["status"] == "promoted"), ids[0])
        mv_id = st.selectbox(
            "Model version",
            ids,
            index=ids.index(promoted),
            format_func=names.get,
            key="rv_new_mv",
        )
        counts = _candidate_counts(settings.database_url, mv_id)
        heads = list(project["heads"])
        table = pd.DataFrame(
            [[counts.get(h, {}).get(t, 0) for t in THRESHOLD_STEPS] for h in heads],
            index=heads,
            columns=[f"≥ {t:g}" for t in THRESHOLD_STEPS],
        )
        st.dataframe(table, width="stretch")
        st.caption(
            "Pool samples whose confidence reaches each threshold, per head. A model trained on "
            "few labels rarely reaches the paper's 0.99: pick a threshold that leaves enough cards."
        )
        cols = st.columns(len(heads) + 2)
        thresholds = {}
        for col, head in zip(cols, heads, strict=False):
            thresholds[head] = col.number_input(
                f"{head.capitalize()} threshold",
                min_value=0.0,
                max_value=1.0,
                value=_default_threshold(counts.get(head, {})),
                step=0.01,
                format="%.2f",
                key=f"rv_new_th_{mv_id}_{head}",
            )
        strategy = cols[-2].radio(
            "Quota strategy",
            ["balanced", "proportional"],
            index=0 if settings.quota_strategy != "proportional" else 1,
            horizontal=True,
            key="rv_new_strategy",
            help="balanced: the same quota for every class (budget / classes); proportional: "
            "quotas follow the gold train distribution.",
        )
        budget = cols[-1].number_input(
            "Budget per head",
            min_value=1,
            value=int(settings.quota_budget),
            step=100,
            key="rv_new_budget",
            help="Most pseudo-labels the round may accept per head.",
        )
        if st.button("Open round", type="primary", key="rv_open_round"):
            try:
                pipeline.require_admin(user, "open a review round")
                rid = pipeline.open_round(
                    store,
                    settings,
                    project_id=project["id"],
                    model_version_id=mv_id,
                    thresholds=thresholds,
                    strategy=strategy,
                    budget=int(budget),
                    user=user,
                )
            except MeijuError as e:
                st.error(str(e))
                return
            _reset_cards()
            common.flash("success", f"Round #{rid} is open.", key="rv_page_flash")
            st.rerun()


def queue_filter_ui(heads: dict[str, list[str]]) -> q.QueueFilter:
    """Narrow the queue to one head, one predicted class or a confidence range."""
    with st.popover("Filter", icon=":material/filter_list:"):
        head = st.selectbox("Head", ["any", *heads], key="rv_f_head")
        label = "any"
        if head != "any":
            label = st.selectbox("Predicted class", ["any", *heads[head]], key=f"rv_f_label_{head}")
        lo, hi = st.slider("Confidence", 0.0, 1.0, (0.0, 1.0), step=0.01, key="rv_f_conf")
    flt = q.QueueFilter(
        head=None if head == "any" else head,
        label=None if label == "any" else label,
        min_confidence=lo if lo > 0 else None,
        max_confidence=hi if hi < 1 else None,
    )
    if S.get("rv_filter") != flt:
        S["rv_filter"] = flt
        _reset_cards()
    return flt


# --------------------------------------------------------------------------- the card


def _load_view(store, round_id: int, user_id: int, flt: q.QueueFilter) -> dict[str, Any]:
    """The card to show and what is drawn around it, in one read session."""
    kept = [S.get("rv_focus"), S.get("rv_card"), *S.get("rv_ahead", [])]
    candidates = list(dict.fromkeys(i for i in kept if i is not None))
    with store.read() as s:
        ids: list[int] = []
        if candidates:
            still = set(
                q.queue(
                    s,
                    round_id=round_id,
                    flt=replace(flt, sample_ids=tuple(candidates)),
                    user_id=user_id,
                    limit=len(candidates),
                )
            )
            ids = [i for i in candidates if i in still]
        if len(ids) < 2:
            ids += q.queue(
                s, round_id=round_id, flt=flt, user_id=user_id, limit=PREFETCH, exclude=ids
            )
            # queue_size leaves out leased cards; the one on this screen still counts here
            held = S.get("rv_leased")
            mine = 1 if held and held[0] in ids else 0
            S["rv_left"] = q.queue_size(s, round_id=round_id, flt=flt) + mine
        rnd = s.get(ReviewRound, round_id)
        cards = q.load_cards(s, model_version_id=rnd.model_version_id, sample_ids=ids[:1])
        return {
            "ids": ids,
            "card": cards[0] if cards else None,
            "quotas": q.quota_status(s, round_id=round_id),
            "history": q.history(s, round_id=round_id, user_id=user_id, limit=10),
        }


def _lease(store, settings, round_id: int, user_id: int, sample_id: int) -> bool:
    held = S.get("rv_leased")
    if held and held[0] == sample_id and time.monotonic() - held[1] < settings.lease_seconds / 2:
        return True
    with store.write() as s:
        ok = q.lease(
            s,
            round_id=round_id,
            sample_id=sample_id,
            user_id=user_id,
            seconds=settings.lease_seconds,
        )
    S["rv_leased"] = (sample_id, time.monotonic()) if ok else None
    return ok


def _decide(action: str, sample_id: int, heads: list[str] | None = None) -> None:
    """Button callback: commit one decision on the card the button was drawn for."""
    decided = S.setdefault("rv_decided", [])
    if sample_id in decided:  # a second key press that reached the old card
        return
    ms = int((time.monotonic() - S.get("rv_shown", time.monotonic())) * 1000)
    try:
        pipeline.decide(
            common.store(),
            round_id=S["rv_round"],
            sample_id=sample_id,
            action=action,
            user=common.user(),
            heads=heads,
            ms_spent=ms,
        )
    except QuotaExceeded as e:
        common.flash(
            "warning",
            f"Quota full for **{e.head} · {e.label}**: {e.accepted} of {e.quota} accepted. "
            "Accept the other head only, reject or skip.",
            key="rv_flash",
        )
        return
    except MeijuError as e:
        common.flash("error", str(e), key="rv_flash")
        return
    decided.append(sample_id)
    del decided[:-50]
    S["rv_left"] = max(0, S.get("rv_left", 1) - 1)
    S.pop("rv_focus", None)


def _undo(decision_id: int | None = None) -> None:
    """Button callback: undo the latest decision (or one from the history); its card returns."""
    sample_id = pipeline.undo(
        common.store(), round_id=S["rv_round"], user=common.user(), decision_id=decision_id
    )
    if sample_id is None:
        common.flash("info", "Nothing to undo.", key="rv_flash")
        return
    S["rv_focus"] = sample_id
    decided = S.get("rv_decided", [])
    if sample_id in decided:
        decided.remove(sample_id)
    common.flash("info", "Undone: the card is back.", key="rv_flash")


def _top3(probs: list[float], classes: list[str]) -> list[tuple[str, float]]:
    order = sorted(range(len(probs)), key=lambda k: -probs[k])[:3]
    return [(classes[k] if k < len(classes) else str(k), float(probs[k])) for k in order]


def _media(card: q.Card) -> None:
    start = int(card.start_s or 0)
    if card.video_path:
        path = Path(card.video_path)
        if not path.exists():
            st.caption(f"Video not found: `{card.video_path}`")
        else:
            st.video(str(path), start_time=start)
            if path.suffix.lower() not in BROWSER_VIDEO:
                st.caption(f"{path.suffix} video: the browser may not play it.")
    elif card.audio_path:
        if Path(card.audio_path).exists():
            st.audio(card.audio_path, start_time=start)
        else:
            st.caption(f"Audio not found: `{card.audio_path}`")


def _predictions(card: q.Card, heads: dict[str, list[str]], quotas: dict) -> None:
    cols = st.columns(len(heads))
    for col, (head, classes) in zip(cols, heads.items(), strict=False):
        pred = card.predictions.get(head)
        with col:
            if pred is None:
                st.markdown(f"**{head.capitalize()}**")
                st.caption("no prediction")
                continue
            st.markdown(f"**{head.capitalize()}** · :red[**{pred['label']}**]")
            for label, p in _top3(pred["probs"] or [], classes):
                st.progress(min(1.0, max(0.0, p)), text=f"{label} · {p:.2f}")
            accepted, quota = quotas.get(head, {}).get(pred["label"], (0, 0))
            value = min(1.0, accepted / quota) if quota else 1.0
            st.progress(value, text=f"quota {pred['label']}: {accepted} / {quota}")


def _buttons(card_id: int, heads: list[str], has_card: bool) -> None:
    keys = _head_keys(heads)
    row = st.container(horizontal=True, gap="small", key="rv_buttons")
    row.button(
        "Accept both",
        key="rv_accept",
        type="primary",
        shortcut="A",
        disabled=not has_card,
        on_click=_decide,
        args=("accept", card_id),
        icon=":material/done_all:",
    )
    for head in heads:
        if head in keys:
            row.button(
                f"Accept {head} only",
                key=f"rv_accept_{head}",
                shortcut=keys[head],
                disabled=not has_card,
                on_click=_decide,
                args=("accept", card_id, [head]),
            )
    row.button(
        "Reject",
        key="rv_reject",
        shortcut="X",
        disabled=not has_card,
        on_click=_decide,
        args=("reject", card_id),
        icon=":material/close:",
    )
    row.button(
        "Skip",
        key="rv_skip",
        shortcut="S",
        disabled=not has_card,
        on_click=_decide,
        args=("skip", card_id),
        icon=":material/skip_next:",
    )
    row.button("Undo", key="rv_undo", shortcut="U", on_click=_undo, icon=":material/undo:")


def _history(rows: list[dict[str, Any]], heads: list[str]) -> None:
    st.markdown("##### Last decisions")
    if not rows:
        st.caption("None yet in this round.")
        return
    for d in rows:
        labels = ", ".join(f"{h} {d['labels'][h]}" for h in heads if h in d["labels"])
        text = f"`{d['utt_id']}` · **{d['action']}** · {labels or 'whole card'} · {common.ago(d['at'])}"
        line = st.container(
            horizontal=True, vertical_alignment="center", key=f"rv_h_{d['decision_id']}"
        )
        line.markdown(f"~~{text}~~ (undone)" if d["undone"] else text, width="stretch")
        line.button(
            "Undo",
            key=f"rv_undo_{d['decision_id']}",
            type="tertiary",
            disabled=d["undone"],
            on_click=_undo,
            args=(d["decision_id"],),
        )


@st.fragment
def card_panel(round_id: int, heads: dict[str, list[str]], flt: q.QueueFilter) -> None:
    store, settings, user = common.store(), common.settings(), common.require_user()
    for _ in range(3):  # another annotator may take a card between the read and the lease
        view = _load_view(store, round_id, user["id"], flt)
        card = view["card"]
        if card is None or _lease(store, settings, round_id, user["id"], card.sample_id):
            break
        S["rv_ahead"] = [i for i in view["ids"] if i != card.sample_id]
        S.pop("rv_card", None)
        if S.get("rv_focus") == card.sample_id:
            S.pop("rv_focus")
    if card is None:
        S.pop("rv_card", None)
    elif S.get("rv_card") != card.sample_id:
        S["rv_card"], S["rv_shown"] = card.sample_id, time.monotonic()
    S["rv_ahead"] = view["ids"][1:]
    S.pop("rv_focus", None)

    common.show_flash(key="rv_flash")
    if card is None:
        st.success("Nothing left to review here: every card above the threshold is decided.")
        _buttons(-1, list(heads), has_card=False)
        _history(view["history"], list(heads))
        return
    left = S.get("rv_left", 0)
    st.markdown(
        f"<span class='meiju-utt'>{html.escape(card.utt_id)}</span> · {html.escape(card.source)}"
        f" · transcript {html.escape(card.transcript_source or '–')}"
        f" · **{left}** left in the queue",
        unsafe_allow_html=True,
    )
    main, side = st.columns([3, 2], gap="large")
    with main:
        if card.text:
            st.markdown(
                f"<div class='meiju-transcript' data-utt='{html.escape(card.utt_id)}'>"
                f"{html.escape(card.text)}</div>",
                unsafe_allow_html=True,
            )
        else:
            st.markdown(
                f"<div class='meiju-transcript empty' data-utt='{html.escape(card.utt_id)}'>"
                "(no transcript)</div>",
                unsafe_allow_html=True,
            )
        _media(card)
    with side:
        _predictions(card, heads, view["quotas"])
    _buttons(card.sample_id, list(heads), has_card=True)
    st.caption("Keys: A accept both · E / I accept one head · X reject · S skip · U undo")
    _history(view["history"], list(heads))


# --------------------------------------------------------------------------- page


def main() -> None:
    user, store, settings = common.require_user(), common.store(), common.settings()
    project = common.project()
    st.title("Review")
    common.show_flash(key="rv_page_flash")
    with store.read() as s:
        r = q.active_round(s, project_id=project["id"])
        rnd = None
        if r is not None:
            mv = s.get(ModelVersion, r.model_version_id)
            rnd = {
                "id": r.id,
                "model_version_id": r.model_version_id,
                "model_name": mv.name if mv else "?",
                "thresholds": dict(r.thresholds),
                "quotas": dict(r.quotas),
                "created_at": r.created_at,
            }
    top = st.container(horizontal=True, vertical_alignment="center")
    with top:
        round_summary(rnd)
    if common.is_admin(user):
        open_round_ui(store, settings, project, user, has_round=rnd is not None)
    if rnd is None:
        return
    if S.get("rv_round") != rnd["id"]:
        S["rv_round"] = rnd["id"]
        _reset_cards()
    with top:
        flt = queue_filter_ui(project["heads"])
    card_panel(rnd["id"], project["heads"], flt)


main()
