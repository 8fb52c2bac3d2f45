"""The MEIJU release layout: import a whole release, refuse bad ones untouched, `.npy` features in
and out in the official baseline's layout.

The release is built in a temp folder from real data: the GRID speaking-face clips renamed to
MEIJU ids (``Track1_Training_00001.mpg`` ...), real CPED subtitles (shared/data/cped,
``utf-8-sig``) and the first labels of the real Track 1 Mandarin label lists.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from db import Base, Store
from db.models import FeatureFile, FeatureSet, GoldLabel, Project, Sample, Transcript
from meiju_core.errors import FeatureError, ImportDataError, InputError, MediaError
from meiju_core.io.meiju import (
    BASELINE_TYPES,
    export_baseline_layout,
    find_release,
    import_npy_features,
    import_release,
    read_label_list,
    read_testing_list,
    transcribe_pool,
)
from meiju_core.schema import EMOTIONS, INTENTS, LabelSchema

# the shared real data beside the project checkout (as tests/conftest.py)
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

GRID = sorted((SHARED_DATA / "grid_samples").glob("*.mpg"))
LISTS = SHARED_DATA / "meiju/KTTRCDL-MEIJU2025/filelists/Track1_Mandarin_origin"
N_TRAIN, N_VALID, N_POOL, N_TEST_MEDIA, N_TEST = 4, 2, 3, 2, 3

# reference/meiju.md §2.4, Track 1 Mandarin
TRAIN_EMOTIONS = {"happy": 458, "surprise": 246, "sad": 262, "disgust": 281}
VALID_INTENTS = {"questioning": 93, "agreeing": 27, "acknowledging": 17, "neutral": 56}


def _cped_texts(n: int) -> list[str]:
    with open(SHARED_DATA / "cped" / "valid_split.csv", encoding="utf-8-sig") as f:
        return [r["Utterance"] for _, r in zip(range(n), csv.DictReader(f), strict=False)]


def _real_labels(name: str, n: int) -> list[tuple[str, str]]:
    lines = (LISTS / name).read_text().splitlines()[:n]
    return [(line.split()[1], line.split()[2]) for line in lines]


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with open(path, "w", encoding="utf-8-sig", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


@pytest.fixture
def release(tmp_path: Path) -> Path:
    """A small Track 1 Mandarin release: 4 train, 2 valid, 3 pool, 3 test ids (2 with video)."""
    root = tmp_path / "MEIJU2025"
    lang = root / "Track1" / "Mandarin"
    clips = iter(GRID)
    texts = iter(_cped_texts(20))

    def videos(folder: Path, prefix: str, n: int) -> list[str]:
        folder.mkdir(parents=True, exist_ok=True)
        names = [f"{prefix}_{i:05d}" for i in range(1, n + 1)]
        for name in names:
            shutil.copy(next(clips), folder / f"{name}.mpg")
        return names

    train = videos(lang / "Annotation" / "Training", "Track1_Training", N_TRAIN)
    valid = videos(lang / "Annotation" / "Validation", "Track1_Validation", N_VALID)
    videos(lang / "NoAnnotation", "Track1_NoAnnotation", N_POOL)
    videos(lang / "Testing", "Track1_Testing", N_TEST_MEDIA)
    # official headers for Training; the baseline's name/sentence variant for Validation
    _write_csv(
        lang / "Annotation" / "Training_transcription.csv",
        ["FileName", "Subtitle", "Emotion", "Intent"],
        [
            [f"{n}.mp4", next(texts), e, i]
            for n, (e, i) in zip(train, _real_labels("train_filelist.txt", N_TRAIN), strict=True)
        ],
    )
    _write_csv(
        lang / "Annotation" / "Validation_transcription.csv",
        ["name", "sentence", "emotion", "intent"],
        [
            [n, next(texts), e, i]
            for n, (e, i) in zip(valid, _real_labels("valid_filelist.txt", N_VALID), strict=True)
        ],
    )
    _write_csv(
        lang / "Mandarin_Testing_files.csv",
        ["FileName"],
        [[f"Track1_Testing_{i:05d}.mp4"] for i in range(1, N_TEST + 1)],
    )
    (lang / "NoAnnotation" / "notes.txt").write_text("not media: ignored")
    return root


def counts(store: Store) -> dict[str, int]:
    with store.read() as s:
        return {
            t.name: s.scalar(select(func.count()).select_from(t))
            for t in Base.metadata.sorted_tables
        }


# --------------------------------------------------------------------------- release import


def test_import_a_whole_release(store: Store, release: Path) -> None:
    summary = import_release(store, release, project_name="meiju-t1")
    assert summary.splits == {"train": N_TRAIN, "valid": N_VALID, "pool": N_POOL, "test": N_TEST}
    assert summary.transcripts == N_TRAIN + N_VALID
    assert summary.media == {"train": N_TRAIN, "valid": N_VALID, "pool": N_POOL, "test": 2}
    assert summary.testing_list.endswith("Mandarin_Testing_files.csv")
    want = Counter(
        _real_labels("train_filelist.txt", N_TRAIN) + _real_labels("valid_filelist.txt", N_VALID)
    )
    assert sum(summary.labels["emotion"].values()) == N_TRAIN + N_VALID
    assert set(summary.labels["emotion"]) == set(EMOTIONS)
    with store.read() as s:
        project = s.get(Project, summary.project_id)
        assert project.settings["meiju"]["corpus"] == "MEIJU_balance_Mandarin"
        assert LabelSchema.from_dict(project.label_schema) == LabelSchema.meiju_track1()
        samples = {x.utt_id: x for x in s.scalars(select(Sample))}
        gold = Counter()
        by_sample: dict[int, dict[str, str]] = {}
        for g in s.scalars(select(GoldLabel)):
            by_sample.setdefault(g.sample_id, {})[g.head] = g.label
            assert g.source == "official"
        for labels in by_sample.values():
            gold[(labels["emotion"], labels["intent"])] += 1
        transcripts = {t.sample_id: t for t in s.scalars(select(Transcript))}
    assert gold == want
    train1 = samples["Track1_Training_00001"]  # the extension in the CSV was removed
    assert train1.split == "train" and train1.source == "meiju"
    assert Path(train1.video_path).is_absolute() and Path(train1.video_path).is_file()
    assert train1.duration_s == pytest.approx(3.0, abs=0.1)
    assert (
        transcripts[train1.id].text == _cped_texts(1)[0]
        and transcripts[train1.id].source == "official"
    )
    pool = [x for x in samples.values() if x.split == "pool"]
    assert len(pool) == N_POOL and all(x.id not in transcripts for x in pool)
    tests = sorted((x for x in samples.values() if x.split == "test"), key=lambda x: x.utt_id)
    assert [x.video_path is not None for x in tests] == [True, True, False]
    assert "notes" not in " ".join(samples)


def test_find_release_accepts_the_language_folder(release: Path) -> None:
    lang = release / "Track1" / "Mandarin"
    assert (
        find_release(release) == find_release(lang) == find_release(lang.parent) == lang.resolve()
    )
    with pytest.raises(ImportDataError, match="not a MEIJU Track 1 release"):
        find_release(lang / "Annotation")


def _edit_csv(release: Path, name: str, row: int, column: int, value: str) -> Path:
    path = release / "Track1" / "Mandarin" / "Annotation" / name
    with open(path, encoding="utf-8-sig", newline="") as f:
        records = list(csv.reader(f))
    records[row - 1][column] = value
    _write_csv(path, records[0], records[1:])
    return path


def _bad_label(release: Path) -> tuple[str, int | None, str | None]:
    _edit_csv(release, "Training_transcription.csv", 3, 2, "joy")
    return "Training_transcription.csv", 3, "Emotion"


def _bad_intent_column(release: Path) -> tuple[str, int | None, str | None]:
    _edit_csv(release, "Validation_transcription.csv", 1, 3, "purpose")
    return "Validation_transcription.csv", 1, "intent"


def _empty_label(release: Path) -> tuple[str, int | None, str | None]:
    _edit_csv(release, "Validation_transcription.csv", 2, 3, " ")
    return "Validation_transcription.csv", 2, "intent"


def _duplicate_row(release: Path) -> tuple[str, int | None, str | None]:
    _edit_csv(release, "Training_transcription.csv", 4, 0, "Track1_Training_00001")
    return "Training_transcription.csv", 4, "FileName"


def _row_without_video(release: Path) -> tuple[str, int | None, str | None]:
    (release / "Track1/Mandarin/Annotation/Training/Track1_Training_00002.mpg").unlink()
    return "Training_transcription.csv", 3, "FileName"


def _video_without_row(release: Path) -> tuple[str, int | None, str | None]:
    folder = release / "Track1/Mandarin/Annotation/Validation"
    shutil.copy(GRID[0], folder / "Track1_Validation_00099.mpg")
    return "Track1_Validation_00099.mpg", None, None


def _id_in_two_splits(release: Path) -> tuple[str, int | None, str | None]:
    shutil.copy(GRID[0], release / "Track1/Mandarin/NoAnnotation/Track1_Training_00003.mpg")
    return "Track1_Training_00003.mpg", None, None


def _not_utf8(release: Path) -> tuple[str, int | None, str | None]:
    path = release / "Track1/Mandarin/Annotation/Training_transcription.csv"
    path.write_bytes(
        "FileName,Subtitle,Emotion,Intent\nTrack1_Training_00001,撞车了吗,sad,neutral\n".encode(
            "gbk"
        )
    )
    return "Training_transcription.csv", 2, None


def _corrupt_video(release: Path) -> tuple[str, int | None, str | None]:
    (release / "Track1/Mandarin/NoAnnotation/Track1_NoAnnotation_00002.mpg").write_bytes(
        b"\0" * 999
    )
    return "Track1_NoAnnotation_00002.mpg", None, None


@pytest.mark.parametrize(
    "breaks",
    [
        _bad_label,
        _bad_intent_column,
        _empty_label,
        _duplicate_row,
        _row_without_video,
        _video_without_row,
        _id_in_two_splits,
        _not_utf8,
        _corrupt_video,
    ],
)
def test_a_bad_release_names_file_row_field_and_stores_nothing(
    store: Store, release: Path, breaks
) -> None:
    file_name, row, field = breaks(release)
    before = counts(store)
    with pytest.raises(ImportDataError) as info:
        import_release(store, release, project_name="meiju-t1")
    err = info.value
    print(err)
    assert Path(err.path).name == file_name
    assert err.row == row
    assert err.field == field
    assert counts(store) == before  # no project, no sample: all or nothing


def test_every_problem_is_reported_at_once(store: Store, release: Path) -> None:
    _bad_label(release)  # row 3
    (release / "Track1/Mandarin/Annotation/Training/Track1_Training_00004.mpg").unlink()  # row 5
    _id_in_two_splits(release)
    with pytest.raises(ImportDataError) as info:
        import_release(store, release, project_name="x")
    found = [(Path(e.path).name, e.row) for e in info.value.problems]
    assert found == [
        ("Training_transcription.csv", 3),
        ("Training_transcription.csv", 5),
        ("Track1_Training_00003.mpg", None),
    ]
    assert "unknown emotion label 'joy'" in str(info.value) and "and 2 more" in str(info.value)


def test_an_existing_project_name_is_refused(store: Store, release: Path) -> None:
    import_release(store, release, project_name="meiju-t1")
    before = counts(store)
    with pytest.raises(ImportDataError, match="already exists") as info:
        import_release(store, release, project_name="meiju-t1")
    assert info.value.field == "project_name"
    assert counts(store) == before


def test_a_label_list_can_give_the_test_ids(store: Store, release: Path, tmp_path: Path) -> None:
    lang = release / "Track1" / "Mandarin"
    (lang / "Mandarin_Testing_files.csv").unlink()
    ids = tmp_path / "test_filelist.txt"
    ids.write_text("Track1_Testing_00001\nTrack1_Testing_00002\n\n")
    summary = import_release(store, lang, project_name="t", testing_list=ids, probe_media=False)
    assert summary.splits["test"] == 2 and summary.media["test"] == 2


# --------------------------------------------------------------------------- real label lists


def test_the_real_label_lists_parse() -> None:
    train = read_label_list(LISTS / "train_filelist.txt")
    valid = read_label_list(LISTS / "valid_filelist.txt")
    test = read_testing_list(LISTS / "test_filelist.txt")
    assert (len(train), len(valid), len(test)) == (2294, 324, 643)
    assert train[0].utt_id == "Track1_Training_00001" and dict(train[0].labels) == {
        "emotion": "anger",
        "intent": "suggesting",
    }
    assert test[-1].utt_id == "Track1_Testing_00643" and not test[-1].labels
    emotions = Counter(r.labels["emotion"] for r in train)
    intents = Counter(r.labels["intent"] for r in valid)
    assert {k: emotions[k] for k in TRAIN_EMOTIONS} == TRAIN_EMOTIONS
    assert {k: intents[k] for k in VALID_INTENTS} == VALID_INTENTS
    assert set(emotions) == set(EMOTIONS) and set(intents) == set(INTENTS)


def test_a_bad_label_list_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "l.txt"
    path.write_text("a sad neutral\nb sad\nc sad wishing\nc happy agreeing\nd sadness neutral\n")
    with pytest.raises(ImportDataError) as info:
        read_label_list(path)
    rows = [(e.row, e.field) for e in info.value.problems]
    assert rows == [(2, None), (4, "utt_id"), (5, "emotion")]


# --------------------------------------------------------------------------- pool ASR


def test_transcribe_pool_stores_asr_transcripts(store: Store, release: Path) -> None:
    pid = import_release(store, release, project_name="p").project_id
    with store.read() as s:
        first_pool = s.scalars(
            select(Sample).where(Sample.split == "pool").order_by(Sample.id)
        ).first()
    broken = Path(first_pool.video_path)

    def fake(path: str) -> tuple[str, dict]:
        if path == str(broken):
            raise MediaError("cannot decode", path=path)
        return f"转写 {Path(path).stem}", {}

    summary = transcribe_pool(store, pid, transcribe=fake, commit_every=1)
    assert summary.done == N_POOL - 1 and list(summary.failed) == [first_pool.utt_id]
    with store.read() as s:
        rows = s.execute(
            select(Sample.utt_id, Transcript.source, Transcript.text, Transcript.original_text)
            .join(Transcript)
            .where(Sample.split == "pool")
        ).all()
    assert len(rows) == N_POOL - 1
    assert all(r.source == "asr" and r.text == r.original_text == f"转写 {r.utt_id}" for r in rows)
    again = transcribe_pool(store, pid, transcribe=fake)
    assert again.done == 0 and len(again.failed) == 1  # only the broken one is left to do


@pytest.mark.slow
def test_transcribe_pool_with_the_offline_whisper(store: Store, release: Path) -> None:
    pytest.importorskip("faster_whisper")
    from meiju_core.errors import ModelUnavailable
    from meiju_core.ml.features.asr import WhisperASR, whisper_base_folder

    try:
        asr = WhisperASR(whisper_base_folder(), device="cpu")
    except ModelUnavailable as e:
        pytest.skip(str(e))
    pid = import_release(store, release, project_name="p").project_id
    summary = transcribe_pool(store, pid, transcribe=asr.transcribe, limit=1)
    assert summary.done == 1
    with store.read() as s:
        t = s.scalars(select(Transcript).where(Transcript.source == "asr")).one()
    assert t.source == "asr" and t.text


# --------------------------------------------------------------------------- .npy features


def _write_npy_tree(root: Path, utt_ids: list[str], dims: dict[str, int], seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    arrays = {}
    for modality, folder in BASELINE_TYPES.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for utt in utt_ids:
            a = rng.standard_normal((int(rng.integers(1, 20)), dims[modality])).astype(np.float32)
            np.save(root / folder / f"{utt}.npy", a)
            arrays[(modality, utt)] = a
    return arrays


@pytest.fixture
def imported(store: Store, release: Path) -> tuple[int, dict[str, str]]:
    pid = import_release(store, release, project_name="p").project_id
    with store.read() as s:
        splits = dict(s.execute(select(Sample.utt_id, Sample.split)).all())
    return pid, splits


DIMS = {"audio": 12, "visual": 7, "text": 5}


def test_npy_features_round_trip_through_the_baseline_layout(
    store: Store, imported: tuple[int, dict[str, str]], tmp_path: Path
) -> None:
    pid, splits = imported
    with_features = [u for u in splits if u != "Track1_Testing_00003"]
    arrays = _write_npy_tree(tmp_path / "npy", with_features, DIMS)
    summary = import_npy_features(store, pid, tmp_path / "npy")
    n = len(with_features)
    assert summary.files == {m: n for m in BASELINE_TYPES}
    assert summary.dims == DIMS and summary.missing == {m: 1 for m in BASELINE_TYPES}
    with store.read() as s:
        fs = s.get(FeatureSet, summary.feature_set_id)
        assert (fs.name, fs.extractor, fs.dims) == ("meiju-npy", "meiju-npy", DIMS)
        files = s.scalars(select(FeatureFile)).all()
    assert len(files) == 3 * n and all(len(f.content_hash) == 64 for f in files)

    out = export_baseline_layout(store, pid, summary.feature_set_id, tmp_path / "baseline")
    assert out.written == {"Training": N_TRAIN, "Validation": N_VALID, "Testing": 2}
    assert out.skipped["Testing"] == {"Track1_Testing_00003": "no audio, visual, text features"}
    config = json.loads(Path(out.config_path).read_text())
    assert Path(out.config_path).name == "MEIJU_balance_Mandarin_config.json"
    assert Path(out.config_path).parent.parts[-2:] == ("data", "config")
    assert config == {
        "target_root": out.target_root,
        "feature_root": out.feature_root,
        "total_cv": 3,
    }
    train_lines = (Path(out.target_root) / "Training_files.txt").read_text().splitlines()
    labels = _real_labels("train_filelist.txt", N_TRAIN)
    assert train_lines == [
        f"Track1_Training_{i:05d}.mp4 {e} {t}" for i, (e, t) in enumerate(labels, start=1)
    ]
    # the baseline's parsing: split on one space, strip 4 characters
    assert [line.split(" ")[0][:-4] for line in train_lines][0] == "Track1_Training_00001"
    assert (Path(out.target_root) / "Testing_files.txt").read_text().split() == [
        "Track1_Testing_00001.mp4",
        "Track1_Testing_00002.mp4",
    ]
    assert "--A_type=wav2vec --input_dim_a=12" in out.flags and "--input_dim_l=5" in out.flags
    listed = [u for u, sp in splits.items() if sp != "pool" and u != "Track1_Testing_00003"]
    for modality, folder in BASELINE_TYPES.items():
        exported = sorted(p.stem for p in (Path(out.feature_root) / folder).glob("*.npy"))
        assert exported == sorted(listed)  # the pool is not in the baseline's lists
        for utt in listed:
            got = np.load(Path(out.feature_root) / folder / f"{utt}.npy")
            np.testing.assert_array_equal(got, arrays[(modality, utt)])
    # and back: the exported tree imports as a feature set with the same shapes
    again = import_npy_features(store, pid, out.feature_root, set_name="roundtrip")
    assert again.dims == DIMS and again.files == {m: len(listed) for m in BASELINE_TYPES}


def test_export_can_fill_missing_modalities_with_zeros(
    store: Store, imported: tuple[int, dict[str, str]], tmp_path: Path
) -> None:
    pid, splits = imported
    _write_npy_tree(tmp_path / "npy", [u for u in splits if u != "Track1_Testing_00003"], DIMS)
    fs_id = import_npy_features(store, pid, tmp_path / "npy").feature_set_id
    out = export_baseline_layout(store, pid, fs_id, tmp_path / "b", fill_missing=True)
    assert out.written["Testing"] == 3
    zeros = np.load(Path(out.feature_root) / "RoBERTa" / "Track1_Testing_00003.npy")
    assert zeros.shape == (1, DIMS["text"]) and not zeros.any()
    with pytest.raises(InputError, match="4 characters"):
        export_baseline_layout(store, pid, fs_id, tmp_path / "c", extension=".mpeg")


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.array([[0.0, np.nan]], np.float32), "1 values are NaN or inf"),
        (np.zeros(5, np.float32), "expected a 2-D"),
        (np.zeros((2, 5), np.int64), "expected floating point"),
        (np.zeros((3, 4), np.float32), "D = 4, but the other text files have D = 5"),
    ],
)
def test_a_bad_npy_file_is_named_and_nothing_is_stored(
    store: Store, imported: tuple[int, dict[str, str]], tmp_path: Path, bad, message
) -> None:
    pid, splits = imported
    _write_npy_tree(tmp_path / "npy", list(splits), DIMS)
    target = tmp_path / "npy" / "RoBERTa" / "Track1_Validation_00002.npy"
    np.save(target, bad)
    before = counts(store)
    with pytest.raises(FeatureError, match=message) as info:
        import_npy_features(store, pid, tmp_path / "npy")
    assert info.value.path == str(target)
    assert counts(store) == before


def test_npy_of_an_unknown_utterance_or_a_missing_folder(
    store: Store, imported: tuple[int, dict[str, str]], tmp_path: Path
) -> None:
    pid, splits = imported
    _write_npy_tree(tmp_path / "npy", [*splits, "Track1_Training_09999"], DIMS)
    with pytest.raises(ImportDataError, match="no utterance 'Track1_Training_09999'"):
        import_npy_features(store, pid, tmp_path / "npy")
    with pytest.raises(ImportDataError, match="missing the audio folder"):
        import_npy_features(store, pid, tmp_path / "npy", dirs={"audio": "hubert"})
    with pytest.raises(InputError, match="unknown modalities"):
        import_npy_features(store, pid, tmp_path / "npy", dirs={"smell": "x"})


def test_an_existing_feature_set_needs_replace(
    store: Store, imported: tuple[int, dict[str, str]], tmp_path: Path
) -> None:
    pid, splits = imported
    _write_npy_tree(tmp_path / "npy", list(splits), DIMS)
    first = import_npy_features(store, pid, tmp_path / "npy", dirs={"text": "RoBERTa"})
    with pytest.raises(ImportDataError, match="already has a feature set"):
        import_npy_features(store, pid, tmp_path / "npy", dirs={"text": "RoBERTa"})
    second = import_npy_features(store, pid, tmp_path / "npy", replace=True)
    with store.read() as s:
        sets = s.scalars(select(FeatureSet)).all()
        assert [(x.id, x.dims) for x in sets] == [(second.feature_set_id, DIMS)]
        assert s.scalar(select(func.count()).select_from(FeatureFile)) == 3 * len(splits)
    assert first.dims == {"text": 5}
    assert second.files == {m: len(splits) for m in BASELINE_TYPES}
