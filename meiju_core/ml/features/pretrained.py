"""The paper's pretrained feature set through HF transformers, offline only.

Same contract as :mod:`meiju_core.ml.features.builtin`: ``extract(sample)`` returns an
:class:`~meiju_core.ml.features.builtin.Extraction`, one float32 ``(T, D)`` array per modality (the
baseline's FRAME level, reference/meiju.md §4.4), and ``dims`` gives D per modality.

=========  ===================================  =============================  ==================
modality   one row per                          D (default model)              reference
=========  ===================================  =============================  ==================
text       word-piece token, no [CLS]/[SEP]     768 (chinese-roberta-wwm-ext)  meiju.md §4.2
audio      HuBERT frame (20 ms, 50 frames/s)    1024 (chinese-hubert-large)    meiju.md §4.1
visual     sampled video frame (1 in 30)        768 (CLIP ViT-L/14 projection) meiju.md §4.3
=========  ===================================  =============================  ==================

- text: the transcript is tokenised as is (the baseline's Chinese path); the sum of the last four
  hidden layers (``hidden_states[-4:]``, the baseline's ``layer_ids=[-4,-3,-2,-1]``) is kept per
  token without [CLS]/[SEP]; empty text gives ``(1, D)`` zeros as the baseline stores it
  (``extract_text_embedding_LZ.py`` lines 122-153). Longer than 512 tokens is truncated.
- audio: 16 kHz mono (:func:`meiju_core.ml.media.load_audio`, from ``audio_path`` or else the
  video's own track) through the model's feature extractor (normalisation as its
  ``preprocessor_config.json`` says), then HuBERT; the last four hidden layers summed per frame.
  The baseline's HF option keeps only the last layer (meiju.md §4.1); four follow the text side
  and the task brief.
- visual: frames 0, 30, 60, ... (:func:`meiju_core.ml.media.sample_frames`), the largest face per
  frame cropped with a 20 % margin (OpenCV's Haar cascade, as the builtin set; the centred square
  when no face is found), then CLIP's image processor and ``image_embeds`` of
  ``CLIPVisionModelWithProjection`` (what ``CLIPModel.get_image_features`` returns). A folder
  with a full ``CLIPModel`` checkpoint loads too (the text tower is ignored).

Models are given as hub ids or local folders; nothing is ever downloaded (``HF_HUB_OFFLINE=1``
and ``local_files_only=True``): an id must already be in the local Hugging Face cache. A model
that is absent raises :class:`~meiju_core.errors.ModelUnavailable` naming the id and how to give a
folder. Models load lazily, once per process and setting, on CUDA when available (bf16 where the
GPU supports it, else fp16; layer sums and outputs in float32) and on CPU in float32 otherwise.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import threading
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from meiju_core.errors import FeatureError, MediaError, ModelUnavailable
from meiju_core.ml import media
from meiju_core.ml.features import builtin
from meiju_core.ml.features.builtin import Extraction
from meiju_core.settings import env_value, setting_default

__all__ = [
    "DEFAULT_AUDIO_MODEL",
    "DEFAULT_TEXT_MODEL",
    "DEFAULT_VISUAL_MODEL",
    "PretrainedExtractor",
    "PretrainedSettings",
    "face_crops",
]

# the declared defaults of the text_model, audio_model and visual_model settings
DEFAULT_TEXT_MODEL: str = setting_default("text_model")
DEFAULT_AUDIO_MODEL: str = setting_default("audio_model")
DEFAULT_VISUAL_MODEL: str = setting_default("visual_model")
MODALITIES = ("text", "audio", "visual")
MIN_AUDIO_SAMPLES = 400  # one 25 ms HuBERT/wav2vec2 conv window at 16 kHz: shorter is zero-padded
FACE_MARGIN = 0.2  # each side of the face box grows by this share of its size
# parameters a checkpoint may lack without changing the features (unused by the forward pass)
_UNUSED_KEYS = ("pooler", "masked_spec_embed", "position_ids")


@dataclass(frozen=True)
class PretrainedSettings:
    """Which models, and how to run them. Each model is a hub id (already cached) or a folder.

    :meth:`from_env` reads the declared settings (``meiju_core.settings``) ``text_model``,
    ``audio_model``, ``visual_model``, ``feature_device`` and ``feature_batch`` (``MEIJU_TEXT_MODEL``
    ...).
    """

    text_model: str = DEFAULT_TEXT_MODEL
    audio_model: str = DEFAULT_AUDIO_MODEL
    visual_model: str = DEFAULT_VISUAL_MODEL
    layers: int = 4  # hidden layers summed (text and audio): the baseline's last four
    every: int = 30  # keep 1 video frame in ``every`` (paper and baseline)
    sr: int = 16000  # audio rate in Hz the speech model expects
    device: str = "auto"  # auto (CUDA when available), cpu, cuda, cuda:N
    dtype: str = "auto"  # auto (bf16/fp16 on CUDA, fp32 on CPU), float32, float16, bfloat16
    batch_size: int = 16  # texts, audio clips or face crops per forward pass
    max_text_tokens: int = 512  # BERT's position limit, [CLS]/[SEP] included
    modalities: tuple[str, ...] = MODALITIES  # which ones ``extract`` computes

    def __post_init__(self) -> None:
        if self.layers < 1 or self.every < 1 or self.batch_size < 1 or self.sr < 1:
            raise ValueError(f"layers, every, batch_size and sr must be >= 1: {self}")
        unknown = set(self.modalities) - set(MODALITIES)
        if unknown:
            raise ValueError(f"unknown modalities {sorted(unknown)}; expected {list(MODALITIES)}")

    @classmethod
    def from_env(cls, **overrides: Any) -> PretrainedSettings:
        """The declared settings (their ``MEIJU_*`` variables, else their defaults), then
        ``overrides`` (None ignored)."""
        values: dict[str, Any] = {
            "text_model": env_value("text_model"),
            "audio_model": env_value("audio_model"),
            "visual_model": env_value("visual_model"),
            "device": env_value("feature_device"),
            "batch_size": env_value("feature_batch"),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        """Plain values, for ``FeatureSet.settings``."""
        return {f.name: getattr(self, f.name) for f in fields(self)} | {
            "modalities": list(self.modalities)
        }


# --------------------------------------------------------------------------- loading


def _torch_device(setting: str) -> Any:
    import torch

    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def _torch_dtype(setting: str, device: Any) -> Any:
    import torch

    if setting != "auto":
        return getattr(torch, setting)
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _unavailable(kind: str, model_id: str, setting: str, error: BaseException) -> ModelUnavailable:
    local = Path(model_id).expanduser()
    if local.is_dir():
        what = f"the folder {local} does not hold a loadable {kind} model ({error})"
    else:
        what = (
            f"the {kind} model {model_id!r} is not on this machine, and nothing is downloaded "
            "(offline mode)"
        )
    return ModelUnavailable(
        f"{what}. Save the model's files (config.json, the weights, and the tokenizer or "
        f"preprocessor files) in a local folder, e.g. with save_pretrained() on a machine that "
        f"has them, and set {setting} (MEIJU_{setting.upper()}) to that folder.",
        model=model_id,
    )


def _check_loading(kind: str, model_id: str, info: Mapping[str, Any]) -> None:
    """Refuse a checkpoint whose used weights are missing (they would be random)."""
    missing = sorted(
        k for k in info.get("missing_keys", ()) if not any(u in k for u in _UNUSED_KEYS)
    )
    if missing:
        shown = ", ".join(missing[:5]) + (
            f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        )
        raise ModelUnavailable(
            f"the {kind} model {model_id!r} lacks weights the features need ({shown}); "
            "is it the right architecture?",
            model=model_id,
        )


def _offline_hub() -> None:
    """Check that transformers is installed (the ``pretrained`` extra), and never reach the hub
    from this process: the variables are set before transformers (and huggingface_hub, which
    reads them when first imported) load a model; ``local_files_only=True`` below covers an
    already imported one. Called by the loaders, never on import of this module.

    Raises:
        ModelUnavailable: transformers is not installed.
    """
    if importlib.util.find_spec("transformers") is None:
        raise ModelUnavailable(
            "the pretrained feature set needs transformers, which is not installed; "
            "pip install 'meiju-review[pretrained]' (the project's test extra includes it)",
            model="transformers",
        )
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def _from_pretrained(kind: str, setting: str, loader: Any, model_id: str, **kwargs: Any) -> Any:
    try:
        return loader.from_pretrained(str(model_id), local_files_only=True, **kwargs)
    except (OSError, ValueError, KeyError) as e:
        raise _unavailable(kind, model_id, setting, e) from e


@functools.lru_cache(maxsize=1)
def _load_text(model_id: str, device: str, dtype: str) -> tuple[Any, Any]:
    _offline_hub()
    from transformers import AutoModel, AutoTokenizer

    tokenizer = _from_pretrained("text", "text_model", AutoTokenizer, model_id)
    dev = _torch_device(device)
    model, info = _from_pretrained(
        "text",
        "text_model",
        AutoModel,
        model_id,
        dtype=_torch_dtype(dtype, dev),
        output_loading_info=True,
    )
    _check_loading("text", model_id, info)
    return tokenizer, model.to(dev).eval()


@functools.lru_cache(maxsize=1)
def _load_audio(model_id: str, device: str, dtype: str) -> tuple[Any, Any]:
    _offline_hub()
    from transformers import AutoFeatureExtractor, AutoModel

    extractor = _from_pretrained("audio", "audio_model", AutoFeatureExtractor, model_id)
    dev = _torch_device(device)
    model, info = _from_pretrained(
        "audio",
        "audio_model",
        AutoModel,
        model_id,
        dtype=_torch_dtype(dtype, dev),
        output_loading_info=True,
    )
    _check_loading("audio", model_id, info)
    return extractor, model.to(dev).eval()


@functools.lru_cache(maxsize=1)
def _load_visual(model_id: str, device: str, dtype: str) -> tuple[Any, Any]:
    _offline_hub()
    from transformers import AutoImageProcessor, CLIPVisionModelWithProjection

    processor = _from_pretrained("visual", "visual_model", AutoImageProcessor, model_id)
    dev = _torch_device(device)
    model, info = _from_pretrained(
        "visual",
        "visual_model",
        CLIPVisionModelWithProjection,
        model_id,
        dtype=_torch_dtype(dtype, dev),
        output_loading_info=True,
    )
    _check_loading("visual", model_id, info)
    return processor, model.to(dev).eval()


# --------------------------------------------------------------------------- faces


@functools.lru_cache(maxsize=1)
def _face_detector() -> Any:
    """The builtin set's Haar cascade (one detector for both feature sets), or None where the
    installed OpenCV has none (OpenCV 5 moved the cascades out of the main package)."""
    try:
        cascade, _hog = builtin._face_tools()
    except RuntimeError as e:
        warnings.warn(f"no face detector, using centre crops: {e}", RuntimeWarning, stacklevel=3)
        return None
    return cascade


def face_crops(
    frames: np.ndarray, margin: float = FACE_MARGIN
) -> tuple[list[np.ndarray], list[str]]:
    """The largest face of each frame, as an RGB crop.

    Faces are found by OpenCV's bundled frontal-face Haar cascade, the same detector as the
    builtin set (:func:`meiju_core.ml.features.builtin.face_hog`). The box grows by ``margin`` of
    its width and height on each side (clipped to the frame); with no face, the centred square
    of side ``min(H, W) // 2`` is used, also for every frame when the installed OpenCV has no
    Haar cascades (OpenCV 5; a ``RuntimeWarning`` says so once).

    Args:
        frames: uint8 ``(F, H, W, 3)`` RGB.
        margin: share of the face box added on each side.

    Returns:
        ``F`` uint8 ``(h, w, 3)`` crops, and per frame ``"face"`` or ``"center"``.

    Raises:
        FeatureError: ``frames`` is not uint8 ``(F, H, W, 3)``.
    """
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise FeatureError(
            f"frames must be uint8 (F, H, W, 3), got {frames.dtype} {frames.shape}", field="visual"
        )
    import cv2

    cascade = _face_detector()
    crops: list[np.ndarray] = []
    choices: list[str] = []
    for frame in frames:
        h, w = frame.shape[:2]
        grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        box = builtin._largest_face(grey, cascade) if cascade is not None else None
        if box is None:
            side = max(1, min(h, w) // 2)
            x0, y0, x1, y1 = (w - side) // 2, (h - side) // 2, (w + side) // 2, (h + side) // 2
            choices.append("center")
        else:
            x, y, bw, bh = box
            dx, dy = round(bw * margin), round(bh * margin)
            x0, y0 = max(0, x - dx), max(0, y - dy)
            x1, y1 = min(w, x + bw + dx), min(h, y + bh + dy)
            choices.append("face")
        crops.append(np.ascontiguousarray(frame[y0:y1, x0:x1]))
    return crops, choices


# --------------------------------------------------------------------------- the extractor


def _batches(order: Sequence[int], size: int) -> Iterable[list[int]]:
    for start in range(0, len(order), size):
        yield list(order[start : start + size])


class PretrainedExtractor:
    """The paper's feature set (``feature_set = "pretrained"``): RoBERTa, HuBERT and CLIP.

    ``extract(sample)`` / ``extract_batch(samples)`` read sample mappings with optional keys
    ``text``, ``video_path`` and ``audio_path`` and return :class:`Extraction` objects (see the
    module docstring for each modality). A media file that cannot be decoded marks that modality
    missing with the reason, as in the builtin set; a model that cannot be loaded raises.

    >>> ex = PretrainedExtractor(text_model="/models/chinese-roberta-wwm-ext")  # doctest: +SKIP
    >>> ex.extract({"text": "撞车了吗"})["text"].shape                          # doctest: +SKIP
    (4, 768)
    """

    name = "pretrained"

    def __init__(self, settings: PretrainedSettings | None = None, **overrides: Any) -> None:
        base = settings or PretrainedSettings()
        self.settings = replace(base, **overrides) if overrides else base
        self._lock = threading.Lock()

    # ---- models (lazy; shared per process for the same id, device and dtype)

    def _models(self, kind: str) -> tuple[Any, Any]:
        s = self.settings
        loader, model_id = {
            "text": (_load_text, s.text_model),
            "audio": (_load_audio, s.audio_model),
            "visual": (_load_visual, s.visual_model),
        }[kind]
        with self._lock:
            return loader(str(model_id), s.device, s.dtype)

    @property
    def device(self) -> str:
        """The torch device the models run on (``"cuda"`` or ``"cpu"``, resolved)."""
        return str(_torch_device(self.settings.device))

    @functools.cached_property
    def dims(self) -> dict[str, int]:
        """Feature width D per extracted modality, read from the model configs (no weights).

        Raises:
            ModelUnavailable: a model's config is not on this machine.
        """
        _offline_hub()
        from transformers import AutoConfig, CLIPVisionConfig

        s, out = self.settings, {}
        if "text" in s.modalities:
            cfg = _from_pretrained("text", "text_model", AutoConfig, s.text_model)
            out["text"] = int(cfg.hidden_size)
        if "audio" in s.modalities:
            cfg = _from_pretrained("audio", "audio_model", AutoConfig, s.audio_model)
            out["audio"] = int(cfg.hidden_size)
        if "visual" in s.modalities:
            cfg = _from_pretrained("visual", "visual_model", CLIPVisionConfig, s.visual_model)
            out["visual"] = int(cfg.projection_dim)
        return out

    # ---- per modality, batched

    def text_features(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Per-token features of each text: float32 ``(T_i, D)``, ``T_i`` = word pieces without
        [CLS]/[SEP] (at most ``max_text_tokens - 2``); ``(1, D)`` zeros for empty text."""
        import torch

        tokenizer, model = self._models("text")
        dim = int(model.config.hidden_size)
        out: list[np.ndarray] = [np.zeros((1, dim), np.float32) for _ in texts]
        todo = [i for i, t in enumerate(texts) if t and t.strip()]
        todo.sort(key=lambda i: len(texts[i]))  # similar lengths per batch: less padding
        for batch in _batches(todo, self.settings.batch_size):
            enc = tokenizer(
                [texts[i] for i in batch],
                padding=True,
                truncation=True,
                max_length=self.settings.max_text_tokens,
                return_special_tokens_mask=True,
                return_tensors="pt",
            )
            keep = (enc.pop("special_tokens_mask") == 0) & (enc["attention_mask"] == 1)  # (B, L)
            with torch.inference_mode():
                hidden = model(**enc.to(model.device), output_hidden_states=True).hidden_states
            summed = self._layer_sum(hidden)  # (B, L, D) float32
            for row, i in enumerate(batch):
                tokens = summed[row][keep[row]]  # (T_i, D)
                if len(tokens):
                    out[i] = tokens
        return out

    def audio_features(self, waves: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Frame features of each 16 kHz mono wave (float32 ``(S,)``): float32 ``(T_i, D)``,
        T_i ≈ seconds × 50 (HuBERT's 20 ms stride). Clips shorter than 400 samples are
        zero-padded to 400 (one frame). Batched with an attention mask when the feature extractor
        returns one (layer-norm models such as HuBERT-large), else one clip per pass."""
        import torch

        extractor, model = self._models("audio")
        padded = [
            np.pad(np.asarray(w, np.float32), (0, max(0, MIN_AUDIO_SAMPLES - len(w))))
            for w in waves
        ]
        size = self.settings.batch_size if extractor.return_attention_mask else 1
        order = sorted(range(len(padded)), key=lambda i: len(padded[i]))
        out: list[np.ndarray] = [np.zeros((0, 0), np.float32)] * len(padded)
        for batch in _batches(order, size):
            enc = extractor(
                [padded[i] for i in batch],
                sampling_rate=self.settings.sr,
                padding=True,
                return_attention_mask=extractor.return_attention_mask,
                return_tensors="pt",
            )
            lengths = model._get_feat_extract_output_lengths(
                torch.tensor([len(padded[i]) for i in batch])
            )
            enc["input_values"] = enc["input_values"].to(model.dtype)
            with torch.inference_mode():
                hidden = model(**enc.to(model.device), output_hidden_states=True).hidden_states
            summed = self._layer_sum(hidden)  # (B, T, D) float32
            for row, i in enumerate(batch):
                out[i] = summed[row, : int(lengths[row])]
        return out

    def visual_features(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """CLIP image embeddings of RGB images (uint8 ``(h, w, 3)`` each): float32 ``(F, D)``."""
        import torch

        processor, model = self._models("visual")
        rows: list[np.ndarray] = []
        for batch in _batches(range(len(images)), self.settings.batch_size):
            pixels = processor(images=[images[i] for i in batch], return_tensors="pt")
            pixel_values = pixels["pixel_values"].to(model.device, model.dtype)
            with torch.inference_mode():
                embeds = model(pixel_values=pixel_values).image_embeds  # (B, D)
            rows.append(embeds.float().cpu().numpy())
        dim = int(model.config.projection_dim)
        return np.concatenate(rows) if rows else np.zeros((0, dim), np.float32)

    def _layer_sum(self, hidden_states: Sequence[Any]) -> np.ndarray:
        """Sum of the last ``layers`` hidden states, float32 numpy ``(B, L, D)``."""
        import torch

        if len(hidden_states) - 1 < self.settings.layers:
            raise FeatureError(
                f"the model has {len(hidden_states) - 1} layers; cannot sum the last "
                f"{self.settings.layers}"
            )
        last = hidden_states[-self.settings.layers :]
        return torch.stack([h.float() for h in last]).sum(0).cpu().numpy()

    # ---- samples

    def extract(self, sample: Mapping[str, Any]) -> Extraction:
        """Features of one sample; see :meth:`extract_batch`."""
        return self.extract_batch([sample])[0]

    def extract_batch(self, samples: Sequence[Mapping[str, Any]]) -> list[Extraction]:
        """Features of several samples, each modality run in batches across them.

        Returns one :class:`Extraction` per sample: float32 ``(T, D)`` arrays for ``text``,
        ``audio`` and ``visual`` where available; ``missing`` gives the reason for the others
        (``"not in sample"``, ``"not extracted"`` for a modality outside ``settings.modalities``,
        or the MediaError message); ``info["visual_choices"]`` / ``info["visual_times"]`` give
        "face"/"center" and the time in seconds of each sampled frame.

        Raises:
            ModelUnavailable: a needed model is not on this machine.
        """
        results = [Extraction() for _ in samples]
        wanted = self.settings.modalities
        if "text" in wanted:
            idx = [i for i, s in enumerate(samples) if s.get("text") is not None]
            for i, feats in zip(
                idx, self.text_features([str(samples[i]["text"]) for i in idx]), strict=True
            ):
                results[i]["text"] = feats
        if "audio" in wanted:
            self._extract_audio(samples, results)
        if "visual" in wanted:
            self._extract_visual(samples, results)
        for r in results:
            for modality in MODALITIES:
                if modality not in r and modality not in r.missing:
                    r.missing[modality] = "not in sample" if modality in wanted else "not extracted"
            r.info["extractor"] = self.name
        return results

    def _extract_audio(
        self, samples: Sequence[Mapping[str, Any]], results: list[Extraction]
    ) -> None:
        idx, waves = [], []
        for i, s in enumerate(samples):
            source = s.get("audio_path") or s.get("video_path")
            if not source:
                continue
            try:
                waves.append(media.load_audio(source, self.settings.sr))
                idx.append(i)
            except MediaError as e:
                results[i].missing["audio"] = str(e)
        for i, feats in zip(idx, self.audio_features(waves), strict=True):
            results[i]["audio"] = feats

    def _extract_visual(
        self, samples: Sequence[Mapping[str, Any]], results: list[Extraction]
    ) -> None:
        owners: list[int] = []
        crops: list[np.ndarray] = []
        for i, s in enumerate(samples):
            if not s.get("video_path"):
                continue
            try:
                frames, times = media.sample_frames(s["video_path"], self.settings.every)
            except MediaError as e:
                results[i].missing["visual"] = str(e)
                continue
            faces, choices = face_crops(frames)
            results[i].info["visual_choices"] = choices
            results[i].info["visual_times"] = times.tolist()
            owners += [i] * len(faces)
            crops += faces
        if not crops:
            return
        embeds = self.visual_features(crops)  # (sum F_i, D)
        owner = np.asarray(owners)
        for i in dict.fromkeys(owners):
            results[i]["visual"] = np.ascontiguousarray(embeds[owner == i])
