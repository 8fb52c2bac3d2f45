"""Training data as the ML layer takes it: utterances, per-modality feature arrays and labels.

:class:`TrainData` holds one split with no store objects (the services build it from the store);
:meth:`TrainData.validate` checks it once where it enters training. The rest turns it into what
the model eats: :func:`utterance_means` (the paper's averaged form), :func:`feature_scales`
(the scale a relative noise σ means), :class:`Prepared` tensors of a split and :func:`collate`
for one padded :class:`~meiju_core.ml.model.JointBatch`, :func:`epoch_batches` for the seeded,
rank-identical mini-batches of an epoch, and :func:`save_npz` / :func:`load_npz` for the file
``python -m meiju_core.ml.train`` reads under torchrun.

Notation: N utterances, T steps, D feature size, B utterances in a batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from meiju_core.errors import FeatureError, LabelError
from meiju_core.ml.model import JointBatch
from meiju_core.schema import LabelSchema

__all__ = [
    "Prepared",
    "TrainData",
    "check_features",
    "collate",
    "epoch_batches",
    "feature_scales",
    "load_npz",
    "save_npz",
    "utterance_means",
]


# ---------------------------------------------------------------------------------------------
# In memory
# ---------------------------------------------------------------------------------------------


@dataclass
class TrainData:
    """Utterances with their features and labels, as the ML layer takes them (no store objects).

    Attributes:
        ids: N utterance ids.
        features: modality -> N arrays, each float32 (T, D) (a 1-D (D,) vector counts as T = 1),
            or ``None`` / a (0, D) array where the utterance lacks that modality. A modality of the
            model absent from the dict is missing for every utterance.
        labels: head -> int64 (N,) class indices, ``-1`` = no label for that head.
    """

    ids: list[str]
    features: dict[str, list[np.ndarray | None]]
    labels: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def validate(
        self, input_dims: Mapping[str, int], num_classes: Mapping[str, int] | None = None
    ) -> None:
        """Check sizes, dims, finiteness and label ranges once, where data enter training.

        Raises:
            FeatureError: a feature list of the wrong length, an unknown modality, a wrong D
                (naming both dims), or NaN / inf (naming the utterance and modality).
            LabelError: a label array of the wrong length or a class index out of range.
        """
        check_features(self.features, input_dims, ids=self.ids)
        for head, y in self.labels.items():
            y = np.asarray(y)
            if y.shape != (len(self),):
                raise LabelError(
                    f"labels have shape {y.shape}, expected ({len(self)},)", field=head
                )
            k = (num_classes or {}).get(head)
            bad = (y < -1) | (y >= k) if k is not None else y < -1
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise LabelError(
                    f"utterance {self.ids[i]!r}: class index {int(y[i])} out of range [-1, {k})",
                    field=head,
                )

    def subset(self, index: Sequence[int] | np.ndarray) -> TrainData:
        """The utterances at ``index``, in that order."""
        idx = [int(i) for i in index]
        return TrainData(
            [self.ids[i] for i in idx],
            {m: [xs[i] for i in idx] for m, xs in self.features.items()},
            {h: np.asarray(y)[idx] for h, y in self.labels.items()},
        )


def check_features(
    features: Mapping[str, Sequence[np.ndarray | None]],
    input_dims: Mapping[str, int],
    *,
    ids: Sequence[str] | None = None,
) -> None:
    """Validate per-utterance feature arrays against the model's input dims.

    Raises:
        FeatureError: see :meth:`TrainData.validate`.
    """
    sizes = {len(xs) for xs in features.values()} | ({len(ids)} if ids is not None else set())
    if len(sizes) > 1:
        raise FeatureError(f"modalities and ids have different lengths: {sorted(sizes)}")
    for modality, arrays in features.items():
        if modality not in input_dims:
            raise FeatureError(
                f"unknown modality {modality!r}; the model has {list(input_dims)}", field=modality
            )
        for i, x in enumerate(arrays):
            if x is None:
                continue
            uid = ids[i] if ids is not None else f"#{i}"
            x = np.asarray(x)
            if x.ndim not in (1, 2) or x.shape[-1] != input_dims[modality]:
                raise FeatureError(
                    f"utterance {uid!r}: {modality} features have shape {x.shape}; "
                    f"feature dim {x.shape[-1] if x.ndim else 0} != model input dim "
                    f"{input_dims[modality]}",
                    field=modality,
                )
            if not np.isfinite(x).all():
                raise FeatureError(
                    f"utterance {uid!r}: {modality} features contain NaN or inf", field=modality
                )


def utterance_means(
    features: Mapping[str, Sequence[np.ndarray | None]],
) -> dict[str, list[np.ndarray | None]]:
    """One vector per utterance per modality: the average over its steps (paper §II.C, "the
    average embedding for each modality").

    Each array holds only the utterance's own (valid) steps, so the plain mean over axis 0 is the
    masked mean; :func:`meiju_core.ml.model.masked_mean` is the same on padded batches.

    Args:
        features: modality -> N arrays float (T, D) or (D,), or None / (0, D) where missing.
    Returns:
        modality -> N arrays float32 (1, D), None where the utterance lacks the modality.
    """
    out: dict[str, list[np.ndarray | None]] = {}
    for m, xs in features.items():
        out[m] = [
            None
            if x is None or np.asarray(x).size == 0
            else np.asarray(x, dtype=np.float32).reshape(-1, np.shape(x)[-1]).mean(0, keepdims=True)
            for x in xs
        ]
    return out


def feature_scales(features: Mapping[str, Sequence[np.ndarray | None]]) -> dict[str, float]:
    """Scale of each modality's features: the root of the mean per-dimension variance over every
    valid step of every utterance (the std a unit of ``noise_sigma`` means when the noise is
    relative; our interpretation of the paper's unstated σ). A modality with no steps gets 1.0.

    Returns:
        modality -> float >= 0.
    """
    out = {}
    for m, xs in features.items():
        rows = [np.asarray(x, np.float64).reshape(-1, np.shape(x)[-1]) for x in xs if x is not None]
        rows = [r for r in rows if r.size]
        if not rows:
            out[m] = 1.0
            continue
        stacked = np.concatenate(rows)
        out[m] = float(np.sqrt(stacked.var(axis=0).mean())) if len(stacked) > 1 else 1.0
    return out


def _as_tensors(
    features: Mapping[str, Sequence[np.ndarray | None]], modalities: Sequence[str], n: int
) -> dict[str, list[Tensor | None]]:
    """Convert once: modality -> N tensors float32 (T, D) or None (missing or empty)."""
    out: dict[str, list[Tensor | None]] = {}
    for m in modalities:
        xs = features.get(m) or [None] * n
        out[m] = [
            None
            if x is None or np.asarray(x).size == 0
            else torch.as_tensor(np.asarray(x, dtype=np.float32)).reshape(-1, np.shape(x)[-1])
            for x in xs
        ]
    return out


def collate(
    features: Mapping[str, Sequence[Tensor | None]],
    input_dims: Mapping[str, int],
    labels: Mapping[str, Tensor] | None = None,
) -> JointBatch:
    """Pad one batch. Each modality is zero-padded to the longest sequence in the batch (at least 1
    step; the TextCNN pads text to its widest kernel itself), with a validity mask.

    Args:
        features: modality -> B tensors float32 (T_i, D) or None (missing).
        input_dims: modality -> D (gives the shape of an all-missing modality).
        labels: head -> int64 (B,), ``-1`` = missing; None at inference.
    Returns:
        A :class:`JointBatch`: features (B, T, D) float32, masks (B, T) bool.
    """
    feats, masks = {}, {}
    for m, dim in input_dims.items():
        xs = features[m]
        lengths = torch.tensor([0 if x is None else x.shape[0] for x in xs])  # (B,)
        steps = max(int(lengths.max()) if len(xs) else 0, 1)
        padded = torch.zeros(len(xs), steps, dim)  # (B, T, D)
        for i, x in enumerate(xs):
            if x is not None:
                padded[i, : x.shape[0]] = x
        feats[m], masks[m] = (
            padded,
            torch.arange(steps).unsqueeze(0) < lengths.unsqueeze(1),
        )  # (B, T)
    return JointBatch(feats, masks, dict(labels) if labels is not None else None)


class Prepared:
    """Tensors of one split, built once; ``batch(index)`` collates any subset."""

    def __init__(
        self,
        features: Mapping[str, Sequence[np.ndarray | None]],
        labels: Mapping[str, np.ndarray] | None,
        input_dims: Mapping[str, int],
        heads: Sequence[str],
        n: int,
    ) -> None:
        self.input_dims, self.n = dict(input_dims), n
        self.features = _as_tensors(features, list(input_dims), n)
        labels = labels or {}
        self.labels = {
            h: torch.as_tensor(np.asarray(labels[h], dtype=np.int64))
            if h in labels
            else torch.full((n,), -1, dtype=torch.int64)
            for h in heads
        }
        self.lengths = np.array(
            [
                sum(0 if xs[i] is None else xs[i].shape[0] for xs in self.features.values())
                for i in range(n)
            ]
        )

    def batch(self, index: Sequence[int]) -> JointBatch:
        feats = {m: [xs[i] for i in index] for m, xs in self.features.items()}
        idx = torch.as_tensor(np.asarray(index, dtype=np.int64))
        return collate(feats, self.input_dims, {h: y[idx] for h, y in self.labels.items()})


def epoch_batches(
    n: int,
    *,
    batch_size: int,
    seed: int,
    epoch: int,
    world: int = 1,
    lengths: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Global mini-batches of one epoch, identical on every rank (so N ranks see what one sees).

    A seeded permutation (seed + epoch), wrapped to a multiple of ``world`` like
    ``DistributedSampler``, cut into batches of ``batch_size`` (the last may be shorter). With
    ``lengths`` the permutation is cut into pools of 50 batches, each pool sorted by length
    before cutting, and the batch order shuffled: less padding, same samples per epoch.

    Returns:
        list of int64 index arrays; rank r trains on ``batch[r::world]`` of each.
    """
    rng = np.random.default_rng(seed + epoch)
    order = rng.permutation(n)
    if len(order) % world:
        order = np.concatenate([order, order[: world - len(order) % world]])
    if lengths is None:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    pool = batch_size * 50
    batches = []
    for start in range(0, len(order), pool):
        chunk = order[start : start + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def save_npz(
    path: str | Path,
    splits: Mapping[str, TrainData],
    input_dims: Mapping[str, int],
    schema: LabelSchema | None = None,
) -> None:
    """Write splits (e.g. ``{"train": ..., "valid": ...}``) to one ``.npz`` without pickles.

    Keys: ``dim.<modality>``; ``<split>.ids``; ``<split>.len.<modality>`` (N,) int64 with 0 =
    missing; ``<split>.feat.<modality>`` (sum of lengths, D) float32; ``<split>.label.<head>``;
    ``schema.<head>`` class names.
    """
    arrays: dict[str, np.ndarray] = {f"dim.{m}": np.array(d) for m, d in input_dims.items()}
    for name, data in splits.items():
        arrays[f"{name}.ids"] = np.array(data.ids, dtype=str)
        for m, d in input_dims.items():
            xs = [
                np.zeros((0, d), np.float32)
                if x is None
                else np.asarray(x, np.float32).reshape(-1, d)
                for x in data.features.get(m, [None] * len(data))
            ]
            arrays[f"{name}.len.{m}"] = np.array([len(x) for x in xs], dtype=np.int64)
            arrays[f"{name}.feat.{m}"] = np.concatenate(xs) if xs else np.zeros((0, d), np.float32)
        for h, y in data.labels.items():
            arrays[f"{name}.label.{h}"] = np.asarray(y, dtype=np.int64)
    for h, classes in (schema.to_dict() if schema else {}).items():
        arrays[f"schema.{h}"] = np.array(classes, dtype=str)
    np.savez(path, **arrays)


def load_npz(path: str | Path) -> tuple[dict[str, TrainData], dict[str, int], LabelSchema | None]:
    """Read what :func:`save_npz` wrote: (splits, input_dims, schema or None)."""
    with np.load(path, allow_pickle=False) as z:
        files = {k: z[k] for k in z.files}
    dims = {k.split(".", 1)[1]: int(v) for k, v in files.items() if k.startswith("dim.")}
    heads = {
        k.split(".", 1)[1]: [str(c) for c in v] for k, v in files.items() if k.startswith("schema.")
    }
    splits = {}
    for name in sorted({k.split(".")[0] for k in files if k.endswith(".ids")}):
        feats: dict[str, list[np.ndarray | None]] = {}
        for m in dims:
            lens, flat = files[f"{name}.len.{m}"], files[f"{name}.feat.{m}"]
            ends = np.cumsum(lens)
            feats[m] = [flat[e - n : e] if n else None for n, e in zip(lens, ends, strict=True)]
        labels = {
            k.rsplit(".", 1)[1]: v for k, v in files.items() if k.startswith(f"{name}.label.")
        }
        splits[name] = TrainData([str(i) for i in files[f"{name}.ids"]], feats, labels)
    return splits, dims, LabelSchema.from_dict(heads) if heads else None
