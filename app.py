"""MEIJU Review: the Streamlit entry point, a router and a frame.

``streamlit run app.py`` (or ``meiju run``). Everything reads its settings from ``MEIJU_*``
environment variables (``meiju_core.settings``). Until someone signs in, only the login form is
routed; after that ``st.navigation`` serves the five pages in ``pages/`` and the sidebar shows who
is signed in, the project and the current model version with its validation joint score.
"""

from __future__ import annotations

import streamlit as st

from db import queries as q
from meiju_core import pipeline
from pages import _common as common

st.set_page_config(page_title="MEIJU Review", page_icon=":material/rate_review:", layout="wide")
st.html(common.CSS)


def login_page() -> None:
    """Name + password, checked against the store (argon2 hashes)."""
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
            found = pipeline.authenticate(common.store(), name=name.strip(), password=password)
            if found is None:
                st.error("Wrong name or password.")
            else:
                st.session_state["user"] = found
                st.rerun()


def logout() -> None:
    for key in list(st.session_state):
        del st.session_state[key]


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


user = common.user()
if user is None:
    st.navigation([st.Page(login_page, title="Sign in", url_path="login")], position="hidden").run()
else:
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
