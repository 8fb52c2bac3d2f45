"""The extraction job (meiju_core.services.extraction) on a small real project: 12 CPED utterances
(text only) and 3 GRID clips (MPEG-1 video + MP2 audio, 3 s each)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from _paths import DEMO
from sqlalchemy import func, select
from typer.testing import CliRunner

from db import Store
from db.models import FeatureFile, FeatureSet, Project, Sample, Transcript
from meiju_core.cli import app
from meiju_core.errors import InputError, JobError, ModelUnavailable
from meiju_core.io.cped import cped_rows, grid_rows
from meiju_core.io.tables import bulk_insert
from meiju_core.schema import LabelSchema
from meiju_core.services import extraction
from meiju_core.services import extraction as extraction_service
from meiju_core.settings import Settings

N_CPED, N_GRID = 12, 3
N_SAMPLES = N_CPED + N_GRID
# text for every sample, audio + visual for each clip
N_FILES = N_SAMPLES + 2 * N_GRID


@pytest.fixture(scope="module")
def rows():
    return cped_rows(DEMO / "cped" / "valid_split.csv")[:N_CPED] + grid_rows(DEMO / "grid")[:N_GRID]


def _small_project(data_dir, rows):
    """A migrated store with one project named ``small`` holding ``rows``: (settings, store, id)."""
    settings = Settings.load(data_dir=str(data_dir), database_url="", project="small")
    store = Store(settings.database_url)
    store.upgrade()
    with store.write() as s:
        p = Project(name="small", label_schema=LabelSchema.meiju_track1().to_dict(), settings={})
        s.add(p)
        s.flush()
        bulk_insert(s, p.id, rows)
        pid = p.id
    return settings, store, pid


@pytest.fixture
def project(tmp_path, rows):
    """A migrated store with one project named ``small``; yields (settings, store, project id)."""
    settings, store, pid = _small_project(tmp_path, rows)
    yield settings, store, pid
    store.dispose()


def _files(store, fs_id=None):
    """{(utt_id, modality): (content_hash, path)} of the stored feature_file rows."""
    with store.read() as s:
        q = select(
            Sample.utt_id, FeatureFile.modality, FeatureFile.content_hash, FeatureFile.path
        ).join(Sample, Sample.id == FeatureFile.sample_id)
        if fs_id is not None:
            q = q.where(FeatureFile.feature_set_id == fs_id)
        return {(u, m): (h, p) for u, m, h, p in s.execute(q)}


def _count(store):
    with store.read() as s:
        return s.scalar(select(func.count()).select_from(FeatureFile))


def test_extracts_every_sample_and_records_the_feature_set(project):
    settings, store, pid = project
    events = []
    fs_id = extraction.extract_features(
        store, settings, project_id=pid, workers=1, progress=events.append
    )
    files = _files(store, fs_id)
    assert len(files) == N_FILES
    with store.read() as s:
        fs = s.get(FeatureSet, fs_id)
        assert fs.extractor == "builtin"
        assert fs.dims == {"text": 128, "audio": 80, "visual": 1764}
        assert fs.settings["frame_every"] == 30 and fs.settings["audio_hz"] == 16000
        assert fs.settings["text_dim"] == 128
        shapes = {
            m: shape
            for m, shape in s.execute(select(FeatureFile.modality, FeatureFile.shape)).all()
        }
    # a 3 s GRID clip at 25 fps: frames 0, 30, 60; 300 log-mel frames (100 per second)
    assert shapes["visual"] == [3, 1764]
    assert shapes["audio"][1] == 80 and 290 <= shapes["audio"][0] <= 310
    for (_utt, _m), (_h, path) in files.items():
        arr = np.load(path)
        assert arr.dtype == np.float32 and arr.ndim == 2
    last = events[-1]
    assert last["progress"] == 1.0 and last["samples_done"] == N_SAMPLES
    assert last["samples_total"] == N_SAMPLES and last["samples_per_second"] > 0
    assert f"{N_FILES} files written" in last["message"]


def test_rows_are_committed_in_chunks_while_the_run_goes_on(project):
    settings, store, pid = project
    seen = []

    def watch(event):
        if "samples_done" in event:
            seen.append((event["samples_done"], _count(store)))

    extraction.extract_features(
        store, settings, project_id=pid, workers=1, chunk_size=4, progress=watch
    )
    # at each chunk the rows of every sample done so far are already in the store
    mid = [(done, n) for done, n in seen if 0 < done < N_SAMPLES]
    assert mid and all(n > 0 for _done, n in mid)
    assert seen[-1] == (N_SAMPLES, N_FILES)


@pytest.mark.parametrize("how", ["cancel", "raise"])
def test_an_interrupted_run_keeps_its_chunks_and_a_rerun_does_only_the_rest(project, how):
    settings, store, pid = project
    calls = {"chunks": 0}

    def interrupt(event):
        if event.get("message", "").startswith("features ") and "/" in event["message"]:
            calls["chunks"] += 1
            if calls["chunks"] == 2:  # after the second chunk of 4 samples
                if how == "raise":
                    raise KeyboardInterrupt
                return "cancel"
        return None

    expected = JobError if how == "cancel" else KeyboardInterrupt
    with pytest.raises(expected):
        extraction.extract_features(
            store, settings, project_id=pid, workers=1, chunk_size=4, progress=interrupt
        )
    kept = _files(store)
    kept_samples = {utt for utt, _m in kept}
    assert len(kept_samples) == 8  # two chunks of 4 samples, every modality of each
    assert 0 < len(kept) < N_FILES

    events = []
    extraction.extract_features(store, settings, project_id=pid, workers=1, progress=events.append)
    after = _files(store)
    assert len(after) == N_FILES
    assert {k: v for k, v in after.items() if k in kept} == kept  # finished rows untouched
    done = events[-1]
    assert done["samples_done"] == N_SAMPLES - 8 and done["samples_skipped"] == 8
    assert f"{N_FILES - len(kept)} files written" in done["message"]

    # a third run finds everything up to date
    events.clear()
    extraction.extract_features(store, settings, project_id=pid, workers=1, progress=events.append)
    assert events[-1]["samples_done"] == 0 and events[-1]["samples_skipped"] == N_SAMPLES
    assert _files(store) == after


def test_only_changed_transcripts_and_media_are_redone(project):
    settings, store, pid = project
    fs_id = extraction.extract_features(store, settings, project_id=pid, workers=1)
    before = _files(store, fs_id)
    with store.write() as s:
        tr = s.scalars(select(Transcript).order_by(Transcript.id)).first()
        utt = s.get(Sample, tr.sample_id).utt_id
        tr.text = tr.text.replace(" ", "，") + "。"
    events = []
    extraction.extract_features(store, settings, project_id=pid, workers=1, progress=events.append)
    after = _files(store, fs_id)
    changed = {k for k in after if after[k] != before[k]}
    assert changed == {(utt, "text")}
    assert after[(utt, "text")][0] == extraction.text_key(tr.text)
    assert events[-1]["samples_done"] == 1
    # a deleted feature file is made again
    path = after[(utt, "text")][1]
    os.remove(path)
    extraction.extract_features(store, settings, project_id=pid, workers=1)
    assert _files(store, fs_id) == after and os.path.exists(path)


@pytest.mark.slow
def test_parallel_and_serial_give_identical_arrays(tmp_path, rows):
    arrays = {}
    for workers in (1, 2):
        settings, store, pid = _small_project(tmp_path / f"w{workers}", rows)
        fs_id = extraction.extract_features(store, settings, project_id=pid, workers=workers)
        arrays[workers] = {k: np.load(p) for k, (_h, p) in _files(store, fs_id).items()}
        store.dispose()
    assert arrays[1].keys() == arrays[2].keys() and len(arrays[1]) == N_FILES
    for key in arrays[1]:
        np.testing.assert_array_equal(arrays[1][key], arrays[2][key], err_msg=str(key))


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """Folders of tiny random models built from configs (reference/stack.md §8): a BERT with a
    character vocabulary (text, D 32), a HuBERT (audio, D 16), a CLIP vision tower with its
    projection (visual, D 24)."""
    torch = pytest.importorskip("torch")
    tr = pytest.importorskip("transformers")

    root = tmp_path_factory.mktemp("tiny_models")
    torch.manual_seed(0)
    texts = [r.text or "" for r in cped_rows(DEMO / "cped" / "valid_split.csv")[:200]]
    chars = sorted({c for t in texts for c in t if not c.isspace()})
    (root / "vocab.txt").write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars]) + "\n", encoding="utf-8"
    )
    dirs = {m: root / m for m in ("text", "audio", "visual")}
    tr.BertModel(
        tr.BertConfig(
            vocab_size=len(chars) + 5,
            hidden_size=32,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=37,
        )
    ).save_pretrained(dirs["text"])
    tr.BertTokenizer(vocab=str(root / "vocab.txt")).save_pretrained(dirs["text"])
    tr.HubertModel(
        tr.HubertConfig(
            hidden_size=16,
            conv_dim=(32, 32, 32),
            conv_stride=(5, 8, 8),
            conv_kernel=(10, 8, 8),
            num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=2,
            num_hidden_layers=4,
            num_attention_heads=2,
            intermediate_size=20,
            vocab_size=32,
            feat_extract_norm="layer",
            do_stable_layer_norm=True,
        )
    ).save_pretrained(dirs["audio"])
    tr.Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, do_normalize=True, return_attention_mask=True
    ).save_pretrained(dirs["audio"])
    tr.CLIPVisionModelWithProjection(
        tr.CLIPVisionConfig(
            image_size=30,
            patch_size=6,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=37,
            projection_dim=24,
        )
    ).save_pretrained(dirs["visual"])
    tr.CLIPImageProcessor(
        size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30}
    ).save_pretrained(dirs["visual"])
    return dirs


@pytest.mark.slow
def test_pretrained_set_with_local_models_serial_and_parallel(
    tmp_path, rows, tiny_models, monkeypatch
):
    for modality, path in tiny_models.items():
        monkeypatch.setenv(f"MEIJU_{modality.upper()}_MODEL", str(path))
    monkeypatch.setenv("MEIJU_FEATURE_DEVICE", "cpu")
    arrays = {}
    for workers in (1, 2):
        settings, store, pid = _small_project(tmp_path / f"w{workers}", rows)
        fs_id = extraction.extract_features(
            store, settings, project_id=pid, set_name="pretrained", workers=workers
        )
        files = _files(store, fs_id)
        arrays[workers] = {k: np.load(p) for k, (_h, p) in files.items()}
        with store.read() as s:
            fs = s.get(FeatureSet, fs_id)
            assert fs.extractor == "pretrained" and fs.name == "pretrained"
            assert fs.dims == {"text": 32, "audio": 16, "visual": 24}
            assert fs.settings["text_model"] == str(tiny_models["text"])
            assert fs.settings["frame_every"] == 30 and fs.settings["audio_hz"] == 16000
        events = []
        extraction.extract_features(
            store, settings, project_id=pid, set_name="pretrained", progress=events.append
        )
        assert events[-1]["samples_done"] == 0  # all up to date
        store.dispose()
    assert arrays[1].keys() == arrays[2].keys() and len(arrays[1]) == N_FILES
    for (utt, modality), arr in arrays[1].items():
        assert (
            arr.dtype == np.float32
            and arr.shape[1] == {"text": 32, "audio": 16, "visual": 24}[modality]
        )
        np.testing.assert_allclose(arr, arrays[2][(utt, modality)], rtol=1e-5, atol=1e-5)
    # a 3 s clip: 3 sampled frames, about 150 HuBERT frames (20 ms each)
    grid_utt = next(u for u, m in arrays[1] if m == "visual")
    assert arrays[1][(grid_utt, "visual")].shape[0] == 3
    assert 140 <= arrays[1][(grid_utt, "audio")].shape[0] <= 151


def test_pretrained_without_models_fails_fast_and_stores_nothing(project, tmp_path, monkeypatch):
    settings, store, pid = project
    monkeypatch.setenv("MEIJU_TEXT_MODEL", str(tmp_path / "no-such-model"))
    with pytest.raises(ModelUnavailable, match="no-such-model"):
        extraction.extract_features(store, settings, project_id=pid, set_name="pretrained")
    with store.read() as s:
        assert s.scalar(select(func.count()).select_from(FeatureSet)) == 0
    assert _count(store) == 0
    assert not (settings.feature_dir / f"project{pid}").exists()


def test_unknown_set_and_the_pipeline_entry_point(project):
    settings, store, pid = project
    with pytest.raises(InputError, match="unknown feature set"):
        extraction_service.extract_features(store, settings, project_id=pid, set_name="clip")
    fs_id = extraction_service.extract_features(store, settings, project_id=pid, workers=1)
    assert len(_files(store, fs_id)) == N_FILES


def test_meiju_extract_command(project):
    settings, store, pid = project
    runner = CliRunner()
    base = ["--data-dir", str(settings.data_dir), "--project", "small"]
    result = runner.invoke(app, [*base, "extract", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "feature set #" in result.output and "ready" in result.output
    assert _count(store) == N_FILES
    bad = runner.invoke(app, [*base, "extract", "--set", "clip"])
    assert bad.exit_code == 1 and "unknown feature set" in bad.output
    # the pretrained set without its models: a readable error naming the model, nothing stored
    result = runner.invoke(
        app,
        [*base, "extract", "--set", "pretrained"],
        env={"MEIJU_TEXT_MODEL": str(settings.data_dir / "no-roberta")},
    )
    assert result.exit_code == 1 and "no-roberta" in result.output


def test_extract_runs_as_a_background_job(project, monkeypatch):
    from meiju_core.services import jobs

    settings, store, pid = project
    jid = jobs.submit(  # two spawned media workers, as a job runs them by default on 2 CPUs
        store,
        settings,
        kind="extract",
        params={"set": "builtin", "workers": 2},
        project_id=pid,
        enqueue=False,
    )
    result = jobs.execute(store, settings, jid)
    with store.read() as s:
        job = s.get(jobs.Job, jid)
        assert job.status == "succeeded", job.error
        assert job.progress == 1.0 and job.detail["samples_done"] == N_SAMPLES
        assert f"{N_FILES} files written" in job.log
    assert len(_files(store, result["feature_set_id"])) == N_FILES


def test_worker_count_comes_from_the_setting(monkeypatch, tmp_path):
    monkeypatch.setenv("MEIJU_EXTRACT_WORKERS", "3")
    settings = Settings.load(data_dir=str(tmp_path))
    assert settings.extract_workers == 3
    assert extraction.resolve_workers(None, settings) == 3
    assert extraction.resolve_workers(1, settings) == 1  # an explicit count wins
    cpus = len(os.sched_getaffinity(0))
    assert extraction.resolve_workers(None, settings.with_(extract_workers=0)) == cpus
    with pytest.raises(InputError, match="workers"):
        extraction.resolve_workers(-1, settings)
    monkeypatch.setenv("MEIJU_EXTRACT_WORKERS", "many")
    with pytest.raises(InputError, match="MEIJU_EXTRACT_WORKERS='many'"):
        Settings.load(data_dir=str(tmp_path))


def test_parallel_workers_start_when_main_is_not_importable(tmp_path, rows, monkeypatch):
    """A Streamlit page run in-process (AppTest) becomes ``__main__``; spawned workers must not
    re-run it."""
    import sys
    import types

    script = tmp_path / "page.py"
    script.write_text("raise ImportError('a page script, not importable on its own')\n")
    fake = types.ModuleType("__main__")
    fake.__file__ = str(script)
    fake.__spec__ = None
    monkeypatch.setitem(sys.modules, "__main__", fake)
    settings, store, pid = _small_project(tmp_path / "p", rows)
    fs_id = extraction.extract_features(store, settings, project_id=pid, workers=2)
    assert len(_files(store, fs_id)) == N_FILES
    assert sys.modules["__main__"] is fake  # put back afterwards
