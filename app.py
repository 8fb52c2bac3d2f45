"""MEIJU Review: the Streamlit entry point, a router and a frame.

``streamlit run app.py`` (or ``meiju run``). Everything reads its settings from ``MEIJU_*``
environment variables (``meiju_core.settings``). Until someone signs in, only the login form is
routed; after that ``st.navigation`` serves the five pages in ``pages/`` and the sidebar shows who
is signed in, the project and the current model version with its validation joint score.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from db import queries as q
from meiju_core.errors import SignInThrottled
from meiju_core.services import auth, users
from pages import _common as common
from pages import _session

# a local favicon: a material icon as favicon is fetched from a remote font server
FAVICON = str(Path(__file__).resolve().parent / "docs" / "favicon.png")
st.set_page_config(page_title="MEIJU Review", page_icon=FAVICON, layout="wide")
st.html(common.CSS)


def login_page() -> None:
    """Name + password, checked against the store (argon2 hashes, with back-off)."""
    if st.session_state.pop("signed_out", False):
        _session.clear_cookie()
    _, mid, _ = st.columns([1, 1.2, 1])
    with mid:
        st.title("MEIJU Review")
        st.caption("Review pseudo-labels, fix transcripts, retrain. Sign in to start.")
        with st.form("login", border=True):
            name = st.text_input("Name", key="login_name", autocomplete="username")
            password = st.text_input(
                "Password", type="password", key="login_password", autocomplete="current-password"
            )
            submitted = st.form_submit_button("Sign in", type="primary", width="stretch")
        if submitted:
            store = common.store()
            try:
                found = users.authenticate(
                    store, name=name.strip(), password=password, address=_session.address()
                )
            except SignInThrottled as e:
                st.error(f"Too many failed sign-ins: try again in {int(e.retry_after_s) + 1} s.")
                return
            if found is None:
                st.error("Wrong name or password.")
            else:
                key = auth.secret_key(common.settings().data_dir)
                st.session_state["session_token"] = auth.start_session(
                    store, key=key, user_id=found["id"], address=_session.address()
                )
                st.session_state["user"] = found
                st.rerun()


def logout() -> None:
    """Sign out: the session ends in the store (its cookie stops working) and is cleared."""
    token = st.session_state.get("session_token") or _session.cookie_token()
    auth.end_session(common.store(), key=auth.secret_key(common.settings().data_dir), token=token)
    for key in list(st.session_state):
        del st.session_state[key]
    st.session_state["signed_out"] = True


def resume() -> dict | None:
    """The user of this browser's session cookie (a reload or a pasted link), if still valid."""
    token = _session.cookie_token()
    if not token or st.session_state.get("signed_out"):
        return None
    found = auth.resume_session(
        common.store(), key=auth.secret_key(common.settings().data_dir), token=token
    )
    if found is not None:
        st.session_state["user"], st.session_state["session_token"] = found, token
    return found


def sidebar(user: dict) -> None:
    """Who is signed in, the project, the current model version and its validation score."""
    with st.sidebar:
        who = st.container(horizontal=True, vertical_alignment="center")
        who.markdown(f"**{user['name']}** · {user['role']}")
        who.button("Sign out", key="logout", on_click=logout, type="tertiary")
        project = common.find_project()
        if project is None:
            return  # the page says why
        with common.store().read() as s:
            mv = q.current_model(s, project_id=project["id"])
            model = None
            if mv is not None:
                joint = (mv.metrics or {}).get("valid", {}).get("joint")
                model = {"id": mv.id, "name": mv.name, "status": mv.status, "joint": joint}
        st.caption(f"Project **{project['name']}**")
        if model is None:
            st.caption("No model version yet")
        else:
            st.caption(
                f"Model **{model['name']}** (#{model['id']}, {model['status']})  \n"
                f"valid joint {common.fmt_score(model['joint'])}"
            )


user = common.user() or resume()
if user is None:
    st.navigation([st.Page(login_page, title="Sign in", url_path="login")], position="hidden").run()
else:
    if st.session_state.get("session_token"):
        with st.sidebar:
            _session.keep_cookie(st.session_state["session_token"])
    sidebar(user)
    pages = [
        st.Page("pages/review.py", title="Review", icon=":material/task_alt:", default=True),
        st.Page("pages/transcripts.py", title="Transcripts", icon=":material/edit_note:"),
        st.Page("pages/training.py", title="Training", icon=":material/model_training:"),
        st.Page("pages/dashboard.py", title="Dashboard", icon=":material/monitoring:"),
        # every role: admins import and export, annotators only export (pages/data.py)
        st.Page("pages/data.py", title="Data", icon=":material/database:"),
    ]
    st.navigation(pages).run()
