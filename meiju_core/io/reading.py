"""What the importers share: one way to collect problems, read UTF-8, match headers, parse labels
and guess a delimiter.

The MEIJU release importer (:mod:`meiju_core.io.meiju`) and the generic CSV / label-list
importer (:mod:`meiju_core.io.tables`) both:

- collect every problem of a file (or of a release: several files) in :class:`Problems` and
  raise them together as one ``ImportDataError`` naming the first, with the rest summarised;
- read UTF-8 only (:func:`read_utf8` whole, :class:`Lines` line by line), naming the line of the
  first bad byte, so a GBK file never becomes mojibake in the store;
- find a column by any of its accepted names, ignoring case, spaces, ``_`` and ``-``
  (:func:`find_column`);
- take a label in the schema's spelling, case-insensitively (:func:`label_value`);
- read a file whose first line has tabs and no comma as tab-separated (:func:`guess_delimiter`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from meiju_core.errors import ImportDataError, InputError
from meiju_core.schema import LabelSchema

__all__ = [
    "MAX_PROBLEMS_SHOWN",
    "Lines",
    "Problems",
    "find_column",
    "check_start",
    "guess_delimiter",
    "label_value",
    "norm_header",
    "read_utf8",
    "strip_extension",
]

MAX_PROBLEMS_SHOWN = 5
_MEDIA_EXTENSION = re.compile(r"\.(?=\d*[A-Za-z])[A-Za-z0-9]{3}$")


# --------------------------------------------------------------------------- problems


class Problems:
    """Every problem found, raised at once as the first one's class (``ImportDataError``, or
    ``FeatureError`` for a feature file) with the others summarised in its message.

    ``path``: the file every problem is about (one CSV, one list); without it, each problem
    names its own file (a release). With a ``path``, the summary leaves out that file's name,
    which the raised error names once.
    """

    def __init__(self, path: Path | str | None = None) -> None:
        self.path = str(path) if path is not None else None
        self.items: list[InputError] = []

    def add(
        self,
        message: str,
        *,
        path: Path | str | None = None,
        row: int | None = None,
        field: str | None = None,
        kind: type[InputError] = ImportDataError,
    ) -> None:
        where = str(path) if path else self.path
        self.items.append(kind(message, path=where, row=row, field=field))

    def raise_if_any(self) -> None:
        if not self.items:
            return
        first, rest = self.items[0], self.items[1:]
        message = first.reason
        if rest:
            texts = (str(e) for e in rest[:MAX_PROBLEMS_SHOWN])
            if self.path is not None:
                texts = (t.removeprefix(f"{self.path}, ") for t in texts)
            more = len(rest) - MAX_PROBLEMS_SHOWN
            message += (
                f" (and {len(rest)} more: {'; '.join(texts)}{f'; {more} more' if more > 0 else ''})"
            )
        err = type(first)(message, path=first.path, row=first.row, field=first.field)
        err.problems = list(self.items)  # type: ignore[attr-defined]
        raise err


# --------------------------------------------------------------------------- reading


def read_utf8(path: Path) -> str:
    """The text of ``path`` decoded as UTF-8 (a BOM is dropped).

    Raises ``ImportDataError`` naming the file and the line of the first bad byte when the file is
    not UTF-8 (GBK, say), so a wrongly encoded file never becomes mojibake in the store.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ImportDataError(f"cannot read the file: {e.strerror or e}", path=str(path)) from None
    check_start(data, Path(path))
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ImportDataError(
            f"the file is not UTF-8 (byte 0x{data[e.start]:02x} on line {line} is invalid; it may "
            "be GBK or another legacy encoding); re-save it as UTF-8 and import it again",
            path=str(path),
            row=line,
        ) from None


def check_start(data: bytes, path: Path) -> None:
    """Refuse UTF-16 (with or without a byte-order mark) and NUL bytes from the first bytes."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ImportDataError(
            "the file is UTF-16, not UTF-8; re-save it as UTF-8 and import it again", path=str(path)
        )
    nul = data.find(b"\x00")
    if nul >= 0:
        line = data[:nul].count(b"\n") + 1
        sixteen = data.count(b"\x00") * 3 > len(data)
        raise ImportDataError(
            "the file looks like UTF-16 without a byte-order mark (every other byte is NUL); "
            "re-save it as UTF-8 and import it again"
            if sixteen
            else f"the file contains a NUL byte on line {line}; it is not a text file",
            path=str(path),
            row=line,
        )


class Lines:
    """A UTF-8 file read line by line (a BOM dropped), never whole: a decoding error or a NUL byte
    raises ``ImportDataError`` naming the line. ``line`` is the number of lines read so far."""

    def __init__(self, path: Path, binary) -> None:
        self.path, self.binary, self.line = path, binary, 0

    def __iter__(self):
        first = True
        for raw in self.binary:
            self.line += 1
            if first:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
                first = False
            if b"\x00" in raw:
                raise ImportDataError(
                    f"the file contains a NUL byte on line {self.line}; it is not a text file",
                    path=str(self.path),
                    row=self.line,
                )
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ImportDataError(
                    f"the file is not UTF-8 (byte 0x{raw[e.start]:02x} on line {self.line} is "
                    "invalid; it may be GBK or another legacy encoding); re-save it as UTF-8 and "
                    "import it again",
                    path=str(self.path),
                    row=self.line,
                ) from None


def strip_extension(utt_id: str) -> str:
    """``Track1_Training_00001.mp4`` -> ``Track1_Training_00001`` (a 4-character extension)."""
    return _MEDIA_EXTENSION.sub("", utt_id.strip())


def guess_delimiter(first_line: str) -> str:
    """Tab when the first line has a tab and no comma, else comma."""
    return "\t" if "\t" in first_line and "," not in first_line else ","


# --------------------------------------------------------------------------- headers and labels


def norm_header(header: str) -> str:
    """A header as compared: lower case, without spaces, ``_`` or ``-``."""
    return re.sub(r"[\s_\-]+", "", header.strip().lower())


def find_column(header: Sequence[str], names: Iterable[str]) -> int | None:
    """Index of the first of ``names`` (in priority order) found in ``header``."""
    normed = [norm_header(h) for h in header]
    for name in names:
        if norm_header(name) in normed:
            return normed.index(norm_header(name))
    return None


def label_value(schema: LabelSchema, head: str, raw: str) -> str | None:
    """The schema's spelling of ``raw`` (case-insensitive); None for an empty cell.

    Raises ``LabelError`` (from ``LabelSchema.index``) for a value outside the head's classes.
    """
    value = raw.strip()
    if not value:
        return None
    canonical = {c.lower(): c for c in schema.classes(head)}.get(value.lower(), value)
    schema.index(head, canonical)
    return canonical
