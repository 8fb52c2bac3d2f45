"""``demo_copy.copy_built_demo``: a copy of a built data folder whose store points into the copy."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select, update

from db import Store
from db.fixtures import build_fixture
from db.models import FeatureFile, FeatureSet, ModelVersion, Sample
from meiju_core.services.demo_copy import copy_built_demo


def _paths(url: str) -> dict[str, list[str | None]]:
    """Every path the store holds, per column, in id order."""
    store = Store(url)
    try:
        with store.read() as s:
            return {
                "video": list(s.scalars(select(Sample.video_path).order_by(Sample.id))),
                "audio": list(s.scalars(select(Sample.audio_path).order_by(Sample.id))),
                "feature_set": list(s.scalars(select(FeatureSet.path).order_by(FeatureSet.id))),
                "feature_file": list(s.scalars(select(FeatureFile.path).order_by(FeatureFile.id))),
                "checkpoint": list(
                    s.scalars(select(ModelVersion.checkpoint_path).order_by(ModelVersion.id))
                ),
            }
    finally:
        store.dispose()


@pytest.fixture
def built(tmp_path) -> Path:
    """A small built data folder: a fixture store whose paths point into its media, features
    and checkpoints folders (one video outside the folder, one sample without media)."""
    src = tmp_path / "built"
    for name in ("media", "features", "checkpoints"):
        (src / name).mkdir(parents=True)
    (src / "media" / "a.mp4").write_bytes(b"video")
    (src / "media" / "a.wav").write_bytes(b"audio")
    (src / "features" / "a.npy").write_bytes(b"feat")
    (src / "checkpoints" / "best.pt").write_bytes(b"ckpt")
    store = Store(f"sqlite:///{src / 'meiju.db'}")
    store.upgrade()
    ids = build_fixture(store, n_pool=3, n_train=1, n_valid=1, n_test=1)
    with store.write() as s:
        first, second, third = s.scalars(select(Sample.id).order_by(Sample.id).limit(3))
        s.execute(
            update(Sample)
            .where(Sample.id == first)
            .values(video_path=str(src / "media" / "a.mp4"), audio_path=str(src / "media/a.wav"))
        )
        # a sibling folder whose name starts like the source's, and a sample without media
        s.execute(update(Sample).where(Sample.id == second).values(video_path=f"{src}_other/b.mp4"))
        s.execute(update(Sample).where(Sample.id == third).values(video_path=None))
        fs = FeatureSet(
            project_id=ids.project_id,
            name="builtin",
            extractor="builtin",
            path=str(src / "features"),
        )
        s.add(fs)
        s.flush()
        s.add(
            FeatureFile(
                feature_set_id=fs.id,
                sample_id=first,
                modality="video",
                path=str(src / "features" / "a.npy"),
                shape=[1, 1],
            )
        )
        s.execute(
            update(ModelVersion)
            .where(ModelVersion.id == ids.model_version_id)
            .values(checkpoint_path=str(src / "checkpoints" / "best.pt"))
        )
    store.dispose()
    return src


def test_the_copy_points_into_itself_and_the_source_is_untouched(built, tmp_path):
    before = _paths(f"sqlite:///{built / 'meiju.db'}")
    dst = tmp_path / "copy"

    assert copy_built_demo(built, dst) == dst

    copied = _paths(f"sqlite:///{dst / 'meiju.db'}")
    assert _paths(f"sqlite:///{built / 'meiju.db'}") == before
    assert copied["video"][:3] == [str(dst / "media" / "a.mp4"), f"{built}_other/b.mp4", None]
    assert copied["audio"][0] == str(dst / "media" / "a.wav")
    assert copied["feature_set"] == [str(dst / "features")]
    assert copied["feature_file"] == [str(dst / "features" / "a.npy")]
    assert str(dst / "checkpoints" / "best.pt") in copied["checkpoint"]
    every = [p for col in copied.values() for p in col if p]
    assert not [p for p in every if p.startswith(f"{built}/")], "a path still in the source"
    for name in ("media/a.mp4", "media/a.wav", "features/a.npy", "checkpoints/best.pt"):
        assert (dst / name).read_bytes() == (built / name).read_bytes()


def test_a_folder_without_a_store_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="meiju.db"):
        copy_built_demo(tmp_path / "nothing", tmp_path / "copy")


def test_checkpoints_in_the_config_and_fresh_media_keys_follow_the_copy(built, tmp_path):
    """What predict loads (``config["checkpoints"]``) points into the copy, and a feature whose
    media key matched the source's media is still up to date in the copy (no re-extraction),
    while a stale one stays stale."""
    from meiju_core.ml.features.media_pool import media_key

    store = Store(f"sqlite:///{built / 'meiju.db'}")
    with store.write() as s:
        first = s.scalars(select(Sample).order_by(Sample.id)).first()
        fs_id = s.scalars(select(FeatureSet.id)).one()
        fresh = media_key(first.video_path, first.audio_path)
        for modality, key in (("audio", fresh), ("visual", "stale")):
            s.add(
                FeatureFile(
                    feature_set_id=fs_id,
                    sample_id=first.id,
                    modality=modality,
                    path=str(built / "features" / "a.npy"),
                    shape=[1, 1],
                    content_hash=key,
                )
            )
        mv = s.scalars(select(ModelVersion).where(ModelVersion.checkpoint_path.is_not(None))).one()
        mv.config = {**(mv.config or {}), "checkpoints": {"emotion": str(built / "checkpoints")}}
    store.dispose()

    dst = copy_built_demo(built, tmp_path / "copy")

    store = Store(f"sqlite:///{dst / 'meiju.db'}")
    try:
        with store.read() as s:
            sample = s.scalars(select(Sample).order_by(Sample.id)).first()
            keys = dict(
                s.execute(
                    select(FeatureFile.modality, FeatureFile.content_hash).where(
                        FeatureFile.modality.in_(("audio", "visual"))
                    )
                ).all()
            )
            mv = s.scalars(select(ModelVersion).where(ModelVersion.checkpoint_path.is_not(None)))
            checkpoints = mv.one().config["checkpoints"]
    finally:
        store.dispose()
    assert keys["audio"] == media_key(sample.video_path, sample.audio_path) != fresh
    assert keys["visual"] == "stale"
    assert checkpoints == {"emotion": str(dst / "checkpoints")}
