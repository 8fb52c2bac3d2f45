"""The browser side of a session: the signed session cookie (``meiju_core.services.auth``).

Streamlit reads cookies (``st.context.cookies``) but cannot set them from Python, so a tiny
component sets or clears ``meiju_session`` in the page: ``SameSite=Strict``, ``Secure`` over
HTTPS, ``Path=/``, expiring with the session. The value is a signed, time-stamped session id,
checked against the store on every resume and ended by sign-out; nothing secret goes in a URL.
"""

from __future__ import annotations

import streamlit as st

from meiju_core.services import auth

_JS = r"""
export default function (component) {
  const { data } = component;
  if (!data || !data.name) return;
  const secure = window.location.protocol === "https:" ? "; Secure" : "";
  const base = `; Path=/; SameSite=Strict${secure}`;
  if (data.value) {
    document.cookie = `${data.name}=${data.value}; Max-Age=${data.max_age}${base}`;
  } else {
    document.cookie = `${data.name}=; Max-Age=0${base}`;
  }
}
"""

_cookie = st.components.v2.component("meiju_session_cookie", js=_JS)


def keep_cookie(token: str) -> None:
    """Set (or refresh) the session cookie in the browser."""
    _cookie(
        key="session_cookie",
        data={"name": auth.COOKIE_NAME, "value": token, "max_age": auth.SESSION_TTL_S},
        height=0,
    )


def clear_cookie() -> None:
    """Remove the session cookie from the browser."""
    _cookie(key="session_cookie_clear", data={"name": auth.COOKIE_NAME, "value": ""}, height=0)


def cookie_token() -> str | None:
    """The session cookie the browser sent with this page, if any."""
    try:
        token = st.context.cookies.get(auth.COOKIE_NAME)
    except Exception:  # no browser context (a bare run)
        return None
    return token if isinstance(token, str) else None


def address() -> str | None:
    """The client's address as the server saw it, for the sign-in back-off."""
    ip = getattr(st.context, "ip_address", None)
    return ip if isinstance(ip, str) else None
