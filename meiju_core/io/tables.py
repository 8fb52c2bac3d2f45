"""Generic imports: a CSV of utterances (ids, transcripts, labels, splits) and a MEIJU label list.

Both importers are strict and all-or-nothing. The file is read and validated completely first; then
one write transaction (``BEGIN IMMEDIATE``) checks the ids against the store and inserts samples,
transcripts and gold labels in bulk. On any problem an ``ImportDataError`` names the file, the row
(1-based; in a CSV the header is row 1, in a label list the row is the line number) and the field,
and the store stays exactly as it was.

CSV (``import_csv``)
    UTF-8 with or without a BOM; comma-separated (tab-separated when the header has tabs and no
    commas). Header names are matched case-insensitively, ignoring ``_``, ``-`` and spaces, and
    common variants are accepted:

    ========  ==========================================================  ========
    role      accepted headers                                            required
    ========  ==========================================================  ========
    id        the ``id_column`` argument, FileName, name, utt_id, id      yes
    text      the ``text_column`` argument, Subtitle, sentence, text      no
    split     the ``split_column`` argument, split, set                   unless ``default_split``
    labels    per head, the ``label_columns`` value or the head's name    no
    ========  ==========================================================  ========

    An empty label cell means "no label for that head"; an empty text cell means "no transcript
    yet". Split values: train, valid, test, pool (also training, validation, dev, testing,
    unlabelled). Pool rows may not carry gold labels: the pool is the unlabelled part.

Label list (``import_label_list``)
    The MEIJU format (reference/meiju.md §2.3): one ``<utt_id> <emotion> <intent>`` per line, or
    ``<utt_id>`` alone for a test list, heads in the project's schema order.

In both, an id may end in a 4-character media extension (``Track1_Training_00001.mp4``, as the
baseline's ``*_files.txt`` have); it is removed, as the baseline does.
"""

from __future__ import annotations

import csv
import itertools
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from db import Store
from db.models import SPLITS, TRANSCRIPT_SOURCES, GoldLabel, Project, Sample, Transcript
from meiju_core.errors import ImportDataError, InputError, LabelError
from meiju_core.io.reading import (
    Lines,
    Problems,
    check_start,
    find_column,
    guess_delimiter,
    label_value,
    norm_header,
    read_utf8,
    strip_extension,
)
from meiju_core.schema import LabelSchema
from meiju_core.validate import id_problem, text_problem

ID_HEADERS = ("utt_id", "filename", "name", "id", "utterance_id", "file")
TEXT_HEADERS = ("text", "subtitle", "sentence", "transcript", "transcription", "utterance")
SPLIT_HEADERS = ("split", "set")
SPLIT_VALUES = {
    "train": "train",
    "training": "train",
    "valid": "valid",
    "validation": "valid",
    "dev": "valid",
    "test": "test",
    "testing": "test",
    "pool": "pool",
    "unlabelled": "pool",
    "unlabeled": "pool",
}


@dataclass(frozen=True)
class SampleRow:
    """One utterance to insert. ``labels`` maps head to class; ``text`` None means no transcript."""

    utt_id: str
    split: str
    source: str = ""
    text: str | None = None
    text_source: str = "official"
    labels: Mapping[str, str] = field(default_factory=dict)
    label_source: str = "official"
    group_id: str | None = None
    video_path: str | None = None
    audio_path: str | None = None
    duration_s: float | None = None
    withheld: dict[str, Any] | None = None


@dataclass(frozen=True)
class ImportSummary:
    """What one import stored. ``labels``: {head: {class: count}} over every class of the schema."""

    path: str
    project_id: int
    samples: int
    transcripts: int
    splits: dict[str, int]
    labels: dict[str, dict[str, int]]
    columns: dict[str, str] = field(default_factory=dict)  # role -> header used (CSV only)
    ignored_columns: tuple[str, ...] = ()


# --------------------------------------------------------------------------- reading


def _split_value(raw: str) -> str | None:
    return SPLIT_VALUES.get(raw.strip().lower())


# --------------------------------------------------------------------------- CSV


@dataclass(frozen=True)
class _Columns:
    id: int
    text: int | None
    split: int | None
    labels: dict[str, int]  # head -> column index

    def used(self, header: Sequence[str]) -> dict[str, str]:
        """{role: header name} of the columns read (role: id, text, split or a head)."""
        roles = {"id": self.id, "text": self.text, "split": self.split, **self.labels}
        return {role: header[col] for role, col in roles.items() if col is not None}


@dataclass(frozen=True)
class _CsvOptions:
    """The options of :func:`import_csv`, checked, as its steps share them."""

    schema: LabelSchema  # the project's: validates the labels
    id_column: str
    text_column: str
    split_column: str
    label_columns: Mapping[str, str]  # head -> preferred header
    default_split: str | None
    source: str
    text_source: str
    label_source: str


def _resolve_columns(header: list[str], problems: Problems, opts: _CsvOptions) -> _Columns | None:
    schema, default_split = opts.schema, opts.default_split
    id_column, text_column, split_column = opts.id_column, opts.text_column, opts.split_column
    label_columns = opts.label_columns
    found = f"columns found: {header}"
    normed = [norm_header(h) for h in header]
    for n in {x for x in normed if normed.count(x) > 1}:
        problems.add(f"two columns are named {n!r} (case and _ ignored); {found}", row=1)
    id_col = find_column(header, (id_column, *ID_HEADERS))
    if id_col is None:
        also = ", ".join(h for h in ID_HEADERS if h != id_column)
        problems.add(
            f"missing required column {id_column!r} (also accepted: {also}); {found}",
            row=1,
            field=id_column,
        )
    split_col = find_column(header, (split_column, *SPLIT_HEADERS))
    if split_col is None and default_split is None:
        problems.add(
            f"missing required column {split_column!r} (or pass a default split); {found}",
            row=1,
            field=split_column,
        )
    labels: dict[str, int] = {}
    for head, column in label_columns.items():
        col = find_column(header, (column, head))
        if col is not None and head not in schema.heads:
            problems.add(
                f"column {header[col]!r} holds {head} labels, but the project's heads are "
                f"{list(schema.heads)}",
                row=1,
                field=header[col],
            )
        elif col is not None:
            labels[head] = col
    if id_col is None:
        return None
    return _Columns(id_col, find_column(header, (text_column, *TEXT_HEADERS)), split_col, labels)


def _csv_row(
    record: list[str],
    row: int,
    header: list[str],
    cols: _Columns,
    problems: Problems,
    opts: _CsvOptions,
) -> SampleRow | None:
    schema, default_split = opts.schema, opts.default_split
    source, text_source, label_source = opts.source, opts.text_source, opts.label_source
    if len(record) != len(header):
        problems.add(f"the row has {len(record)} fields, the header has {len(header)}", row=row)
        return None
    n_before = len(problems.items)
    utt_id = strip_extension(record[cols.id])
    bad_id = id_problem(utt_id)
    if bad_id:
        problems.add(bad_id, row=row, field=header[cols.id])
    split = default_split
    if cols.split is not None and record[cols.split].strip():
        split = _split_value(record[cols.split])
        if split is None:
            problems.add(
                f"invalid split {record[cols.split]!r}; expected one of {list(SPLITS)}",
                row=row,
                field=header[cols.split],
            )
    elif split is None:  # a split column with an empty cell (without one, a default is given)
        field = header[cols.split] if cols.split is not None else None
        problems.add("empty split and no default split given", row=row, field=field)
    text = ""
    if cols.text is not None:
        text = record[cols.text].strip()
        bad_text = text_problem(text) if text else None
        if bad_text:
            problems.add(bad_text, row=row, field=header[cols.text])
    labels: dict[str, str] = {}
    for head, col in cols.labels.items():
        try:
            label = label_value(schema, head, record[col])
        except LabelError as e:
            problems.add(e.reason, row=row, field=header[col])
            continue
        if label is not None:
            labels[head] = label
    if labels and split == "pool":
        problems.add(
            "a pool row cannot carry gold labels (the pool is the unlabelled part); "
            "use train, valid or test",
            row=row,
            field=header[cols.split] if cols.split is not None else None,
        )
    if len(problems.items) > n_before:
        return None
    return SampleRow(
        utt_id=utt_id,
        split=split or "",
        source=source,
        text=text or None,
        text_source=text_source,
        labels=labels,
        label_source=label_source,
    )


def import_csv(
    store: Store,
    path: Path | str,
    *,
    project_id: int,
    split_column: str = "split",
    id_column: str = "utt_id",
    text_column: str = "text",
    label_columns: Mapping[str, str] | None = None,
    default_split: str | None = None,
    source: str = "csv",
    text_source: str = "official",
    label_source: str = "official",
) -> ImportSummary:
    """Import utterances from a CSV into project ``project_id``: all rows or none.

    Parameters
    ----------
    store : the store; one write transaction is used.
    path : the CSV file (UTF-8, BOM allowed).
    project_id : the project whose label schema validates the labels.
    split_column, id_column, text_column : preferred header names (variants are also accepted,
        see the module docstring).
    label_columns : {head: header}; default ``{"emotion": "emotion", "intent": "intent"}``.
    default_split : the split of rows without a split column or with an empty split cell.
    source : ``Sample.source`` of the new samples.
    text_source : ``Transcript.source`` (official, asr or manual).
    label_source : ``GoldLabel.source``.

    Returns
    -------
    ImportSummary with the numbers stored.

    Raises
    ------
    ImportDataError : the file is not UTF-8, a required column is missing, or a row has an empty
        or duplicate id, an id already stored in the project, an unknown label, HTML in its
        transcript or an invalid split. Nothing is stored.
    InputError : no project ``project_id``, or an invalid ``default_split`` / ``text_source``.
    """
    path = Path(path)
    label_columns = (
        {"emotion": "emotion", "intent": "intent"} if label_columns is None else label_columns
    )
    _check_options(default_split=default_split, text_source=text_source)
    default_split = _split_value(default_split) if default_split is not None else None
    opts = _CsvOptions(
        schema=_project_schema(store, project_id),
        id_column=id_column,
        text_column=text_column,
        split_column=split_column,
        label_columns=label_columns,
        default_split=default_split,
        source=source,
        text_source=text_source,
        label_source=label_source,
    )
    problems = Problems(path)
    try:
        binary = path.open("rb")
    except OSError as e:
        raise ImportDataError(f"cannot read the file: {e.strerror or e}", path=str(path)) from None
    with binary:
        check_start(binary.read(4096), path)
        binary.seek(0)
        lines = Lines(path, binary)
        stream = iter(lines)
        first = next(stream, "")
        reader = csv.reader(itertools.chain([first], stream), delimiter=guess_delimiter(first))
        try:
            return _import_records(store, path, reader, problems, project_id, opts)
        except csv.Error as e:
            raise ImportDataError(
                f"not a readable CSV file: {e}", path=str(path), row=reader.line_num
            ) from None


BATCH_ROWS = 5000  # rows validated, then inserted together (the file is never held whole)


def _import_records(
    store: Store,
    path: Path,
    reader: Iterator[list[str]],
    problems: Problems,
    project_id: int,
    opts: _CsvOptions,
) -> ImportSummary:
    """Validate and insert the records of a CSV in batches of ``BATCH_ROWS`` inside one write
    transaction; any problem stops the inserts, every remaining row is still checked, and the
    transaction is rolled back, so the store is unchanged. Memory holds one batch and the ids."""
    schema = opts.schema
    header, cols = _read_header(reader, problems, opts)
    tally = _Tally(
        labels={head: dict.fromkeys(schema.classes(head), 0) for head in schema.head_names}
    )
    with store.write() as s:
        batch = _Batch(s, project_id, problems, id_field=header[cols.id])
        for row, record in enumerate(reader, start=2):
            if not any(cell.strip() for cell in record):
                continue  # a blank line
            sample = _csv_row(record, row, header, cols, problems, opts)
            if sample is not None and batch.add(row, sample):
                tally.add(sample)
        batch.flush()
        if not tally.samples and not problems.items:
            problems.add("no rows to import")
        problems.raise_if_any()  # rolls every inserted batch back
    used = cols.used(header)
    return ImportSummary(
        path=str(path),
        project_id=project_id,
        samples=tally.samples,
        transcripts=tally.transcripts,
        splits=dict(tally.splits),
        labels=tally.labels,
        columns=used,
        ignored_columns=tuple(h for h in header if h not in used.values()),
    )


def _read_header(
    reader: Iterator[list[str]], problems: Problems, opts: _CsvOptions
) -> tuple[list[str], _Columns]:
    """The header row and the columns it gives each role; raises every problem found in it."""
    record = next(reader, None)
    if record is None or not any(cell.strip() for cell in record):
        problems.add("the file is empty: no header row", row=1)
        problems.raise_if_any()
    assert record is not None  # raise_if_any raised for an empty file
    header = [h.strip() for h in record]
    cols = _resolve_columns(header, problems, opts)
    problems.raise_if_any()
    assert cols is not None  # no id column is a problem, raised above
    return header, cols


@dataclass
class _Tally:
    """What an import stores: samples, transcripts, samples per split, labels per head and
    class."""

    labels: dict[str, dict[str, int]]
    samples: int = 0
    transcripts: int = 0
    splits: Counter[str] = field(default_factory=Counter)

    def add(self, sample: SampleRow) -> None:
        self.samples += 1
        self.transcripts += sample.text is not None
        self.splits[sample.split] += 1
        for head, label in sample.labels.items():
            self.labels[head][label] += 1


class _Batch:
    """Rows checked but not inserted yet, inside the import's write transaction. An id seen
    twice in the batch is a problem at once; at :meth:`flush` an id already stored (earlier
    batches included) is one too. Once any problem is known nothing more is inserted, so ids
    stay checked against the store while memory never holds every id of a large file."""

    def __init__(self, s: Session, project_id: int, problems: Problems, *, id_field: str) -> None:
        self.s, self.project_id, self.problems, self.id_field = s, project_id, problems, id_field
        self.first_row: dict[str, int] = {}
        self.items: list[tuple[int, SampleRow]] = []

    def add(self, row: int, sample: SampleRow) -> bool:
        """Queue one row (inserting a full batch); False for an id already in this batch."""
        if sample.utt_id in self.first_row:
            self.problems.add(
                f"duplicate id {sample.utt_id!r}: rows {self.first_row[sample.utt_id]} and {row}",
                row=row,
                field=self.id_field,
            )
            return False
        self.first_row[sample.utt_id] = row
        self.items.append((row, sample))
        if len(self.items) >= BATCH_ROWS:
            self.flush()
        return True

    def flush(self) -> None:
        if not self.items:
            return
        stored = _stored_ids(self.s, self.project_id, [b.utt_id for _, b in self.items])
        for row, sample in self.items:
            if sample.utt_id in stored:
                self.problems.add(
                    f"id {sample.utt_id!r} is already stored in project {self.project_id} "
                    "(or earlier in this file)",
                    row=row,
                    field=self.id_field,
                )
        if not self.problems.items:
            bulk_insert(self.s, self.project_id, [b for _, b in self.items])
        self.items.clear()
        self.first_row.clear()


# --------------------------------------------------------------------------- label lists


def import_label_list(
    store: Store,
    path: Path | str,
    *,
    project_id: int,
    split: str,
    source: str = "meiju",
    label_source: str = "official",
) -> ImportSummary:
    """Import a MEIJU label list (``<utt_id> <emotion> <intent>`` or ``<utt_id>`` per line).

    Creates one sample per line (no media, no transcript) in ``split`` with its gold labels; heads
    are taken in the project's schema order. All lines must have the same number of fields.
    Blank lines are skipped. Raises ``ImportDataError`` as ``import_csv`` does (row = line
    number); nothing is stored then.
    """
    path = Path(path)
    _check_options(default_split=split)
    split = _split_value(split) or split
    schema = _project_schema(store, project_id)
    heads = schema.head_names
    problems = Problems(path)
    rows: list[tuple[int, SampleRow]] = []
    width: tuple[int, int] | None = None  # (fields, first line with that many)
    for line_no, line in enumerate(read_utf8(path).splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) not in (1, 1 + len(heads)):
            problems.add(
                f"expected '<utt_id>' or '<utt_id> {' '.join(f'<{h}>' for h in heads)}', "
                f"got {len(fields)} fields",
                row=line_no,
            )
            continue
        if width is None:
            width = (len(fields), line_no)
        elif len(fields) != width[0]:
            problems.add(
                f"{len(fields)} fields, but line {width[1]} has {width[0]}; a list is either "
                "all labelled or all ids only",
                row=line_no,
            )
            continue
        labels: dict[str, str] = {}
        for head, raw in zip(heads, fields[1:], strict=False):
            try:
                label = label_value(schema, head, raw)
            except LabelError as e:
                problems.add(e.reason, row=line_no, field=head)
                continue
            if label is not None:
                labels[head] = label
        if labels and split == "pool":
            problems.add("a pool sample cannot carry gold labels", row=line_no)
        bad_id = id_problem(strip_extension(fields[0]))
        if bad_id:
            problems.add(bad_id, row=line_no, field="utt_id")
            continue
        rows.append(
            (
                line_no,
                SampleRow(
                    utt_id=strip_extension(fields[0]),
                    split=split,
                    source=source,
                    labels=labels,
                    label_source=label_source,
                ),
            )
        )
    return _store_rows(store, path, project_id, schema, rows, problems, id_field="utt_id")


# --------------------------------------------------------------------------- storing


def _check_options(*, default_split: str | None = None, text_source: str = "official") -> None:
    if default_split is not None and _split_value(default_split) is None:
        raise InputError(
            f"invalid split {default_split!r}; expected one of {list(SPLITS)}", field="split"
        )
    if text_source not in TRANSCRIPT_SOURCES:
        raise InputError(
            f"invalid transcript source {text_source!r}; expected one of {list(TRANSCRIPT_SOURCES)}",
            field="text_source",
        )


def _project_schema(store: Store, project_id: int) -> LabelSchema:
    with store.read() as s:
        project = s.get(Project, project_id)
        if project is None:
            raise InputError(f"no project with id {project_id}")
        return LabelSchema.from_dict(project.label_schema)


def _check_duplicates(
    rows: Sequence[tuple[int, SampleRow]], problems: Problems, id_field: str
) -> None:
    first_row: dict[str, int] = {}
    for row, sample in rows:
        if sample.utt_id in first_row:
            problems.add(
                f"duplicate id {sample.utt_id!r}: rows {first_row[sample.utt_id]} and {row}",
                row=row,
                field=id_field,
            )
        else:
            first_row.setdefault(sample.utt_id, row)


def _store_rows(
    store: Store,
    path: Path,
    project_id: int,
    schema: LabelSchema,
    rows: Sequence[tuple[int, SampleRow]],
    problems: Problems,
    *,
    id_field: str,
) -> ImportSummary:
    """Check ids against the file and the store, then insert, all in one write transaction."""
    _check_duplicates(rows, problems, id_field)
    problems.raise_if_any()
    if not rows:
        problems.add("no rows to import")
        problems.raise_if_any()
    with store.write() as s:
        stored = set(s.scalars(select(Sample.utt_id).where(Sample.project_id == project_id)))
        for row, sample in rows:
            if sample.utt_id in stored:
                problems.add(
                    f"id {sample.utt_id!r} is already stored in project {project_id}",
                    row=row,
                    field=id_field,
                )
        problems.raise_if_any()  # rolls the (still empty) transaction back
        bulk_insert(s, project_id, [sample for _, sample in rows])
    labels = {head: dict.fromkeys(schema.classes(head), 0) for head in schema.head_names}
    for _, sample in rows:
        for head, label in sample.labels.items():
            labels[head][label] += 1
    return ImportSummary(
        path=str(path),
        project_id=project_id,
        samples=len(rows),
        transcripts=sum(1 for _, sample in rows if sample.text is not None),
        splits=dict(Counter(sample.split for _, sample in rows)),
        labels=labels,
    )


def _stored_ids(session: Session, project_id: int, utt_ids: Sequence[str]) -> set[str]:
    """Which of ``utt_ids`` the project already has (in chunks under SQLite's parameter limit)."""
    found: set[str] = set()
    for start in range(0, len(utt_ids), 900):
        found.update(
            session.scalars(
                select(Sample.utt_id).where(
                    Sample.project_id == project_id,
                    Sample.utt_id.in_(utt_ids[start : start + 900]),
                )
            )
        )
    return found


def bulk_insert(session: Session, project_id: int, rows: Sequence[SampleRow]) -> list[int]:
    """Insert samples, their transcripts and gold labels with three executemany statements.

    The caller owns the transaction and has validated the rows. Returns the new sample ids in
    the order of ``rows``.
    """
    if not rows:
        return []
    sample_values = [
        {
            "project_id": project_id,
            "utt_id": r.utt_id,
            "split": r.split,
            "source": r.source,
            "group_id": r.group_id,
            "video_path": r.video_path,
            "audio_path": r.audio_path,
            "duration_s": r.duration_s,
            "withheld": r.withheld,
        }
        for r in rows
    ]
    # Core executemany on the tables: several times faster than the ORM bulk path for 10k rows.
    session.execute(insert(Sample.__table__), sample_values)  # type: ignore[arg-type]  # __table__ is typed FromClause
    id_of: dict[str, int] = {}
    names = [r.utt_id for r in rows]
    for start in range(0, len(names), 900):  # under SQLite's bound-parameter limit
        id_of.update(
            session.execute(
                select(Sample.utt_id, Sample.id).where(
                    Sample.project_id == project_id, Sample.utt_id.in_(names[start : start + 900])
                )
            ).all()
        )
    ids = [id_of[r.utt_id] for r in rows]
    transcripts = [
        {
            "sample_id": i,
            "original_text": r.text,
            "text": r.text,
            "source": r.text_source,
            "version": 1,
        }
        for i, r in zip(ids, rows, strict=True)
        if r.text is not None
    ]
    if transcripts:
        session.execute(insert(Transcript.__table__), transcripts)  # type: ignore[arg-type]  # __table__ is typed FromClause
    labels = [
        {"sample_id": i, "head": head, "label": label, "source": r.label_source}
        for i, r in zip(ids, rows, strict=True)
        for head, label in r.labels.items()
    ]
    if labels:
        session.execute(insert(GoldLabel.__table__), labels)  # type: ignore[arg-type]  # __table__ is typed FromClause
    return ids
