"""A character diff that follows the transcript box while the user types.

A Streamlit text area sends its value only when it loses focus (or on Ctrl+Enter), so a diff
drawn by the script is one edit behind. This component finds the text area by its widget key
(``.st-key-<key> textarea``), listens to its ``input`` events and draws the diff of the saved
text against what is in the box right now, in the page (deletions struck through in red,
insertions in green; the same look as ``pages/transcripts.diff_html``). Text is only ever set
with ``textContent``: nothing typed is parsed as HTML.
"""

from __future__ import annotations

import streamlit as st

_CSS = """
.live { font-size: 1.5rem; line-height: 1.6; font-family: "Noto Sans CJK SC", "WenQuanYi Micro Hei",
        sans-serif; white-space: pre-wrap; }
.live del { background: #ffd7d5; color: #a0111f; text-decoration: line-through; }
.live ins { background: #d3f5d9; color: #116329; text-decoration: none; }
.live .same { color: inherit; }
.label { font-weight: 600; margin-bottom: 0.2rem; }
.none { color: #888; font-style: italic; font-size: 1rem; }
"""

_JS = r"""
function diff(a, b) {
  let p = 0;
  while (p < a.length && p < b.length && a[p] === b[p]) p++;
  let s = 0;
  while (s < a.length - p && s < b.length - p && a[a.length - 1 - s] === b[b.length - 1 - s]) s++;
  const x = Array.from(a.slice(p, a.length - s)), y = Array.from(b.slice(p, b.length - s));
  const ops = [];
  if (p) ops.push(["=", a.slice(0, p)]);
  if (x.length * y.length > 400000) {  // too long to align: one replacement
    if (x.length) ops.push(["-", x.join("")]);
    if (y.length) ops.push(["+", y.join("")]);
  } else {
    const n = x.length, m = y.length;
    const L = Array.from({ length: n + 1 }, () => new Uint16Array(m + 1));
    for (let i = n - 1; i >= 0; i--)
      for (let j = m - 1; j >= 0; j--)
        L[i][j] = x[i] === y[j] ? L[i + 1][j + 1] + 1 : Math.max(L[i + 1][j], L[i][j + 1]);
    let i = 0, j = 0;
    const push = (op, ch) => {
      const last = ops[ops.length - 1];
      if (last && last[0] === op) last[1] += ch; else ops.push([op, ch]);
    };
    while (i < n || j < m) {
      if (i < n && j < m && x[i] === y[j]) { push("=", x[i]); i++; j++; }
      else if (j < m && (i === n || L[i][j + 1] >= L[i + 1][j])) { push("+", y[j]); j++; }
      else { push("-", x[i]); i++; }
    }
  }
  if (s) ops.push(["=", a.slice(a.length - s)]);
  return ops;
}

export default function (component) {
  const { data, parentElement } = component;
  let box = parentElement.querySelector(".meiju-live");
  if (!box) {
    box = document.createElement("div");
    box.className = "meiju-live";
    parentElement.appendChild(box);
  }
  const draw = (current) => {
    box.replaceChildren();
    if (current === data.base) return;
    const label = document.createElement("div");
    label.className = "label";
    label.textContent = data.label;
    const out = document.createElement("div");
    out.className = "live";
    for (const [op, t] of diff(data.base, current)) {
      const el = document.createElement(op === "=" ? "span" : op === "-" ? "del" : "ins");
      if (op === "=") el.className = "same";
      el.textContent = t;
      out.appendChild(el);
    }
    box.append(label, out);
  };
  const attach = () => {
    const area = document.querySelector(`.st-key-${data.key} textarea`);
    if (!area) { setTimeout(attach, 100); return; }
    if (area.__meijuLive) area.removeEventListener("input", area.__meijuLive);
    area.__meijuLive = () => draw(area.value);
    area.addEventListener("input", area.__meijuLive);
    draw(area.value);
  };
  draw(data.text);
  attach();
}
"""

_component = st.components.v2.component("meiju_live_diff", js=_JS, css=_CSS)


def live_diff(*, widget_key: str, base: str, current: str, label: str) -> None:
    """Draw the diff of ``base`` against the text area ``widget_key`` as the user types (it
    starts from ``current``, the value the script has)."""
    _component(
        key=f"live_diff_{widget_key}",
        data={"key": widget_key, "base": base, "text": current, "label": label},
    )
