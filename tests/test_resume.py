"""Resumable training: a stage stopped after an epoch and resumed continues exactly (model,
optimizer, scheduler, RNG and epoch restored), as if it had never stopped."""

from __future__ import annotations

import pytest
import torch
from test_train import synthetic, tiny_model, tiny_train

from meiju_core.ml import resume
from meiju_core.ml.train import CHECKPOINT_NAMES, fit


def _run(out_dir, *, stop_after: int | None = None, resume_: bool = False, epochs: int = 4):
    seen = []

    def callback(event):
        seen.append(event)
        return "cancel" if stop_after is not None and event["epoch"] >= stop_after else None

    result = fit(
        synthetic(96, 1),
        synthetic(48, 2),
        model_config=tiny_model(dropout=0.2),  # dropout draws from the RNG the resume restores
        train_config=tiny_train(epochs_flat=2, epochs_decay=epochs - 2),
        stage=1,
        out_dir=out_dir,
        callback=callback,
        resume=resume_,
    )
    return result, seen


def test_a_resumed_stage_continues_exactly(tmp_path):
    straight, _ = _run(tmp_path / "straight")
    stopped, seen = _run(tmp_path / "crash", stop_after=2)
    assert stopped.cancelled and [e["epoch"] for e in seen] == [1, 2]
    state = torch.load(resume.path_in(tmp_path / "crash"), weights_only=True)
    assert state["epochs_done"] == 2 and "scheduler_state" in state and "rng" in state
    resumed, seen = _run(tmp_path / "crash", resume_=True)
    assert [e["epoch"] for e in seen] == [3, 4]  # epochs 1-2 are not trained again
    assert not resumed.cancelled
    for a, b in zip(straight.history, resumed.history, strict=True):
        assert a["epoch"] == b["epoch"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
        assert a["joint"] == pytest.approx(b["joint"], rel=1e-6)
    assert straight.best_epochs == resumed.best_epochs
    for name in CHECKPOINT_NAMES.values():
        a = torch.load(tmp_path / "straight" / name, weights_only=True)["model_state"]
        b = torch.load(tmp_path / "crash" / name, weights_only=True)["model_state"]
        assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_resume_without_a_file_starts_from_scratch_and_a_mismatch_is_refused(tmp_path):
    result, seen = _run(tmp_path / "fresh", resume_=True, epochs=3)
    assert [e["epoch"] for e in seen] == [1, 2, 3] and not result.cancelled
    _run(tmp_path / "other", stop_after=1, epochs=3)
    with pytest.raises(ValueError, match="cannot resume stage 1 with 4 epochs"):
        _run(tmp_path / "other", resume_=True, epochs=4)
