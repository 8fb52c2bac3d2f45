"""Feature tensors on disk: one ``.npy`` per utterance and modality.

Layout, the same as the official baseline's FRAME folders (reference/meiju.md §4)::

    <root>/<feature_set>/<modality>/<utt_id>.npy      float32 (T, D)

The database keeps each file's path, shape and SHA-256 (of the ``.npy`` bytes), never the array.
Writes are atomic (a temporary file in the same folder, then ``os.replace``), so a reader never sees
half a file and a crashed extraction leaves no corrupt feature behind.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
from pathlib import Path

import numpy as np

from meiju_core.errors import FeatureError

__all__ = ["FeatureStore", "sha256_file", "validate_features"]

_SAFE_NAME = re.compile(r"^[A-Za-z0-9_\-.\u4e00-\u9fff]+$")


def validate_features(array: object, *, utt_id: str = "", modality: str = "") -> np.ndarray:
    """Check a feature array: a float32 ndarray of shape ``(T, D)`` with T, D >= 1, all finite.

    Returns the array unchanged.

    Raises:
        FeatureError: wrong type, dtype or shape, or NaN / inf; the message names the utterance
            and modality.
    """
    where = f"utterance {utt_id!r}, modality {modality!r}: " if utt_id or modality else ""
    if not isinstance(array, np.ndarray):
        raise FeatureError(f"{where}expected a numpy array, got {type(array).__name__}")
    if array.dtype != np.float32:
        raise FeatureError(f"{where}expected float32, got {array.dtype}")
    if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] < 1:
        raise FeatureError(f"{where}expected a 2-D (T, D) array with T, D >= 1, got {array.shape}")
    if not np.isfinite(array).all():
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise FeatureError(f"{where}{bad} values are NaN or inf")
    return array


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def sha256_file(path: str | Path) -> str:
    """SHA-256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class FeatureStore:
    """Feature files of one feature set under ``root``.

    Example::

        store = FeatureStore(settings.feature_dir, "builtin")
        path, digest = store.save("dia1_utt1", "audio", np.zeros((300, 80), np.float32))
        store.up_to_date("dia1_utt1", "audio", digest)  # True until the file changes
    """

    def __init__(self, root: str | Path, feature_set: str = "builtin") -> None:
        self.root = Path(root)
        self.feature_set = self._checked("feature_set", feature_set)

    @staticmethod
    def _checked(what: str, name: str) -> str:
        if not name or name in (".", "..") or not _SAFE_NAME.match(name):
            raise FeatureError(
                f"{what} {name!r} is not a safe file name "
                "(letters, digits, Chinese characters, _ - .)",
                field=what,
            )
        return name

    def path(self, utt_id: str, modality: str) -> Path:
        """Where the features of one utterance and modality live (whether or not written)."""
        utt = self._checked("utt_id", utt_id)
        mod = self._checked("modality", modality)
        return self.root / self.feature_set / mod / f"{utt}.npy"

    def save(self, utt_id: str, modality: str, array: np.ndarray) -> tuple[Path, str]:
        """Validate and write atomically; returns ``(path, sha256 hex of the .npy bytes)``.

        Raises:
            FeatureError: the array is not float32 ``(T, D)`` or not finite (names utterance and
                modality), or the utterance id / modality is not a safe file name.
        """
        validate_features(array, utt_id=utt_id, modality=modality)
        target = self.path(utt_id, modality)
        data = _npy_bytes(array)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".tmp", dir=target.parent)
        try:
            # No fsync: features are derived and rebuilt by a re-run; the rename alone keeps a
            # reader from ever seeing a half-written file (fsync cost 4 ms a file, 40 s a project).
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target, hashlib.sha256(data).hexdigest()

    def load(self, utt_id: str, modality: str) -> np.ndarray:
        """Read one feature array, float32 ``(T, D)``.

        Raises:
            FeatureError: no such file, unreadable file, or an array that fails validation.
        """
        target = self.path(utt_id, modality)
        try:
            array = np.load(target, allow_pickle=False)
        except FileNotFoundError:
            raise FeatureError(
                f"no {modality} features for utterance {utt_id!r}", path=str(target)
            ) from None
        except (OSError, ValueError) as e:
            raise FeatureError(f"unreadable feature file: {e}", path=str(target)) from e
        return validate_features(array, utt_id=utt_id, modality=modality)

    def exists(self, utt_id: str, modality: str) -> bool:
        """True if the feature file is there."""
        return self.path(utt_id, modality).is_file()

    def up_to_date(self, utt_id: str, modality: str, content_hash: str) -> bool:
        """True if the file exists and its bytes hash to ``content_hash`` (from :meth:`save`)."""
        target = self.path(utt_id, modality)
        return target.is_file() and sha256_file(target) == content_hash
