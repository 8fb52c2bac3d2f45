"""The pretrained feature set, on tiny random models built from configs (no hub, ever).

Tiny BERT (with a Chinese character vocab.txt), CLIP vision (with projection) and HuBERT models
are built once per session in a temp folder with ``save_pretrained`` and loaded back through the
same ``from_pretrained(..., local_files_only=True)`` path the real models take
(reference/stack.md §8). Inputs are real: CPED subtitles, a Mandarin WAV, a GRID speaking-face clip.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from meiju_core.errors import ModelUnavailable  # noqa: E402
from meiju_core.ml import media  # noqa: E402
from meiju_core.ml.features.builtin import Extraction  # noqa: E402
from meiju_core.ml.features.pretrained import (  # noqa: E402
    PretrainedExtractor,
    PretrainedSettings,
    face_crops,
)

# the shared real data beside the project checkout (as tests/conftest.py)
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

GRID_CLIP = SHARED_DATA / "grid_samples" / "bbaf2n.mpg"
ZH_WAV = SHARED_DATA / "zh_speech_samples" / "funasr_asr_example.wav"
TEXT_LAYERS = 5  # more than 4, so "the last four" is a real choice
TEXT_DIM, AUDIO_DIM, VISUAL_DIM = 32, 16, 24
HAS_HAAR = hasattr(__import__("cv2"), "CascadeClassifier")


def _cped_texts(n: int = 40) -> list[str]:
    with open(SHARED_DATA / "cped" / "valid_split.csv", encoding="utf-8-sig") as f:
        return [row["Utterance"] for _, row in zip(range(n), csv.DictReader(f), strict=False)]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Folders of tiny random models: text (BERT), audio (HuBERT), visual (CLIP vision + proj.),
    clip_full (a whole CLIPModel checkpoint) and clip_noproj (vision tower only)."""
    from transformers import (
        BertConfig,
        BertModel,
        BertTokenizer,
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPVisionConfig,
        CLIPVisionModel,
        CLIPVisionModelWithProjection,
        HubertConfig,
        HubertModel,
        Wav2Vec2FeatureExtractor,
    )

    root = tmp_path_factory.mktemp("tiny_models")
    torch.manual_seed(0)
    # text: a character vocabulary from real Chinese subtitles
    chars = sorted({c for t in _cped_texts() + ["撞车了吗"] for c in t if not c.isspace()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars]
    text_dir = root / "text"
    text_dir.mkdir()
    (root / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(vocab=str(root / "vocab.txt"))  # v5: vocab=, not vocab_file=
    bert = BertModel(
        BertConfig(
            vocab_size=len(vocab),
            hidden_size=TEXT_DIM,
            num_hidden_layers=TEXT_LAYERS,
            num_attention_heads=4,
            intermediate_size=37,
        )
    )
    bert.save_pretrained(text_dir)
    tokenizer.save_pretrained(text_dir)
    # audio: HuBERT with layer-norm convolutions (as HuBERT-large), attention mask on
    audio_dir = root / "audio"
    HubertModel(
        HubertConfig(
            hidden_size=AUDIO_DIM,
            conv_dim=(32, 32, 32),
            conv_stride=(5, 8, 8),  # 320 samples = 20 ms per frame, as HuBERT
            conv_kernel=(10, 8, 8),
            num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=2,
            num_hidden_layers=5,
            num_attention_heads=2,
            intermediate_size=20,
            vocab_size=32,
            feat_extract_norm="layer",
            do_stable_layer_norm=True,
        )
    ).save_pretrained(audio_dir)
    Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=16000,
        padding_value=0.0,
        do_normalize=True,
        return_attention_mask=True,
    ).save_pretrained(audio_dir)
    # visual: CLIP vision tower + projection, and the same inside a whole CLIPModel
    vision = CLIPVisionConfig(
        image_size=30,
        patch_size=6,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        projection_dim=VISUAL_DIM,
    )
    processor = CLIPImageProcessor(
        size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30}
    )
    dirs = {"text": text_dir, "audio": audio_dir}
    for name, model in (
        ("visual", CLIPVisionModelWithProjection(vision)),
        ("clip_noproj", CLIPVisionModel(vision)),
        (
            "clip_full",
            CLIPModel(
                CLIPConfig(
                    text_config={
                        "vocab_size": 99,
                        "hidden_size": 32,
                        "num_hidden_layers": 2,
                        "num_attention_heads": 4,
                        "intermediate_size": 37,
                        "bos_token_id": 0,
                        "eos_token_id": 1,
                        "pad_token_id": 1,
                    },
                    vision_config=vision.to_dict(),
                    projection_dim=VISUAL_DIM,
                )
            ),
        ),
    ):
        dirs[name] = root / name
        model.save_pretrained(dirs[name])
        processor.save_pretrained(dirs[name])
    return dirs


@pytest.fixture(scope="session")
def extractor(tiny_models: dict[str, Path]) -> PretrainedExtractor:
    return PretrainedExtractor(
        text_model=str(tiny_models["text"]),
        audio_model=str(tiny_models["audio"]),
        visual_model=str(tiny_models["visual"]),
        batch_size=4,
        device="cpu",  # exact comparisons against float32 CPU runs below
    )


def _manual_hidden(model_dir: Path, loader: str, **inputs) -> tuple:
    model = getattr(transformers, loader).from_pretrained(model_dir, local_files_only=True).eval()
    with torch.inference_mode():
        return model, model(**inputs, output_hidden_states=True)


# --------------------------------------------------------------------------- text


def test_text_is_per_token_sum_of_last_four_layers(
    extractor: PretrainedExtractor, tiny_models: dict[str, Path]
) -> None:
    texts = _cped_texts(12)
    feats = extractor.text_features(texts)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_models["text"])
    for text, got in zip(texts, feats, strict=True):
        enc = tokenizer(text, return_tensors="pt")
        _, out = _manual_hidden(tiny_models["text"], "BertModel", **enc)
        assert len(out.hidden_states) == TEXT_LAYERS + 1  # embeddings + each layer
        want = sum(out.hidden_states[k] for k in (-4, -3, -2, -1))[0, 1:-1]  # no [CLS]/[SEP]
        assert got.dtype == np.float32
        assert got.shape == (len(tokenizer.tokenize(text)), TEXT_DIM)
        # batched with padding (batch 4, sorted by length) equals one text at a time
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-4)


def test_empty_text_is_one_zero_row(extractor: PretrainedExtractor) -> None:
    empty, blank, word = extractor.text_features(["", "  ", "撞车了吗"])
    assert empty.shape == blank.shape == (1, TEXT_DIM)
    assert not empty.any() and not blank.any()
    assert word.shape == (4, TEXT_DIM) and np.abs(word).sum() > 0


def test_long_text_is_truncated(tiny_models: dict[str, Path]) -> None:
    ex = PretrainedExtractor(text_model=str(tiny_models["text"]), max_text_tokens=16, device="cpu")
    (feats,) = ex.text_features(["撞车了吗" * 20])
    assert feats.shape == (14, TEXT_DIM)  # 16 positions less [CLS] and [SEP]


# --------------------------------------------------------------------------- audio


def test_audio_on_real_mandarin_wav(
    extractor: PretrainedExtractor, tiny_models: dict[str, Path]
) -> None:
    wave = media.load_audio(ZH_WAV, 16000)  # 5.5 s
    short = wave[:8000]
    long_feats, short_feats, tiny = extractor.audio_features([wave, short, wave[:100]])
    fe = transformers.AutoFeatureExtractor.from_pretrained(tiny_models["audio"])
    enc = fe(wave, sampling_rate=16000, return_tensors="pt")
    model, out = _manual_hidden(tiny_models["audio"], "HubertModel", **enc)
    want = sum(out.hidden_states[-4:])[0].numpy()
    frames = int(model._get_feat_extract_output_lengths(torch.tensor(len(wave))))
    assert long_feats.dtype == np.float32
    assert long_feats.shape == want.shape == (frames, AUDIO_DIM)
    assert 45 * 5.5 < frames < 55 * 5.5  # about 50 frames per second
    np.testing.assert_allclose(long_feats, want, rtol=1e-3, atol=1e-3)
    # the short clip was batched with padding; it matches running it alone (attention mask)
    (alone,) = extractor.audio_features([short])
    assert short_feats.shape == alone.shape
    np.testing.assert_allclose(short_feats, alone, rtol=1e-3, atol=1e-3)
    assert tiny.shape == (1, AUDIO_DIM)  # 100 samples, zero-padded to one window


# --------------------------------------------------------------------------- visual


def test_visual_embeds_face_crops_of_sampled_frames(
    extractor: PretrainedExtractor, tiny_models: dict[str, Path]
) -> None:
    frames, _ = media.sample_frames(GRID_CLIP, every=30)
    crops, choices = face_crops(frames)
    if HAS_HAAR:
        assert choices == ["face"] * len(frames)  # GRID: one frontal speaker
    else:  # OpenCV 5 ships no Haar cascades: centre crops
        assert choices == ["center"] * len(frames)
    assert all(c.shape[0] < frames.shape[1] for c in crops)
    result = extractor.extract({"video_path": str(GRID_CLIP)})
    visual = result["visual"]
    assert visual.dtype == np.float32 and visual.shape == (len(frames), VISUAL_DIM) == (3, 24)
    processor = transformers.AutoImageProcessor.from_pretrained(tiny_models["visual"])
    model = transformers.CLIPVisionModelWithProjection.from_pretrained(tiny_models["visual"])
    with torch.inference_mode():
        want = model(**processor(images=crops, return_tensors="pt")).image_embeds
    np.testing.assert_allclose(visual, want.numpy(), rtol=1e-4, atol=1e-5)
    assert result.info["visual_choices"] == choices
    assert result.info["visual_times"] == pytest.approx([0.0, 1.2, 2.4], abs=0.05)


def test_a_whole_clip_checkpoint_loads_as_the_vision_tower(tiny_models: dict[str, Path]) -> None:
    full = PretrainedExtractor(visual_model=str(tiny_models["clip_full"]), modalities=("visual",))
    part = PretrainedExtractor(visual_model=str(tiny_models["visual"]), modalities=("visual",))
    image = np.random.default_rng(0).integers(0, 255, (48, 40, 3), dtype=np.uint8)
    assert full.visual_features([image]).shape == (1, VISUAL_DIM)
    assert full.dims == {"visual": VISUAL_DIM}
    assert part.visual_features([image]).shape == (1, VISUAL_DIM)


def test_a_checkpoint_without_the_projection_is_refused(tiny_models: dict[str, Path]) -> None:
    ex = PretrainedExtractor(visual_model=str(tiny_models["clip_noproj"]), modalities=("visual",))
    with pytest.raises(ModelUnavailable, match="visual_projection"):
        ex.visual_features([np.zeros((30, 30, 3), np.uint8)])


# --------------------------------------------------------------------------- the extractor


def test_extract_a_whole_sample(extractor: PretrainedExtractor) -> None:
    assert extractor.dims == {"text": TEXT_DIM, "audio": AUDIO_DIM, "visual": VISUAL_DIM}
    assert extractor.device == "cpu"
    feats = extractor.extract({"text": "撞车了吗", "video_path": str(GRID_CLIP)})
    assert isinstance(feats, Extraction) and not feats.missing
    assert feats["text"].shape == (4, TEXT_DIM)
    assert feats["audio"].shape[1] == AUDIO_DIM and 140 <= feats["audio"].shape[0] <= 150  # 3 s
    assert feats["visual"].shape == (3, VISUAL_DIM)
    for arr in feats.values():
        assert arr.dtype == np.float32 and np.isfinite(arr).all()


def test_batch_marks_undecodable_media_missing(
    extractor: PretrainedExtractor, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all" * 100)
    samples = [
        {"text": "我想问", "audio_path": str(ZH_WAV)},
        {"text": "", "video_path": str(broken)},
        {"video_path": str(GRID_CLIP)},
    ]
    a, b, c = extractor.extract_batch(samples)
    assert set(a) == {"text", "audio"} and a.missing == {"visual": "not in sample"}
    assert set(b) == {"text"} and not b["text"].any()
    assert str(broken) in b.missing["audio"] and str(broken) in b.missing["visual"]
    assert set(c) == {"audio", "visual"} and c.missing == {"text": "not in sample"}
    alone = extractor.extract(samples[2])
    np.testing.assert_allclose(c["visual"], alone["visual"], rtol=1e-5, atol=1e-6)


def test_only_the_chosen_modalities_are_extracted(tiny_models: dict[str, Path]) -> None:
    ex = PretrainedExtractor(text_model=str(tiny_models["text"]), modalities=("text",))
    feats = ex.extract({"text": "撞车", "video_path": str(GRID_CLIP)})
    assert set(feats) == {"text"}
    assert feats.missing == {"audio": "not extracted", "visual": "not extracted"}
    assert ex.dims == {"text": TEXT_DIM}


# --------------------------------------------------------------------------- offline errors


def test_a_missing_model_id_names_it_and_says_how_to_give_a_folder() -> None:
    ex = PretrainedExtractor(text_model="hfl/chinese-roberta-wwm-ext", modalities=("text",))
    with pytest.raises(ModelUnavailable) as info:
        ex.extract({"text": "你好"})
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # set by the loader, before transformers loads
    message = str(info.value)
    assert "'hfl/chinese-roberta-wwm-ext'" in message and "nothing is downloaded" in message
    assert "MEIJU_TEXT_MODEL" in message and "folder" in message
    assert info.value.model == "hfl/chinese-roberta-wwm-ext"
    with pytest.raises(ModelUnavailable, match="chinese-hubert-large"):
        _ = PretrainedExtractor(modalities=("audio",)).dims


def test_a_folder_without_a_model_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    ex = PretrainedExtractor(audio_model=str(tmp_path), modalities=("audio",))
    with pytest.raises(ModelUnavailable, match="does not hold a loadable audio model"):
        ex.audio_features([np.zeros(16000, np.float32)])


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEIJU_TEXT_MODEL", "/models/roberta")
    monkeypatch.setenv("MEIJU_FEATURE_BATCH", "8")
    s = PretrainedSettings.from_env(device="cpu")
    assert (s.text_model, s.batch_size, s.device) == ("/models/roberta", 8, "cpu")
    assert s.audio_model == "TencentGameMate/chinese-hubert-large"
    with pytest.raises(ValueError, match="unknown modalities"):
        PretrainedSettings(modalities=("smell",))


def test_importing_the_extractor_does_not_set_the_offline_variables() -> None:
    # the loaders set them (see the test above), not the import: importing the module for its
    # settings or face crops leaves the environment of the process as it was
    code = (
        "import os; import meiju_core.ml.features.pretrained; "
        "print([k for k in ('HF_HUB_OFFLINE', 'TRANSFORMERS_OFFLINE') if k in os.environ])"
    )
    hub = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    env = {k: v for k, v in os.environ.items() if k not in hub}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.strip() == "[]"


def test_without_transformers_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "transformers" else real(name, *a),
    )
    ex = PretrainedExtractor(text_model="/nowhere", modalities=("text",))
    with pytest.raises(ModelUnavailable, match=r"meiju-review\[pretrained\]"):
        _ = ex.dims


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_half_precision_matches_cpu(
    extractor: PretrainedExtractor, tiny_models: dict[str, Path]
) -> None:
    gpu = PretrainedExtractor(
        text_model=str(tiny_models["text"]),
        audio_model=str(tiny_models["audio"]),
        visual_model=str(tiny_models["visual"]),
        batch_size=4,
    )
    assert gpu.device == "cuda"
    sample = {"text": "撞车了吗", "video_path": str(GRID_CLIP)}
    on_gpu, on_cpu = gpu.extract(sample), extractor.extract(sample)
    for modality in ("text", "audio", "visual"):
        a, b = on_gpu[modality], on_cpu[modality]
        assert a.dtype == np.float32 and a.shape == b.shape
        scale = float(np.abs(b).max())
        np.testing.assert_allclose(a, b, atol=0.05 * scale, rtol=0.05)
