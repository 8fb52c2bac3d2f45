"""The demo project, built from real data end to end (import, playable media, features, stage 1,
the first review round), and the threshold it opens its first round at.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select

from db import Store, rows
from db import queries as q
from db.models import Project, Sample
from meiju_core.errors import StoreError
from meiju_core.services import extraction, projects, rounds, training, users
from meiju_core.services.projects import Progress, no_progress
from meiju_core.settings import Settings


def build_demo(
    store: Store,
    settings: Settings,
    *,
    admin_password: str = "meiju-demo",
    epochs: int | None = None,
    progress: Progress = no_progress,
) -> dict[str, Any]:
    """Build the demo project from real data end to end: import CPED + GRID + Mandarin speech,
    extract builtin features, train stage 1, predict, open the first review round. Idempotent:
    each step is skipped when its result is already stored."""
    from meiju_core.io.cped import build_demo as import_demo

    users.add_user(store, name="admin", role="admin", password=admin_password)
    summary = import_demo(store, project_name=settings.project, seed=settings.seed)
    info = projects.project_info(store, name=settings.project)
    if info is None:
        raise StoreError(f"project {settings.project!r} does not exist after the demo import")
    pid = info["id"]
    with store.write() as s:  # train the demo on the short schedule: stage 1 in about a minute
        project = rows.get(s, Project, pid)
        project.settings = {"preset": "fast", **(project.settings or {})}
    make_media_playable(store, settings, project_id=pid)
    progress({"progress": 0.1, "message": "extracting features"})
    extraction.extract_features(store, settings, project_id=pid)
    with store.read() as s:
        mv = q.current_model(s, project_id=pid)
    if mv is None:
        progress({"progress": 0.3, "message": "training stage 1"})
        mv_id = training.train(
            store, settings, project_id=pid, stage=1, epochs=epochs, progress=progress
        )
        with store.write() as s:
            q.promote(s, model_version_id=mv_id)
    else:
        mv_id = mv.id
    with store.read() as s:
        rnd = q.active_round(s, project_id=pid)
    if rnd is None:
        rounds.open_round(
            store,
            settings,
            project_id=pid,
            model_version_id=mv_id,
            thresholds=demo_threshold(store, mv_id),
        )
    return {"project_id": pid, "model_version_id": mv_id, **summary}


BROWSER_VIDEO = (".mp4", ".webm")


def make_media_playable(store: Store, settings: Settings, *, project_id: int) -> int:
    """Give every video a browser can't play (e.g. MPEG-1 ``.mpg``) an H.264/AAC MP4 copy under
    ``<data_dir>/media`` and point the sample at it, so the review card can show it. Features are
    extracted from the same copy. Returns the number of clips transcoded; a clip that cannot be
    decoded is left as it is (its features will be marked missing)."""
    from meiju_core.errors import MediaError
    from meiju_core.ml.media import transcode_mp4

    with store.read() as s:
        clips = s.execute(
            select(Sample.id, Sample.utt_id, Sample.video_path).where(
                Sample.project_id == project_id, Sample.video_path.is_not(None)
            )
        ).all()
    done = {}
    for sid, utt, path in clips:
        if path is None:  # excluded by the query; this narrows the type
            continue
        if Path(path).suffix.lower() in BROWSER_VIDEO:
            continue
        try:
            done[sid] = str(transcode_mp4(path, settings.data_dir / "media" / f"{utt}.mp4"))
        except MediaError:
            continue
    if done:
        with store.write() as s:
            for sid, path in done.items():
                rows.get(s, Sample, sid).video_path = path
    return len(done)


DEMO_THRESHOLDS = (0.99, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5)


def demo_threshold(
    store: Store, model_version_id: int, *, min_candidates: int = 200
) -> dict[str, float]:
    """Per head, the paper's 0.99 when the model reaches it on at least ``min_candidates`` pool
    samples, else the highest of 0.95 / 0.9 / 0.8 / 0.7 / 0.6 / 0.5 that does, else 0.5 (a model
    trained on few labels rarely reaches 0.99, and its heads differ: the demo's intent head is
    far more confident than its emotion head). Returns {head: threshold}."""
    with store.read() as s:
        counts = rounds.candidate_counts_session(s, model_version_id, list(DEMO_THRESHOLDS))
    return {
        head: next((t for t in DEMO_THRESHOLDS if per[t] >= min_candidates), 0.5)
        for head, per in counts.items()
    }
