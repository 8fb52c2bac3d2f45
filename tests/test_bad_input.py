"""A table-driven corpus of bad inputs through the real entry points (importers, settings, rounds,
users, the transcript editor, URL ids). Each case asserts that the error names the file, row or
field it is about, and that every table of the store is exactly as it was."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select

from db import Store
from db.fixtures import build_fixture
from db.models import Base, Transcript
from meiju_core.errors import InputError, MeijuError
from meiju_core.io.tables import import_csv, import_label_list
from meiju_core.services import rounds, transcripts, users
from meiju_core.settings import Settings
from meiju_core.validate import db_id, db_ids

HEADER = "utt_id,text,split,emotion,intent\n"


@dataclass
class Ctx:
    store: Store
    ids: object
    tmp: Path
    settings: Settings
    monkeypatch: pytest.MonkeyPatch

    def file(self, content: str | bytes, name: str = "bad.csv") -> Path:
        path = self.tmp / name
        if isinstance(content, str):
            path.write_text(content, encoding="utf-8")
        else:
            path.write_bytes(content)
        return path


@dataclass
class Case:
    name: str
    call: Callable[[Ctx], object]
    field: str | None = None  # the field the error must name
    row: int | None = None  # the row it must name
    file: bool = False  # whether it must name the file
    match: str = ""  # a word the message must hold


def csv_row(row: str, *, field: str | None, match: str, row_no: int = 2) -> Callable:
    def call(ctx: Ctx):
        return import_csv(ctx.store, ctx.file(HEADER + row), project_id=ctx.ids.project_id)

    return call


def csv_case(name: str, row: str, field: str | None, match: str, row_no: int = 2) -> Case:
    return Case(name, csv_row(row, field=field, match=match), field, row_no, True, match)


def raw_csv(name: str, content: str | bytes, match: str, row: int | None = None) -> Case:
    def call(ctx: Ctx):
        return import_csv(ctx.store, ctx.file(content), project_id=ctx.ids.project_id)

    return Case(name, call, None, row, True, match)


def label_list(name: str, line: str, match: str, field: str | None = None) -> Case:
    def call(ctx: Ctx):
        path = ctx.file(line + "\n", "list.txt")
        return import_label_list(ctx.store, path, project_id=ctx.ids.project_id, split="train")

    return Case(name, call, field, 1, True, match)


def env(name: str, var: str, value: str, field: str) -> Case:
    def call(ctx: Ctx):
        ctx.monkeypatch.setenv(var, value)
        return Settings.load(data_dir=str(ctx.tmp))

    return Case(name, call, field, None, False, var)


def option(name: str, field: str, value: object) -> Case:
    def call(ctx: Ctx):
        return Settings.load(data_dir=str(ctx.tmp), **{field: value})

    return Case(name, call, field, None, False, f"--{field.replace('_', '-')}")


def threshold(name: str, value: object, field: str = "threshold emotion") -> Case:
    def call(ctx: Ctx):
        return rounds.open_round(
            ctx.store,
            ctx.settings,
            project_id=ctx.ids.project_id,
            model_version_id=ctx.ids.model_version_id,
            thresholds=value,
        )

    return Case(name, call, field, None, False, "")


def user(name: str, user_name: str, password: str | None, field: str, role="annotator") -> Case:
    def call(ctx: Ctx):
        return users.add_user(ctx.store, name=user_name, role=role, password=password)

    return Case(name, call, field, None, False, "")


def transcript(name: str, text: str, match: str) -> Case:
    def call(ctx: Ctx):
        with ctx.store.read() as s:
            tr = s.scalars(select(Transcript).order_by(Transcript.id)).first()
        return transcripts.save_transcript(
            ctx.store,
            sample_id=tr.sample_id,
            text=text,
            expected_version=tr.version,
            user={"id": ctx.ids.admin_id},
        )

    return Case(name, call, "text", None, False, match)


CASES = [
    # ids in a CSV
    csv_case("NUL in id", "a\x00b,你好,train,happy,neutral\n", None, "NUL", 2),
    csv_case("bell in id", "a\x07b,你好,train,happy,neutral\n", "utt_id", "U+0007"),
    csv_case("escape in id", "a\x1b[31m,你好,train,happy,neutral\n", "utt_id", "U+001B"),
    csv_case("RLO in id", "abc\u202egpj.exe,你好,train,happy,neutral\n", "utt_id", "U+202E"),
    csv_case("LRI in id", "abc\u2066x,你好,train,happy,neutral\n", "utt_id", "U+2066"),
    csv_case("zero width in id", "ab\u200bc,你好,train,happy,neutral\n", "utt_id", "U+200B"),
    csv_case("BOM in id", "ab\ufeffc,你好,train,happy,neutral\n", "utt_id", "U+FEFF"),
    csv_case("DEL in id", "ab\x7fc,你好,train,happy,neutral\n", "utt_id", "U+007F"),
    csv_case("line separator in id", "ab\u2028c,你好,train,happy,neutral\n", "utt_id", "U+2028"),
    csv_case("parent path id", "../../etc/passwd,你好,train,happy,neutral\n", "utt_id", "path"),
    csv_case("slash id", "a/b,你好,train,happy,neutral\n", "utt_id", "path"),
    csv_case("backslash id", "a\\b,你好,train,happy,neutral\n", "utt_id", "path"),
    csv_case("absolute id", "/tmp/x,你好,train,happy,neutral\n", "utt_id", "path"),
    csv_case("dot id", ".hidden,你好,train,happy,neutral\n", "utt_id", "path"),
    csv_case("tilde id", "~root,你好,train,happy,neutral\n", "utt_id", "path"),
    csv_case("dotdot inside id", "a..b,你好,train,happy,neutral\n", "utt_id", "path"),
    csv_case("long id", "x" * 300 + ",你好,train,happy,neutral\n", "utt_id", "300"),
    csv_case("empty id", ",你好,train,happy,neutral\n", "utt_id", "empty"),
    csv_case("blank id", "   ,你好,train,happy,neutral\n", "utt_id", "empty"),
    # transcripts in a CSV
    csv_case("RLO in text", "t1,你好\u202e吗,train,happy,neutral\n", "text", "U+202E"),
    csv_case("bell in text", "t1,你好\x07,train,happy,neutral\n", "text", "U+0007"),
    csv_case("escape in text", "t1,\x1b[2J你好,train,happy,neutral\n", "text", "U+001B"),
    csv_case("newline in text", 't1,"你好\n吗",train,happy,neutral\n', "text", "U+000A"),
    csv_case("zero width in text", "t1,你\u200d好,train,happy,neutral\n", "text", "U+200D"),
    csv_case("svg onload", "t1,<svg/onload=alert(1)>,train,happy,neutral\n", "text", "HTML"),
    csv_case(
        "img onerror", 't1,"<img src=x onerror=alert(1)",train,happy,neutral\n', "text", "HTML"
    ),
    csv_case("script tag", "t1,<script>alert(1)</script>,train,happy,neutral\n", "text", "HTML"),
    csv_case("upper case tag", "t1,<SCRIPT>x</SCRIPT>,train,happy,neutral\n", "text", "HTML"),
    csv_case("comment", "t1,你好<!-- x -->,train,happy,neutral\n", "text", "HTML"),
    csv_case("entity", "t1,你好&nbsp;,train,happy,neutral\n", "text", "HTML"),
    csv_case("hex char ref", "t1,&#x3c;script&#x3e;,train,happy,neutral\n", "text", "HTML"),
    csv_case("anchor", 't1,"<a href=""javascript:x"">y</a>",train,happy,neutral\n', "text", "HTML"),
    csv_case("nested tag", "t1,<scr<script>ipt>,train,happy,neutral\n", "text", "HTML"),
    csv_case("doctype", "t1,<!DOCTYPE html>,train,happy,neutral\n", "text", "HTML"),
    csv_case("processing instruction", "t1,<?xml x?>,train,happy,neutral\n", "text", "HTML"),
    # labels, splits, shape
    csv_case("unknown emotion", "t1,你好,train,joy,neutral\n", "emotion", "joy"),
    csv_case("unknown intent", "t1,你好,train,happy,asking\n", "intent", "asking"),
    csv_case("pool with gold", "t1,你好,pool,happy,neutral\n", "split", "pool"),
    csv_case("bad split", "t1,你好,training-ish,happy,neutral\n", "split", "split"),
    csv_case("too many fields", "t1,你好,train,happy,neutral,extra\n", None, "fields"),
    csv_case("too few fields", "t1,你好\n", None, "fields"),
    csv_case(
        "duplicate id", "t1,你好,train,happy,neutral\nt1,好,train,sad,neutral\n", "utt_id", "t1", 3
    ),
    # whole files
    raw_csv(
        "UTF-16 without BOM",
        HEADER.encode("utf-16-le") + "t1,你好,train,happy,neutral\n".encode("utf-16-le"),
        "UTF-16",
        1,
    ),
    raw_csv("UTF-16 BE without BOM", HEADER.encode("utf-16-be"), "UTF-16", 1),
    raw_csv("UTF-16 with BOM", HEADER.encode("utf-16"), "UTF-16"),
    raw_csv("NUL byte", (HEADER + "t1,你\x00好,train,happy,neutral\n").encode(), "NUL", 2),
    raw_csv("GBK file", (HEADER + "t1,你好,train,happy,neutral\n").encode("gbk"), "UTF-8", 2),
    raw_csv("empty file", "", "empty", 1),
    raw_csv("no id column", "text,split\n你好,train\n", "id"),
    # label lists
    label_list("label list path id", "../x happy neutral", "path", "utt_id"),
    label_list("label list RLO id", "ab\u202ec happy neutral", "U+202E", "utt_id"),
    label_list("label list unknown label", "a1 joy neutral", "joy", "emotion"),
    label_list("label list field count", "a1 happy", "fields"),
    # settings from the environment and from options
    env("threshold -1", "MEIJU_THRESHOLD", "-1", "threshold"),
    env("threshold 5", "MEIJU_THRESHOLD", "5", "threshold"),
    env("threshold NaN", "MEIJU_THRESHOLD", "nan", "threshold"),
    env("threshold inf", "MEIJU_THRESHOLD", "inf", "threshold"),
    env("threshold word", "MEIJU_THRESHOLD", "high", "threshold"),
    env("negative lease", "MEIJU_LEASE_SECONDS", "-5", "lease_seconds"),
    env("zero lease", "MEIJU_LEASE_SECONDS", "0", "lease_seconds"),
    env("unknown device", "MEIJU_DEVICE", "gpu", "device"),
    env("device injection", "MEIJU_DEVICE", "cuda; rm -rf /", "device"),
    env("unknown strategy", "MEIJU_QUOTA_STRATEGY", "random", "quota_strategy"),
    env("zero budget", "MEIJU_QUOTA_BUDGET", "0", "quota_budget"),
    env("float budget", "MEIJU_QUOTA_BUDGET", "2.5", "quota_budget"),
    env("bad boolean", "MEIJU_CALIBRATE", "maybe", "calibrate"),
    env("negative workers", "MEIJU_EXTRACT_WORKERS", "-1", "extract_workers"),
    env("threads word", "MEIJU_JOB_THREADS", "many", "job_threads"),
    env("garbage database URL", "MEIJU_DATABASE_URL", "not a url", "database_url"),
    env("mysql database URL", "MEIJU_DATABASE_URL", "mysql://u@h/db", "database_url"),
    env("empty project", "MEIJU_PROJECT", "", "project"),
    option("device option", "device", "tpu"),
    option("database option", "database_url", "::::"),
    # thresholds of a new round (checked before the open round closes)
    threshold("round threshold -1", -1),
    threshold("round threshold 5", 5),
    threshold("round threshold NaN", math.nan),
    threshold("round threshold inf", math.inf),
    threshold("round threshold text", "abc"),
    threshold("round threshold per head", {"emotion": 0.5, "intent": 1.5}, "threshold intent"),
    threshold("round unknown head", {"mood": 0.5}, "mood"),
    # users
    user("empty password", "ann2", "", "password"),
    user("blank password", "ann2", "   ", "password"),
    user("NUL in user name", "an\x00n", "pw", "name"),
    user("empty user name", "", "pw", "name"),
    user("unknown role", "ann2", "pw", "role", role="root"),
    # the transcript editor
    transcript("editor NUL", "你好\x00", "NUL"),
    transcript("editor RLO", "你好\u202e吗", "U+202E"),
    transcript("editor newline", "你好\n吗", "U+000A"),
    transcript("editor svg", "<svg/onload=alert(1)>", "HTML"),
    transcript("editor entity", "你好&amp;", "HTML"),
]


def _snapshot(store: Store) -> dict[str, list]:
    with store.read() as s:
        return {
            t.name: sorted(map(repr, s.execute(t.select()).all()))
            for t in Base.metadata.sorted_tables
        }


@pytest.fixture
def ctx(tmp_path, monkeypatch):
    for var in ("MEIJU_DATABASE_URL", "MEIJU_THRESHOLD", "MEIJU_DEVICE", "MEIJU_PROJECT"):
        monkeypatch.delenv(var, raising=False)
    store = Store(f"sqlite:///{tmp_path / 'meiju.db'}")
    store.upgrade()
    ids = build_fixture(store, n_pool=5)
    settings = Settings.load(data_dir=str(tmp_path), database_url=store.url)
    yield Ctx(store, ids, tmp_path, settings, monkeypatch)
    store.dispose()


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 60 and len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_refused_naming_where_and_nothing_changes(ctx, case):
    before = _snapshot(ctx.store)
    with pytest.raises(InputError) as info:
        case.call(ctx)
    err = info.value
    text = str(err)
    assert "Traceback" not in text and len(text.splitlines()) == 1, text
    if case.field is not None:
        assert err.field == case.field, (err.field, text)
    if case.row is not None:
        assert err.row == case.row and f"row {case.row}" in text, text
    if case.file:
        assert err.path and Path(err.path).name in text, text
    assert case.match.lower() in text.lower(), text
    assert _snapshot(ctx.store) == before  # every table unchanged


def test_a_bad_threshold_keeps_the_open_round_open(ctx):
    from db import queries as q

    with ctx.store.read() as s:
        before = q.active_round(s, project_id=ctx.ids.project_id).id
    with pytest.raises(MeijuError):
        threshold("x", 7).call(ctx)
    with ctx.store.read() as s:
        assert q.active_round(s, project_id=ctx.ids.project_id).id == before


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("²", ()),
        ("99999999999999999999999", ()),
        ("１２", ()),
        ("-3,0,1e3", ()),
        ("5,5,7, 8 ,x", (5, 7, 8)),
        ("9223372036854775807", (9223372036854775807,)),
        ("9223372036854775808", ()),
    ],
)
def test_url_ids_are_ascii_digits_within_the_database_range(raw, expected):
    assert db_ids(raw) == expected
    assert db_id(raw) == (expected[0] if len(expected) == 1 and "," not in raw else None)


def _meiju(*args: str, env: dict[str, str] | None = None):
    import os
    import subprocess
    import sys

    clean = {k: v for k, v in os.environ.items() if not k.startswith("MEIJU_")}
    return subprocess.run(
        [sys.executable, "-m", "meiju_core.cli", *args],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_errors_are_one_clear_line_and_change_nothing(ctx):
    from db import queries as q

    a_file = ctx.tmp / "plain.txt"
    a_file.write_text("x")
    folder = ctx.tmp / "out"
    folder.mkdir()
    db = ["--data-dir", str(ctx.tmp), "--database-url", ctx.store.url, "--project", "fixture"]
    before = _snapshot(ctx.store)
    cases = [
        (["--data-dir", str(a_file / "sub"), "init"], {}, "not writable"),
        (["init"], {"MEIJU_DATABASE_URL": "garbage://::"}, "MEIJU_DATABASE_URL"),
        (["init"], {"MEIJU_DATABASE_URL": "not a url"}, "not a database URL"),
        (["settings"], {"MEIJU_THRESHOLD": "nan"}, "MEIJU_THRESHOLD"),
        (["settings"], {"MEIJU_LEASE_SECONDS": "-1"}, "MEIJU_LEASE_SECONDS"),
        (["--device", "gpu", "settings"], {}, "--device"),
        ([*db, "export", "labels", str(folder)], {}, "is a folder"),
        ([*db, "export", "submission", str(folder)], {}, "is a folder"),
        ([*db, "pseudo-label", "--threshold", "5"], {}, "outside [0, 1]"),
        ([*db, "pseudo-label", "--threshold", "nan"], {}, "outside [0, 1]"),
        ([*db, "import", "csv", str(ctx.tmp / "missing.csv")], {}, "missing.csv"),
    ]
    for args, env_, expected in cases:
        out = _meiju(*args, env=env_)
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        assert out.returncode != 0, (args, out.stdout, out.stderr)
        assert len(lines) == 1 and "Traceback" not in out.stderr, (args, out.stderr)
        assert expected in lines[0], (args, lines)
    assert _snapshot(ctx.store) == before  # the team's open round is still open, nothing stored
    with ctx.store.read() as s:
        assert q.active_round(s, project_id=ctx.ids.project_id) is not None


def test_a_streamed_import_rolls_back_earlier_batches_and_finds_duplicates_across_them(
    ctx, monkeypatch
):
    from meiju_core.io import tables

    monkeypatch.setattr(tables, "BATCH_ROWS", 2)
    before = _snapshot(ctx.store)
    good = "".join(f"s{k},你好,pool,,\n" for k in range(5))
    for tail, row, match in (
        ("bad/id,你好,pool,,\n", 7, "path"),
        ("s1,再见,pool,,\n", 7, "earlier in this file"),
    ):
        with pytest.raises(InputError, match=match) as info:
            import_csv(ctx.store, ctx.file(HEADER + good + tail), project_id=ctx.ids.project_id)
        assert info.value.row == row
        assert _snapshot(ctx.store) == before  # the batches already inserted were rolled back
    out = import_csv(ctx.store, ctx.file(HEADER + good), project_id=ctx.ids.project_id)
    assert out.samples == 5 and out.splits == {"pool": 5}
