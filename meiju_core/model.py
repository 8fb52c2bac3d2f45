"""The joint emotion + intent model of the MEIJU 2025 Track I winner, with the official baseline as a
configuration of the same classes.

Sources (details and line numbers in ``reference/meiju.md``):

- Official baseline ``AI-S2-Lab/MEIJU2025-baseline``: encoders ``models/networks/lstm.py`` and
  ``textcnn.py`` (§5.1), the fusion Transformer of ``models/our/our_model.py`` (§5.2), the gated
  ``InteractModule`` of ``models/networks/interact_model.py`` (§5.3), ``FcClassifier`` heads and the
  four-term loss (§5.4), the stage-1 ``models/pretrain_model.py`` (§5.5), kaiming init (§5.7).
- Track I winner, arXiv 2501.06215 (§8): different attention-head counts per task direction, a
  one-head and a two-head intent path whose predictions are fused, Gaussian noise on the inputs.

What differs from the baseline, each a switch in :class:`ModelConfig`: pooling skips padded steps
(``masked_pooling``), modalities a sample lacks are left out of attention, and a label missing for one
head (``-1``) is left out of that head's loss.

Notation used for tensor shapes::

    B   batch size
    T   steps of one modality (T_v, T_a, T_l differ); padded to the longest in the batch
    D   input feature size of one modality (``ModelConfig.input_dims``)
    M   number of modalities, 3, in the fusion order [visual, audio, text]
    H   hidden size, 128
    K   classes of a head (7 emotions, 8 intents)
    C   TextCNN channels per kernel, 128

Example::

    >>> cfg = ModelConfig.paper({"visual": 8, "audio": 8, "text": 8})
    >>> model = JointModel(cfg)
    >>> batch = JointBatch.random(cfg, batch_size=2, steps=5)
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

TEXT_MIN_STEPS = 4  # the widest TextCNN kernel; shorter text is zero-padded to this (meiju.md §5.1)
IGNORE = -1  # a missing label
BASELINE_INPUT_DIMS = {"visual": 342, "audio": 512, "text": 768}  # Track 1 scripts (meiju.md §4.4)


def _pairs(value: Any) -> tuple[tuple[int, int], ...]:
    return tuple((int(a), int(b)) for a, b in value)


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
    hidden: int = 128  # embd_size_{a,v,l} = hidden_size = 128 (§5.7)
    # heads of each task's fusion Transformer layer: Transformer_head=2 (§5.2)
    fusion_heads: Mapping[str, int] = field(default_factory=lambda: {"emotion": 2, "intent": 2})
    fusion_dropout: float = 0.1  # PyTorch's TransformerEncoderLayer default (§5.2)
    fusion_feedforward: int = 2048  # PyTorch's default dim_feedforward (§5.2)
    # task -> its interaction paths, each (heads of step 1, heads of step 2). Baseline: one path of
    # (1, 1) per task (§5.3). Paper: emotion ((1, 1),), intent ((1, 1), (2, 2)) (§8).
    interaction_heads: Mapping[str, tuple[tuple[int, int], ...]] = field(
        default_factory=lambda: {"emotion": ((1, 1),), "intent": ((1, 1),)}
    )
    # task -> weight of each path's probabilities; missing task = equal weights (mean).
    ensemble_weights: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    cls_layers: tuple[int, ...] = (128, 64)  # --cls_layers=128,64 (§5.4)
    dropout: float = 0.2  # --dropout_rate=0.2 (§5.4)
    textcnn_channels: int = 128  # per kernel (§5.1)
    textcnn_kernels: tuple[int, ...] = (2, 3, 4)  # kernel heights (§5.1)
    textcnn_dropout: float = 0.5  # hard-coded in the baseline (§5.7)
    masked_pooling: bool = True  # ours; the baseline max-pools over padding too (§5.1)
    aux_weight: float = 1.0  # focal_weight on the two auxiliary CE terms (§5.4)
    noise_sigma: float = 0.0  # std of Gaussian noise on input features while training (§8)
    # stage 1 is the baseline's pretrain model (no interaction, heads on fusion output, §5.5)
    pretrain_stage1: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_dims", {m: int(d) for m, d in self.input_dims.items()})
        object.__setattr__(self, "num_classes", {h: int(k) for h, k in self.num_classes.items()})
        object.__setattr__(self, "fusion_heads", {t: int(n) for t, n in self.fusion_heads.items()})
        paths = {t: _pairs(p) for t, p in self.interaction_heads.items()}
        object.__setattr__(self, "interaction_heads", paths)
        weights = {t: tuple(float(w) for w in ws) for t, ws in self.ensemble_weights.items()}
        object.__setattr__(self, "ensemble_weights", weights)
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
            if not self.interaction_heads[task]:
                raise ValueError(f"task {task!r} needs at least one interaction path")
            for step1, step2 in self.interaction_heads[task]:
                self._check_heads(f"interaction of {task}", step1)
                self._check_heads(f"interaction of {task}", step2)
        for task, ws in self.ensemble_weights.items():
            n = len(self.interaction_heads.get(task, ()))
            if len(ws) != n or min(ws) < 0 or sum(ws) <= 0:
                raise ValueError(f"ensemble_weights[{task!r}] must be {n} weights >= 0, got {ws}")
        if min(self.textcnn_kernels) < 1 or max(self.textcnn_kernels) > TEXT_MIN_STEPS:
            raise ValueError(
                f"TextCNN kernels must be 1..{TEXT_MIN_STEPS}, got {self.textcnn_kernels}"
            )
        for name in ("dropout", "textcnn_dropout", "fusion_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.noise_sigma < 0 or self.aux_weight < 0:
            raise ValueError(
                f"noise_sigma {self.noise_sigma} and aux_weight {self.aux_weight} must be >= 0"
            )

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

    def path_weights(self, task: str) -> tuple[float, ...]:
        """Normalised weights of a task's interaction paths (equal when not set)."""
        n = len(self.interaction_heads[task])
        ws = self.ensemble_weights.get(task) or (1.0,) * n
        return tuple(w / sum(ws) for w in ws)

    @classmethod
    def baseline(
        cls,
        input_dims: Mapping[str, int] | None = None,
        num_classes: Mapping[str, int] | None = None,
        **overrides: Any,
    ) -> ModelConfig:
        """The official MEIJU 2025 baseline (meiju.md §5): 2-head fusion, 1-head interaction, one
        intent path, max-pooling over padding, no noise, stage 1 = the pretrain model."""
        values = dict(masked_pooling=False, noise_sigma=0.0, pretrain_stage1=True)
        return cls._preset(input_dims, num_classes, ((1, 1),), ((1, 1),), {**values, **overrides})

    @classmethod
    def paper(
        cls,
        input_dims: Mapping[str, int] | None = None,
        num_classes: Mapping[str, int] | None = None,
        *,
        emotion_heads: int = 1,
        intent_ensemble_heads: tuple[int, ...] = (1, 2),
        **overrides: Any,
    ) -> ModelConfig:
        """The Track I winner (meiju.md §8): fewer interaction heads for emotion, intent as an
        ensemble of a one-head and a two-head path (each head count used in both steps), masked
        pooling, Gaussian noise σ=0.1, stage 1 already the full joint model [our reading]."""
        emotion = ((emotion_heads, emotion_heads),)
        intent = tuple((h, h) for h in intent_ensemble_heads)
        values = dict(masked_pooling=True, noise_sigma=0.1, pretrain_stage1=False)
        return cls._preset(input_dims, num_classes, emotion, intent, {**values, **overrides})

    @classmethod
    def _preset(
        cls,
        input_dims: Mapping[str, int] | None,
        num_classes: Mapping[str, int] | None,
        emotion_paths: tuple[tuple[int, int], ...],
        intent_paths: tuple[tuple[int, int], ...],
        values: dict[str, Any],
    ) -> ModelConfig:
        classes = dict(num_classes or {"emotion": len(EMOTIONS), "intent": len(INTENTS)})
        first, second = classes
        base: dict[str, Any] = dict(
            input_dims=input_dims or BASELINE_INPUT_DIMS,
            num_classes=classes,
            fusion_heads={first: 2, second: 2},
            interaction_heads={first: emotion_paths, second: intent_paths},
        )
        return cls(**{**base, **values})

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (lists, not tuples) for JSON and checkpoints; ``from_dict`` inverts it."""
        d = asdict(self)
        d["interaction_heads"] = {
            t: [list(p) for p in ps] for t, ps in self.interaction_heads.items()
        }
        d["ensemble_weights"] = {t: list(ws) for t, ws in self.ensemble_weights.items()}
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
        logits: head -> float32 (B, K). For a head with several interaction paths (the intent
            ensemble) these are the log of the fused probabilities, so ``softmax(logits) == probs``.
        probs: head -> float32 (B, K), rows sum to 1 (ensemble-fused where a head has paths).
        path_probs: head -> one float32 (B, K) per interaction path, before fusion.
        aux_logits: head -> float32 (B, K) of the auxiliary head on [V, A, L] encoder outputs
            (empty for the stage-1 pretrain model).
        loss: scalar total loss, or ``None`` when the batch has no labels.
        losses: ``"<head>"`` and ``"aux_<head>"`` -> scalar masked CE (0 for a head with no label
            in the batch); empty without labels.
        gates: head -> one (B, M, H) sigmoid gate per interaction path (empty when pretrain).
    """

    logits: dict[str, Tensor]
    probs: dict[str, Tensor]
    path_probs: dict[str, tuple[Tensor, ...]]
    aux_logits: dict[str, Tensor]
    loss: Tensor | None
    losses: dict[str, Tensor]
    gates: dict[str, tuple[Tensor, ...]]


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

    Text shorter than 4 steps is zero-padded to 4, so one utterance-level vector (T = 1) works.
    With ``masked_pooling`` only windows inside the first ``max(length, 4)`` steps are pooled.
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

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x: float (B, T, D); mask: bool (B, T). Returns float (B, H)."""
        if x.shape[1] < TEXT_MIN_STEPS:
            pad = TEXT_MIN_STEPS - x.shape[1]
            x = F.pad(x, (0, 0, 0, pad))  # (B, 4, D)
            mask = F.pad(mask, (0, pad))  # (B, 4)
        length = mask.sum(dim=1)  # (B,)
        length = torch.where(length > 0, length.clamp(min=TEXT_MIN_STEPS), length)
        xt = x.transpose(1, 2).contiguous()  # (B, D, T)
        pooled = [self._branch(conv, xt, length) for conv in self.convs]  # each (B, C)
        z = torch.cat(pooled, dim=1)  # (B, 3C)
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
    meiju.md §5.3), with a head count per step (the winner's setting, §8)::

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
        fus_t  = FusionTransformer_t(enc_t)                   (B, M, H)
        out_tp = GatedInteraction_tp(q=fus_t, kv=fus_o)       (B, M, H)   one per path p of t
        p_t    = Σ_p w_p softmax(Head_tp(flatten(out_tp)))    (B, K)      the prediction
        aux_t  = AuxHead_t(flatten(enc_t))                    (B, K)      auxiliary, loss only

    Loss = CE(emotion) + CE(intent) + aux_weight · (CE(aux emotion) + CE(aux intent)); with several
    paths a task's CE is the mean of its paths' CE. Labels ``-1`` are left out (§5.4).

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
        paths = {t: ((0, 0),) if pretrain else c.interaction_heads[t] for t in c.tasks}
        self.heads = nn.ModuleDict(
            {
                t: nn.ModuleList(
                    ClassifierHead(flat, c.cls_layers, c.num_classes[t], c.dropout)
                    for _ in paths[t]
                )
                for t in c.tasks
            }
        )
        if not pretrain:
            self.interaction = nn.ModuleDict(
                {
                    t: nn.ModuleList(GatedInteraction(c.hidden, h1, h2) for h1, h2 in paths[t])
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
        nets += [h for hs in self.heads.values() for h in hs]
        if not self.pretrain:
            nets += [i for path in self.interaction.values() for i in path]
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
        path_logits, gates = self._heads(fused, key_padding, keep)
        aux = {}
        if not self.pretrain:  # (B, M*H) -> (B, K)
            aux = {t: self.aux_heads[t](encoded[t].flatten(1)) for t in self.config.tasks}
        return self._output(path_logits, aux, gates, batch.labels)

    def _add_noise(
        self, features: dict[str, Tensor], masks: dict[str, Tensor], in_batch: dict[str, bool]
    ) -> dict[str, Tensor]:
        """Gaussian noise of std ``noise_sigma`` on valid steps, in training mode only (§8)."""
        sigma = self.config.noise_sigma
        if not self.training or sigma <= 0:
            return features
        return {
            m: x + sigma * torch.randn_like(x) * masks[m].unsqueeze(-1) if in_batch[m] else x
            for m, x in features.items()
        }

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
    ) -> tuple[dict[str, list[Tensor]], dict[str, tuple[Tensor, ...]]]:
        if self.pretrain:
            return {t: [self.heads[t][0](fused[t].flatten(1))] for t in self.config.tasks}, {}
        first, second = self.config.tasks
        other = {first: second, second: first}
        logits: dict[str, list[Tensor]] = {}
        gates: dict[str, tuple[Tensor, ...]] = {}
        for t in self.config.tasks:
            outs = [inter(fused[t], fused[other[t]], key_padding) for inter in self.interaction[t]]
            logits[t] = [
                head((out * keep).flatten(1))  # (B, M, H) -> (B, M*H) -> (B, K)
                for head, (out, _g) in zip(self.heads[t], outs, strict=True)
            ]
            gates[t] = tuple(g for _o, g in outs)
        return logits, gates

    def _output(
        self,
        path_logits: dict[str, list[Tensor]],
        aux: dict[str, Tensor],
        gates: dict[str, tuple[Tensor, ...]],
        labels: dict[str, Tensor] | None,
    ) -> JointOutput:
        path_probs = {
            t: tuple(F.softmax(lg.float(), dim=-1) for lg in lgs) for t, lgs in path_logits.items()
        }
        probs, logits = {}, {}
        for t, ps in path_probs.items():
            if len(ps) == 1:
                probs[t], logits[t] = ps[0], path_logits[t][0].float()
            else:
                w = self.config.path_weights(t)
                probs[t] = sum(wi * p for wi, p in zip(w, ps, strict=True))  # (B, K)
                logits[t] = torch.log(probs[t].clamp_min(1e-12))  # (B, K)
        losses: dict[str, Tensor] = {}
        total = None
        if labels is not None:
            for t, lgs in path_logits.items():
                losses[t] = torch.stack([masked_cross_entropy(lg, labels[t]) for lg in lgs]).mean()
            for t, lg in aux.items():
                losses[f"aux_{t}"] = masked_cross_entropy(lg, labels[t])
            total = sum(losses[t] for t in path_logits)
            total = total + self.config.aux_weight * sum(
                (losses[f"aux_{t}"] for t in aux), torch.zeros(()).to(total)
            )
        return JointOutput(
            logits, probs, path_probs, {t: a.float() for t, a in aux.items()}, total, losses, gates
        )

    def path_weights(self, task: str) -> tuple[float, ...]:
        """Weights that fuse the task's path probabilities (``(1.0,)`` for the pretrain model)."""
        return (1.0,) if self.pretrain else self.config.path_weights(task)

    def stage1_state(self) -> dict[str, Tensor]:
        """Weights the baseline's ``post_process`` carries from stage 1 to stage 2: the encoders
        and the fusion Transformers (``our_model.py`` lines 168-184)."""
        return {k: v for k, v in self.state_dict().items() if k.startswith(STAGE1_PREFIXES)}

    def load_stage1(self, state: Mapping[str, Tensor]) -> None:
        """Copy encoders and fusion Transformers from a stage-1 state dict; the rest stays fresh.

        Raises:
            ValueError: a needed weight is missing or has another shape (names key and shapes).
        """
        own = self.stage1_state()
        for key, value in own.items():
            if key not in state:
                raise ValueError(f"stage-1 checkpoint lacks {key!r}")
            if tuple(state[key].shape) != tuple(value.shape):
                raise ValueError(
                    f"stage-1 weight {key!r} has shape {tuple(state[key].shape)}, "
                    f"this model needs {tuple(value.shape)}"
                )
        self.load_state_dict({k: state[k] for k in own}, strict=False)


STAGE1_PREFIXES = ("encoders.", "fusion.")


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
