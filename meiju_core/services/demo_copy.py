"""Copy an already built demo data folder so that the copy stands on its own.

A data folder that ``meiju demo`` built holds the SQLite store (``meiju.db``) and the folders it
names by absolute path: ``media`` (videos, audio), ``features`` and ``checkpoints``. The browser
tests, the review-latency benchmark and the screenshot script reuse one build by copying it;
:func:`copy_built_demo` copies those entries and rewrites every path column of the copy's store
that points into the source so it points into the copy (the source is never written).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from db import Store
from db.models import FeatureFile, FeatureSet, ModelVersion, Sample
from meiju_core.ml.features.media_pool import media_key

# what a built demo folder holds (the store and the folders its paths point into)
DEMO_ENTRIES = ("meiju.db", "features", "media", "checkpoints")

# every column of the store that holds a file or folder path: (table's model, column)
PATH_COLUMNS: tuple[tuple[Any, str], ...] = (
    (Sample, "video_path"),
    (Sample, "audio_path"),
    (FeatureSet, "path"),
    (FeatureFile, "path"),
    (ModelVersion, "checkpoint_path"),
)


def copy_built_demo(src: Path, dst: Path) -> Path:
    """Copy the built demo data folder ``src`` into ``dst`` and point the copy's stored paths
    into ``dst``; returns ``dst`` (the copy's data dir, its store at ``dst / "meiju.db"``).

    The entries of :data:`DEMO_ENTRIES` that ``src`` has are copied (``dst`` may exist but must
    not hold them); the copy's store is migrated to the newest schema, then every path of
    :data:`PATH_COLUMNS` under ``src`` (as given or resolved) is rewritten under ``dst``.

    Raises:
        FileNotFoundError: ``src`` has no ``meiju.db``.
        FileExistsError: ``dst`` already holds one of the entries.
    """
    src, dst = Path(src), Path(dst)
    if not (src / "meiju.db").is_file():
        raise FileNotFoundError(f"no built demo in {src}: {src / 'meiju.db'} is missing")
    dst.mkdir(parents=True, exist_ok=True)
    for name in DEMO_ENTRIES:
        if (src / name).is_dir():
            shutil.copytree(src / name, dst / name)
        elif (src / name).exists():
            if (dst / name).exists():
                raise FileExistsError(f"{dst / name} exists already")
            shutil.copy2(src / name, dst / name)
    store = Store(f"sqlite:///{dst / 'meiju.db'}")
    try:
        store.upgrade()
        with store.write() as s:
            for model, name in PATH_COLUMNS:
                col = getattr(model, name)
                rows = s.execute(select(model.id, col).where(col.is_not(None))).all()
                moved = [
                    {"id": row_id, name: new}
                    for row_id, old in rows
                    if (new := _moved(old, src, dst)) is not None
                ]
                if moved:  # ORM bulk UPDATE by primary key
                    s.execute(update(model), moved)
            _move_checkpoint_configs(s, src, dst)
            _refresh_media_keys(s, src, dst)
    finally:
        store.dispose()
    return dst


def _moved(path: str, src: Path, dst: Path) -> str | None:
    """``path`` with its ``src`` prefix (as given or resolved) replaced by ``dst``, or None
    when it does not lie under ``src``; raises none."""
    for prefix in dict.fromkeys((str(src), str(src.resolve()))):
        if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
            return str(dst) + path[len(prefix.rstrip("/")) :]
    return None


def _move_checkpoint_configs(s: Session, src: Path, dst: Path) -> None:
    """Point each model version's ``config["checkpoints"]`` ({head: path}, what predict loads)
    into the copy, as :data:`PATH_COLUMNS` does for ``checkpoint_path``."""
    for mv in s.scalars(select(ModelVersion)):
        heads = (mv.config or {}).get("checkpoints")
        if not isinstance(heads, dict):
            continue
        moved = {h: _moved(str(p), src, dst) or p for h, p in heads.items()}
        if moved != heads:
            mv.config = {**mv.config, "checkpoints": moved}


def _refresh_media_keys(s: Session, src: Path, dst: Path) -> None:
    """Keep the copy's audio and visual features up to date: their ``content_hash`` names the
    media paths (:func:`~meiju_core.ml.features.media_pool.media_key`), which the copy rewrote.
    A row whose hash matched the source's media is given the copy's hash; a stale one stays
    stale, so the next extraction redoes exactly what it would have redone in the source."""
    rows = s.execute(
        select(FeatureFile, Sample.video_path, Sample.audio_path)
        .join(Sample, Sample.id == FeatureFile.sample_id)
        .where(FeatureFile.modality.in_(("audio", "visual")))
    ).all()
    for ff, video, audio in rows:
        old_video = _source_path(video, src, dst)
        old_audio = _source_path(audio, src, dst)
        if (old_video, old_audio) == (video, audio):
            continue  # media outside the data folder: the key did not change
        if ff.content_hash == media_key(old_video, old_audio):
            ff.content_hash = media_key(video, audio)


def _source_path(path: str | None, src: Path, dst: Path) -> str | None:
    """The source path a copied ``path`` came from (``path`` itself when it is not under
    ``dst``)."""
    if path is None:
        return None
    back = _moved(path, dst, src)
    return back if back is not None else path
