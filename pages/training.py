"""Training: retrain (admins), follow the job live, compare model versions, promote one.

A retrain is a ``train`` job (stage 2: gold + the accepted pseudo-labels of the open round) written
by ``jobs.submit``; the worker runs it in its own process. This page only reads the job row: a
fragment polls it every two seconds while a job is queued or running, and reruns the whole page
when it finishes so the new model version appears in the table.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from db import views
from meiju_core.errors import MeijuError
from meiju_core.services import jobs, training
from pages import _common as common

TERMINAL = ("succeeded", "failed", "cancelled")
STATUS_ICON = {
    "queued": ":material/schedule:",
    "running": ":material/sync:",
    "succeeded": ":material/check_circle:",
    "failed": ":material/error:",
    "cancelled": ":material/cancel:",
}
S = st.session_state


def _latest_job_id(store, project_id: int) -> int | None:
    with store.read() as s:
        return views.train_job_id(s, project_id=project_id)


def retrain_ui(store, settings, project: dict[str, Any], user: dict[str, Any]) -> None:
    with store.read() as s:
        state = views.retrain_state(s, project_id=project["id"])
    busy, round_id, accepted = state["busy"], state["round_id"], state["accepted"]
    admin = common.is_admin(user)
    row = st.container(horizontal=True, vertical_alignment="center")
    clicked = row.button(
        "Retrain (stage 2)",
        key="tr_retrain",
        type="primary",
        icon=":material/model_training:",
        disabled=not admin or busy is not None,
        help=None if admin else "Only admins can retrain.",
    )
    if busy is not None:
        row.caption(f"Job #{busy['id']} is {busy['status']}; one retrain at a time.")
    elif round_id is None:
        row.caption("No open round: stage 2 trains on gold labels only.")
    else:
        row.caption(
            f"Gold train labels + **{accepted}** accepted pseudo-labels of round #{round_id}."
        )
    if clicked and admin:
        try:
            job_id = jobs.submit(
                store,
                settings,
                kind="train",
                params={"stage": 2, "round_id": round_id},
                project_id=project["id"],
                user=user,
            )
        except MeijuError as e:
            st.error(str(e))
            return
        common.flash("success", f"Retrain queued as job #{job_id}.", key="tr_flash")
        st.rerun()


def _cancel(job_id: int) -> None:
    try:
        jobs.cancel(common.store(), job_id=job_id, user=common.user())
    except MeijuError as e:
        common.flash("error", str(e), key="tr_flash")
        return
    common.flash("info", f"Cancel requested for job #{job_id}.", key="tr_flash")


def job_panel(job: dict[str, Any], *, admin: bool) -> None:
    """One job: status, progress, live figures, error, log tail, cancel."""
    status = job["status"]
    head = st.container(horizontal=True, vertical_alignment="center")
    head.markdown(
        f"{STATUS_ICON.get(status, '')} **Job #{job['id']}** · {job['kind']} · **{status}** · "
        f"queued {common.ago(job['created_at'])}"
        + (f" · heartbeat {common.ago(job['heartbeat_at'])}" if job["heartbeat_at"] else "")
    )
    if status not in TERMINAL and admin:
        head.button(
            "Cancel",
            key=f"tr_cancel_{job['id']}",
            icon=":material/stop_circle:",
            disabled=job["cancel_requested"],
            on_click=_cancel,
            args=(job["id"],),
        )
    detail = job["detail"]
    text = detail.get("message") or status
    if status == "running":
        text = f"running: {text}"
        eta = detail.get("eta_seconds")
        if isinstance(eta, (int, float)) and eta >= 0 and detail.get("epoch"):
            text += f" · about {_duration(eta)} left"
    st.progress(min(1.0, max(0.0, job["progress"])), text=text)
    figures = {}
    if "epoch" in detail:
        figures["epoch"] = f"{detail['epoch']} / {detail.get('epochs', '?')}"
    if "stage" in detail:
        figures["stage"] = str(detail["stage"])
    for key, value in detail.items():
        if _is_score(key) and _num(value) is not None:
            figures[key.replace("_", " ")] = _num(value)
    if figures:
        cols = st.columns(min(6, len(figures)))
        for k, (name, value) in enumerate(figures.items()):
            cols[k % len(cols)].metric(name, value)
    if job["error"]:
        st.error(job["error"])
    if job["result"]:
        st.caption(f"Result: {job['result']}")
    if job["log"]:
        tail = "\n".join(job["log"].splitlines()[-15:])
        st.code(tail, language=None)


def _duration(seconds: float) -> str:
    """``95`` -> ``"1 min 35 s"``; ``3700`` -> ``"1 h 2 min"``."""
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


def _is_score(key: str) -> bool:
    """Live figures worth a metric tile: loss, F1 and joint scores, learning rate."""
    return any(w in key for w in ("loss", "f1", "joint", "valid", "lr"))


def _num(x: Any) -> str | None:
    return f"{x:.4f}" if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def live_status(job_id: int | None, *, admin: bool) -> None:
    """The newest train job, polled every 2 s while it is queued or running."""
    store = common.store()
    job = common.job(store, job_id=job_id) if job_id else None
    active = job is not None and job["status"] not in TERMINAL

    @st.fragment(run_every="2s" if active else None)
    def panel() -> None:
        current = common.job(common.store(), job_id=job_id) if job_id else None
        if current is None:
            st.caption("No job yet.")
            return
        job_panel(current, admin=admin)
        if active and current["status"] in TERMINAL:
            st.rerun()  # the job finished: refresh the page (new model version, button state)

    panel()


def _system(v: dict[str, Any]) -> str:
    """The preset, or an ensemble's members per head ("ensemble: emotion #3 · intent #4, #5")."""
    members = v.get("members")
    if not members:
        return v.get("preset") or ""
    parts = [f"{h} " + ", ".join(f"#{m}" for m in ids) for h, ids in members.items()]
    return "ensemble: " + " · ".join(parts)


def versions_table(versions: list[dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for v in versions:
        m = v["metrics"]
        row = {
            "id": v["id"],
            "name": v["name"],
            "stage": v["stage"],
            "system": _system(v),
            "status": v["status"],
            "created": v["created_at"].strftime("%m-%d %H:%M") if v["created_at"] else "",
        }
        for split in ("valid", "test"):
            sm = m.get(split, {})
            row[f"{split} emo F1"] = sm.get("emotion_f1")
            row[f"{split} int F1"] = sm.get("intent_f1")
            row[f"{split} joint"] = sm.get("joint")
        row["train s"] = v["train_seconds"]
        snap = v["snapshot"]
        row["train samples"] = snap.get("n_samples")
        labels = snap.get("labels") or {}
        row["labels"] = ", ".join(f"{h} {sum(c.values())}" for h, c in labels.items())
        rows.append(row)
    return pd.DataFrame(rows)


def promote_ui(store, versions: list[dict[str, Any]], user: dict[str, Any]) -> None:
    choices = [v["id"] for v in versions if v["status"] != "promoted"]
    if not choices:
        return
    names = {v["id"]: f"#{v['id']} {v['name']}" for v in versions}
    row = st.container(horizontal=True, vertical_alignment="bottom")
    mv_id = row.selectbox(
        "Model version to promote", choices, format_func=names.get, key="tr_promote_pick"
    )
    if row.button("Promote", key="tr_promote", icon=":material/verified:"):
        try:
            training.promote(store, model_version_id=mv_id, user=user)
        except MeijuError as e:
            st.error(str(e))
            return
        common.flash("success", f"Model version #{mv_id} is now promoted.", key="tr_flash")
        st.rerun()


def main() -> None:
    user, store, settings = common.require_user(), common.store(), common.settings()
    project = common.project()
    admin = common.is_admin(user)
    st.title("Training")
    common.show_flash(key="tr_flash")
    retrain_ui(store, settings, project, user)
    st.subheader("Job")
    live_status(_latest_job_id(store, project["id"]), admin=admin)
    st.subheader("Model versions")
    versions = common.model_versions(store, project_id=project["id"])
    if not versions:
        st.info("No model version yet.")
        return
    table = versions_table(versions)
    config = {
        c: st.column_config.NumberColumn(format="%.4f")
        for c in table.columns
        if c.endswith("F1") or c.endswith("joint")
    }
    config["train s"] = st.column_config.NumberColumn(format="%.1f")
    st.dataframe(table, hide_index=True, width="stretch", column_config=config)
    st.caption("Scores come from `training.evaluate` on the valid and test splits.")
    if admin:
        promote_ui(store, versions, user)


main()
