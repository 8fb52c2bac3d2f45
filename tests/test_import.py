"""Importers: the demo project from real data, generic CSV imports and MEIJU label lists.

Every test gets a fresh SQLite store. Bad imports must name the row and the field and leave every
table exactly as it was.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from _paths import SHARED_DATA
from sqlalchemy import func, select

from db import Base, Store
from db.models import GoldLabel, Project, Sample, Transcript
from meiju_core.errors import ImportDataError
from meiju_core.io.cped import (
    CPED_DA_TO_MEIJU_INTENT,
    CPED_EMOTION_TO_MEIJU,
    DEMO_DIR,
    SPLIT_TARGETS,
    assign_splits,
    build_demo,
    cped_rows,
)
from meiju_core.io.tables import import_csv, import_label_list
from meiju_core.schema import LabelSchema

MEIJU_LISTS = SHARED_DATA / "meiju/KTTRCDL-MEIJU2025/filelists/Track1_Mandarin_origin"

# reference/meiju.md §2.4, Track 1 Mandarin train.
MEIJU_TRAIN_EMOTION = {
    "happy": 458,
    "surprise": 246,
    "sad": 262,
    "disgust": 281,
    "anger": 261,
    "fear": 281,
    "neutral": 505,
}
MEIJU_TRAIN_INTENT = {
    "questioning": 551,
    "agreeing": 197,
    "acknowledging": 153,
    "encouraging": 194,
    "consoling": 254,
    "suggesting": 258,
    "wishing": 212,
    "neutral": 475,
}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(f"sqlite:///{tmp_path}/t.db")
    store.upgrade()
    yield store
    store.dispose()


@pytest.fixture
def project_id(store: Store) -> int:
    with store.write() as s:
        project = Project(name="p", label_schema=LabelSchema.meiju_track1().to_dict())
        s.add(project)
        s.flush()
        return project.id


def table_counts(store: Store) -> dict[str, int]:
    with store.read() as s:
        return {
            t.name: s.scalar(select(func.count()).select_from(t))
            for t in Base.metadata.sorted_tables
        }


def write(tmp_path: Path, name: str, text: str, encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


# --------------------------------------------------------------------------- demo


def test_demo_build_counts_splits_and_idempotence(store: Store) -> None:
    summary = build_demo(store)

    assert summary["created"] is True
    assert summary["sources"] == {"cped": 11137, "grid": 11, "zh_speech": 5}
    assert summary["samples"] == 11137 + 11 + 5
    labelled = summary["labelled"]
    for split, target in SPLIT_TARGETS.items():
        assert target - 15 <= labelled[split] <= target + 15, (split, labelled[split])
    assert labelled["pool"] == 0
    assert 7000 < summary["splits"]["pool"] < 8500
    for split in ("train", "valid", "test"):
        assert summary["labels"][split]["intent"]["encouraging"] == 0
        assert summary["labels"][split]["intent"]["wishing"] == 0
    assert (
        summary["withheld"]["intent"]["encouraging"]
        == summary["withheld"]["intent"]["wishing"]
        == 0
    )

    with store.read() as s:
        pid = summary["project_id"]
        rows = s.execute(
            select(Sample.group_id, Sample.split).where(
                Sample.project_id == pid, Sample.source == "cped"
            )
        ).all()
        splits_of_dialogue: dict[str, set[str]] = {}
        for dialogue, split in rows:
            splits_of_dialogue.setdefault(dialogue, set()).add(split)
        assert len(splits_of_dialogue) == 934
        assert all(len(splits) == 1 for splits in splits_of_dialogue.values())

        pool_gold = s.scalar(
            select(func.count())
            .select_from(GoldLabel)
            .join(Sample, Sample.id == GoldLabel.sample_id)
            .where(Sample.split == "pool")
        )
        assert pool_gold == 0
        pool_cped = s.scalars(
            select(Sample.withheld).where(Sample.split == "pool", Sample.source == "cped")
        ).all()
        assert pool_cped and all(
            set(w) == {"emotion", "intent", "cped_emotion", "cped_da"} for w in pool_cped
        )
        assert s.scalar(select(func.count()).select_from(Transcript)) == summary["samples"]

        media = s.scalars(select(Sample).where(Sample.source.in_(("grid", "zh_speech")))).all()
        assert {m.split for m in media} == {"pool"} and all(m.withheld == {} for m in media)
        for m in media:
            path = Path(m.video_path or m.audio_path)
            assert path.is_absolute() and path.is_file() and path.parent.parent == DEMO_DIR
        grid = next(m for m in media if m.utt_id == "bbaf2n")
        assert grid.duration_s == 3.0 and grid.transcript.text == "bin blue at f two now"
        aishell = next(m for m in media if m.utt_id == "wenet_aishell-BAC009S0724W0121")
        assert aishell.duration_s == pytest.approx(4.28, abs=0.01)
        assert (aishell.transcript.text, aishell.transcript.source) == (
            "广州市房地产中介协会分析",
            "official",
        )
        machine = next(m for m in media if m.utt_id == "funasr_triton_long")
        assert machine.transcript.source == "asr"

    before = table_counts(store)
    again = build_demo(store)
    assert again["created"] is False
    assert {k: v for k, v in again.items() if k not in ("created", "seconds")} == {
        k: v for k, v in summary.items() if k not in ("created", "seconds")
    }
    assert table_counts(store) == before

    # Another project in the same store, another seed: recorded, and a different split.
    other = build_demo(store, project_name="demo-seed-7", seed=7)
    assert (summary["seed"], other["seed"], other["created"]) == (336, 7, True)
    assert other["sources"] == summary["sources"]
    with store.read() as s:

        def splits(pid: int) -> dict[str, str]:
            return dict(
                s.execute(select(Sample.utt_id, Sample.split).where(Sample.project_id == pid)).all()
            )

        assert splits(other["project_id"]) != splits(summary["project_id"])


def effective_labels(store: Store, utt_id: str) -> dict[str, str | None]:
    """Gold labels of a labelled-split sample, else the withheld labels of a pool sample."""
    with store.read() as s:
        sample = s.scalars(select(Sample).where(Sample.utt_id == utt_id)).one()
        gold = dict(
            s.execute(
                select(GoldLabel.head, GoldLabel.label).where(GoldLabel.sample_id == sample.id)
            ).all()
        )
        if sample.split == "pool":
            assert gold == {}
            return {h: sample.withheld[h] for h in ("emotion", "intent")}
        assert sample.withheld is None
        return {h: gold.get(h) for h in ("emotion", "intent")}


# Real CPED rows: (utt_id, CPED emotion / DA, mapped labels, text). With seed 336 the first four
# are in the pool (labels withheld), 32_057_000 in train and 32_189_002 in test (gold labels).
REAL_ROWS = [
    (
        "32_000_000",
        "astonished / question",
        {"emotion": "surprise", "intent": "questioning"},
        "怎么了",
    ),
    (
        "32_000_023",
        "worried / statement-non-opinion",
        {"emotion": "fear", "intent": "neutral"},
        "让我放心",
    ),
    ("32_000_007", "relaxed / question", {"emotion": None, "intent": "questioning"}, "他给多少"),
    ("32_006_002", "neutral / command", {"emotion": "neutral", "intent": "suggesting"}, "坐下"),
    ("32_057_000", "neutral / greeting", {"emotion": "neutral", "intent": None}, "醒了"),
    ("32_189_002", "grateful / thanking", {"emotion": "happy", "intent": None}, "谢谢啊，苏总"),
]


def test_demo_mapping_on_real_rows(store: Store) -> None:
    build_demo(store)
    splits = set()
    for utt_id, cped, expected, text in REAL_ROWS:
        assert effective_labels(store, utt_id) == expected, (utt_id, cped)
        with store.read() as s:
            sample = s.scalars(select(Sample).where(Sample.utt_id == utt_id)).one()
            splits.add(sample.split)
            assert sample.group_id == utt_id.rsplit("_", 1)[0] and sample.source == "cped"
            assert (sample.transcript.original_text, sample.transcript.text) == (text, text)
            assert sample.transcript.source == "official"
            if sample.split == "pool":
                assert f"{sample.withheld['cped_emotion']} / {sample.withheld['cped_da']}" == cped
    assert {"pool", "train", "test"} <= splits  # both the gold and the withheld path are covered


def test_demo_seed_changes_the_split() -> None:
    csv_path = DEMO_DIR / "cped" / "valid_split.csv"
    a = {r.utt_id: r.split for r in cped_rows(csv_path, seed=336)}
    b = {r.utt_id: r.split for r in cped_rows(csv_path, seed=1)}
    assert a == {r.utt_id: r.split for r in cped_rows(csv_path, seed=336)}  # deterministic
    assert a != b
    assert Counter(b.values())["train"] > 2000


def test_assign_splits_keeps_dialogues_whole_and_near_targets() -> None:
    dialogues = {f"d{i}": 1 + i % 7 for i in range(300)} | {"empty": 0}
    assignment = assign_splits(dialogues, seed=3, targets={"test": 100, "valid": 50, "train": 400})
    sums = Counter()
    for dialogue, split in assignment.items():
        sums[split] += dialogues[dialogue]
    assert (
        abs(sums["test"] - 100) <= 3
        and abs(sums["valid"] - 50) <= 3
        and abs(sums["train"] - 400) <= 3
    )
    assert assignment["empty"] == "pool"


def test_demo_readme_mapping_table_matches_code() -> None:
    text = (DEMO_DIR / "README.md").read_text(encoding="utf-8")
    table = dict(re.findall(r"^\| ([a-z-]+) \| \d+ \| ([a-z]+|—) \|$", text, flags=re.M))
    expected = {**CPED_EMOTION_TO_MEIJU, **CPED_DA_TO_MEIJU_INTENT}
    assert {k: (None if v == "—" else v) for k, v in table.items()} == expected


def test_demo_missing_file_stores_nothing(store: Store, tmp_path: Path) -> None:
    (tmp_path / "cped").mkdir()
    before = table_counts(store)
    with pytest.raises(ImportDataError, match="valid_split.csv"):
        build_demo(store, demo_dir=tmp_path)
    assert table_counts(store) == before


# --------------------------------------------------------------------------- CSV


def test_csv_import_header_variants_bom_and_empty_labels(
    store: Store, project_id: int, tmp_path: Path
) -> None:
    path = write(
        tmp_path,
        "official.csv",
        "FileName,Subtitle,Emotion,Intent,Split,Note\n"
        "Track1_Training_00001.mp4,你好。,Happy,agreeing,train,x\n"
        "Track1_Training_00002,嗯，好吧,neutral,,valid,\n"
        "Track1_Testing_00001,,,,test,\n",
        encoding="utf-8-sig",
    )
    summary = import_csv(store, path, project_id=project_id)
    assert summary.samples == 3 and summary.transcripts == 2
    assert summary.splits == {"train": 1, "valid": 1, "test": 1}
    assert summary.labels["emotion"]["happy"] == 1 and summary.labels["intent"]["agreeing"] == 1
    assert summary.columns["id"] == "FileName" and summary.ignored_columns == ("Note",)
    with store.read() as s:
        samples = {x.utt_id: x for x in s.scalars(select(Sample))}
        assert set(samples) == {
            "Track1_Training_00001",
            "Track1_Training_00002",
            "Track1_Testing_00001",
        }
        assert samples["Track1_Training_00001"].transcript.original_text == "你好。"
        assert samples["Track1_Testing_00001"].transcript is None
        gold = s.execute(select(Sample.utt_id, GoldLabel.head, GoldLabel.label).join(Sample)).all()
        assert sorted(gold) == [
            ("Track1_Training_00001", "emotion", "happy"),
            ("Track1_Training_00001", "intent", "agreeing"),
            ("Track1_Training_00002", "emotion", "neutral"),
        ]


def test_csv_default_split_and_named_columns(store: Store, project_id: int, tmp_path: Path) -> None:
    path = write(tmp_path, "train.tsv", "name\tsentence\temo\na1\t第一句\tfear\na2\t第二句\t\n")
    summary = import_csv(
        store,
        path,
        project_id=project_id,
        default_split="Training",
        label_columns={"emotion": "emo"},
    )
    assert summary.splits == {"train": 2} and summary.transcripts == 2
    assert summary.labels["emotion"]["fear"] == 1 and sum(summary.labels["intent"].values()) == 0
    assert summary.columns == {"id": "name", "text": "sentence", "emotion": "emo"}
    pool = write(tmp_path, "pool.csv", "utt_id,text\nb1,还有一句\n")
    assert import_csv(store, pool, project_id=project_id, default_split="unlabelled").splits == {
        "pool": 1
    }


BAD_CSVS = {
    "missing id column": (
        "text,split\n你好,train\n",
        "utf-8",
        [
            "row 1",
            "field 'utt_id'",
            "missing required column 'utt_id'",
            "columns found: ['text', 'split']",
        ],
    ),
    "missing split column": (
        "utt_id,text\nA,你好\n",
        "utf-8",
        ["row 1", "field 'split'", "missing required column 'split'"],
    ),
    "unknown label": (
        "utt_id,text,emotion,split\nA,你好,happy,train\nB,再见,joy,train\n",
        "utf-8",
        ["row 3", "field 'emotion'", "'joy'", "'surprise'"],
    ),
    "duplicate id in file": (
        "utt_id,split\nA,train\nB,train\nA,valid\n",
        "utf-8",
        ["row 4", "field 'utt_id'", "duplicate id 'A': rows 2 and 4"],
    ),
    "duplicate id in store": (
        "utt_id,split\nZ,train\nstored_1,train\n",
        "utf-8",
        ["row 3", "field 'utt_id'", "'stored_1' is already stored"],
    ),
    "empty id": (
        "utt_id,split\nA,train\n  ,train\n",
        "utf-8",
        ["row 3", "field 'utt_id'", "empty id"],
    ),
    "GBK bytes": (
        "utt_id,text,split\nA,你好,train\n",
        "gbk",
        ["bad.csv", "not UTF-8", "re-save it as UTF-8"],
    ),
    "HTML in transcript": (
        "utt_id,text,split\nA,你好,train\nB,<i>再见</i>,train\n",
        "utf-8",
        ["row 3", "field 'text'", "HTML"],
    ),
    "HTML entity in transcript": (
        "utt_id,text,split\nA,好&nbsp;的,train\n",
        "utf-8",
        ["row 2", "field 'text'", "HTML"],
    ),
    "invalid split": (
        "utt_id,split\nA,train\nB,holdout\n",
        "utf-8",
        ["row 3", "field 'split'", "invalid split 'holdout'", "'pool'"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_CSVS))
def test_bad_csv_names_row_and_field_and_stores_nothing(
    store: Store, project_id: int, tmp_path: Path, case: str
) -> None:
    import_csv(
        store,
        write(tmp_path, "ok.csv", "utt_id,text,emotion,split\nstored_1,好,sad,train\n"),
        project_id=project_id,
    )
    text, encoding, fragments = BAD_CSVS[case]
    path = write(tmp_path, "bad.csv", text, encoding)
    before = table_counts(store)
    with pytest.raises(ImportDataError) as info:
        import_csv(store, path, project_id=project_id)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert "\ufffd" not in message  # never mojibake
    assert table_counts(store) == before


def test_bad_csv_reports_every_problem(store: Store, project_id: int, tmp_path: Path) -> None:
    path = write(tmp_path, "bad.csv", "utt_id,emotion,split\nA,joy,train\nB,happy,nowhere\n")
    with pytest.raises(ImportDataError) as info:
        import_csv(store, path, project_id=project_id)
    assert (info.value.row, info.value.field) == (2, "emotion")
    assert "row 3, field 'split'" in str(info.value)
    assert len(info.value.problems) == 2


# --------------------------------------------------------------------------- label lists


@pytest.mark.skipif(not MEIJU_LISTS.is_dir(), reason="MEIJU label lists not available")
def test_label_list_real_track1_mandarin_train(store: Store, project_id: int) -> None:
    summary = import_label_list(
        store, MEIJU_LISTS / "train_filelist.txt", project_id=project_id, split="train"
    )
    assert summary.samples == 2294 and summary.splits == {"train": 2294}
    assert summary.labels == {"emotion": MEIJU_TRAIN_EMOTION, "intent": MEIJU_TRAIN_INTENT}
    with store.read() as s:
        for head, expected in (("emotion", MEIJU_TRAIN_EMOTION), ("intent", MEIJU_TRAIN_INTENT)):
            counts = dict(
                s.execute(
                    select(GoldLabel.label, func.count())
                    .where(GoldLabel.head == head)
                    .group_by(GoldLabel.label)
                ).all()
            )
            assert counts == expected
        first = s.scalars(select(Sample).where(Sample.utt_id == "Track1_Training_00001")).one()
        assert first.split == "train" and first.video_path is None

    test_list = import_label_list(
        store, MEIJU_LISTS / "test_filelist.txt", project_id=project_id, split="test"
    )
    assert test_list.samples == 643 and sum(test_list.labels["emotion"].values()) == 0

    before = table_counts(store)
    with pytest.raises(ImportDataError, match="row 1, field 'utt_id'.*already stored"):
        import_label_list(
            store, MEIJU_LISTS / "train_filelist.txt", project_id=project_id, split="train"
        )
    assert table_counts(store) == before


def test_label_list_strips_extension_and_rejects_bad_lines(
    store: Store, project_id: int, tmp_path: Path
) -> None:
    good = write(
        tmp_path, "Training_files.txt", "T_00001.mp4 anger suggesting\nT_00002.mp4 happy wishing\n"
    )
    summary = import_label_list(store, good, project_id=project_id, split="train")
    assert summary.samples == 2
    with store.read() as s:
        assert set(s.scalars(select(Sample.utt_id))) == {"T_00001", "T_00002"}

    before = table_counts(store)
    cases = {
        "T_1 anger suggesting\nT_2 joy neutral\n": "row 2, field 'emotion'",
        "T_1 anger suggesting\nT_2 anger\n": "row 2",
        "T_1 anger suggesting\nT_2\n": "row 2",
        "T_1 anger suggesting\nT_1 fear neutral\n": "row 2, field 'utt_id'",
    }
    for text, fragment in cases.items():
        with pytest.raises(ImportDataError, match=re.escape(fragment)):
            import_label_list(
                store, write(tmp_path, "bad.txt", text), project_id=project_id, split="train"
            )
    with pytest.raises(ImportDataError, match="not UTF-8"):
        import_label_list(
            store,
            write(tmp_path, "gbk.txt", "样本 anger neutral\n", "gbk"),
            project_id=project_id,
            split="train",
        )
    assert table_counts(store) == before
