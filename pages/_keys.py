"""Review keys that are never lost and never go dead.

Streamlit's ``st.button(shortcut=...)`` sends a click per key press, but clicks of the same
button that arrive while a rerun is pending are folded into one (five quick presses made four
decisions), a press that reaches the server after the card changed was bound to the old card,
and a key pressed while a toggle or the media player had focus never reached the buttons.

This component listens on the page's ``document`` in the capture phase, so a key works whatever
control has focus (only typing in a text box, a select or an IME composition is left alone).
Every press gets a sequence number and the component sends the whole recent list
(``{"nonce", "events": [[seq, key, card], ...]}``) as one state value: when the server folds
several updates into one, the newest still holds every press, and :func:`new_events` returns
those not handled yet, in order. After a click on a control inside the card (the words toggle,
the player, a button) focus leaves that control, so the page reads keys at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import streamlit as st

_JS = r"""
export default function (component) {
  const { setStateValue, data } = component;
  const w = window;
  let st = w.__meijuKeys;
  if (!st) {
    st = w.__meijuKeys = {
      seq: 0, events: [], keys: [], send: null,
      nonce: Math.random().toString(36).slice(2) + Date.now().toString(36),
    };
    const typing = (t) => !!t && (t.isContentEditable || t.tagName === "TEXTAREA" ||
      t.tagName === "SELECT" || (t.getAttribute && t.getAttribute("role") === "combobox") ||
      (t.tagName === "INPUT" &&
        !["checkbox", "radio", "range", "button", "submit"].includes(t.type)));
    document.addEventListener("keydown", (e) => {
      if (e.ctrlKey || e.metaKey || e.altKey || e.isComposing || e.repeat) return;
      if (typing(e.target) || !st.send) return;
      // only on the Review page (the listener outlives it in the single-page app): another
      // page's own shortcuts (the editor's A, S, N and digits) are left alone
      if (!document.querySelector("[class*='st-key-rv_buttons']")) return;
      const k = e.key && e.key.length === 1 ? e.key.toUpperCase() : "";
      if (!st.keys.includes(k)) return;
      e.preventDefault();
      e.stopImmediatePropagation();
      const el = document.querySelector(".meiju-transcript");
      st.seq += 1;
      st.events.push([st.seq, k, el ? (el.dataset.sample || "") : ""]);
      st.events = st.events.slice(-64);
      st.send("keys", { nonce: st.nonce, events: st.events.slice() });
    }, true);
    const area = (t) => t && t.closest && t.closest("[class*='st-key-rv_card_area']");
    const refocus = (e) => {
      if (!area(e.target) || typing(e.target)) return;
      setTimeout(() => {
        const a = document.activeElement;
        if (a && a !== document.body && !typing(a)) a.blur();
      }, 0);
    };
    for (const kind of ["click", "change", "play", "pause", "seeked", "volumechange"]) {
      document.addEventListener(kind, refocus, true);
    }
  }
  st.send = setStateValue;
  st.keys = (data && data.keys) || [];
}
"""

_component = st.components.v2.component("meiju_review_keys", js=_JS)


def key_listener(keys: list[str], *, key: str, on_keys: Callable[[], None]) -> Any:
    """Mount the listener for ``keys`` (single upper-case characters); ``on_keys`` runs before
    the (fragment) rerun that a press triggers. Returns the component's state."""
    return _component(key=key, data={"keys": keys}, on_keys_change=on_keys, height=0)


def new_events(state: Any, handled: dict[str, int]) -> list[tuple[str, int | None]]:
    """The presses in ``state`` (the component's value) not handled yet, oldest first, as
    (key, sample id shown when pressed); updates ``handled`` ({nonce: last sequence number})."""
    value = state.get("keys") if hasattr(state, "get") else None
    if not isinstance(value, dict):
        return []
    nonce, events = str(value.get("nonce", "")), value.get("events") or []
    last = handled.get(nonce, 0)
    out = []
    for event in events:
        try:
            seq, k, card = int(event[0]), str(event[1]), str(event[2])
        except (TypeError, ValueError, IndexError):
            continue
        if seq <= last:
            continue
        last = seq
        out.append((k, int(card) if card.isdigit() else None))
    handled.clear()
    handled[nonce] = last
    return out
