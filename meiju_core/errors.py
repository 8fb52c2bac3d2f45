"""The one exception tree of MEIJU Review. Every error names what it is about.

::

    MeijuError                  base; catch this at the UI / CLI boundary
    ├── InputError              bad user input: a file, a row, a field (``path``, ``row``, ``field``)
    │   ├── LabelError          unknown head or class name
    │   ├── ImportDataError     a CSV or release folder that cannot be imported (nothing is stored)
    │   └── FeatureError        a feature array of the wrong shape, or with NaN / inf
    ├── MediaError              a video or audio file that cannot be decoded (``path``)
    ├── ModelUnavailable        a pretrained model's files are not on this machine (``model``)
    ├── StoreError              a store invariant was violated
    │   ├── QuotaExceeded       accepting would pass a class quota (``head``, ``label``, ``quota``)
    │   ├── StaleEdit           someone saved the same row first (optimistic lock)
    │   ├── CardTaken           the card was decided, or is held, by someone else (``by``)
    │   ├── BelowThreshold      accepting a class under the round's threshold, unconfirmed
    │   ├── PermissionDenied    the user's role may not do this
    │   └── SignInThrottled     too many failed sign-ins: wait ``retry_after_s``
    └── JobError                a background job failed or was cancelled

Usage::

    try:
        import_csv(store, path)
    except MeijuError as e:
        print(e)          # "train.csv, row 12, field 'emotion': unknown emotion label 'joy' ..."
"""

from __future__ import annotations


class MeijuError(Exception):
    """Base class; ``str(e)`` is a complete message for a person."""


class InputError(MeijuError):
    """Bad input. ``path``, ``row`` (1-based, header is row 1) and ``field`` locate it."""

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        row: int | None = None,
        field: str | None = None,
    ) -> None:
        self.path, self.row, self.field, self.reason = path, row, field, message
        where = []
        if path:
            where.append(str(path))
        if row is not None:
            where.append(f"row {row}")
        if field:
            where.append(f"field {field!r}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


class LabelError(InputError):
    """An unknown head or class name."""


class ImportDataError(InputError):
    """A file that cannot be imported; the store is left exactly as it was."""


class FeatureError(InputError):
    """A feature array with the wrong shape or non-finite values."""


class MediaError(MeijuError):
    """A media file that cannot be read: missing, corrupt, empty or without the needed stream."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


class ModelUnavailable(MeijuError):
    """A pretrained model (``model``: its hub id or folder) is not on this machine.

    Nothing is ever downloaded: the message says which id was looked for and how to provide a
    local folder instead.
    """

    def __init__(self, message: str, *, model: str | None = None) -> None:
        self.model = model
        super().__init__(message)


class StoreError(MeijuError):
    """A store invariant was violated."""


class QuotaExceeded(StoreError):
    """Accepting this label would pass the class quota of the round."""

    def __init__(self, head: str, label: str, quota: int, accepted: int) -> None:
        self.head, self.label, self.quota, self.accepted = head, label, quota, accepted
        super().__init__(
            f"quota for {head} {label!r} is full: {accepted} of {quota} already accepted"
        )


class StaleEdit(StoreError):
    """The row changed since it was read (someone else saved first); reload and retry."""


class PermissionDenied(StoreError):
    """The user's role does not allow this action."""


class CardTaken(StoreError):
    """The card was decided by someone since it was shown (``decided`` True), or another
    annotator holds it (``decided`` False); ``by`` names that user when known."""

    def __init__(self, message: str, *, by: str | None = None, decided: bool = True) -> None:
        self.by, self.decided = by, decided
        super().__init__(message)


class BelowThreshold(StoreError):
    """Accepting a predicted class whose confidence is under the round's threshold without the
    annotator's confirmation."""

    def __init__(self, head: str, label: str, confidence: float, threshold: float) -> None:
        self.head, self.label, self.confidence, self.threshold = head, label, confidence, threshold
        super().__init__(
            f"{head} {label} has confidence {confidence:.2f}, below the round's threshold "
            f"{threshold:.2f}"
        )


class SignInThrottled(StoreError):
    """Too many failed sign-ins for this user or address; try again after ``retry_after_s``."""

    def __init__(self, retry_after_s: float) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(f"too many failed sign-ins: try again in {max(1, round(retry_after_s))} s")


class JobError(MeijuError):
    """A background job failed or was cancelled."""
