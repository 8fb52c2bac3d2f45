"""Exports (``meiju_core.io.export``) and the ``import`` / ``export`` jobs, run in-process with
``jobs.execute`` (no worker): CSV contents checked row by row against what was stored."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from sqlalchemy import func, select

from db.fixtures import build_fixture
from db.models import Decision, Job, Prediction, Project, Sample, Transcript
from meiju_core.errors import InputError, PermissionDenied
from meiju_core.io import export
from meiju_core.ml import text
from meiju_core.services import decisions, jobs, transcripts
from meiju_core.settings import Settings


@pytest.fixture
def fx(store, tmp_path):
    ids = build_fixture(store, n_pool=20, n_train=6, n_valid=4, n_test=4)
    settings = Settings.load(data_dir=str(tmp_path), database_url=store.url, project="fixture")
    return store, ids, settings


def read(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _predicted(store, mv: int, sample_id: int, head: str) -> tuple[str, float]:
    with store.read() as s:
        p = s.scalars(
            select(Prediction).where(
                Prediction.model_version_id == mv,
                Prediction.sample_id == sample_id,
                Prediction.head == head,
            )
        ).one()
        return p.label, p.confidence


def _utt(store, sample_id: int) -> str:
    with store.read() as s:
        return s.get(Sample, sample_id).utt_id


def test_labels_carry_gold_and_accepted_pseudo_labels_with_provenance(fx):
    store, ids, settings = fx
    admin, rid, mv = {"id": ids.admin_id}, ids.round_id, ids.model_version_id
    a, b, c = ids.pool_ids[:3]
    decisions.decide(store, round_id=rid, sample_id=a, action="accept", user=admin)
    predicted, _ = _predicted(store, mv, b, "emotion")
    other = next(e for e in ("happy", "sad") if e != predicted)
    decisions.decide(  # the reviewer chose another class
        store,
        round_id=rid,
        sample_id=b,
        action="accept",
        user=admin,
        labels={"emotion": other},
        heads=["emotion"],
    )
    decisions.decide(store, round_id=rid, sample_id=c, action="reject", user=admin)
    n = export.export_labels(store, settings, project_id=ids.project_id)
    path = settings.data_dir / "exports" / "labels.csv"
    rows = read(path)
    assert n == len(rows) == (6 + 4 + 4) * 2 + 3
    assert list(rows[0]) == list(export.LABEL_COLUMNS)
    gold = [r for r in rows if r["kind"] == "gold"]
    assert len(gold) == 28
    assert {r["source"] for r in gold} == {"fixture"}
    assert all(r["reviewer"] == r["round_id"] == r["confidence"] == "" for r in gold)
    pseudo = {(r["utt_id"], r["head"]): r for r in rows if r["kind"] == "pseudo"}
    assert set(pseudo) == {
        (_utt(store, a), "emotion"),
        (_utt(store, a), "intent"),
        (_utt(store, b), "emotion"),
    }
    label, conf = _predicted(store, mv, a, "intent")
    r = pseudo[(_utt(store, a), "intent")]
    assert (r["label"], r["source"], r["split"]) == (label, "model", "pool")
    assert (r["model_version_id"], r["model_version"]) == (str(mv), "fixture-model")
    assert float(r["confidence"]) == pytest.approx(conf, abs=1e-6)
    assert (r["round_id"], r["reviewer"]) == (str(rid), "admin")
    assert r["decided_at"].endswith("+00:00")
    r = pseudo[(_utt(store, b), "emotion")]
    assert (r["label"], r["source"]) == (other, "reviewer")


def test_labels_of_one_round_only(fx):
    store, ids, settings = fx
    decisions.decide(
        store, round_id=ids.round_id, sample_id=ids.pool_ids[0], action="accept", user=None
    )
    path = settings.data_dir / "one.csv"
    assert export.export_labels(store, settings, project_id=ids.project_id, path=path) == 30
    assert (
        export.export_labels(
            store, settings, project_id=ids.project_id, path=path, round_id=ids.round_id + 1
        )
        == 28
    )


def test_decision_log_keeps_undos(fx):
    store, ids, settings = fx
    user = {"id": ids.annotator_id}
    decisions.decide(
        store,
        round_id=ids.round_id,
        sample_id=ids.pool_ids[0],
        action="accept",
        user=user,
        ms_spent=1500,
    )
    decisions.undo(store, round_id=ids.round_id, user=user)
    decisions.decide(
        store, round_id=ids.round_id, sample_id=ids.pool_ids[1], action="skip", user=user
    )
    n = export.export_decisions(store, settings, project_id=ids.project_id)
    rows = read(settings.data_dir / "exports" / "decisions.csv")
    with store.read() as s:
        stored = s.scalar(select(func.count()).select_from(Decision))
    assert n == len(rows) == stored == 5
    assert list(rows[0]) == list(export.DECISION_COLUMNS)
    assert [r["action"] for r in rows] == ["accept", "accept", "undo", "undo", "skip"]
    assert [r["undoes_id"] for r in rows[2:4]] == [rows[0]["decision_id"], rows[1]["decision_id"]]
    assert {r["reviewer"] for r in rows} == {"ann"}
    assert rows[0]["ms_spent"] == "1500" and rows[4]["head"] == ""


def test_transcript_edits_with_kind_and_editor(fx):
    store, ids, settings = fx
    sid = ids.pool_ids[2]
    with store.read() as s:
        before = s.scalars(select(Transcript.text).where(Transcript.sample_id == sid)).one()
    fixed = text.suggest(before) + "。" if text.suggest(before) == before else text.suggest(before)
    v = transcripts.save_transcript(
        store, sample_id=sid, text=fixed, expected_version=1, user={"id": ids.admin_id}
    )
    transcripts.save_transcript(
        store, sample_id=sid, text="完全不同。", expected_version=v, user=None
    )
    n = export.export_transcript_edits(store, settings, project_id=ids.project_id)
    rows = read(settings.data_dir / "exports" / "transcript_edits.csv")
    assert n == 2
    assert [(r["kind"], r["editor"]) for r in rows] == [("punctuation", "admin"), ("lexical", "")]
    assert (rows[0]["before"], rows[0]["after"]) == (before, fixed)
    assert (rows[1]["before"], rows[1]["after"]) == (fixed, "完全不同。")


def test_export_files_writes_the_chosen_files(fx):
    store, ids, settings = fx
    events = []
    out = export.export_files(
        store,
        settings,
        project_id=ids.project_id,
        what=["decisions", "submission"],
        folder=settings.data_dir / "exports" / "x",
        progress=events.append,
    )
    assert list(out) == ["submission", "decisions"]
    assert out["submission"]["rows"] == 4  # the test split
    assert read(Path(out["submission"]["path"]))[0].keys() == {"filename", "emo_pred", "int_pred"}
    assert events[-1]["progress"] == 1.0
    with pytest.raises(InputError, match="exports are"):
        export.export_files(store, settings, project_id=ids.project_id, what=["x"], folder="y")


# --------------------------------------------------------------------------- jobs


def _run(store, settings, kind, params, *, project_id, user) -> Job:
    job_id = jobs.submit(
        store, settings, kind=kind, params=params, project_id=project_id, user=user, enqueue=False
    )
    jobs.execute(store, settings, job_id)
    with store.read() as s:
        return s.get(Job, job_id)


def test_export_job_writes_files_under_exports(fx):
    store, ids, settings = fx
    job = _run(
        store,
        settings,
        "export",
        {"what": list(export.EXPORTS), "split": "valid"},
        project_id=ids.project_id,
        user={"id": ids.annotator_id, "name": "ann", "role": "annotator"},
    )
    assert job.status == "succeeded", job.error
    files = job.result["files"]
    assert list(files) == list(export.EXPORTS)
    assert files["submission"]["rows"] == 4
    folder = settings.data_dir / "exports" / f"job{job.id}"
    for info in files.values():
        assert Path(info["path"]).parent == folder and Path(info["path"]).is_file()


CSV = "utt_id,text,split,emotion,intent\nnew_1,你好,train,happy,agreeing\nnew_2,再见,pool,,\n"


def test_import_job_csv_for_admins_only(fx):
    store, ids, settings = fx
    path = settings.data_dir / "new.csv"
    path.write_text(CSV, encoding="utf-8")
    params = {"source": "csv", "path": str(path)}
    with pytest.raises(PermissionDenied, match="only admins"):  # refused before it is queued
        _run(
            store,
            settings,
            "import",
            params,
            project_id=ids.project_id,
            user={"id": ids.annotator_id, "name": "ann", "role": "annotator"},
        )
    with store.read() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 0
    job = _run(
        store,
        settings,
        "import",
        params,
        project_id=ids.project_id,
        user={"id": ids.admin_id, "name": "admin", "role": "admin"},
    )
    assert job.status == "succeeded", job.error
    assert job.result["samples"] == 2 and job.result["splits"]["train"] == 1
    with store.read() as s:
        assert s.scalar(select(func.count()).where(Sample.utt_id.like("new_%"))) == 2


def test_import_job_release_makes_a_new_project(fx, tmp_path):
    store, ids, settings = fx
    lang = tmp_path / "release" / "Track1" / "Mandarin"
    for folder, prefix, emo in (
        ("Training", "Track1_Training", "happy"),
        ("Validation", "Track1_Validation", "sad"),
    ):
        (lang / "Annotation" / folder).mkdir(parents=True)
        rows = ["FileName,Subtitle,Emotion,Intent"]
        for k in (1, 2):
            (lang / "Annotation" / folder / f"{prefix}_{k:05d}.mp4").write_bytes(b"")
            rows.append(f"{prefix}_{k:05d}.mp4,你好{k},{emo},neutral")
        (lang / "Annotation" / f"{folder}_transcription.csv").write_text(
            "\n".join(rows) + "\n", encoding="utf-8"
        )
    job = _run(
        store,
        settings,
        "import",
        {
            "source": "release",
            "path": str(tmp_path / "release"),
            "project_name": "meiju",
            "probe_media": False,
        },
        project_id=None,
        user={"id": ids.admin_id, "name": "admin", "role": "admin"},
    )
    assert job.status == "succeeded", job.error
    assert (job.result["splits"]["train"], job.result["splits"]["valid"]) == (2, 2)
    with store.read() as s:
        assert (
            s.scalar(select(Project.id).where(Project.name == "meiju")) == job.result["project_id"]
        )
