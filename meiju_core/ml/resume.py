"""Resumable training: the whole state of a training stage after each epoch, in one file.

``meiju_core.ml.train`` calls :func:`save` once per epoch and :func:`restore` once before its epoch
loop when asked to resume. The file (``resume.pt`` in the stage's checkpoint folder) holds what an
exact continuation needs: model, optimizer and scheduler state, the number of epochs done, the
history, the best scores with their epochs and validation probabilities, and every random number
generator (Python, NumPy, torch CPU and CUDA). It is written to a temporary file and renamed, so a
kill at any moment leaves either the previous epoch's state or the new one, never half a file.

A job killed mid-epoch (``kill -9`` of the worker) is re-queued by the worker and continues from
the last finished epoch; the checkpoint folder is named after the job so the rerun finds it
(``meiju_core.services.training.train``). The file is removed once the stage finished.

Errors: :func:`restore` raises ``ValueError`` when the file belongs to another configuration
(other stage, epochs or model shape), so a mismatch never continues silently.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

RESUME_NAME = "resume.pt"
FORMAT = 2  # 2: one probability array per head (no interaction paths)


def path_in(out_dir: Path) -> Path:
    """The resume file of a stage's checkpoint folder."""
    return Path(out_dir) / RESUME_NAME


def exists(out_dir: Path) -> bool:
    return path_in(out_dir).is_file()


def _rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(np.asarray(keys).copy()), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tensors(probs: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
    """kind ("joint" | "emotion" | "intent") -> head -> validation probabilities (N, K)."""
    return {
        kind: {head: torch.from_numpy(np.asarray(p)) for head, p in d.items()}
        for kind, d in probs.items()
    }


def _arrays(probs: dict[str, Any]) -> dict[str, dict[str, np.ndarray]]:
    return {kind: {head: p.numpy() for head, p in d.items()} for kind, d in probs.items()}


def save(recipe: Any, *, epochs_done: int) -> Path:
    """Write the recipe's state after ``epochs_done`` finished epochs (rank 0 only). Returns the
    file written. ``recipe`` is a ``meiju_core.ml.train._StageRecipe`` in its epoch loop."""
    target = path_in(recipe.out_dir)
    if not recipe.dist.main:
        return target
    state = {
        "format": FORMAT,
        "stage": recipe.stage,
        "epochs": recipe.tcfg.epochs,
        "epochs_done": epochs_done,
        "model_state": recipe.model.state_dict(),
        "optimizer_state": recipe.optimizer.state_dict(),
        "scheduler_state": recipe.scheduler.state_dict(),
        "history": list(recipe.history),
        "best": dict(recipe.best),
        "best_epochs": dict(recipe.best_epochs),
        "best_probs": _tensors(recipe.best_probs),
        "rng": _rng_state(),
    }
    tmp = target.with_name(f".{RESUME_NAME}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, target)
    return target


def restore(recipe: Any) -> int:
    """Load the resume file into ``recipe`` (model, optimizer, scheduler, history, bests, RNG).
    Returns the number of epochs already done (0 when there is no file: start from scratch).

    Raises ValueError if the file was written by a different stage or schedule.
    """
    path = path_in(recipe.out_dir)
    if not path.is_file():
        return 0
    state = torch.load(path, map_location="cpu", weights_only=True)
    if (state.get("format"), state["stage"], state["epochs"]) != (
        FORMAT,
        recipe.stage,
        recipe.tcfg.epochs,
    ):
        raise ValueError(
            f"{path}: written for stage {state['stage']} with {state['epochs']} epochs, "
            f"cannot resume stage {recipe.stage} with {recipe.tcfg.epochs} epochs"
        )
    recipe.model.load_state_dict(state["model_state"])
    recipe.optimizer.load_state_dict(state["optimizer_state"])
    recipe.scheduler.load_state_dict(state["scheduler_state"])
    recipe.history = list(state["history"])
    recipe.best = dict(state["best"])
    recipe.best_epochs = dict(state["best_epochs"])
    recipe.best_probs = _arrays(state["best_probs"])
    _set_rng_state(state["rng"])
    return int(state["epochs_done"])


def discard(out_dir: Path) -> None:
    """Remove the resume file once the stage is finished (the best checkpoints stay)."""
    path_in(out_dir).unlink(missing_ok=True)
