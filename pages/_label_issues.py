"""Review's second queue: gold labels flagged as likely wrong, kept or relabelled by keyboard.

A gold-label check (``meiju label-issues``, or the "Check gold labels" button here, which queues
a ``label_check`` job for the worker: the cross-validation never runs in the app) opens a round of
kind ``label_issues``; its flags are this queue, most doubtful first. The card shows the
utterance (transcript, player, the dialogue's neighbouring utterances with their gold labels),
the gold label given and the class suggested by out-of-sample probabilities.

Keys (the Review page's key listener, ``pages/_keys.py``): **K** keep the gold label, **R**
relabel to the suggested class, **1-9** relabel to that class of the head (the given class's key
keeps), **S** skip to the end of this session's queue, **U** undo (the old gold label returns).
Every keep or relabel is a ``decision`` row (``previous_label`` keeps the old label).
"""

from __future__ import annotations

import html
import time
from typing import Any

import streamlit as st

from db import label_issues as li
from db import queries as q
from db import views
from meiju_core.errors import CardTaken, MeijuError
from meiju_core.services import jobs, label_check
from pages import _common as common
from pages._keys import key_listener, new_events

DIGITS = "123456789"
KEYS = ["K", "R", "S", "U", *DIGITS]
S = st.session_state


# --------------------------------------------------------------------------- the check job


def _submit_check(project_id: int) -> None:
    """Button callback: queue the gold-label check for the worker (admins; the job checks the
    role again)."""
    common.flash_outcome(
        lambda: jobs.submit(
            common.store(),
            common.settings(),
            kind="label_check",
            params={"split": "train"},
            project_id=project_id,
            user=common.user(),
        ),
        lambda job_id: (
            f"Gold-label check queued as job #{job_id}: it runs in the background "
            "and opens a new queue of flags when it finishes."
        ),
        key="li_page_flash",
    )


def _latest_check(store, project_id: int) -> dict[str, Any] | None:
    with store.read() as s:
        rows = q.latest_jobs(s, project_id=project_id, kind="label_check", limit=1)
        if not rows:
            return None
        j = rows[0]
        return {
            "id": j.id,
            "status": j.status,
            "progress": j.progress or 0.0,
            "result": j.result,
            "error": j.error,
            "log": (j.log or "").strip().splitlines()[-1:] or [""],
        }


def _status_line(job: dict[str, Any]) -> None:
    if job["status"] in ("queued", "running"):
        st.progress(
            job["progress"], text=f"Check job #{job['id']} {job['status']}: {job['log'][0]}"
        )
    elif job["status"] == "succeeded":
        flagged = (job["result"] or {}).get("flagged", {})
        checked = (job["result"] or {}).get("checked", {})
        st.caption(
            f"Last check (job #{job['id']}): "
            + " · ".join(f"{h} {flagged[h]} of {checked.get(h, '?')}" for h in flagged)
            + " gold labels flagged."
        )
    else:
        st.caption(f"Last check (job #{job['id']}) {job['status']}: {job['error'] or ''}")


@st.fragment(run_every=2)
def _live_status(project_id: int) -> None:
    """While a check job is queued or running: its progress, polled; when it ends, the page
    reruns once to show the new queue (no polling otherwise, so keys never race a poll)."""
    job = _latest_check(common.store(), project_id)
    if job is None:
        return
    _status_line(job)
    if job["status"] not in ("queued", "running"):
        S.pop("li_card", None)
        st.rerun()


def _check_status(project_id: int) -> None:
    job = _latest_check(common.store(), project_id)
    if job is None:
        return
    if job["status"] in ("queued", "running"):
        _live_status(project_id)
    else:
        _status_line(job)


def check_ui(project: dict[str, Any], user: dict[str, Any]) -> None:
    """Admins: run the gold-label check as a worker job; its progress while it runs."""
    with st.expander("Check gold labels", icon=":material/fact_check:"):
        st.caption(
            "Out-of-sample probabilities (5-fold cross-validated logistic regression on the "
            "utterance features) fed to cleanlab's find_label_issues flag train gold labels that "
            "are likely wrong. A new check replaces this queue (decisions already made stay in "
            "the log)."
        )
        st.button(
            "Run the check",
            key="li_run_check",
            icon=":material/play_arrow:",
            disabled=not common.is_admin(user),
            on_click=_submit_check,
            args=(project["id"],),
        )
        _check_status(project["id"])


# --------------------------------------------------------------------------- state


def _skipped() -> list[tuple[int, str]]:
    return [tuple(x) for x in S.setdefault("li_skipped", [])]


def _next(s, round_id: int, user_id: int, taken: set[int]) -> dict[str, Any] | None:
    """The first open flag not skipped in this session nor held by another annotator, else the
    first skipped one still open; ``taken``: samples found held since the queue was read."""
    rows = li.queue(s, round_id=round_id, limit=1 + len(taken), exclude=_skipped(), user_id=user_id)
    rows = [r for r in rows if r["sample_id"] not in taken]
    if rows:
        return rows[0]
    held = li.leased_by_others(s, round_id=round_id, user_id=user_id) | taken
    for sid, head in _skipped():
        row = li.issue(s, round_id=round_id, sample_id=sid, head=head)
        if row is not None and not row["resolved"] and sid not in held:
            S["li_skipped"] = [x for x in S["li_skipped"] if tuple(x) != (sid, head)]
            return row
    return None


def _lease(store, round_id: int, sample_id: int) -> bool:
    """Hold the sample on screen for this user (renewed at half the lease time)."""
    settings = common.settings()
    return common.held_lease(
        "li_leased",
        sample_id,
        settings.lease_seconds,
        lambda: label_check.lease(
            store,
            round_id=round_id,
            sample_id=sample_id,
            user=common.user(),
            seconds=settings.lease_seconds,
        ),
    )


def _current(store, round_id: int) -> dict[str, Any] | None:
    """The flag on screen: the kept one while it is open, else the next one this user can
    lease (another annotator may take a sample between the read and the lease)."""
    uid = (common.user() or {}).get("id")
    kept = S.get("li_card")
    if kept is not None:
        with store.read() as s:
            row = li.issue(s, round_id=round_id, sample_id=kept[0], head=kept[1])
        if row is not None and not row["resolved"] and _lease(store, round_id, kept[0]):
            return row
    taken: set[int] = set()
    for _ in range(3):
        with store.read() as s:
            row = _next(s, round_id, uid, taken)
        if row is None or _lease(store, round_id, row["sample_id"]):
            break
        taken.add(row["sample_id"])
    if row is None:
        S.pop("li_card", None)
        return None
    if S.get("li_card") != (row["sample_id"], row["head"]):
        S["li_card"], S["li_shown"] = (row["sample_id"], row["head"]), time.monotonic()
    return row


# --------------------------------------------------------------------------- decisions


def _decide(action: str, sample_id: int, head: str, label: str | None = None) -> bool:
    """Keep or relabel one flag (button callback; keys come through :func:`_on_keys`)."""
    ms = int((time.monotonic() - S.get("li_shown", time.monotonic())) * 1000)
    try:
        label_check.resolve(
            common.store(),
            round_id=S["li_round"],
            sample_id=sample_id,
            head=head,
            action=action,
            label=label,
            user=common.user(),
            ms_spent=ms,
        )
    except CardTaken as e:
        common.flash("warning", f"Not recorded: {e}. Here is the next flag.", key="li_flash")
        if not e.decided:  # held by someone else: not this session's to come back to
            S["li_skipped"] = [x for x in _skipped() if x != (sample_id, head)]
        S.pop("li_card", None)
        return False
    except MeijuError as e:
        common.flash("error", str(e), key="li_flash")
        return False
    S.pop("li_card", None)
    S.pop("li_leased", None)  # the store frees a sample once its flags are resolved
    return True


def _skip(sample_id: int, head: str) -> None:
    """S: the flag waits at the end of this session's queue (no decision is written; the
    sample's lease is dropped, so another annotator may take it meanwhile)."""
    S["li_skipped"] = [x for x in _skipped() if x != (sample_id, head)] + [(sample_id, head)]
    S.pop("li_card", None)
    S.pop("li_leased", None)
    label_check.release(
        common.store(), round_id=S["li_round"], sample_id=sample_id, user=common.user()
    )


def _undo(decision_id: int | None = None) -> None:
    """U / the history's Undo: the old gold label returns and the flag is shown again."""
    try:
        back = label_check.undo(
            common.store(), round_id=S["li_round"], user=common.user(), decision_id=decision_id
        )
    except MeijuError as e:
        common.flash("error", str(e), key="li_flash")
        return
    if back is None:
        common.flash("info", "Nothing to undo.", key="li_flash")
        return
    S["li_card"], S["li_shown"] = (back["sample_id"], back["head"]), time.monotonic()
    S.pop("li_leased", None)
    was = back["previous_label"] if back["action"] == "relabel" else back["label"]
    common.flash("info", f"Undone: the gold {back['head']} label is {was} again.", key="li_flash")


def _on_keys() -> None:
    """Key listener callback: apply every new key press in order, each to the flag current when
    it is applied (a quick series decides one flag after another)."""
    store, rid = common.store(), S.get("li_round")
    if rid is None:
        return
    classes = S.get("li_classes") or {}
    for key, _shown in new_events(S.get("rv_keys") or {}, S.setdefault("rv_key_seq", {})):
        if key == "U":
            _undo()
            continue
        row = _current(store, rid)
        if row is None:
            continue
        sid, head = row["sample_id"], row["head"]
        if key == "K":
            _decide("keep", sid, head)
        elif key == "R":
            _decide("relabel", sid, head)
        elif key == "S":
            _skip(sid, head)
        elif key in DIGITS:
            names = classes.get(head, [])
            k = DIGITS.index(key)
            if k < len(names):
                _decide("relabel", sid, head, names[k])


# --------------------------------------------------------------------------- the card


def _context(rows: list[dict[str, Any]], heads: list[str]) -> None:
    """The dialogue around the utterance, with each line's gold labels."""
    if len(rows) <= 1:
        return
    lines = []
    for r in rows:
        labels = " · ".join(r["gold"].get(h, "–") for h in heads)
        text = html.escape(r["text"] or "(no transcript)")
        style = "font-weight:600" if r["this"] else "opacity:0.75"
        lines.append(
            f"<div style='{style}'><code>{html.escape(r['utt_id'])}</code> {text} "
            f"<span style='opacity:0.7'>[{html.escape(labels)}]</span></div>"
        )
    st.markdown("**The dialogue around it** (gold labels in brackets)")
    st.html("<div class='meiju-context'>" + "".join(lines) + "</div>")


def _labels(row: dict[str, Any], card: q.Card | None, classes: list[str]) -> None:
    head, given, suggested = row["head"], row["given"], row["suggested"]
    st.markdown(f"**{head.capitalize()}**, gold label")
    st.markdown(f"### :red[{given}] → :green[{suggested}]")
    score = row["score"]
    st.caption(
        f"given **{given}**, suggested **{suggested}** (out-of-sample probabilities)"
        + (f" · label quality {score:.3f} (lower = more doubtful)" if score is not None else "")
    )
    pred = card.predictions.get(head) if card else None
    if pred and pred.get("probs"):
        st.caption("The round's model on this utterance:")
        for label, p in common.top3(pred["probs"], classes):
            st.progress(min(1.0, max(0.0, p)), text=f"{label} · {p:.2f}")


def _buttons(row: dict[str, Any] | None, classes: list[str]) -> None:
    has = row is not None
    sid, head = (row["sample_id"], row["head"]) if has else (-1, "")
    bar = st.container(horizontal=True, gap="small", key="rv_buttons_issues")
    bar.button(
        "Keep [K]",
        key="li_keep",
        type="primary",
        disabled=not has,
        on_click=_decide,
        args=("keep", sid, head),
        icon=":material/check:",
    )
    bar.button(
        f"Relabel to {row['suggested']} [R]" if has else "Relabel [R]",
        key="li_relabel",
        disabled=not has,
        on_click=_decide,
        args=("relabel", sid, head),
        icon=":material/edit:",
    )
    bar.button(
        "Skip [S]",
        key="li_skip",
        disabled=not has,
        on_click=_skip,
        args=(sid, head),
        icon=":material/skip_next:",
    )
    bar.button("Undo [U]", key="li_undo", on_click=_undo, icon=":material/undo:")
    if not has:
        return
    keys = st.container(horizontal=True, gap="small", key="li_class_keys")
    for k, label in enumerate(classes[: len(DIGITS)]):
        mark = " (given)" if label == row["given"] else ""
        keys.button(
            f"{DIGITS[k]} {label}{mark}",
            key=f"li_digit_{k + 1}",
            type="primary" if label == row["suggested"] else "tertiary",
            on_click=_decide,
            args=("relabel", sid, head, label),
        )


def _history(rows: list[dict[str, Any]]) -> None:
    st.markdown("##### Last decisions")
    if not rows:
        st.caption("None yet in this check.")
        return
    for k, d in enumerate(rows):
        what = (
            f"**relabel** {d['head']} {d['previous_label']} → {d['label']}"
            if d["action"] == "relabel"
            else f"**keep** {d['head']} {d['label']}"
        )
        text = f"`{d['utt_id']}` · {what} · {common.ago(d['at'])}"
        common.decision_line(text, d, prefix="li", k=k, on_undo=_undo)


@st.fragment
def issue_panel(round_id: int, heads: dict[str, list[str]]) -> None:
    """The current flag, its keys and the user's last decisions (reruns alone on a key)."""
    store, user = common.store(), common.require_user()
    S["li_round"], S["li_classes"] = round_id, {h: list(c) for h, c in heads.items()}
    key_listener(KEYS, key="rv_keys", on_keys=_on_keys)
    row = _current(store, round_id)
    with store.read() as s:
        counts = li.counts(s, round_id=round_id)
        mv_id = views.round_model_version(s, round_id=round_id)
        card = (
            q.load_cards(s, model_version_id=mv_id, sample_ids=[row["sample_id"]])[0]
            if row
            else None
        )
        around = li.context(s, sample_id=row["sample_id"]) if row else []
        hist = li.history(s, round_id=round_id, user_id=user["id"])
    common.show_flash(key="li_flash")
    open_n = sum(c["open"] for c in counts.values())
    flagged = sum(c["flagged"] for c in counts.values())
    done = " · ".join(
        f"{h}: {c['kept']} kept, {c['relabelled']} relabelled of {c['flagged']}"
        for h, c in counts.items()
    )
    if row is None or card is None:
        st.success(
            f"**No flag left to check** ({flagged} flagged: {done or 'none'}).",
            icon=":material/inbox:",
        )
        _buttons(None, [])
        _history(hist)
        return
    classes = heads[row["head"]]
    area = st.container(key="rv_card_area_issues")
    area.markdown(
        f"<span class='meiju-utt'>{html.escape(card.utt_id)}</span> · {html.escape(card.source)}"
        f" · **{open_n}** of {flagged} flags left · {done}",
        unsafe_allow_html=True,
    )
    main, side = area.columns([3, 2], gap="large")
    with main:
        common.transcript_block(card)
        common.media_block(card)
        _context(around, list(heads))
    with side:
        _labels(row, card, classes)
    with area:
        _buttons(row, classes)
    n = min(len(classes), len(DIGITS))
    st.caption(
        f"Keys: **K** keep the gold label · **R** relabel to the suggested class · "
        f"**1–{n}** relabel to that {row['head']} class · **S** skip to the end · **U** undo "
        "(the old label returns). Every change keeps the old label in the decision log."
    )
    _history(hist)


def issues_view(project: dict[str, Any], user: dict[str, Any]) -> None:
    """The gold-label issue queue of the project's open check round (and, for admins, the check
    job's button)."""
    store = common.store()
    if common.is_admin(user):
        check_ui(project, user)
    common.show_flash(key="li_page_flash")
    rid = label_check.active_round(store, project_id=project["id"])
    if rid is None:
        st.info(
            "No gold-label check yet: an admin runs one here (Check gold labels) or with "
            "`meiju label-issues`; its flags open as this queue."
        )
        return
    if S.get("li_round") != rid:
        S.pop("li_card", None)
        S["li_skipped"] = []
    issue_panel(rid, project["heads"])
