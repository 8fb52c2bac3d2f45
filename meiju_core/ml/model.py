"""The joint emotion + intent model of the MEIJU 2025 Track I winner, with the official baseline as a
configuration of the same classes.

Sources (details and line numbers in ``reference/meiju.md``):

- Official baseline ``AI-S2-Lab/MEIJU2025-baseline``: encoders ``models/networks/lstm.py`` and
  ``textcnn.py`` (§5.1), the fusion Transformer of ``models/our/our_model.py`` (§5.2), the gated
  ``InteractModule`` of ``models/networks/interact_model.py`` (§5.3), ``FcClassifier`` heads and the
  four-term loss (§5.4), the stage-1 ``models/pretrain_model.py`` (§5.5), kaiming init (§5.7).
- Track I winner, arXiv 2501.06215 §II.C-E and §III (meiju.md §8): one vector per utterance per
  modality (``representation="mean"``), a one-layer TextCNN ("1textcnn", read here as one branch of
  kernel 1: an interpretation), the head count of each task's fusion *self-attention* varied per task
  (``fusion_heads``), the gated emotion<->intent interaction unchanged (1 head), Gaussian noise on
  the embeddings (σ relative to each modality's scale on train: an interpretation), and stage 2 as a
  fine-tune of the whole stage-1 model (``stage2_init="full"``).

Ours, not from either source, each a switch in :class:`ModelConfig`: pooling skips padded steps
(``masked_pooling``), modalities a sample lacks are left out of attention, and a label missing for one
head (``-1``) is left out of that head's loss.

Notation used for tensor shapes::

    B   batch size
    T   steps of one modality (T_v, T_a, T_l differ); padded to the longest in the batch;
        T = 1 with representation="mean"
    D   input feature size of one modality (``ModelConfig.input_dims``)
    M   number of modalities, 3, in the fusion order [visual, audio, text]
    H   hidden size, 128
    K   classes of a head (7 emotions, 8 intents)
    C   TextCNN channels per kernel, 128

Example::

    >>> cfg = ModelConfig.paper({"visual": 8, "audio": 8, "text": 8})
    >>> model = JointModel(cfg)
    >>> batch = JointBatch.random(cfg, batch_size=2, steps=1)
    >>> out = model(batch)
    >>> tuple(out.probs["intent"].shape), out.loss is not None
    ((2, 8), True)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from meiju_core.schema import EMOTIONS, INTENTS, MODALITIES

TEXT_MIN_STEPS = 4  # the widest baseline TextCNN kernel (meiju.md §5.1)
IGNORE = -1  # a missing label
BASELINE_INPUT_DIMS = {"visual": 342, "audio": 512, "text": 768}  # Track 1 scripts (meiju.md §4.4)
REPRESENTATIONS = ("sequence", "mean")
STAGE2_INITS = ("encoders", "full")
NOISE_MODES = ("absolute", "relative")


@dataclass(frozen=True)
class ModelConfig:
    """Every setting of :class:`JointModel`, each with its source. Build with a preset.

    >>> ModelConfig.baseline({"visual": 342, "audio": 512, "text": 768}).fusion_heads
    {'emotion': 2, 'intent': 2}

    Raises:
        ValueError: a setting that cannot work, naming the numbers involved (e.g. a hidden size
            that a head count does not divide).
    """

    # modality -> D; fusion order is schema.MODALITIES. Baseline V 342, A 512, L 768 (§4.4).
    input_dims: Mapping[str, int]
    # head -> K; the first head is emotion, the second intent (§2.1: 7 and 8).
    num_classes: Mapping[str, int] = field(
        default_factory=lambda: {"emotion": len(EMOTIONS), "intent": len(INTENTS)}
    )
    # "sequence": (T, D) steps per modality, as the baseline feeds them; "mean": one vector per
    # utterance, the masked average over valid steps (paper §II.C), computed once where features
    # are loaded (meiju_core.ml.train.utterance_means), never per batch.
    representation: str = "sequence"
    hidden: int = 128  # embd_size_{a,v,l} = hidden_size = 128 (§5.7)
    # heads of each task's fusion self-attention: Transformer_head=2 (§5.2); the paper varies
    # these per task (§II.E: fewer and more heads for intent).
    fusion_heads: Mapping[str, int] = field(default_factory=lambda: {"emotion": 2, "intent": 2})
    fusion_dropout: float = 0.1  # PyTorch's TransformerEncoderLayer default (§5.2)
    fusion_feedforward: int = 2048  # PyTorch's default dim_feedforward (§5.2)
    # heads of both steps of each task's gated interaction: 1 in the baseline (§5.3), and
    # "unchanged" in the paper (§II.E).
    interaction_heads: Mapping[str, int] = field(
        default_factory=lambda: {"emotion": 1, "intent": 1}
    )
    cls_layers: tuple[int, ...] = (128, 64)  # --cls_layers=128,64 (§5.4)
    dropout: float = 0.2  # --dropout_rate=0.2 (§5.4)
    textcnn_channels: int = 128  # per kernel (§5.1)
    # kernel heights: the baseline's 2/3/4 (§5.1); (1,) is our reading of the paper's "1textcnn"
    textcnn_kernels: tuple[int, ...] = (2, 3, 4)
    textcnn_dropout: float = 0.5  # hard-coded in the baseline (§5.7)
    masked_pooling: bool = True  # ours; the baseline max-pools over padding too (§5.1)
    aux_weight: float = 1.0  # focal_weight on the two auxiliary CE terms (§5.4)
    # Gaussian noise on input features while training (paper §III; σ not given). "absolute": std
    # noise_sigma; "relative" (our interpretation): std noise_sigma x the modality's scale on train
    # (root mean per-dimension variance over valid steps, ``noise_scale``, filled by fit()).
    noise_sigma: float = 0.0
    noise_mode: str = "absolute"
    noise_scale: Mapping[str, float] = field(default_factory=dict)
    # stage 1 is the baseline's pretrain model (no interaction, heads on fusion output, §5.5)
    pretrain_stage1: bool = False
    # what stage 2 takes from stage 1: "encoders" (+ fusion; the baseline's post_process, §5.6)
    # or "full" (every weight: the paper's fine-tune, §III)
    stage2_init: str = "encoders"

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_dims", {m: int(d) for m, d in self.input_dims.items()})
        object.__setattr__(self, "num_classes", {h: int(k) for h, k in self.num_classes.items()})
        object.__setattr__(self, "fusion_heads", {t: int(n) for t, n in self.fusion_heads.items()})
        inter = {}
        for t, n in self.interaction_heads.items():
            if isinstance(n, list | tuple):  # an older config's one path ((h1, h2),)
                raise ValueError(
                    f"interaction_heads[{t!r}] is {n!r}: a config from before version 0.2 "
                    "(in-model intent paths); retrain the model"
                )
            inter[t] = int(n)
        object.__setattr__(self, "interaction_heads", inter)
        scale = {m: float(v) for m, v in self.noise_scale.items()}
        object.__setattr__(self, "noise_scale", scale)
        object.__setattr__(self, "cls_layers", tuple(int(n) for n in self.cls_layers))
        object.__setattr__(self, "textcnn_kernels", tuple(int(k) for k in self.textcnn_kernels))
        self._validate()

    def _validate(self) -> None:
        unknown = set(self.input_dims) - set(MODALITIES)
        if not self.input_dims or unknown:
            raise ValueError(
                f"input_dims must name some of {list(MODALITIES)}, got {self.input_dims}"
            )
        for m, d in self.input_dims.items():
            if d < 1:
                raise ValueError(f"input dim of {m!r} must be positive, got {d}")
        if len(self.num_classes) != 2 or min(self.num_classes.values()) < 2:
            raise ValueError(f"need two heads with >= 2 classes each, got {self.num_classes}")
        for name in ("fusion_heads", "interaction_heads"):
            if set(getattr(self, name)) != set(self.tasks):
                raise ValueError(f"{name} must have the tasks {list(self.tasks)} as keys")
        for task in self.tasks:
            self._check_heads(f"fusion of {task}", self.fusion_heads[task])
            self._check_heads(f"interaction of {task}", self.interaction_heads[task])
        if not self.textcnn_kernels or min(self.textcnn_kernels) < 1:
            raise ValueError(f"TextCNN kernels must be >= 1, got {self.textcnn_kernels}")
        if max(self.textcnn_kernels) > TEXT_MIN_STEPS:
            raise ValueError(
                f"TextCNN kernels must be 1..{TEXT_MIN_STEPS}, got {self.textcnn_kernels}"
            )
        for name in ("dropout", "textcnn_dropout", "fusion_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not self.noise_sigma >= 0 or not self.aux_weight >= 0:  # NaN fails too
            raise ValueError(
                f"noise_sigma {self.noise_sigma} and aux_weight {self.aux_weight} must be >= 0"
            )
        for name, allowed in (
            ("representation", REPRESENTATIONS),
            ("stage2_init", STAGE2_INITS),
            ("noise_mode", NOISE_MODES),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"{name} must be one of {list(allowed)}, got {getattr(self, name)!r}"
                )
        for m, v in self.noise_scale.items():
            if not v >= 0:
                raise ValueError(f"noise_scale[{m!r}] must be >= 0, got {v}")

    def _check_heads(self, where: str, heads: int) -> None:
        if heads < 1 or self.hidden % heads != 0:
            raise ValueError(
                f"hidden size {self.hidden} is not divisible by {heads} attention heads ({where})"
            )

    @property
    def tasks(self) -> tuple[str, str]:
        """The two heads, emotion first: ``("emotion", "intent")`` in MEIJU."""
        first, second = self.num_classes
        return first, second

    @property
    def modalities(self) -> tuple[str, ...]:
        """Modalities of the model in fusion order (a subset of ``schema.MODALITIES``)."""
        return tuple(m for m in MODALITIES if m in self.input_dims)

    def noise_std(self, modality: str) -> float:
        """Std of the training noise on ``modality``'s features: ``noise_sigma``, times the
        modality's scale on train (``noise_scale``, 1.0 until fit() measured it) when relative."""
        if self.noise_mode == "relative":
            return self.noise_sigma * self.noise_scale.get(modality, 1.0)
        return self.noise_sigma

    @classmethod
    def baseline(
        cls,
        input_dims: Mapping[str, int] | None = None,
        num_classes: Mapping[str, int] | None = None,
        **overrides: Any,
    ) -> ModelConfig:
        """The official MEIJU 2025 baseline (meiju.md §5): sequences in, 2-head fusion, 1-head
        interaction, TextCNN 2/3/4, max-pooling over padding, no noise, stage 1 = the pretrain
        model, stage 2 takes its encoders and fusion layers."""
        values = dict(
            representation="sequence",
            masked_pooling=False,
            noise_sigma=0.0,
            pretrain_stage1=True,
            stage2_init="encoders",
        )
        return cls._preset(input_dims, num_classes, {**values, **overrides})

    @classmethod
    def paper(
        cls,
        input_dims: Mapping[str, int] | None = None,
        num_classes: Mapping[str, int] | None = None,
        *,
        emotion_heads: int = 2,
        intent_heads: int = 2,
        text_kernels: tuple[int, ...] = (1,),
        **overrides: Any,
    ) -> ModelConfig:
        """One system of the Track I winner (meiju.md §8): utterance-mean inputs (§II.C), fusion
        self-attention with ``emotion_heads`` / ``intent_heads`` heads (§II.E; the paper trains a
        1-head and a 2-head intent system and fuses them, see ``meiju ensemble``), the baseline's
        1-head interaction unchanged, the one-branch "1textcnn" (``text_kernels=(1,)``, our
        reading), relative Gaussian noise σ = 0.1 (our interpretation of an unstated σ), the full
        joint model from stage 1 on, stage 2 a fine-tune of every stage-1 weight (§III)."""
        values = dict(
            representation="mean",
            masked_pooling=True,
            noise_sigma=0.1,
            noise_mode="relative",
            pretrain_stage1=False,
            stage2_init="full",
            textcnn_kernels=tuple(text_kernels),
        )
        classes = dict(num_classes or {"emotion": len(EMOTIONS), "intent": len(INTENTS)})
        first, second = classes
        heads = {"fusion_heads": {first: emotion_heads, second: intent_heads}}
        return cls._preset(input_dims, classes, {**values, **heads, **overrides})

    @classmethod
    def _preset(
        cls,
        input_dims: Mapping[str, int] | None,
        num_classes: Mapping[str, int] | None,
        values: dict[str, Any],
    ) -> ModelConfig:
        classes = dict(num_classes or {"emotion": len(EMOTIONS), "intent": len(INTENTS)})
        first, second = classes
        base: dict[str, Any] = dict(
            input_dims=input_dims or BASELINE_INPUT_DIMS,
            num_classes=classes,
            fusion_heads={first: 2, second: 2},
            interaction_heads={first: 1, second: 1},
        )
        return cls(**{**base, **values})

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (lists, not tuples) for JSON and checkpoints; ``from_dict`` inverts it."""
        d = asdict(self)
        d["cls_layers"], d["textcnn_kernels"] = list(self.cls_layers), list(self.textcnn_kernels)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`. Raises ``ValueError`` / ``TypeError`` on bad fields."""
        return cls(**dict(data))

    def with_(self, **changes: Any) -> ModelConfig:
        """A copy with ``changes`` applied and validated again."""
        return replace(self, **changes)


# ---------------------------------------------------------------------------------------------
# Batch and output
# ---------------------------------------------------------------------------------------------


@dataclass
class JointBatch:
    """One padded mini-batch.

    Attributes:
        features: modality -> float32 (B, T, D), zero at padded steps.
        masks: modality -> bool (B, T); True = a valid step. An all-False row means the sample
            lacks that modality.
        labels: head -> int64 (B,), ``-1`` = no label for that head; ``None`` at inference.
    """

    features: dict[str, Tensor]
    masks: dict[str, Tensor]
    labels: dict[str, Tensor] | None = None

    def to(self, device: torch.device | str) -> JointBatch:
        """The same batch on ``device`` (non-blocking copies)."""

        def move(d: dict[str, Tensor]) -> dict[str, Tensor]:
            return {k: v.to(device, non_blocking=True) for k, v in d.items()}

        return JointBatch(
            move(self.features),
            move(self.masks),
            move(self.labels) if self.labels is not None else None,
        )

    @property
    def size(self) -> int:
        """B, the number of utterances."""
        return next(iter(self.masks.values())).shape[0]

    @classmethod
    def random(
        cls,
        config: ModelConfig,
        *,
        batch_size: int = 4,
        steps: int = 6,
        generator: torch.Generator | None = None,
    ) -> JointBatch:
        """A full random batch with random labels (all steps valid); for tests and examples."""
        g = generator
        feats = {
            m: torch.randn(batch_size, steps, d, generator=g) for m, d in config.input_dims.items()
        }
        masks = {m: torch.ones(batch_size, steps, dtype=torch.bool) for m in config.input_dims}
        labels = {
            h: torch.randint(0, k, (batch_size,), generator=g)
            for h, k in config.num_classes.items()
        }
        return cls(feats, masks, labels)


@dataclass
class JointOutput:
    """What :meth:`JointModel.forward` returns.

    Attributes:
        logits: head -> float32 (B, K).
        probs: head -> float32 (B, K), ``softmax(logits)``; rows sum to 1.
        aux_logits: head -> float32 (B, K) of the auxiliary head on [V, A, L] encoder outputs
            (empty for the stage-1 pretrain model).
        loss: scalar total loss, or ``None`` when the batch has no labels.
        losses: ``"<head>"`` and ``"aux_<head>"`` -> scalar masked CE (0 for a head with no label
            in the batch); empty without labels.
        gates: head -> the (B, M, H) sigmoid gate of its interaction (empty when pretrain).
    """

    logits: dict[str, Tensor]
    probs: dict[str, Tensor]
    aux_logits: dict[str, Tensor]
    loss: Tensor | None
    losses: dict[str, Tensor]
    gates: dict[str, Tensor]


# ---------------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------------


class LSTMEncoder(nn.Module):
    """Audio / visual encoder: 1-layer unidirectional LSTM, max-pool over time (baseline
    ``models/networks/lstm.py``, ``embd_method=maxpool``; meiju.md §5.1).

    With ``masked_pooling`` only valid steps are pooled, so appended padding never changes the
    output (the LSTM is unidirectional, so valid steps never see the padding after them); a sample
    with no valid step gets zeros. Without it, as the baseline, padded steps are pooled too.
    """

    def __init__(self, input_dim: int, hidden: int, *, masked_pooling: bool = True) -> None:
        super().__init__()
        self.rnn = nn.LSTM(input_dim, hidden, num_layers=1, batch_first=True)
        self.masked_pooling = masked_pooling

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x: float (B, T, D); mask: bool (B, T). Returns float (B, H)."""
        out, _ = self.rnn(x)  # (B, T, H)
        if not self.masked_pooling:
            return out.max(dim=1).values  # (B, H)
        out = out.masked_fill(~mask.unsqueeze(-1), float("-inf"))  # (B, T, H)
        pooled = out.max(dim=1).values  # (B, H)
        return torch.where(mask.any(dim=1, keepdim=True), pooled, torch.zeros_like(pooled))


class TextCNN(nn.Module):
    """Text encoder (baseline ``models/networks/textcnn.py``; meiju.md §5.1): Conv2d branches with
    kernel heights 2/3/4 spanning the full embedding width, C channels each, ReLU, max over time,
    concatenation (3C), dropout 0.5, Linear 3C -> H, ReLU.

    Text shorter than the widest kernel is zero-padded to it, so one utterance-level vector
    (T = 1) works with any kernels; ``kernels=(1,)`` is the one-branch TextCNN we read the paper's
    "1textcnn" as (an interpretation). With ``masked_pooling`` only windows inside the first
    ``max(length, widest kernel)`` steps are pooled.
    The convolutions run as ``conv1d`` over the same weights (identical result, faster on CPU).
    """

    def __init__(
        self,
        input_dim: int,
        hidden: int,
        *,
        channels: int = 128,
        kernels: tuple[int, ...] = (2, 3, 4),
        dropout: float = 0.5,
        masked_pooling: bool = True,
    ) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(1, channels, (k, input_dim)) for k in kernels)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels * len(kernels), hidden)
        self.masked_pooling = masked_pooling
        self.min_steps = max(kernels)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x: float (B, T, D); mask: bool (B, T). Returns float (B, H)."""
        if x.shape[1] < self.min_steps:
            pad = self.min_steps - x.shape[1]
            x = F.pad(x, (0, 0, 0, pad))  # (B, widest kernel, D)
            mask = F.pad(mask, (0, pad))  # (B, widest kernel)
        length = mask.sum(dim=1)  # (B,)
        length = torch.where(length > 0, length.clamp(min=self.min_steps), length)
        xt = x.transpose(1, 2).contiguous()  # (B, D, T)
        pooled = [self._branch(conv, xt, length) for conv in self.convs]  # each (B, C)
        z = torch.cat(pooled, dim=1)  # (B, len(kernels) * C)
        out = F.relu(self.fc(self.dropout(z)))  # (B, H)
        return out * (length > 0).unsqueeze(1) if self.masked_pooling else out  # no text -> zeros

    def _branch(self, conv: nn.Conv2d, xt: Tensor, length: Tensor) -> Tensor:
        k = conv.kernel_size[0]
        weight = conv.weight.squeeze(1).transpose(1, 2).contiguous()  # (C, 1, k, D) -> (C, D, k)
        c = F.relu(F.conv1d(xt, weight, conv.bias))  # (B, C, T - k + 1)
        if self.masked_pooling:
            starts = torch.arange(c.shape[2], device=c.device)  # (T - k + 1,)
            valid = starts.unsqueeze(0) + k <= length.unsqueeze(1)  # (B, T - k + 1)
            c = c * valid.unsqueeze(1)  # after ReLU, zeroing a window == leaving it out of the max
        return c.max(dim=2).values  # (B, C)


class FusionTransformer(nn.Module):
    """One ``nn.TransformerEncoderLayer`` (d_model H, ``heads`` heads, PyTorch defaults otherwise)
    over the M modality vectors [visual, audio, text] of one task (meiju.md §5.2).

    Modalities a sample lacks are left out as keys through ``src_key_padding_mask``; a sample that
    lacks all of them keeps its first (zero) token as key so the attention never divides by zero.
    """

    def __init__(
        self, hidden: int, heads: int, *, dropout: float = 0.1, feedforward: int = 2048
    ) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(
            hidden, heads, dim_feedforward=feedforward, dropout=dropout, batch_first=True
        )

    def forward(self, tokens: Tensor, key_padding: Tensor) -> Tensor:
        """tokens: float (B, M, H); key_padding: bool (B, M), True = leave out. Returns (B, M, H)."""
        return self.layer(tokens, src_key_padding_mask=key_padding)  # (B, M, H)


class GatedInteraction(nn.Module):
    """Gated cross-task attention, the baseline ``InteractModule`` (``ablation='normal'``;
    meiju.md §5.3); the paper keeps it unchanged (1 head), the count is a setting::

        inter = Attn1(q=own, k=other, v=other)
        hence = Attn2(q=own, k=inter, v=inter)
        gate  = sigmoid(inter + hence)
        out   = own + hence * gate
    """

    def __init__(self, hidden: int, heads_step1: int, heads_step2: int) -> None:
        super().__init__()
        self.inter_attention = nn.MultiheadAttention(
            hidden, heads_step1, dropout=0.0, batch_first=True
        )
        self.hence_attention = nn.MultiheadAttention(
            hidden, heads_step2, dropout=0.0, batch_first=True
        )

    def forward(self, own: Tensor, other: Tensor, key_padding: Tensor) -> tuple[Tensor, Tensor]:
        """own, other: float (B, M, H); key_padding: bool (B, M). Returns (out, gate), both (B, M, H)."""
        inter, _ = self.inter_attention(
            own, other, other, key_padding_mask=key_padding, need_weights=False
        )  # (B, M, H)
        hence, _ = self.hence_attention(
            own, inter, inter, key_padding_mask=key_padding, need_weights=False
        )  # (B, M, H)
        gate = torch.sigmoid(inter + hence)  # (B, M, H)
        return own + hence * gate, gate


class ClassifierHead(nn.Module):
    """The baseline ``FcClassifier(384, [128, 64], K)`` (meiju.md §5.4): Linear, ReLU, Dropout per
    hidden layer, then a Linear to K logits."""

    def __init__(
        self, in_dim: int, layers: tuple[int, ...], num_classes: int, dropout: float
    ) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        for width in layers:
            blocks += [nn.Linear(in_dim, width), nn.ReLU(), nn.Dropout(dropout)]
            in_dim = width
        blocks.append(nn.Linear(in_dim, num_classes))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        """x: float (B, M*H). Returns logits (B, K)."""
        return self.net(x)


# ---------------------------------------------------------------------------------------------
# The joint model
# ---------------------------------------------------------------------------------------------


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Average over valid steps only: the utterance-level vector of paper §II.C on a padded batch.

    Args:
        x: float (B, T, D); mask: bool (B, T), True = a valid step.
    Returns:
        float (B, 1, D); zeros for a row with no valid step. Padded steps never change it.
    """
    weights = mask.unsqueeze(-1).to(x.dtype)  # (B, T, 1)
    total = (x * weights).sum(dim=1, keepdim=True)  # (B, 1, D)
    count = weights.sum(dim=1, keepdim=True).clamp(min=1)  # (B, 1, 1)
    return total / count


def masked_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean CE over samples whose label is not ``-1``; 0 (still in the graph) when none is.

    logits: float (B, K); labels: int64 (B,). Returns a float32 scalar.
    """
    total = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE, reduction="sum")
    count = (labels != IGNORE).sum().clamp(min=1)
    return total / count


def init_weights(module: nn.Module) -> None:
    """Kaiming-normal (fan-in, a=0) on every Linear / Conv weight, zero bias; LSTMs and the
    attention in-projections keep PyTorch's init (baseline ``models/networks/tools.py``, §5.7)."""
    for m in module.modules():
        if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class JointModel(nn.Module):
    """Joint emotion + intent classifier (``models/our/our_model.py``; paper variant per config).

    Wiring, per task t in (emotion, intent), o the other task::

        enc_t  = [LSTM_v(V), LSTM_a(A), TextCNN(L)]           (B, M, H)   one encoder set per task
        fus_t  = FusionTransformer_t(enc_t)                   (B, M, H)   fusion_heads[t] heads
        out_t  = GatedInteraction_t(q=fus_t, kv=fus_o)        (B, M, H)
        p_t    = softmax(Head_t(flatten(out_t)))              (B, K)      the prediction
        aux_t  = AuxHead_t(flatten(enc_t))                    (B, K)      auxiliary, loss only

    Loss = CE(emotion) + CE(intent) + aux_weight · (CE(aux emotion) + CE(aux intent)); labels
    ``-1`` are left out (§5.4). With ``representation="mean"`` every T is 1.

    With ``pretrain=True`` it is the baseline's stage-1 ``pretrain_model.py`` (§5.5): no interaction,
    no auxiliary heads, one head per task on the flattened fusion output, loss CE + CE.

    Args:
        config: the settings; see :class:`ModelConfig`.
        pretrain: build the stage-1 pretrain variant.
    """

    def __init__(self, config: ModelConfig, *, pretrain: bool = False) -> None:
        super().__init__()
        self.config, self.pretrain = config, pretrain
        c, flat = config, config.hidden * len(config.modalities)
        self.encoders = nn.ModuleDict(
            {t: nn.ModuleDict({m: self._encoder(m) for m in c.modalities}) for t in c.tasks}
        )
        self.fusion = nn.ModuleDict(
            {
                t: FusionTransformer(
                    c.hidden,
                    c.fusion_heads[t],
                    dropout=c.fusion_dropout,
                    feedforward=c.fusion_feedforward,
                )
                for t in c.tasks
            }
        )
        self.heads = nn.ModuleDict(
            {t: ClassifierHead(flat, c.cls_layers, c.num_classes[t], c.dropout) for t in c.tasks}
        )
        if not pretrain:
            self.interaction = nn.ModuleDict(
                {
                    t: GatedInteraction(c.hidden, c.interaction_heads[t], c.interaction_heads[t])
                    for t in c.tasks
                }
            )
            self.aux_heads = nn.ModuleDict(
                {
                    t: ClassifierHead(flat, c.cls_layers, c.num_classes[t], c.dropout)
                    for t in c.tasks
                }
            )
        init_weights(self)

    def _encoder(self, modality: str) -> nn.Module:
        c, dim = self.config, self.config.input_dims[modality]
        if modality == "text":
            return TextCNN(
                dim,
                c.hidden,
                channels=c.textcnn_channels,
                kernels=c.textcnn_kernels,
                dropout=c.textcnn_dropout,
                masked_pooling=c.masked_pooling,
            )
        return LSTMEncoder(dim, c.hidden, masked_pooling=c.masked_pooling)

    def sub_networks(self) -> list[nn.Module]:
        """The blocks the baseline keeps as separate networks (each encoder, fusion, interaction,
        head); gradients are clipped per block as in ``our_model.py`` (§5.7)."""
        nets: list[nn.Module] = [enc for encs in self.encoders.values() for enc in encs.values()]
        nets += list(self.fusion.values())
        nets += list(self.heads.values())
        if not self.pretrain:
            nets += list(self.interaction.values())
            nets += list(self.aux_heads.values())
        return nets

    def forward(self, batch: JointBatch) -> JointOutput:
        """Run the model on a :class:`JointBatch` (see its shapes); loss only when it has labels."""
        modalities = self.config.modalities
        present = torch.stack([batch.masks[m].any(dim=1) for m in modalities], 1)  # (B, M)
        in_batch = dict(zip(modalities, present.any(dim=0).tolist(), strict=True))
        feats = self._add_noise(batch.features, batch.masks, in_batch)
        key_padding = ~present  # (B, M)
        key_padding[:, 0] &= present.any(dim=1)  # a sample with nothing keeps one (zero) key
        keep = present.unsqueeze(-1).to(feats[modalities[0]].dtype)  # (B, M, 1)
        encoded = {
            t: self._encode(t, feats, batch.masks, in_batch) * keep for t in self.config.tasks
        }
        fused = {t: self.fusion[t](encoded[t], key_padding) * keep for t in self.config.tasks}
        logits, gates = self._heads(fused, key_padding, keep)
        aux = {}
        if not self.pretrain:  # (B, M*H) -> (B, K)
            aux = {t: self.aux_heads[t](encoded[t].flatten(1)) for t in self.config.tasks}
        return self._output(logits, aux, gates, batch.labels)

    def _add_noise(
        self, features: dict[str, Tensor], masks: dict[str, Tensor], in_batch: dict[str, bool]
    ) -> dict[str, Tensor]:
        """Gaussian noise of std ``config.noise_std(m)`` on valid steps, in training mode only
        (paper §III; the std is our interpretation, see :class:`ModelConfig`)."""
        if not self.training or self.config.noise_sigma <= 0:
            return features
        out = {}
        for m, x in features.items():
            std = self.config.noise_std(m)
            out[m] = x + std * torch.randn_like(x) * masks[m].unsqueeze(-1) if in_batch[m] else x
        return out

    def _encode(
        self,
        task: str,
        feats: dict[str, Tensor],
        masks: dict[str, Tensor],
        in_batch: dict[str, bool],
    ) -> Tensor:
        """(B, M, H) encoder outputs; a modality no sample of the batch has skips its encoder
        (its output would be zeroed anyway)."""
        batch_size = masks[self.config.modalities[0]].shape[0]
        vectors = [
            self.encoders[task][m](feats[m], masks[m])
            if in_batch[m]
            else feats[m].new_zeros(batch_size, self.config.hidden)
            for m in self.config.modalities
        ]  # M x (B, H)
        return torch.stack(vectors, dim=1)  # (B, M, H)

    def _heads(
        self, fused: dict[str, Tensor], key_padding: Tensor, keep: Tensor
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        if self.pretrain:
            return {t: self.heads[t](fused[t].flatten(1)) for t in self.config.tasks}, {}
        first, second = self.config.tasks
        other = {first: second, second: first}
        logits: dict[str, Tensor] = {}
        gates: dict[str, Tensor] = {}
        for t in self.config.tasks:
            out, gates[t] = self.interaction[t](fused[t], fused[other[t]], key_padding)
            logits[t] = self.heads[t]((out * keep).flatten(1))  # (B, M*H) -> (B, K)
        return logits, gates

    def _output(
        self,
        logits: dict[str, Tensor],
        aux: dict[str, Tensor],
        gates: dict[str, Tensor],
        labels: dict[str, Tensor] | None,
    ) -> JointOutput:
        logits = {t: lg.float() for t, lg in logits.items()}
        probs = {t: F.softmax(lg, dim=-1) for t, lg in logits.items()}
        losses: dict[str, Tensor] = {}
        total = None
        if labels is not None:
            for t, lg in logits.items():
                losses[t] = masked_cross_entropy(lg, labels[t])
            for t, lg in aux.items():
                losses[f"aux_{t}"] = masked_cross_entropy(lg, labels[t])
            total = sum(losses[t] for t in logits)
            total = total + self.config.aux_weight * sum(
                (losses[f"aux_{t}"] for t in aux), torch.zeros(()).to(total)
            )
        return JointOutput(
            logits, probs, {t: a.float() for t, a in aux.items()}, total, losses, gates
        )

    def stage1_state(self) -> dict[str, Tensor]:
        """Weights the baseline's ``post_process`` carries from stage 1 to stage 2: the encoders
        and the fusion Transformers (``our_model.py`` lines 168-184)."""
        return {k: v for k, v in self.state_dict().items() if k.startswith(STAGE1_PREFIXES)}

    def load_stage1(self, state: Mapping[str, Tensor], *, mode: str = "encoders") -> None:
        """Initialise stage 2 from a stage-1 state dict.

        Args:
            state: a stage-1 ``model_state``.
            mode: ``"encoders"``: copy encoders and fusion Transformers, the rest stays fresh (the
                baseline's pretrain -> "our" transfer, §5.6); ``"full"``: copy every weight
                (interaction, heads and auxiliary heads included): the paper fine-tunes the
                stage-1 model itself (§III).
        Raises:
            ValueError: an unknown mode, or a needed weight missing or of another shape (names the
                key and shapes); with ``"full"`` also a stage-1 model of another architecture (the
                baseline's pretrain model has no interaction).
        """
        if mode not in STAGE2_INITS:
            raise ValueError(f"mode must be one of {list(STAGE2_INITS)}, got {mode!r}")
        own = self.stage1_state() if mode == "encoders" else self.state_dict()
        for key, value in own.items():
            if key not in state:
                raise ValueError(f"stage-1 checkpoint lacks {key!r} (stage-2 init {mode!r})")
            if tuple(state[key].shape) != tuple(value.shape):
                raise ValueError(
                    f"stage-1 weight {key!r} has shape {tuple(state[key].shape)}, "
                    f"this model needs {tuple(value.shape)}"
                )
        self.load_state_dict({k: state[k] for k in own}, strict=mode == "full")


STAGE1_PREFIXES = ("encoders.", "fusion.")


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
