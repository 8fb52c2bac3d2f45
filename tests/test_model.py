"""meiju_core.ml.model: config presets and checks, block shapes, masking, losses, missing data.

Tiny random models built from configs (transformers' BertModelTester style), CPU only.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from meiju_core.ml.model import (
    ClassifierHead,
    FusionTransformer,
    GatedInteraction,
    JointBatch,
    JointModel,
    LSTMEncoder,
    ModelConfig,
    TextCNN,
    masked_cross_entropy,
    masked_mean,
)

DIMS = {"visual": 6, "audio": 5, "text": 8}


def small(**overrides) -> ModelConfig:
    """A paper-shaped config, small enough for fast tests (hidden 16, FF 32)."""
    values = dict(hidden=16, fusion_feedforward=32, textcnn_channels=8, cls_layers=(16, 8))
    return ModelConfig.paper(overrides.pop("input_dims", DIMS), **{**values, **overrides})


def deterministic(**overrides) -> ModelConfig:
    return small(dropout=0.0, textcnn_dropout=0.0, fusion_dropout=0.0, noise_sigma=0.0, **overrides)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def ragged_batch(
    cfg: ModelConfig, lengths: dict[str, list[int]], *, pad_to: int | None = None
) -> JointBatch:
    """Features with the given valid lengths per sample (0 = missing), zero padding after them."""
    feats, masks = {}, {}
    for m, ls in lengths.items():
        steps = pad_to or max(max(ls), 1)
        x = torch.zeros(len(ls), steps, cfg.input_dims[m])
        for i, n in enumerate(ls):
            x[i, :n] = torch.randn(n, cfg.input_dims[m])
        feats[m], masks[m] = x, torch.arange(steps)[None] < torch.tensor(ls)[:, None]
    labels = {h: torch.randint(0, k, (len(ls),)) for h, k in cfg.num_classes.items()}
    return JointBatch(feats, masks, labels)


def pad_more(batch: JointBatch, extra: int) -> JointBatch:
    """The same batch with ``extra`` more padded (zero, invalid) steps on every modality."""
    feats = {
        m: torch.cat([x, torch.zeros(x.shape[0], extra, x.shape[2])], 1)
        for m, x in batch.features.items()
    }
    masks = {
        m: torch.cat([k, torch.zeros(k.shape[0], extra, dtype=torch.bool)], 1)
        for m, k in batch.masks.items()
    }
    return JointBatch(feats, masks, batch.labels)


# -- config ------------------------------------------------------------------------------------


def test_baseline_preset_matches_reference_numbers():
    cfg = ModelConfig.baseline()
    assert cfg.input_dims == {"visual": 342, "audio": 512, "text": 768}  # meiju.md §4.4
    assert cfg.num_classes == {"emotion": 7, "intent": 8}
    assert cfg.hidden == 128 and cfg.cls_layers == (128, 64)
    assert cfg.fusion_heads == {"emotion": 2, "intent": 2}
    assert cfg.fusion_feedforward == 2048 and cfg.fusion_dropout == 0.1
    assert cfg.interaction_heads == {"emotion": 1, "intent": 1}
    assert cfg.representation == "sequence" and cfg.stage2_init == "encoders"
    assert cfg.dropout == 0.2 and cfg.textcnn_dropout == 0.5
    assert cfg.textcnn_kernels == (2, 3, 4) and cfg.textcnn_channels == 128
    assert cfg.aux_weight == 1.0 and cfg.noise_sigma == 0.0
    assert cfg.masked_pooling is False and cfg.pretrain_stage1 is True


def test_paper_preset_varies_fusion_heads_and_keeps_the_interaction():
    cfg = ModelConfig.paper(DIMS)
    assert cfg.representation == "mean" and cfg.textcnn_kernels == (1,)
    assert cfg.fusion_heads == {"emotion": 2, "intent": 2}
    assert cfg.interaction_heads == {"emotion": 1, "intent": 1}  # unchanged from the baseline
    assert cfg.stage2_init == "full" and cfg.noise_mode == "relative"
    assert cfg.masked_pooling and cfg.noise_sigma == 0.1 and not cfg.pretrain_stage1
    one_head = ModelConfig.paper(DIMS, emotion_heads=1, intent_heads=1, text_kernels=(2, 3, 4))
    assert one_head.fusion_heads == {"emotion": 1, "intent": 1}
    assert one_head.textcnn_kernels == (2, 3, 4)
    model = JointModel(one_head)
    assert model.fusion["intent"].layer.self_attn.num_heads == 1
    assert model.interaction["intent"].inter_attention.num_heads == 1


def test_relative_noise_scales_with_the_modality():
    cfg = ModelConfig.paper(DIMS, noise_scale={"text": 0.02, "audio": 3.0})
    assert cfg.noise_std("text") == pytest.approx(0.002)
    assert cfg.noise_std("audio") == pytest.approx(0.3)
    assert cfg.noise_std("visual") == pytest.approx(0.1)  # not measured yet: scale 1
    assert ModelConfig.baseline(DIMS, noise_sigma=0.1).noise_std("text") == 0.1


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        (dict(fusion_heads={"emotion": 3, "intent": 2}), ["128", "3"]),
        (dict(interaction_heads={"emotion": 5, "intent": 1}), ["128", "5"]),
        (dict(interaction_heads={"emotion": ((1, 1),), "intent": 1}), ["retrain"]),
        (dict(representation="frames"), ["representation", "frames"]),
        (dict(stage2_init="heads"), ["stage2_init"]),
        (dict(noise_sigma=float("nan")), ["noise_sigma"]),
        (dict(dropout=1.0), ["dropout"]),
        (dict(input_dims={"smell": 3}), ["smell"]),
        (dict(textcnn_kernels=(2, 5)), ["5"]),
    ],
)
def test_config_rejects_settings_that_cannot_work(overrides, words):
    with pytest.raises(ValueError) as err:
        ModelConfig.paper(**{"input_dims": DIMS, **overrides})
    for w in words:
        assert w in str(err.value)


def test_config_round_trips_through_json():
    cfg = ModelConfig.paper(DIMS, intent_heads=1, noise_scale={"text": 0.5})
    again = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert again.noise_scale == {"text": 0.5} and again.fusion_heads["intent"] == 1


# -- blocks ------------------------------------------------------------------------------------


def test_block_shapes_and_dtypes():
    x, mask = torch.randn(3, 7, 5), torch.ones(3, 7, dtype=torch.bool)
    out = LSTMEncoder(5, 16)(x, mask)
    assert out.shape == (3, 16) and out.dtype == torch.float32
    out = TextCNN(5, 16, channels=8).eval()(x, mask)
    assert out.shape == (3, 16) and out.dtype == torch.float32 and (out >= 0).all()
    tokens, pad = torch.randn(3, 3, 16), torch.zeros(3, 3, dtype=torch.bool)
    assert FusionTransformer(16, 2, feedforward=32)(tokens, pad).shape == (3, 3, 16)
    fused, gate = GatedInteraction(16, 1, 2)(tokens, torch.randn(3, 3, 16), pad)
    assert fused.shape == gate.shape == (3, 3, 16)
    assert ((gate > 0) & (gate < 1)).all()
    logits = ClassifierHead(48, (16, 8), 7, 0.2)(torch.randn(3, 48))
    assert logits.shape == (3, 7) and logits.dtype == torch.float32


def test_textcnn_takes_one_utterance_vector():
    enc = TextCNN(8, 16, channels=8).eval()
    out = enc(torch.randn(2, 1, 8), torch.ones(2, 1, dtype=torch.bool))
    assert out.shape == (2, 16) and torch.isfinite(out).all()


@pytest.mark.parametrize("length", [1, 3, 6])
def test_padding_never_changes_a_pooled_vector(length):
    x = torch.randn(1, length, 8)
    mask = torch.ones(1, length, dtype=torch.bool)
    x_pad = torch.cat([x, torch.zeros(1, 5, 8)], 1)
    mask_pad = torch.cat([mask, torch.zeros(1, 5, dtype=torch.bool)], 1)
    for enc in (LSTMEncoder(8, 16), TextCNN(8, 16, channels=8)):
        enc.eval()
        torch.testing.assert_close(enc(x, mask), enc(x_pad, mask_pad))


def test_baseline_pooling_sees_padding():
    enc = LSTMEncoder(8, 16, masked_pooling=False).eval()
    x, mask = torch.randn(1, 3, 8) + 3, torch.ones(1, 3, dtype=torch.bool)
    x_pad = torch.cat([x, torch.zeros(1, 20, 8)], 1)
    mask_pad = torch.cat([mask, torch.zeros(1, 20, dtype=torch.bool)], 1)
    assert not torch.allclose(enc(x, mask), enc(x_pad, mask_pad))


def test_encoders_give_zeros_for_a_missing_modality():
    x, mask = torch.randn(2, 4, 8), torch.tensor([[True] * 4, [False] * 4])
    for enc in (LSTMEncoder(8, 16), TextCNN(8, 16, channels=8)):
        out = enc.eval()(x, mask)
        assert torch.isfinite(out).all() and (out[1] == 0).all() and out[0].abs().sum() > 0


def test_kaiming_init_and_zero_bias():
    model = JointModel(ModelConfig.paper(DIMS, text_kernels=(2, 3, 4)))
    linear = model.heads["emotion"].net[0]  # 384 -> 128
    assert (linear.bias == 0).all()
    assert linear.weight.std().item() == pytest.approx(math.sqrt(2 / 384), rel=0.1)
    conv = model.encoders["intent"]["text"].convs[2]  # fan-in 4 * 8
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / 32), rel=0.2)


# -- the joint model ---------------------------------------------------------------------------


def test_joint_output_shapes_and_probabilities():
    cfg = small()
    out = JointModel(cfg)(JointBatch.random(cfg, batch_size=4, steps=5))
    for head, k in cfg.num_classes.items():
        assert (
            out.logits[head].shape == out.probs[head].shape == out.aux_logits[head].shape == (4, k)
        )
        assert out.probs[head].dtype == torch.float32
        torch.testing.assert_close(out.probs[head].sum(1), torch.ones(4))
        torch.testing.assert_close(out.logits[head].softmax(1), out.probs[head])
    assert out.gates["emotion"].shape == out.gates["intent"].shape == (4, 3, 16)
    assert set(out.losses) == {"emotion", "intent", "aux_emotion", "aux_intent"}
    total = sum(out.losses[h] for h in ("emotion", "intent"))
    total = total + out.losses["aux_emotion"] + out.losses["aux_intent"]
    torch.testing.assert_close(out.loss, total)


def test_no_labels_no_loss():
    cfg = small()
    batch = JointBatch.random(cfg, batch_size=2)
    out = JointModel(cfg)(JointBatch(batch.features, batch.masks))
    assert out.loss is None and out.losses == {}


def test_a_missing_label_never_changes_the_loss():
    cfg = small()
    model = JointModel(cfg).eval()
    batch = JointBatch.random(cfg, batch_size=5, steps=4)
    head_only = {h: y[:3] for h, y in batch.labels.items()}
    first = JointBatch(
        {m: x[:3] for m, x in batch.features.items()},
        {m: k[:3] for m, k in batch.masks.items()},
        head_only,
    )
    unlabelled = {h: torch.cat([y[:3], torch.full((2,), -1)]) for h, y in batch.labels.items()}
    with torch.no_grad():
        a = model(first)
        b = model(JointBatch(batch.features, batch.masks, unlabelled))
    torch.testing.assert_close(a.loss, b.loss)
    for key in a.losses:
        torch.testing.assert_close(a.losses[key], b.losses[key])


def test_a_head_without_any_label_adds_zero_and_no_nan():
    cfg = small()
    model = JointModel(cfg)
    batch = JointBatch.random(cfg, batch_size=3)
    batch.labels["intent"] = torch.full((3,), -1)
    out = model(batch)
    assert out.losses["intent"].item() == 0.0 and out.losses["aux_intent"].item() == 0.0
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert masked_cross_entropy(torch.randn(2, 4), torch.tensor([-1, -1])).item() == 0.0


def test_missing_modalities_give_finite_outputs_and_gradients():
    cfg = small()
    model = JointModel(cfg)
    # visual and audio absent from the whole batch; sample 2 has nothing at all
    batch = ragged_batch(cfg, {"visual": [0, 0, 0], "audio": [0, 0, 0], "text": [3, 9, 0]})
    out = model(batch)
    for head in cfg.tasks:
        assert torch.isfinite(out.probs[head]).all() and torch.isfinite(out.logits[head]).all()
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_a_missing_modality_does_not_influence_the_others():
    cfg = deterministic()
    model = JointModel(cfg).eval()
    batch = ragged_batch(cfg, {"visual": [0, 0], "audio": [4, 2], "text": [5, 6]})
    changed = JointBatch(dict(batch.features), batch.masks, batch.labels)
    changed.features["visual"] = torch.randn_like(batch.features["visual"])  # garbage, masked out
    with torch.no_grad():
        a, b = model(batch), model(changed)
    for head in cfg.tasks:
        torch.testing.assert_close(a.probs[head], b.probs[head])


def test_the_joint_model_ignores_appended_padding():
    cfg = deterministic()
    model = JointModel(cfg).eval()
    batch = ragged_batch(cfg, {"visual": [2, 0], "audio": [3, 1], "text": [1, 6]})
    with torch.no_grad():
        a, b = model(batch), model(pad_more(batch, 7))
    for head in cfg.tasks:
        torch.testing.assert_close(a.probs[head], b.probs[head], atol=1e-5, rtol=1e-5)


def test_gradients_reach_the_gate():
    cfg = small()
    model = JointModel(cfg)
    out = model(JointBatch.random(cfg, batch_size=4))
    assert all(g.requires_grad for g in out.gates.values())
    out.loss.backward()
    for inter in model.interaction.values():
        for attn in (inter.inter_attention, inter.hence_attention):
            assert attn.in_proj_weight.grad is not None
            assert attn.in_proj_weight.grad.abs().sum() > 0


def test_noise_only_while_training():
    cfg = small(dropout=0.0, textcnn_dropout=0.0, fusion_dropout=0.0, noise_sigma=0.5)
    model = JointModel(cfg)
    batch = JointBatch.random(cfg, batch_size=2)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(batch).probs["emotion"], model(batch).probs["emotion"])
        model.train()
        assert not torch.allclose(model(batch).probs["emotion"], model(batch).probs["emotion"])


def test_pretrain_variant_is_the_baseline_stage1_model():
    cfg = ModelConfig.baseline(DIMS, hidden=16, fusion_feedforward=32, textcnn_channels=8)
    model = JointModel(cfg, pretrain=True)
    assert not hasattr(model, "interaction") and not hasattr(model, "aux_heads")
    out = model(JointBatch.random(cfg, batch_size=3))
    assert out.gates == {} and out.aux_logits == {}
    assert set(out.losses) == {"emotion", "intent"}
    torch.testing.assert_close(out.loss, out.losses["emotion"] + out.losses["intent"])


def test_load_stage1_copies_encoders_and_fusion_only():
    cfg = small()
    stage1 = JointModel(cfg, pretrain=True)
    stage2 = JointModel(cfg)
    fresh_head = stage2.heads["emotion"].net[0].weight.clone()
    stage2.load_stage1(stage1.state_dict())
    for key, value in stage1.stage1_state().items():
        torch.testing.assert_close(stage2.state_dict()[key], value)
    torch.testing.assert_close(stage2.heads["emotion"].net[0].weight, fresh_head)
    with pytest.raises(ValueError, match="shape"):
        JointModel(small(input_dims={**DIMS, "text": 9})).load_stage1(stage1.state_dict())
    with pytest.raises(ValueError, match="lacks"):  # the pretrain model has no interaction
        stage2.load_stage1(stage1.state_dict(), mode="full")


def test_full_stage2_init_copies_every_weight():
    cfg = small()
    stage1, stage2 = JointModel(cfg), JointModel(cfg)
    stage2.load_stage1(stage1.state_dict(), mode="full")
    for key, value in stage1.state_dict().items():
        torch.testing.assert_close(stage2.state_dict()[key], value, msg=key)


def test_masked_mean_ignores_padding():
    x = torch.randn(3, 5, 4)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)
    garbage = x.clone()
    garbage[~mask] = 1e6  # whatever sits in the padding never reaches the mean
    out = masked_mean(garbage, mask)
    assert out.shape == (3, 1, 4)
    torch.testing.assert_close(out[0, 0], x[0, :2].mean(0))
    torch.testing.assert_close(out[1, 0], x[1].mean(0))
    assert (out[2] == 0).all()


@pytest.mark.parametrize("preset", ["paper", "baseline"])
@pytest.mark.parametrize("kernels", [(1,), (2, 3, 4)])
def test_every_encoder_runs_on_one_step(preset, kernels):
    make = ModelConfig.paper if preset == "paper" else ModelConfig.baseline
    cfg = make(DIMS, hidden=16, fusion_feedforward=32, textcnn_channels=8, textcnn_kernels=kernels)
    for pretrain in (False, True):
        model = JointModel(cfg, pretrain=pretrain)
        out = model(JointBatch.random(cfg, batch_size=3, steps=1))
        assert torch.isfinite(out.loss) and out.probs["intent"].shape == (3, 8)
        out.loss.backward()
    for enc in (LSTMEncoder(8, 16), TextCNN(8, 16, channels=8, kernels=kernels)):
        y = enc.eval()(torch.randn(2, 1, 8), torch.ones(2, 1, dtype=torch.bool))
        assert y.shape == (2, 16) and torch.isfinite(y).all()


def test_sub_networks_cover_every_parameter():
    model = JointModel(small())
    covered = {id(p) for net in model.sub_networks() for p in net.parameters()}
    assert covered == {id(p) for p in model.parameters()}
    assert all(isinstance(n, nn.Module) for n in model.sub_networks())
