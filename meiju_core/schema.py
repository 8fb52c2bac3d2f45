"""Label schema: the heads of a project and their class names, in index order.

The default is MEIJU 2025 Track I (reference/meiju.md §2.1, from the official baseline's
``data/multimodal_dataset.py``): 7 emotions and 8 intents. Class order is the index order used by
model outputs, probability columns and ``submission.csv``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from meiju_core.errors import LabelError

EMOTIONS = ("happy", "surprise", "sad", "disgust", "anger", "fear", "neutral")
INTENTS = (
    "questioning",
    "agreeing",
    "acknowledging",
    "encouraging",
    "consoling",
    "suggesting",
    "wishing",
    "neutral",
)
MODALITIES = ("visual", "audio", "text")  # the baseline's fusion order [V, A, L]


@dataclass(frozen=True)
class LabelSchema:
    """Heads and their classes. ``heads`` maps a head name to its class names in index order.

    >>> s = LabelSchema.meiju_track1()
    >>> s.index("emotion", "fear"), s.num_classes("intent")
    (5, 8)
    """

    heads: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: {"emotion": EMOTIONS, "intent": INTENTS}
    )

    def __post_init__(self) -> None:
        for head, classes in self.heads.items():
            if len(classes) < 2:
                raise LabelError(f"head {head!r} needs at least 2 classes, got {len(classes)}")
            if len(set(classes)) != len(classes):
                raise LabelError(f"head {head!r} lists a class twice: {list(classes)}")

    @classmethod
    def meiju_track1(cls) -> LabelSchema:
        return cls({"emotion": EMOTIONS, "intent": INTENTS})

    @classmethod
    def from_dict(cls, data: Mapping[str, Iterable[str]]) -> LabelSchema:
        return cls({str(h): tuple(str(c) for c in cs) for h, cs in data.items()})

    def to_dict(self) -> dict[str, list[str]]:
        return {h: list(cs) for h, cs in self.heads.items()}

    @property
    def head_names(self) -> tuple[str, ...]:
        return tuple(self.heads)

    def classes(self, head: str) -> tuple[str, ...]:
        try:
            return self.heads[head]
        except KeyError:
            raise LabelError(f"unknown head {head!r}; heads are {list(self.heads)}") from None

    def num_classes(self, head: str) -> int:
        return len(self.classes(head))

    def index(self, head: str, label: str, *, where: str = "") -> int:
        """Index of ``label`` in ``head``; raises ``LabelError`` naming ``where`` if unknown."""
        classes = self.classes(head)
        try:
            return classes.index(label)
        except ValueError:
            at = f"{where}: " if where else ""
            raise LabelError(
                f"{at}unknown {head} label {label!r}; expected one of {list(classes)}",
                field=head,
            ) from None
