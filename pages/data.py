"""Data: import utterances and export labels, decisions and edits from the browser, as jobs.

Nothing heavy runs in the app process: each button writes an ``import`` or ``export`` job
(``meiju_core.services.jobs.submit``) that the worker (``meiju worker``) runs; this page follows the job
rows (a fragment polls them every two seconds while one is queued or running) and offers each
finished export's files with ``st.download_button``.

- **Import** (admins only; annotators do not see the form, and the job checks the role again):
  a CSV uploaded here (``meiju_core.io.tables.import_csv`` into the active project; the file is
  kept under ``<data_dir>/uploads``) or a MEIJU release folder on the server
  (``meiju_core.io.meiju.import_release``, into a new project). Both are all or nothing. A CSV
  import then extracts features and predicts the new utterances with the current model (one job,
  with progress), and its result says how many new cards the Review queue got.
- **Export** (everyone): ``submission.csv`` of a model version, labels with provenance (gold and
  accepted pseudo-labels: source, model version, confidence, round, reviewer), the decision log
  and the transcript edits (``meiju_core.io.export``), written under ``<data_dir>/exports/job<id>``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import streamlit as st

from db import analytics as A
from db import queries as q
from db import views
from meiju_core.errors import MeijuError
from meiju_core.io.export import EXPORTS, FILE_NAMES
from meiju_core.services import jobs, users
from pages import _common as common

KINDS = ("import", "export")
TERMINAL = ("succeeded", "failed", "cancelled")
EXPORT_LABELS = {
    "submission": "submission.csv (predictions of one model version)",
    "labels": "Labels with provenance (gold + accepted pseudo-labels)",
    "decisions": "Decision log",
    "transcript_edits": "Transcript edits",
}
SPLIT_CHOICES = ["from the file", "train", "valid", "test", "pool"]
STATUS_ICON = {
    "queued": ":material/schedule:",
    "running": ":material/sync:",
    "succeeded": ":material/check_circle:",
    "failed": ":material/error:",
    "cancelled": ":material/cancel:",
}


def _submit(kind: str, params: dict[str, Any], project_id: int | None, user: dict) -> None:
    try:
        if kind == "import":
            users.require_admin(user, "import data")
        job_id = jobs.submit(
            common.store(),
            common.settings(),
            kind=kind,
            params=params,
            project_id=project_id,
            user=user,
        )
    except MeijuError as e:
        common.flash("error", str(e), key="dt_flash")
        return
    common.flash(
        "success",
        f"{kind.capitalize()} queued as job #{job_id}; it runs in the background.",
        key="dt_flash",
    )


def save_upload(name: str, data: bytes, settings) -> Path:
    """Keep an uploaded file under ``<data_dir>/uploads`` with a time stamp and a safe name."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).name).strip("._") or "upload.csv"
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    path = settings.data_dir / "uploads" / f"{stamp}_{safe}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def import_ui(project: dict[str, Any], user: dict) -> None:
    st.subheader("Import")
    csv_tab, release_tab = st.tabs(["CSV file", "MEIJU release folder"])
    with csv_tab:
        st.caption(
            f"Utterances into **{project['name']}**: an id column (utt_id, FileName, ...), "
            "optional text, split and one column per head. All rows or none."
        )
        upload = st.file_uploader("CSV file", type=["csv", "tsv", "txt"], key="dt_csv")
        split = st.selectbox("Split of rows without one", SPLIT_CHOICES, key="dt_csv_split")
        if st.button(
            "Import CSV", key="dt_import_csv", icon=":material/upload:", disabled=upload is None
        ):
            path = save_upload(upload.name, upload.getvalue(), common.settings())
            params = {"source": "csv", "path": str(path)}
            if split != SPLIT_CHOICES[0]:
                params["default_split"] = split
            _submit("import", params, project["id"], user)
            st.rerun()
    with release_tab:
        st.caption(
            "A folder on the server holding `Track1/<Lang>` (or that folder itself), imported "
            "into a new project with its train, valid, pool and test samples."
        )
        folder = st.text_input("Release folder", key="dt_release_path").strip()
        row = st.container(horizontal=True, vertical_alignment="bottom")
        name = row.text_input("New project name", key="dt_release_project").strip()
        lang = row.selectbox("Language", ["Mandarin", "English"], key="dt_release_lang")
        probe = st.checkbox("Read each media file's duration", value=True, key="dt_release_probe")
        if st.button(
            "Import release",
            key="dt_import_release",
            icon=":material/drive_folder_upload:",
            disabled=not (folder and name),
        ):
            if not Path(folder).is_dir():
                common.flash("error", f"No folder {folder!r} on the server.", key="dt_flash")
            else:
                params = {
                    "source": "release",
                    "path": folder,
                    "project_name": name,
                    "lang": lang,
                    "probe_media": probe,
                }
                _submit("import", params, None, user)
            st.rerun()


def export_ui(project: dict[str, Any], user: dict) -> None:
    st.subheader("Export")
    store = common.store()
    what = st.multiselect(
        "Files",
        list(EXPORTS),
        default=list(EXPORTS),
        format_func=EXPORT_LABELS.get,
        key="dt_what",
    )
    versions = common.model_versions(store, project_id=project["id"])
    with store.read() as s:
        rounds = A.rounds(s, project_id=project["id"])
        current = q.current_model(s, project_id=project["id"])
    row = st.container(horizontal=True, vertical_alignment="bottom")
    mv_id, split = None, "test"
    if "submission" in what:
        ids = [v["id"] for v in versions]
        names = {v["id"]: f"#{v['id']} {v['name']} ({v['status']})" for v in versions}
        if ids:
            mv_id = row.selectbox(
                "Model version",
                ids,
                index=ids.index(current.id) if current and current.id in ids else 0,
                format_func=names.get,
                key="dt_mv",
            )
        split = row.selectbox("Submission split", ["test", "valid"], key="dt_split")
    round_ids = [None] + [r["id"] for r in rounds]
    round_id = row.selectbox(
        "Pseudo-labels and decisions of",
        round_ids,
        format_func=lambda i: "every round" if i is None else f"round #{i}",
        key="dt_round",
    )
    missing_model = "submission" in what and mv_id is None
    if missing_model:
        st.caption("No model version yet: submission.csv needs one.")
    if st.button(
        "Export",
        key="dt_export",
        type="primary",
        icon=":material/download:",
        disabled=not what or missing_model,
    ):
        params = {"what": list(what), "split": split, "round_id": round_id}
        if mv_id is not None:
            params["model_version_id"] = mv_id
        _submit("export", params, project["id"], user)
        st.rerun()


def _jobs(project_id: int) -> list[dict[str, Any]]:
    store = common.store()
    with store.read() as s:
        ids = views.recent_job_ids(s, kinds=list(KINDS), project_id=project_id)
    return [common.job(store, job_id=i) for i in ids]


def job_panel(job: dict[str, Any]) -> None:
    status = job["status"]
    when = (
        f"finished {common.ago(job['finished_at'])}"
        if job["finished_at"]
        else f"queued {common.ago(job['created_at'])}"
    )
    st.markdown(
        f"{STATUS_ICON.get(status, '')} **Job #{job['id']}** · {job['kind']} · **{status}** · {when}"
    )
    if status not in TERMINAL:
        message = job["detail"].get("message") or status
        st.progress(min(1.0, max(0.0, job["progress"])), text=message)
    if job["error"]:
        st.error(job["error"])
    result = job["result"] or {}
    if job["kind"] == "export" and status == "succeeded":
        row = st.container(horizontal=True)
        for name, info in (result.get("files") or {}).items():
            path = Path(info["path"])
            if not path.is_file():
                row.caption(f"{path.name} is gone")
                continue
            row.download_button(
                f"{FILE_NAMES.get(name, path.name)} ({info['rows']} rows)",
                data=path.read_bytes,
                file_name=path.name,
                mime="text/csv",
                key=f"dt_dl_{job['id']}_{name}",
                icon=":material/download:",
                on_click="ignore",
            )
    elif job["kind"] == "import" and status == "succeeded":
        splits = result.get("splits") or {}
        st.caption(
            f"{result.get('samples', sum(splits.values()))} samples "
            f"({', '.join(f'{k} {v}' for k, v in splits.items())}), "
            f"{result.get('transcripts', 0)} transcripts"
        )
        prepared = result.get("prepared") or {}
        if prepared.get("new_cards") is not None:
            st.success(
                f"**{prepared['new_cards']}** new cards in the Review queue "
                f"({prepared.get('queue_cards')} open in all).",
                icon=":material/playlist_add_check:",
            )
            if prepared["new_cards"] and result.get("new_sample_ids"):
                st.page_link(
                    "pages/review.py",
                    label="Review the new cards",
                    icon=":material/rate_review:",
                    query_params={"samples": ",".join(map(str, result["new_sample_ids"]))},
                )
        if prepared.get("note"):
            st.info(prepared["note"])


def jobs_ui(project_id: int) -> None:
    st.subheader("Jobs")
    active = any(j["status"] not in TERMINAL for j in _jobs(project_id))

    @st.fragment(run_every="2s" if active else None)
    def panel() -> None:
        found = _jobs(project_id)
        if not found:
            st.caption("No import or export yet.")
            return
        for job in found:
            with st.container(border=True):
                job_panel(job)
        if active and all(j["status"] in TERMINAL for j in found):
            st.rerun()  # the last one finished: stop polling

    panel()


def main() -> None:
    user, project = common.require_user(), common.project()
    st.title("Data")
    common.show_flash(key="dt_flash")
    if common.is_admin(user):
        import_ui(project, user)
    else:
        st.caption("Imports are for admins; exports are open to everyone.")
    export_ui(project, user)
    jobs_ui(project["id"])


main()
