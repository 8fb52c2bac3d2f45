"""The builtin feature set and the feature store, on real CPED text, GRID clips and Mandarin WAVs."""

from __future__ import annotations

import csv
import hashlib
import time
from pathlib import Path

import numpy as np
import pytest

from meiju_core.errors import FeatureError
from meiju_core.ml import text
from meiju_core.ml.features.builtin import (
    AUDIO_DIM,
    VISUAL_DIM,
    BuiltinExtractor,
    TextLSA,
    face_hog,
    log_mel,
)
from meiju_core.ml.features.store import FeatureStore
from meiju_core.ml.media import load_audio, probe, sample_frames

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
GRID = sorted((DATA / "grid_samples").glob("*.mpg"))
WAVS = sorted((DATA / "zh_speech_samples").glob("*.wav"))
CLIP = DATA / "grid_samples" / "bbaf2n.mpg"


@pytest.fixture(scope="module")
def cped_lines() -> list[str]:
    with open(DATA / "cped" / "valid_split.csv", encoding="utf-8-sig", newline="") as f:
        return [r["Utterance"] for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def lsa(cped_lines) -> TextLSA:
    text.tokenize("热身")  # load jieba's dictionary outside the timing
    start = time.perf_counter()
    model = TextLSA(dim=128, seed=336).fit(cped_lines)
    model.fit_seconds = time.perf_counter() - start
    return model


# --- text ----------------------------------------------------------------------------------------


def test_lsa_fits_all_of_cped_quickly(lsa, cped_lines):
    assert lsa.n_docs == len(cped_lines) == 11137
    assert len(lsa.vocab) > 5000 and {"？", "，", "吗"} <= set(lsa.vocab)
    assert lsa.vectors.shape == (len(lsa.vocab), 128) and lsa.vectors.dtype == np.float32
    assert lsa.fit_seconds < 15  # about 3 s on an idle 2-core machine


def test_lsa_token_vectors(lsa):
    line = "我这堵着车，你倒睡着了。"
    vecs = lsa.transform(line)
    assert vecs.dtype == np.float32 and vecs.shape == (len(text.tokenize(line)), 128)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    # punctuation is a token with its own vector: the suggestion changes the features
    assert lsa.transform("撞车了吗？").shape[0] == lsa.transform("撞车了吗").shape[0] + 1
    assert lsa.transform("").shape == (1, 128) and not lsa.transform("").any()
    assert lsa.transform("   ").shape == (1, 128)


def test_lsa_unknown_tokens_fall_back_to_characters():
    lsa = TextLSA(dim=8, seed=1).fit(["我爱北京", "天安门", "我爱天安门", "北京很大"])
    assert "北京天安门" not in lsa.vocab
    chars = np.mean([lsa.vectors[lsa.vocab[c]] for c in "北京天安门"], axis=0)
    got = lsa._vector("北京天安门")
    np.testing.assert_allclose(got, chars / np.linalg.norm(chars), atol=1e-6)
    assert not lsa._vector("😀").any()  # nothing known: zeros


def test_lsa_small_corpus_pads_to_dim():
    lsa = TextLSA(dim=128).fit(["撞车了吗", "你倒睡着了"])
    assert lsa.transform("撞车了").shape == (2, 128)


def test_lsa_is_deterministic(cped_lines):
    a = TextLSA(dim=32, seed=7).fit(cped_lines[:2000])
    b = TextLSA(dim=32, seed=7).fit(cped_lines[:2000])
    assert a.vocab == b.vocab
    np.testing.assert_array_equal(a.vectors, b.vectors)


def test_lsa_save_and_load(lsa, tmp_path):
    path = lsa.save(tmp_path / "text_lsa.npz")
    with np.load(path, allow_pickle=False) as z:  # no pickle inside
        assert set(z.files) == {"vectors", "meta"}
    loaded = TextLSA.load(path)
    assert loaded.vocab == lsa.vocab and loaded.dim == 128 and loaded.seed == 336
    np.testing.assert_array_equal(loaded.transform("撞车了吗？"), lsa.transform("撞车了吗？"))
    (tmp_path / "bad.npz").write_bytes(b"not a model")
    with pytest.raises(FeatureError, match="bad.npz"):
        TextLSA.load(tmp_path / "bad.npz")
    with pytest.raises(FeatureError):
        TextLSA(8).transform("未训练")
    with pytest.raises(FeatureError):
        TextLSA(8).fit(["", "   "])


# --- audio ---------------------------------------------------------------------------------------


def test_log_mel_of_a_grid_clip():
    audio = load_audio(CLIP)
    mel = log_mel(audio)
    assert mel.dtype == np.float32 and mel.shape == (1 + len(audio) // 160, AUDIO_DIM)
    assert abs(mel.shape[0] - probe(CLIP).duration * 100) <= 2


@pytest.mark.parametrize("wav", WAVS, ids=lambda p: p.stem)
def test_log_mel_of_mandarin_speech(wav):
    mel = log_mel(load_audio(wav))
    assert abs(mel.shape[0] - probe(wav).duration * 100) <= 2
    assert np.isfinite(mel).all() and mel.std() > 1  # speech varies over time and frequency


def test_log_mel_known_answers():
    sr = 16000
    t = np.arange(sr, dtype=np.float32) / sr
    tone = 0.5 * np.sin(2 * np.pi * 1000 * t).astype(np.float32)
    mel = log_mel(tone)
    assert mel.shape == (101, 80)
    peak = int(np.argmax(mel[50]))  # 1 kHz is about 1000 mel: bin ~ 80·(1000-32)/(2840-32)
    assert 25 <= peak <= 30
    silence = log_mel(np.zeros(1600, np.float32))
    np.testing.assert_allclose(silence, np.log(1e-10), rtol=1e-6)
    assert log_mel(np.zeros(0, np.float32)).shape == (1, 80)
    with pytest.raises(FeatureError):
        log_mel(np.zeros((2, 100), np.float32))
    with pytest.raises(FeatureError):
        log_mel(np.array([0.0, np.nan], np.float32))


# --- visual --------------------------------------------------------------------------------------


@pytest.mark.parametrize("clip", GRID, ids=lambda p: p.stem)
def test_faces_found_in_every_grid_frame(clip):
    frames, _ = sample_frames(clip, every=30)
    feats, choices = face_hog(frames)
    assert feats.shape == (3, VISUAL_DIM) and feats.dtype == np.float32
    assert choices == ["face"] * 3
    assert np.isfinite(feats).all() and (feats > 0).any()


def test_center_crop_when_no_face():
    blank = np.full((2, 120, 160, 3), 128, np.uint8)
    feats, choices = face_hog(blank)
    assert choices == ["center", "center"] and feats.shape == (2, VISUAL_DIM)
    assert face_hog(np.zeros((0, 32, 32, 3), np.uint8))[0].shape == (0, VISUAL_DIM)
    with pytest.raises(FeatureError):
        face_hog(np.zeros((1, 32, 32), np.uint8))
    with pytest.raises(FeatureError):
        face_hog(np.zeros((1, 32, 32, 3), np.float32))


# --- the extractor -------------------------------------------------------------------------------


def test_extract_all_three_modalities(lsa):
    ex = BuiltinExtractor(lsa)
    assert ex.dims == {"text": 128, "audio": 80, "visual": 1764}
    feats = ex.extract({"text": "我这堵着车，你倒睡着了。", "video_path": str(CLIP)})
    assert set(feats) == {"text", "audio", "visual"} and feats.missing == {}
    for modality, array in feats.items():
        assert array.dtype == np.float32 and array.ndim == 2
        assert array.shape[1] == ex.dims[modality]
    assert feats["audio"].shape[0] == pytest.approx(300, abs=3)  # 3 s at 100 frames/s
    assert feats["visual"].shape[0] == 3
    assert feats.info["visual_choices"] == ["face"] * 3


def test_extract_separate_audio_file(lsa):
    feats = BuiltinExtractor(lsa).extract(
        {"text": "欢迎大家来体验达摩院推出的语音识别模型", "audio_path": str(WAVS[0])}
    )
    assert set(feats) == {"text", "audio"}
    assert feats.missing == {"visual": "not in sample"}


def test_bad_media_marks_the_modality_missing(lsa, tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00" * 1000)
    feats = BuiltinExtractor(lsa).extract({"text": "撞车了吗", "video_path": str(bad)})
    assert set(feats) == {"text"}
    assert set(feats.missing) == {"audio", "visual"}
    assert all(str(bad) in reason for reason in feats.missing.values())
    wav_as_video = BuiltinExtractor(lsa).extract({"video_path": str(WAVS[0])})
    assert set(wav_as_video) == {"audio"} and "no video stream" in wav_as_video.missing["visual"]


def test_extractor_needs_a_fitted_text_model():
    with pytest.raises(FeatureError):
        BuiltinExtractor(TextLSA(8))
    ex = BuiltinExtractor.fit(["撞车了吗", "你倒睡着了"], dim=16)
    assert ex.extract({"text": "撞车了吗"})["text"].shape == (3, 16)


# --- the store -----------------------------------------------------------------------------------


def test_store_round_trip(tmp_path):
    store = FeatureStore(tmp_path, "builtin")
    array = np.random.default_rng(0).standard_normal((300, 80)).astype(np.float32)
    path, digest = store.save("dia1_utt1", "audio", array)
    assert path == tmp_path / "builtin" / "audio" / "dia1_utt1.npy"
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    np.testing.assert_array_equal(store.load("dia1_utt1", "audio"), array)
    assert store.exists("dia1_utt1", "audio") and not store.exists("dia1_utt2", "audio")
    assert store.up_to_date("dia1_utt1", "audio", digest)
    assert [p.name for p in path.parent.iterdir()] == ["dia1_utt1.npy"]  # no temp file left
    # same content, same hash; new content, the old hash is stale
    assert store.save("dia1_utt1", "audio", array.copy())[1] == digest
    store.save("dia1_utt1", "audio", array[:10])
    assert not store.up_to_date("dia1_utt1", "audio", digest)
    assert not store.up_to_date("dia9", "audio", digest)


def test_store_rejects_bad_arrays(tmp_path):
    store = FeatureStore(tmp_path)
    nan = np.zeros((4, 8), np.float32)
    nan[2, 3] = np.nan
    with pytest.raises(FeatureError, match=r"utterance 'u1', modality 'visual'.*NaN"):
        store.save("u1", "visual", nan)
    for bad in (np.zeros((4, 8)), np.zeros(8, np.float32), np.zeros((0, 8), np.float32), [[1.0]]):
        with pytest.raises(FeatureError, match="u1"):
            store.save("u1", "text", bad)
    assert not (tmp_path / "builtin").exists()  # nothing written
    for unsafe in ("../escape", "a/b", "", ".."):
        with pytest.raises(FeatureError):
            store.save(unsafe, "text", np.zeros((1, 8), np.float32))
    with pytest.raises(FeatureError, match="no audio features for utterance 'u2'"):
        store.load("u2", "audio")


def test_extracted_features_go_into_the_store(lsa, tmp_path):
    store = FeatureStore(tmp_path)
    feats = BuiltinExtractor(lsa).extract({"text": "撞车了吗", "video_path": str(GRID[1])})
    hashes = {m: store.save("grid_brbk7n", m, a)[1] for m, a in feats.items()}
    for modality, digest in hashes.items():
        assert store.up_to_date("grid_brbk7n", modality, digest)
        np.testing.assert_array_equal(store.load("grid_brbk7n", modality), feats[modality])
