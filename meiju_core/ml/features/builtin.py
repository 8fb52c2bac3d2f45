"""The built-in, offline feature set: LSA text vectors, log-mel audio, HOG faces.

Nothing here downloads anything; it stands in for the paper's pretrained extractors (RoBERTa,
HuBERT, CLIP; reference/meiju.md §4) with the same output contract, one float32 ``(T, D)`` array
per utterance and modality, the baseline's FRAME level (reference/meiju.md §4.4):

=========  ==================================  ==========================  ======================
modality   one row per                          D                           made by
=========  ==================================  ==========================  ======================
text       token (jieba word or punctuation)    128 (``TextLSA(dim=)``)     :class:`TextLSA`
audio      10 ms frame (100 frames/s)           80 log-mel bins             :func:`log_mel`
visual     sampled video frame (1 in 30)        1764 HOG values             :func:`face_hog`
=========  ==================================  ==========================  ======================

:class:`BuiltinExtractor` ties them to media files and marks a modality missing, with the reason,
when its file cannot be decoded.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer
from threadpoolctl import threadpool_limits

from meiju_core.errors import FeatureError, MediaError
from meiju_core.ml import media, text

__all__ = [
    "AUDIO_DIM",
    "VISUAL_DIM",
    "BuiltinExtractor",
    "Extraction",
    "TextLSA",
    "face_hog",
    "log_mel",
]

# --- text ------------------------------------------------------------------------------------------


def _terms(tokens: list[str]) -> list[str]:
    """LSA terms of a document: its tokens plus the characters of its multi-character tokens."""
    return tokens + [ch for tok in tokens if len(tok) > 1 for ch in tok]


def _suggested_marks(transcript: str) -> list[str]:
    """Punctuation marks that ``text.suggest`` would add to a transcript (one per addition)."""
    before = Counter(c for c in transcript if text.is_punct(c))
    after = Counter(c for c in text.suggest(transcript) if text.is_punct(c))
    return list((after - before).elements())


class TextLSA:
    """Per-token text vectors from latent semantic analysis of the project's own transcripts.

    Fitting: TF-IDF over terms (``text.tokenize`` tokens, punctuation included, plus single
    characters, plus the marks ``text.suggest`` would add), then ``TruncatedSVD(dim, random_state=seed)``. A term's vector is its row of
    ``V·Σ`` (``components_.T`` scaled by the singular values), L2-normalised. With fewer terms or
    documents than ``dim``, the SVD keeps what it can and the vectors are zero-padded to ``dim``.

    ``transform(text)`` gives float32 ``(T, dim)``, one row per token of ``text.tokenize``; a token
    outside the vocabulary gets the normalised mean of its known characters' vectors, or zeros;
    empty text gives ``(1, dim)`` zeros (as the baseline stores empty text, reference/meiju.md §4.2).

    >>> lsa = TextLSA(dim=4).fit(["我这堵着车 你倒睡着了", "撞车了吗", "你倒是说话啊"])
    >>> lsa.transform("撞车了吗？").shape
    (4, 4)
    """

    def __init__(self, dim: int = 128, *, seed: int = 336) -> None:
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dim = dim
        self.seed = seed
        self.vocab: dict[str, int] = {}
        self.vectors = np.zeros((0, dim), dtype=np.float32)  # (V, dim), unit rows or zeros
        self.n_docs = 0

    @property
    def fitted(self) -> bool:
        return bool(self.vocab)

    def fit(self, texts: Iterable[str], *, add_suggested_marks: bool = True) -> TextLSA:
        """Fit on transcripts (``str`` each); returns ``self``.

        With ``add_suggested_marks``, each document also counts the punctuation marks that
        ``text.suggest`` would add to it, so that marks raw transcripts lack (CPED subtitles have
        no ``。``) still get vectors that reflect where they belong, and a corrected transcript
        is not made of unknown tokens.

        Raises:
            FeatureError: no text has a single token.
        """
        if add_suggested_marks:
            docs = [_terms(text.tokenize(t)) + _suggested_marks(t) for t in texts]
        else:
            docs = [_terms(text.tokenize(t)) for t in texts]
        docs = [d for d in docs if d]
        if not docs:
            raise FeatureError("cannot fit the text model: no transcript has a token", field="text")
        tfidf = TfidfVectorizer(analyzer=lambda d: d, sublinear_tf=True, dtype=np.float32)
        x = tfidf.fit_transform(docs)  # (N docs, V terms), sparse
        n_docs, n_terms = x.shape
        k = min(self.dim, n_terms - 1, n_docs)
        term_vectors = np.zeros((n_terms, self.dim), dtype=np.float64)
        if k >= 1:
            svd = TruncatedSVD(n_components=k, algorithm="randomized", random_state=self.seed)
            # one BLAS thread: the same vectors whatever the core count (threaded OpenBLAS sums
            # in another order), and 4-7x faster on a busy 2-core machine (measured: 0.9 s vs
            # 3.6-7.1 s on CPED)
            with threadpool_limits(limits=1, user_api="blas"):
                svd.fit(x)
            term_vectors[:, :k] = svd.components_.T * svd.singular_values_  # (V, k) = V·Σ
        norms = np.linalg.norm(term_vectors, axis=1, keepdims=True)
        self.vectors = (term_vectors / np.where(norms > 0, norms, 1.0)).astype(np.float32)
        self.vocab = {term: i for i, term in enumerate(tfidf.get_feature_names_out())}
        self.n_docs = n_docs
        return self

    def _vector(self, token: str) -> np.ndarray:
        i = self.vocab.get(token)
        if i is not None:
            return self.vectors[i]
        known = [self.vectors[j] for j in (self.vocab.get(ch) for ch in token) if j is not None]
        if not known:
            return np.zeros(self.dim, dtype=np.float32)
        mean = np.mean(known, axis=0)
        norm = float(np.linalg.norm(mean))
        return (mean / norm if norm > 0 else mean).astype(np.float32)

    def transform(self, transcript: str) -> np.ndarray:
        """Token vectors of one transcript: float32 ``(T, dim)``, ``T >= 1``.

        Raises:
            FeatureError: the model is not fitted.
        """
        if not self.fitted:
            raise FeatureError("the text model is not fitted; call fit() or load() first")
        tokens = text.tokenize(transcript or "")
        if not tokens:
            return np.zeros((1, self.dim), dtype=np.float32)
        return np.stack([self._vector(t) for t in tokens]).astype(np.float32, copy=False)

    def save(self, path: str | Path) -> Path:
        """Write one ``.npz`` (no pickle): ``vectors`` float32 ``(V, dim)`` and ``meta``, JSON
        text with the vocabulary in row order and the settings. Returns the path written."""
        path = Path(path)
        meta = {
            "format": "meiju-text-lsa/1",
            "dim": self.dim,
            "seed": self.seed,
            "n_docs": self.n_docs,
            "vocab": sorted(self.vocab, key=self.vocab.__getitem__),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            np.savez(f, vectors=self.vectors, meta=np.array(json.dumps(meta, ensure_ascii=False)))
        return path

    @classmethod
    def load(cls, path: str | Path) -> TextLSA:
        """Read a model written by :meth:`save`.

        Raises:
            FeatureError: missing file, or not a TextLSA file (names the path).
        """
        try:
            with np.load(path, allow_pickle=False) as z:
                vectors = z["vectors"]
                meta = json.loads(str(z["meta"]))
        except (OSError, KeyError, ValueError) as e:
            raise FeatureError(f"not a text model file: {e}", path=str(path)) from e
        if meta.get("format") != "meiju-text-lsa/1" or vectors.shape != (
            len(meta["vocab"]),
            meta["dim"],
        ):
            raise FeatureError("not a text model file (format or shape)", path=str(path))
        model = cls(meta["dim"], seed=meta["seed"])
        model.vectors = vectors.astype(np.float32, copy=False)
        model.vocab = {term: i for i, term in enumerate(meta["vocab"])}
        model.n_docs = meta["n_docs"]
        return model


# --- audio -----------------------------------------------------------------------------------------

AUDIO_DIM = 80
_LOG_FLOOR = 1e-10


@functools.lru_cache(maxsize=8)
def _mel_filterbank(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """Triangular filters on the HTK mel scale, float32 ``(n_mels, n_fft // 2 + 1)``.

    Peak 1 per filter, no area normalisation (as Kaldi's fbank).
    """

    def hz_to_mel(f: np.ndarray | float) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

    def mel_to_hz(m: np.ndarray) -> np.ndarray:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    bin_hz = np.fft.rfftfreq(n_fft, d=1.0 / sr)  # (n_fft//2+1,) centre of each FFT bin in Hz
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bin_hz[None, :] - lower) / (centre - lower)
    falling = (upper - bin_hz[None, :]) / (upper - centre)
    return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)


def log_mel(audio: np.ndarray, sr: int = 16000) -> np.ndarray:
    """80-bin log-mel spectrogram at 100 frames per second.

    Frames of 25 ms (400 samples at 16 kHz) every 10 ms (160 samples), centred: frame ``t`` is
    centred on sample ``t·hop`` (the signal is zero-padded by half a window at both ends), so
    ``T = 1 + S // hop`` ≈ duration (s) × 100. Each frame is multiplied by a periodic Hann window,
    zero-padded to the next power of two (512), and its power spectrum ``|rfft|²`` goes through
    80 triangular HTK-mel filters from 20 Hz to ``sr / 2``.

    Units: natural log of filter-bank energy, where energy is the sum of squared amplitudes of
    the windowed frame for samples in full-scale units ([-1, 1]); floored at ``ln(1e-10)`` ≈ -23
    for silence. No mean or variance normalisation (the model's encoder sees raw values).

    Args:
        audio: float32 ``(S,)`` mono samples, as from :func:`meiju_core.ml.media.load_audio`.
        sr: sample rate in Hz (16000 in the paper and baseline).

    Returns:
        float32 ``(T, 80)``.

    Raises:
        FeatureError: ``audio`` is not 1-D or holds NaN / inf.
    """
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim != 1:
        raise FeatureError(f"audio must be 1-D (samples,), got shape {x.shape}", field="audio")
    if not np.isfinite(x).all():
        raise FeatureError("audio holds NaN or inf", field="audio")
    win, hop = round(0.025 * sr), round(0.010 * sr)
    n_fft = 1 << (win - 1).bit_length()
    padded = np.pad(x, (win // 2, win // 2 + hop))
    n_frames = 1 + len(x) // hop
    frames = np.lib.stride_tricks.sliding_window_view(padded, win)[::hop][:n_frames]  # (T, win)
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)).astype(np.float32)
    power = np.abs(np.fft.rfft(frames * window, n=n_fft, axis=1)) ** 2  # (T, n_fft//2+1)
    mel = power.astype(np.float32) @ _mel_filterbank(sr, n_fft, AUDIO_DIM, 20.0, sr / 2).T
    return np.log(np.maximum(mel, _LOG_FLOOR)).astype(np.float32)  # (T, 80)


# --- visual ----------------------------------------------------------------------------------------

FACE_SIZE = 64  # face crops are resized to 64×64 grey before HOG
# HOG layout: 64×64 window, 16×16 blocks with an 8-pixel stride, 8×8 cells, 9 orientation bins
# -> 7 × 7 block positions × 4 cells × 9 bins = 1764 values per face
_HOG_ARGS = ((FACE_SIZE, FACE_SIZE), (16, 16), (8, 8), (8, 8), 9)
VISUAL_DIM = 1764
_DETECT_MAX_SIDE = 360  # detect faces on a copy whose shorter side is at most this (speed)


@functools.lru_cache(maxsize=1)
def _face_tools() -> tuple[Any, Any]:
    """OpenCV's bundled frontal-face Haar cascade and a HOG descriptor, loaded once."""
    if not hasattr(cv2, "CascadeClassifier") or not hasattr(cv2, "HOGDescriptor"):
        raise RuntimeError(
            f"OpenCV {cv2.__version__} has no Haar cascades or HOGDescriptor (OpenCV 5 moved "
            "them out of the main package); install opencv-python-headless<5"
        )
    cascade = cv2.CascadeClassifier(
        str(Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml")
    )
    if cascade.empty():
        raise RuntimeError(f"cannot load OpenCV's face cascade from {cv2.data.haarcascades}")
    hog = cv2.HOGDescriptor(*_HOG_ARGS)
    assert hog.getDescriptorSize() == VISUAL_DIM
    return cascade, hog


def _largest_face(grey: np.ndarray, cascade: Any) -> tuple[int, int, int, int] | None:
    """(x, y, w, h) in pixels of the largest frontal face in a grey image, or None."""
    h, w = grey.shape
    scale = min(1.0, _DETECT_MAX_SIDE / min(h, w))
    small = grey if scale == 1.0 else cv2.resize(grey, None, fx=scale, fy=scale)
    min_side = max(24, round(min(small.shape) / 8))
    found = cascade.detectMultiScale(
        small, scaleFactor=1.1, minNeighbors=5, minSize=(min_side, min_side)
    )
    if len(found) == 0:
        return None
    x, y, fw, fh = max(found, key=lambda r: int(r[2]) * int(r[3]))
    return tuple(round(v / scale) for v in (x, y, fw, fh))  # type: ignore[return-value]


def face_hog(frames: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """HOG descriptor of the largest face in each frame.

    Per frame: OpenCV's bundled frontal-face Haar cascade (``haarcascade_frontalface_default``)
    finds faces; the largest is cropped ("face"), or, when none is found, the centred square of
    side ``min(H, W) // 2`` ("center"). The crop is turned grey, resized to 64×64 and described by
    ``cv2.HOGDescriptor``: 16×16 blocks at an 8-pixel stride, 8×8 cells, 9 orientation bins,
    ``D = 7·7·4·9 = 1764``. This replaces the baseline's OpenFace crops + face CNN
    (reference/meiju.md §4.3) with something that needs no download.

    Args:
        frames: uint8 ``(F, H, W, 3)`` RGB, as from :func:`meiju_core.ml.media.sample_frames`.

    Returns:
        float32 ``(F, 1764)`` and, per frame, ``"face"`` or ``"center"``.

    Raises:
        FeatureError: ``frames`` is not uint8 ``(F, H, W, 3)``.
        RuntimeError: the installed OpenCV lacks the Haar cascades or HOG (OpenCV 5).
    """
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise FeatureError(
            f"frames must be uint8 (F, H, W, 3), got {frames.dtype} {frames.shape}", field="visual"
        )
    cascade, hog = _face_tools()
    out = np.zeros((len(frames), VISUAL_DIM), dtype=np.float32)
    choices: list[str] = []
    for i, frame in enumerate(frames):
        grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        box = _largest_face(grey, cascade)
        choices.append("face" if box is not None else "center")
        if box is None:
            h, w = grey.shape
            side = max(1, min(h, w) // 2)
            box = ((w - side) // 2, (h - side) // 2, side, side)
        x, y, bw, bh = box
        crop = grey[y : y + bh, x : x + bw]
        crop = cv2.resize(crop, (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_AREA)
        out[i] = hog.compute(crop).reshape(-1)  # (1764,)
    return out, choices


# --- the extractor ---------------------------------------------------------------------------------

MODALITIES = ("text", "audio", "visual")


class Extraction(dict):
    """``{modality: float32 (T, D)}`` for the modalities that could be extracted, plus:

    - ``missing``: ``{modality: reason}`` for each of text / audio / visual that is not there,
      either absent from the sample (``"not in sample"``) or failed (the MediaError message);
    - ``info``: details, e.g. ``info["visual_choices"]``, "face" or "center" per sampled frame.
    """

    def __init__(self) -> None:
        super().__init__()
        self.missing: dict[str, str] = {}
        self.info: dict[str, Any] = {}


class BuiltinExtractor:
    """The offline default extractor set (``feature_set = "builtin"``).

    ``extract(sample)`` reads a sample mapping with optional keys ``text`` (transcript),
    ``video_path`` and ``audio_path``, and returns an :class:`Extraction`:

    - ``text``: ``TextLSA.transform`` of the transcript, ``(tokens, 128)``;
    - ``audio``: :func:`log_mel` of ``audio_path``, or of the video's own audio track when there
      is no ``audio_path`` (the baseline extracts audio from the video, reference/meiju.md §4.1),
      ``(≈100 · seconds, 80)``;
    - ``visual``: :func:`face_hog` of 1 frame in every ``every`` of ``video_path``,
      ``(frames, 1764)``.

    A media file that cannot be decoded (:class:`~meiju_core.errors.MediaError`) marks only that
    modality missing, with the reason, so one bad clip never stops a batch.

    >>> ex = BuiltinExtractor(TextLSA(dim=8).fit(["你好", "撞车了吗"]))
    >>> feats = ex.extract({"text": "撞车了吗"})
    >>> feats["text"].shape, sorted(feats.missing)
    ((3, 8), ['audio', 'visual'])
    """

    name = "builtin"

    def __init__(self, text_model: TextLSA, *, every: int = 30, sr: int = 16000) -> None:
        if not text_model.fitted:
            raise FeatureError("the text model is not fitted; fit it on the project's transcripts")
        self.text_model = text_model
        self.every = every
        self.sr = sr

    @classmethod
    def fit(
        cls, transcripts: Iterable[str], *, dim: int = 128, seed: int = 336, every: int = 30
    ) -> BuiltinExtractor:
        """Fit the text model on a project's transcripts and build the extractor."""
        return cls(TextLSA(dim, seed=seed).fit(transcripts), every=every)

    @property
    def dims(self) -> dict[str, int]:
        """Feature width D per modality: text 128 (the LSA dim), audio 80, visual 1764."""
        return {"text": self.text_model.dim, "audio": AUDIO_DIM, "visual": VISUAL_DIM}

    def extract(self, sample: Mapping[str, Any]) -> Extraction:
        """Features of one sample; see the class docstring. Arrays are float32 ``(T, D)``."""
        result = Extraction()
        if sample.get("text") is not None:
            result["text"] = self.text_model.transform(str(sample["text"]))
        audio_source = sample.get("audio_path") or sample.get("video_path")
        if audio_source:
            self._try(
                result, "audio", lambda: log_mel(media.load_audio(audio_source, self.sr), self.sr)
            )
        if sample.get("video_path"):
            self._try(result, "visual", lambda: self._visual(result, sample["video_path"]))
        for modality in MODALITIES:
            if modality not in result and modality not in result.missing:
                result.missing[modality] = "not in sample"
        return result

    def _visual(self, result: Extraction, path: str | Path) -> np.ndarray:
        frames, times = media.sample_frames(path, self.every)
        feats, choices = face_hog(frames)
        result.info["visual_choices"] = choices
        result.info["visual_times"] = times.tolist()
        return feats

    @staticmethod
    def _try(result: Extraction, modality: str, make: Any) -> None:
        try:
            result[modality] = make()
        except MediaError as e:
            result.missing[modality] = str(e)
