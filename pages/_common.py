"""What every page shares: settings, the cached store, the signed-in user and the project.

The store is a process-wide singleton (``st.cache_resource`` keyed on the database URL): a
SQLAlchemy engine is thread-safe, a session is not, so pages open one short ``store.read()`` per
read and never keep a session or an ORM object in ``st.session_state`` (only ids and small UI
state live there); every write goes through a service (``meiju_core.services``), which opens its
own short write.

The read helpers open one short read session around a ``db.views`` query (model version list,
transcript search, transcript edits, one job); no page module holds SQL of its own.
"""

from __future__ import annotations

import functools
import html
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import streamlit as st

from db import Store, views
from meiju_core.errors import MeijuError
from meiju_core.services import projects
from meiju_core.settings import Settings, environment_key

T = TypeVar("T")

CSS = """
<style>
.meiju-transcript {
  font-family: "Noto Sans CJK SC", "Source Han Sans SC", "PingFang SC", "Microsoft YaHei",
               "WenQuanYi Micro Hei", sans-serif;
  font-size: 2.1rem; line-height: 1.55; font-weight: 500;
  padding: 0.6rem 0.9rem; margin: 0.2rem 0 0.6rem 0;
  border-left: 0.3rem solid #8a99ab; background: rgba(127, 127, 127, 0.07); border-radius: 0.3rem;
}
.meiju-transcript.empty { color: #999; font-size: 1.2rem; font-style: italic; }
.meiju-transcript.words { display: flex; flex-wrap: wrap; gap: 0.25rem 0.45rem; }
.meiju-word {
  border-bottom: 0.16rem solid rgba(61, 127, 217, 0.55); padding: 0 0.08rem; border-radius: 0.1rem;
}
.meiju-utt { font-family: ui-monospace, monospace; font-size: 0.95rem; }
.meiju-diff del { background: #ffd7d5; color: #a0111f; text-decoration: line-through; }
.meiju-diff ins { background: #d3f5d9; color: #116329; text-decoration: none; }
.meiju-diff { font-size: 1.5rem; line-height: 1.6; }
.stTextArea textarea { font-size: 1.45rem; line-height: 1.5; }
/* colour carries meaning on the review card: green accepts, red rejects */
.st-key-rv_accept button, .st-key-rv_accept_emotion button, .st-key-rv_accept_intent button {
  border-color: #2e7d32; color: #1b5e20;
}
.st-key-rv_accept button { background: #2e7d32; color: #fff; }
.st-key-rv_accept button:hover { background: #256b29; color: #fff; }
.st-key-rv_reject button { border-color: #c62828; color: #b71c1c; }
</style>
"""


# --------------------------------------------------------------------------- settings & store


def settings() -> Settings:
    """Settings from ``MEIJU_*`` environment variables, parsed and checked once per distinct
    environment (a page asks for them several times per key press)."""
    return _settings_for(environment_key())


@functools.lru_cache(maxsize=8)
def _settings_for(env: tuple[tuple[str, str], ...]) -> Settings:
    return Settings.load()  # reads the same environment ``env`` names


@st.cache_resource(show_spinner=False, on_release=lambda store: store.dispose())
def store_at(url: str) -> Store:
    """The store at ``url``, migrated once per process and shared by every session."""
    return projects.open_store(Settings.load(database_url=url))


def store() -> Store:
    """The project's store (``MEIJU_DATABASE_URL``, else the SQLite file in the data dir)."""
    return store_at(settings().database_url)


@st.cache_data(ttl=300, show_spinner=False)
def _project(url: str, name: str) -> dict[str, Any] | None:
    info = projects.project_info(store_at(url), name=name)
    if info is None:
        return None
    return {"id": info["id"], "name": info["name"], "heads": info["schema"].to_dict()}


def find_project() -> dict[str, Any] | None:
    """``{"id", "name", "heads": {head: [class, ...]}}`` of the active project, or None."""
    cfg = settings()
    info = _project(cfg.database_url, cfg.project)
    if info is None:
        _project.clear()  # do not remember a missing project: it may be imported any minute
    return info


def project() -> dict[str, Any]:
    """The active project (see :func:`find_project`); stops the page with a message when the
    project does not exist."""
    info = find_project()
    if info is None:
        cfg = settings()
        st.error(
            f"Project **{cfg.project}** does not exist yet. An admin can build the demo "
            "project (`make run` does) or point the app at another project."
        )
        st.stop()
    return info


# --------------------------------------------------------------------------- user


def user() -> dict[str, Any] | None:
    """The signed-in user as ``{"id", "name", "role"}``, or None."""
    return st.session_state.get("user")


def require_user() -> dict[str, Any]:
    u = user()
    if u is None:  # pages are only routed after login; this guards direct runs
        st.stop()
    return u


def is_admin(u: dict[str, Any] | None) -> bool:
    return bool(u) and u.get("role") == "admin"


def flash(kind: str, message: str, *, key: str = "flash") -> None:
    """Keep a message for the next run (``kind``: success, info, warning, error)."""
    st.session_state[key] = (kind, message)


def show_flash(*, key: str = "flash") -> None:
    """Show and forget the message kept by :func:`flash`."""
    item = st.session_state.pop(key, None)
    if item:
        kind, message = item
        getattr(st, kind)(message)


def flash_outcome(call: Callable[[], T], success: Callable[[T], str], *, key: str) -> T | None:
    """Run a button callback's service ``call`` and keep its outcome for the next run
    (:func:`flash` under ``key``): the MeijuError's message, returning None, or ``success`` of
    what it returned, returning that."""
    try:
        out = call()
    except MeijuError as e:
        flash("error", str(e), key=key)
        return None
    flash("success", success(out), key=key)
    return out


def held_lease(key: str, sample_id: int, seconds: float, take: Callable[[], bool]) -> bool:
    """Hold ``sample_id`` on screen for this session: ``take()`` takes or renews its lease in the
    store (a lease of ``seconds``), at most once per half lease; ``st.session_state[key]`` keeps
    the sample and when its lease was taken. Returns whether this session holds it."""
    held = st.session_state.get(key)
    if held and held[0] == sample_id and time.monotonic() - held[1] < seconds / 2:
        return True
    ok = take()
    st.session_state[key] = (sample_id, time.monotonic()) if ok else None
    return ok


# --------------------------------------------------------------------------- formatting


def ago(t: datetime | None) -> str:
    """``"12 s ago"``, ``"5 min ago"``, ``"3 h ago"`` or a date."""
    if t is None:
        return ""
    t = t if t.tzinfo else t.replace(tzinfo=UTC)
    s = (datetime.now(UTC) - t).total_seconds()
    if s < 60:
        return f"{max(0, int(s))} s ago"
    if s < 3600:
        return f"{int(s // 60)} min ago"
    if s < 86400:
        return f"{int(s // 3600)} h ago"
    return t.strftime("%Y-%m-%d %H:%M")


def fmt_score(x: Any) -> str:
    return f"{x:.4f}" if isinstance(x, (int, float)) else "–"


# --------------------------------------------------------------------------- reads
# Each opens one short read session and returns what a ``db.views`` query returns (plain dicts).


def model_versions(store_: Store, *, project_id: int) -> list[dict[str, Any]]:
    """Every model version of the project, newest first (``db.views.model_versions``)."""
    with store_.read() as s:
        return views.model_versions(s, project_id=project_id)


def search_transcripts(store_: Store, **kw: Any) -> tuple[list[dict[str, Any]], int]:
    """A page of matching transcripts and the total (``db.views.search_transcripts``)."""
    with store_.read() as s:
        return views.search_transcripts(s, **kw)


def transcript(store_: Store, *, sample_id: int) -> dict[str, Any] | None:
    """One sample's transcript with its media paths (``db.views.transcript``)."""
    with store_.read() as s:
        return views.transcript(s, sample_id=sample_id)


def transcript_edits(store_: Store, **kw: Any) -> list[dict[str, Any]]:
    """The latest saved edits, newest first (``db.views.transcript_edits``)."""
    with store_.read() as s:
        return views.transcript_edits(s, **kw)


def job(store_: Store, *, job_id: int) -> dict[str, Any] | None:
    """One job row as a plain dict (``db.views.job``)."""
    with store_.read() as s:
        return views.job(s, job_id=job_id)


# --------------------------------------------------------------------------- the card

BROWSER_VIDEO = {".mp4", ".m4v", ".webm", ".ogv", ".mov"}


def top3(probs: list[float], classes: list[str]) -> list[tuple[str, float]]:
    """The three most probable (class, probability) pairs, most probable first."""
    order = sorted(range(len(probs)), key=lambda k: -probs[k])[:3]
    return [(classes[k] if k < len(classes) else str(k), float(probs[k])) for k in order]


@functools.lru_cache(maxsize=512)
def _segment(text: str) -> tuple[str, ...]:
    from meiju_core.ml.text import segment

    return tuple(segment(text))


def transcript_block(card: Any, *, words: bool = False) -> None:
    """The card's transcript, large, in a ``div.meiju-transcript`` carrying ``data-utt`` and
    ``data-sample`` (the key listener and the browser tests read them); ``words``: segmented by
    jieba, one box per word. ``card`` is a ``db.queries.Card``.

    The text is plain text: escaped and drawn with ``st.html``, never through markdown, so a
    transcript holding markdown (an image link, say) shows as typed and fetches nothing."""
    utt, sid = html.escape(card.utt_id), int(card.sample_id)
    attrs = f"data-utt='{utt}' data-sample='{sid}'"
    if not card.text:
        st.html(f"<div class='meiju-transcript empty' {attrs}>(no transcript)</div>")
        return
    if words:
        body = "".join(
            f"<span class='meiju-word'>{html.escape(w)}</span>"
            for w in _segment(card.text)
            if w.strip()
        )
        cls = "meiju-transcript words"
    else:
        body, cls = html.escape(card.text), "meiju-transcript"
    st.html(f"<div class='{cls}' {attrs}>{body}</div>")


def media_block(card: Any) -> None:
    """The card's video (seeked to the utterance's start, in whole seconds) or audio player, or
    a note when the file is gone or the browser may not play its format."""
    start = int(card.start_s or 0)
    if card.video_path:
        path = Path(card.video_path)
        if not path.exists():
            st.caption("The video of this utterance is missing on the server.")
        else:
            st.video(str(path), start_time=start)
            if path.suffix.lower() not in BROWSER_VIDEO:
                st.caption(f"{path.suffix} video: the browser may not play it.")
    elif card.audio_path:
        if Path(card.audio_path).exists():
            st.audio(card.audio_path, start_time=start)
        else:
            st.caption("The audio of this utterance is missing on the server.")


def decision_line(
    text: str, d: dict[str, Any], *, prefix: str, k: int, on_undo: Callable[[int], None]
) -> None:
    """Line ``k`` of a page's "Last decisions": ``text`` (struck through once ``d["undone"]``)
    and an Undo button calling ``on_undo(d["decision_id"])``; widget keys ``<prefix>_h_<k>`` and
    ``<prefix>_undo_<k>``."""
    line = st.container(horizontal=True, vertical_alignment="center", key=f"{prefix}_h_{k}")
    line.markdown(f"~~{text}~~ (undone)" if d["undone"] else text, width="stretch")
    line.button(
        "Undo",
        key=f"{prefix}_undo_{k}",
        type="tertiary",
        disabled=d["undone"],
        on_click=on_undo,
        args=(d["decision_id"],),
    )
