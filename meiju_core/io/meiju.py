"""The MEIJU 2025 release layout in and out: videos, transcripts, labels and `.npy` features.

Release layout (Track I, reference/meiju.md §2.2, reconstructed from the official baseline's
``config.py`` and ``feature_extraction_main.py``)::

    <root>/Track1/<Lang>/                       (or <root> is this folder itself)
        Annotation/Training/<utt>.<ext>             labelled training videos
        Annotation/Validation/<utt>.<ext>           labelled validation videos
        Annotation/Training_transcription.csv       file name, subtitle, emotion, intent
        Annotation/Validation_transcription.csv
        NoAnnotation/<utt>.<ext>                    the unlabelled pool (no transcript)
        <Lang>_Testing_files.csv                    test ids (FileName column), or a label list
        Testing/<utt>.<ext>                         test videos, where present

A transcription CSV may live in ``Annotation/``, beside it in ``Track1/<Lang>/`` or inside its
video folder. Header names are matched case-insensitively: file name ``FileName`` / ``name`` /
``filename`` / ``utt_id``; subtitle ``Subtitle`` / ``sentence`` / ``text``; ``Emotion``;
``Intent``. A file name may carry its extension (``Track1_Training_00001.mp4``); it is removed.

Services here (they write the store; nothing in ``features/`` does):

- :func:`import_release`: the whole release into a new project, all or nothing;
- :func:`transcribe_pool`: ASR transcripts (source ``asr``) for pool samples without one;
- :func:`import_npy_features`: a folder of per-utterance ``.npy`` features as a feature set;
- :func:`export_baseline_layout`: a feature set in the official baseline's training layout.

Row numbers are 1-based; in a CSV the header is row 1, in a label list the row is the line.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import delete, insert, select

from db import Store
from db.models import FeatureFile, FeatureSet, GoldLabel, Project, Sample, Transcript
from meiju_core.errors import (
    FeatureError,
    ImportDataError,
    InputError,
    LabelError,
    MediaError,
)
from meiju_core.io.reading import (
    Problems,
    find_column,
    guess_delimiter,
    label_value,
    read_utf8,
    strip_extension,
)
from meiju_core.io.tables import SampleRow, bulk_insert
from meiju_core.ml import media
from meiju_core.schema import MODALITIES, LabelSchema
from meiju_core.validate import id_problem, text_problem

__all__ = [
    "BASELINE_TYPES",
    "ExportSummary",
    "LabelListRow",
    "NpyImportSummary",
    "ReleaseSummary",
    "TranscribeSummary",
    "export_baseline_layout",
    "find_release",
    "import_npy_features",
    "import_release",
    "read_label_list",
    "read_testing_list",
    "read_transcription_csv",
    "transcribe_pool",
]

# release folder name -> our split; the baseline's list names (Training_files.txt, ...)
RELEASE_SPLITS = {"Training": "train", "Validation": "valid"}
BASELINE_LISTS = {"train": "Training", "valid": "Validation", "test": "Testing"}
# the baseline's Track 1 feature folder names (--A_type / --V_type / --L_type), §2.3
BASELINE_TYPES = {"audio": "wav2vec", "visual": "ResNet-50", "text": "RoBERTa"}
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mpg", ".mpeg", ".mov", ".webm", ".flv", ".m4v")
AUDIO_EXTENSIONS = (".wav", ".mp3", ".flac", ".m4a", ".ogg")
MEDIA_EXTENSIONS = frozenset(VIDEO_EXTENSIONS + AUDIO_EXTENSIONS)
FILE_HEADERS = ("filename", "name", "utt_id", "file", "id")
TEXT_HEADERS = ("subtitle", "sentence", "text", "transcript", "transcription")
SOURCE = "meiju"


# --------------------------------------------------------------------------- reading files


@dataclass(frozen=True)
class LabelListRow:
    """One utterance of a transcription CSV, testing list or label list.

    ``row``: 1-based row (CSV, header = 1) or line number; ``text``: the subtitle, None when the
    file has none or the cell is empty; ``labels``: {head: class} of the cells that are filled;
    ``id_field``: the header of the id column.
    """

    row: int
    utt_id: str
    text: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    id_field: str = "utt_id"  # the header of the id column (CSV), for messages


def _csv_records(path: Path) -> list[list[str]]:
    text = read_utf8(path)
    delimiter = guess_delimiter(text.split("\n", 1)[0])
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        return list(reader)
    except csv.Error as e:
        raise ImportDataError(
            f"not a readable CSV file: {e}", path=str(path), row=reader.line_num
        ) from None


def read_transcription_csv(
    path: Path | str,
    schema: LabelSchema | None = None,
    *,
    labels_required: bool = True,
    problems: Problems | None = None,
) -> list[LabelListRow]:
    """Read an official ``{Training,Validation}_transcription.csv``.

    Columns (header variants in the module docstring): file name (required), subtitle
    (required column; an empty cell means no transcript), and one column per head of
    ``schema`` (default MEIJU Track I: emotion, intent), required with ``labels_required``.
    Blank lines are skipped.

    Raises:
        ImportDataError: not UTF-8, not CSV, a missing column, an empty or duplicate file name,
            an unknown label, an empty label cell (with ``labels_required``), HTML in a subtitle
            (names file, row and field; every problem is listed). With ``problems`` given, the
            problems are added there instead and the good rows returned.
    """
    path = Path(path)
    schema = schema or LabelSchema.meiju_track1()
    own = problems is None
    problems = problems if problems is not None else Problems()
    records = _csv_records(path)
    if not records or not any(c.strip() for c in records[0]):
        problems.add("the file is empty: no header row", path=path, row=1)
        return _finish(problems, own, [])
    header = [h.strip() for h in records[0]]
    found = f"columns found: {header}"
    id_col = find_column(header, FILE_HEADERS)
    text_col = find_column(header, TEXT_HEADERS)
    label_cols = {h: find_column(header, (h,)) for h in schema.head_names}
    if id_col is None:
        problems.add(f"missing the file name column (FileName or name); {found}", path=path, row=1)
    if text_col is None:
        problems.add(
            f"missing the subtitle column (Subtitle or sentence); {found}", path=path, row=1
        )
    for head, col in label_cols.items():
        if col is None and labels_required:
            problems.add(f"missing the {head} column; {found}", path=path, row=1, field=head)
    if id_col is None or text_col is None:
        return _finish(problems, own, [])
    rows: list[LabelListRow] = []
    first_row: dict[str, int] = {}
    for row, record in enumerate(records[1:], start=2):
        if not any(c.strip() for c in record):
            continue
        if len(record) != len(header):
            problems.add(
                f"the row has {len(record)} fields, the header has {len(header)}",
                path=path,
                row=row,
            )
            continue
        item = _transcription_row(
            path,
            row,
            record,
            header,
            id_col,
            text_col,
            label_cols,
            schema,
            labels_required,
            problems,
        )
        if item is None:
            continue
        if item.utt_id in first_row:
            problems.add(
                f"duplicate file name {item.utt_id!r}: rows {first_row[item.utt_id]} and {row}",
                path=path,
                row=row,
                field=header[id_col],
            )
            continue
        first_row[item.utt_id] = row
        rows.append(item)
    return _finish(problems, own, rows)


def _transcription_row(
    path: Path,
    row: int,
    record: list[str],
    header: list[str],
    id_col: int,
    text_col: int,
    label_cols: Mapping[str, int | None],
    schema: LabelSchema,
    labels_required: bool,
    problems: Problems,
) -> LabelListRow | None:
    before = len(problems.items)
    utt_id = strip_extension(record[id_col])
    if not utt_id:
        problems.add("empty file name", path=path, row=row, field=header[id_col])
    elif bad_id := id_problem(utt_id):
        problems.add(bad_id, path=path, row=row, field=header[id_col])
    text = record[text_col].strip()
    if text and (bad_text := text_problem(text)):
        problems.add(
            bad_text.replace("transcript", "subtitle"),
            path=path,
            row=row,
            field=header[text_col],
        )
    labels: dict[str, str] = {}
    for head, col in label_cols.items():
        if col is None:
            continue
        try:
            value = label_value(schema, head, record[col])
        except LabelError as e:
            problems.add(e.reason, path=path, row=row, field=header[col])
            continue
        if value is None and labels_required:
            problems.add(f"empty {head} label", path=path, row=row, field=header[col])
        elif value is not None:
            labels[head] = value
    if len(problems.items) > before:
        return None
    return LabelListRow(
        row=row, utt_id=utt_id, text=text or None, labels=labels, id_field=header[id_col]
    )


def _finish(problems: Problems, own: bool, rows: list[LabelListRow]) -> list[LabelListRow]:
    if own:
        problems.raise_if_any()
    return rows


def read_label_list(
    path: Path | str, schema: LabelSchema | None = None, *, problems: Problems | None = None
) -> list[LabelListRow]:
    """Read a MEIJU label list: ``<utt_id> <emotion> <intent>`` per line, or ``<utt_id>`` alone
    (a test list), heads in ``schema`` order (default MEIJU Track I). Also reads the baseline's
    ``*_files.txt`` (ids with a 4-character extension, removed). Blank lines are skipped.

    Returns one :class:`LabelListRow` per line (``text`` None).

    Raises:
        ImportDataError: a line with another number of fields, lists mixing labelled and bare
            lines, an unknown label or a duplicate id (names file, line and field).
    """
    path = Path(path)
    schema = schema or LabelSchema.meiju_track1()
    heads = schema.head_names
    own = problems is None
    problems = problems if problems is not None else Problems()
    rows: list[LabelListRow] = []
    width: tuple[int, int] | None = None  # (fields, first line with that many)
    first_row: dict[str, int] = {}
    for line_no, line in enumerate(read_utf8(path).splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) not in (1, 1 + len(heads)) or (width and len(fields) != width[0]):
            expected = f"'<utt_id>' or '<utt_id> {' '.join(f'<{h}>' for h in heads)}'"
            if width:
                expected = f"{width[0]} fields as on line {width[1]}"
            problems.add(f"expected {expected}, got {len(fields)} fields", path=path, row=line_no)
            continue
        width = width or (len(fields), line_no)
        labels: dict[str, str] = {}
        for head, raw in zip(heads, fields[1:], strict=False):
            try:
                labels[head] = label_value(schema, head, raw) or raw
            except LabelError as e:
                problems.add(e.reason, path=path, row=line_no, field=head)
        utt_id = strip_extension(fields[0])
        if utt_id in first_row:
            problems.add(
                f"duplicate id {utt_id!r}: lines {first_row[utt_id]} and {line_no}",
                path=path,
                row=line_no,
                field="utt_id",
            )
            continue
        first_row[utt_id] = line_no
        rows.append(LabelListRow(row=line_no, utt_id=utt_id, labels=labels))
    return _finish(problems, own, rows)


def read_testing_list(
    path: Path | str, schema: LabelSchema | None = None, *, problems: Problems | None = None
) -> list[LabelListRow]:
    """Read the test ids: ``<Lang>_Testing_files.csv`` (a ``FileName`` column; other columns
    are ignored) when the name ends in ``.csv``, else a label list (:func:`read_label_list`).

    Raises:
        ImportDataError: no file name column, an empty or duplicate id, or a bad label list.
    """
    path = Path(path)
    if path.suffix.lower() != ".csv":
        return read_label_list(path, schema, problems=problems)
    own = problems is None
    problems = problems if problems is not None else Problems()
    records = _csv_records(path)
    header = [h.strip() for h in records[0]] if records else []
    col = find_column(header, FILE_HEADERS)
    if col is None:
        problems.add(
            f"missing the FileName column; columns found: {header}",
            path=path,
            row=1,
            field="FileName",
        )
        return _finish(problems, own, [])
    rows: list[LabelListRow] = []
    first_row: dict[str, int] = {}
    for row, record in enumerate(records[1:], start=2):
        if not any(c.strip() for c in record):
            continue
        utt_id = strip_extension(record[col]) if col < len(record) else ""
        if not utt_id:
            problems.add("empty file name", path=path, row=row, field=header[col])
        elif utt_id in first_row:
            problems.add(
                f"duplicate file name {utt_id!r}: rows {first_row[utt_id]} and {row}",
                path=path,
                row=row,
                field=header[col],
            )
        else:
            first_row[utt_id] = row
            rows.append(LabelListRow(row=row, utt_id=utt_id, id_field=header[col]))
    return _finish(problems, own, rows)


# --------------------------------------------------------------------------- the release


def find_release(root: Path | str, lang: str = "Mandarin") -> Path:
    """The ``Track1/<lang>`` folder of a release: ``root/Track1/<lang>``, or ``root`` itself
    when it holds ``Annotation/``.

    Raises:
        ImportDataError: neither exists (names the paths looked at).
    """
    root = Path(root).expanduser().resolve()
    for candidate in (root / "Track1" / lang, root / lang, root):
        if (candidate / "Annotation").is_dir():
            return candidate
    raise ImportDataError(
        f"not a MEIJU Track 1 release: no Annotation/ folder in {root / 'Track1' / lang} or {root}",
        path=str(root),
    )


def _media_index(folder: Path, problems: Problems) -> dict[str, Path]:
    """{utt_id: absolute path} of the media files directly in ``folder`` (hidden files and
    non-media files are ignored); two files with one id is a problem."""
    index: dict[str, Path] = {}
    if not folder.is_dir():
        return index
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_file() or p.suffix.lower() not in MEDIA_EXTENSIONS:
            continue
        if p.stem in index:
            problems.add(
                f"two media files for {p.stem!r}: {index[p.stem].name} and {p.name}", path=p
            )
            continue
        index[p.stem] = p.resolve()
    return index


def _media_fields(path: Path | None) -> dict[str, Any]:
    """``video_path`` for a video file, ``audio_path`` for an audio-only file (by extension)."""
    if path is None:
        return {}
    kind = "audio_path" if path.suffix.lower() in AUDIO_EXTENSIONS else "video_path"
    return {kind: str(path)}


def _first_file(*candidates: Path) -> Path | None:
    return next((c for c in candidates if c.is_file()), None)


@dataclass(frozen=True)
class ReleaseSummary:
    """What :func:`import_release` stored. ``labels``: {head: {class: count}} over train+valid;
    ``media``: samples with a media file per split; ``seconds``: wall time."""

    project_id: int
    release: str
    splits: dict[str, int]
    transcripts: int
    labels: dict[str, dict[str, int]]
    media: dict[str, int]
    testing_list: str | None
    seconds: float


def import_release(
    store: Store,
    root: Path | str,
    *,
    project_name: str,
    lang: str = "Mandarin",
    testing_list: Path | str | None = None,
    probe_media: bool = True,
) -> ReleaseSummary:
    """Import a MEIJU Track I release into a new project (MEIJU label schema): all or nothing.

    Creates samples for ``Annotation/Training`` (split ``train``) and ``Annotation/Validation``
    (``valid``) with their official transcripts (source ``official``) and gold emotion and
    intent labels; ``NoAnnotation/`` (``pool``, no transcript: see :func:`transcribe_pool`);
    and the testing ids (``test``, with media from ``Testing/`` where present). Media paths are
    stored absolute; with ``probe_media`` each file's duration (seconds) is read from its header
    and an unreadable file is a problem.

    Args:
        store: the store; one write transaction creates the project and every row.
        root: the release root (holding ``Track1/<lang>``) or the ``Track1/<lang>`` folder.
        project_name: name of the new project.
        lang: ``Mandarin`` or ``English`` (the folder name).
        testing_list: the test id file; default: the first of ``<lang>_Testing_files.csv``,
            ``Testing_files.csv``, ``Testing_files.txt``, ``test_filelist.txt`` in the release
            folder or its parent (none found: no test samples).
        probe_media: read each media file's header (about 4 ms per file).

    Returns:
        A :class:`ReleaseSummary`.

    Raises:
        ImportDataError: not a release, a project named ``project_name`` exists, a transcript
            CSV is missing or bad (file, row, field), a listed video is missing, a video has no
            row, an id occurs twice across splits, or a media file cannot be read. Every
            problem is collected first and nothing is stored.
    """
    started = time.perf_counter()
    release = find_release(root, lang)
    schema = LabelSchema.meiju_track1()
    problems = Problems()
    rows: list[SampleRow] = []
    seen: dict[str, str] = {}  # utt_id -> where it was first seen

    def claim(utt_id: str, where: str, path: Path, row: int | None) -> bool:
        if utt_id in seen:
            problems.add(
                f"id {utt_id!r} occurs twice: in {seen[utt_id]} and here", path=path, row=row
            )
            return False
        seen[utt_id] = f"{path.name}" + (f" row {row}" if row else "")
        return True

    for folder, split in RELEASE_SPLITS.items():
        rows += _labelled_split(release, folder, split, schema, problems, claim)
    for utt_id, path in _media_index(release / "NoAnnotation", problems).items():
        if claim(utt_id, "NoAnnotation", path, None):
            rows.append(
                SampleRow(utt_id=utt_id, split="pool", source=SOURCE, **_media_fields(path))
            )
    test_path = (
        Path(testing_list) if testing_list is not None else _testing_list_path(release, lang)
    )
    if test_path is not None:
        rows += _test_split(release, test_path, schema, problems, claim)
    if not rows and not problems.items:
        problems.add("the release holds no utterance", path=release)
    if probe_media:
        rows = _with_durations(rows, problems)
    problems.raise_if_any()
    project_id = _store_release(store, project_name, lang, release, test_path, rows)
    labels = {h: dict.fromkeys(schema.classes(h), 0) for h in schema.head_names}
    for r in rows:
        if r.split in ("train", "valid"):
            for head, value in r.labels.items():
                labels[head][value] += 1
    return ReleaseSummary(
        project_id=project_id,
        release=str(release),
        splits=dict(Counter(r.split for r in rows)),
        transcripts=sum(r.text is not None for r in rows),
        labels=labels,
        media=dict(Counter(r.split for r in rows if r.video_path or r.audio_path)),
        testing_list=str(test_path) if test_path else None,
        seconds=round(time.perf_counter() - started, 3),
    )


def _labelled_split(
    release: Path,
    folder: str,
    split: str,
    schema: LabelSchema,
    problems: Problems,
    claim: Callable[[str, str, Path, int | None], bool],
) -> list[SampleRow]:
    annotation = release / "Annotation"
    videos = _media_index(annotation / folder, problems)
    name = f"{folder}_transcription.csv"
    csv_path = _first_file(annotation / name, release / name, annotation / folder / name)
    if csv_path is None:
        if videos or (annotation / folder).is_dir():
            problems.add(
                f"missing {name} (looked in {annotation} and {release})", path=annotation / name
            )
        return []
    out: list[SampleRow] = []
    n_before = len(problems.items)
    items = read_transcription_csv(csv_path, schema, problems=problems)
    csv_complete = len(problems.items) == n_before  # else rows were dropped: no "video without row"
    for item in items:
        video = videos.pop(item.utt_id, None)
        if video is None:
            problems.add(
                f"no video for {item.utt_id!r} in {annotation / folder}",
                path=csv_path,
                row=item.row,
                field=item.id_field,
            )
            continue
        if claim(item.utt_id, folder, csv_path, item.row):
            out.append(
                SampleRow(
                    utt_id=item.utt_id,
                    split=split,
                    source=SOURCE,
                    text=item.text,
                    text_source="official",
                    labels=dict(item.labels),
                    label_source="official",
                    **_media_fields(video),
                )
            )
    for utt_id, video in videos.items() if csv_complete else ():
        problems.add(f"the video {utt_id!r} has no row in {csv_path.name}", path=video)
    return out


def _testing_list_path(release: Path, lang: str) -> Path | None:
    names = (
        f"{lang}_Testing_files.csv",
        "Testing_files.csv",
        "Testing_files.txt",
        "test_filelist.txt",
    )
    return _first_file(*(folder / n for folder in (release, release.parent) for n in names))


def _test_split(
    release: Path,
    path: Path,
    schema: LabelSchema,
    problems: Problems,
    claim: Callable[[str, str, Path, int | None], bool],
) -> list[SampleRow]:
    if not path.is_file():
        problems.add("the testing list does not exist", path=path)
        return []
    videos = _media_index(release / "Testing", problems) or _media_index(
        release / "Annotation" / "Testing", problems
    )
    out = []
    for item in read_testing_list(path, schema, problems=problems):
        if claim(item.utt_id, path.name, path, item.row):
            video = videos.get(item.utt_id)
            out.append(
                SampleRow(
                    utt_id=item.utt_id,
                    split="test",
                    source=SOURCE,
                    labels=dict(item.labels),
                    **_media_fields(video),
                )
            )
    return out


def _with_durations(rows: list[SampleRow], problems: Problems) -> list[SampleRow]:
    out = []
    for r in rows:
        path = r.video_path or r.audio_path
        if path is None:
            out.append(r)
            continue
        try:
            info = media.probe(path)
        except MediaError as e:
            problems.add(f"unreadable media file: {str(e).removeprefix(f'{path}: ')}", path=path)
            continue
        out.append(dataclasses.replace(r, duration_s=round(info.duration, 3)))
    return out


def _store_release(
    store: Store,
    project_name: str,
    lang: str,
    release: Path,
    test_path: Path | None,
    rows: list[SampleRow],
) -> int:
    problems = Problems()
    with store.write() as s:
        if s.scalars(select(Project.id).where(Project.name == project_name)).first() is not None:
            problems.add(
                f"a project named {project_name!r} already exists; choose another name",
                field="project_name",
            )
            problems.raise_if_any()
        project = Project(
            name=project_name,
            label_schema=LabelSchema.meiju_track1().to_dict(),
            settings={
                "meiju": {
                    "track": 1,
                    "lang": lang,
                    "corpus": f"MEIJU_balance_{lang}",
                    "release": str(release),
                    "testing_list": str(test_path) if test_path else None,
                }
            },
        )
        s.add(project)
        s.flush()
        bulk_insert(s, project.id, rows)
        return project.id


# --------------------------------------------------------------------------- pool ASR


Transcribe = Callable[[str], tuple[str, Mapping[str, Any]]]


@dataclass(frozen=True)
class TranscribeSummary:
    """:func:`transcribe_pool` results: ``done`` transcripts stored, ``failed`` {utt_id:
    reason} for media that could not be read, ``seconds`` of wall time."""

    done: int
    failed: dict[str, str]
    seconds: float


def transcribe_pool(
    store: Store,
    project_id: int,
    *,
    transcribe: Transcribe | None = None,
    limit: int | None = None,
    commit_every: int = 20,
    progress: Callable[[dict[str, Any]], Any] | None = None,
) -> TranscribeSummary:
    """ASR transcripts (``Transcript.source = "asr"``) for pool samples that have none.

    The baseline's own step for NoAnnotation (reference/meiju.md §4.2). Samples are taken in id
    order, each from ``audio_path`` or else its video's audio track; the transcripts are
    committed ``commit_every`` at a time, so a long run never holds the write lock for long and
    a stopped run keeps what it did (a re-run continues with the rest).

    Args:
        transcribe: ``path -> (text, info)``; default
            :func:`meiju_core.ml.features.asr.transcribe` (Whisper, Mandarin, simplified
            characters; needs the ``asr`` extra and a model folder).
        limit: at most this many samples.
        progress: called with ``{"progress": 0..1, "message": str}``; returning ``"cancel"``
            stops after the current sample.

    Raises:
        ModelUnavailable: the default ASR model is not on this machine.
    """
    transcribe = transcribe or _whisper
    started = time.perf_counter()
    with store.read() as s:
        todo = s.execute(
            select(Sample.id, Sample.utt_id, Sample.audio_path, Sample.video_path)
            .outerjoin(Transcript, Transcript.sample_id == Sample.id)
            .where(
                Sample.project_id == project_id,
                Sample.split == "pool",
                Transcript.id.is_(None),
                (Sample.audio_path.is_not(None)) | (Sample.video_path.is_not(None)),
            )
            .order_by(Sample.id)
            .limit(limit)
        ).all()
    done, failed, pending = 0, {}, []
    for i, r in enumerate(todo, start=1):
        try:
            text, _info = transcribe(r.audio_path or r.video_path)
        except MediaError as e:
            failed[r.utt_id] = str(e)
            text = None
        if text is not None:
            pending.append({"sample_id": r.id, "original_text": text, "text": text})
        if len(pending) >= commit_every or i == len(todo):
            done += _store_transcripts(store, pending)
            pending = []
        if (
            progress
            and progress({"progress": i / len(todo), "message": f"ASR {i}/{len(todo)}"}) == "cancel"
        ):
            done += _store_transcripts(store, pending)
            break
    return TranscribeSummary(done, failed, round(time.perf_counter() - started, 3))


def _whisper(path: str) -> tuple[str, Mapping[str, Any]]:
    """The default ASR: the process-wide Whisper model (imported only when used)."""
    from meiju_core.ml.features.asr import transcribe

    return transcribe(path)


def _store_transcripts(store: Store, pending: list[dict[str, Any]]) -> int:
    if not pending:
        return 0
    with store.write() as s:
        # a transcript saved meanwhile (a person typing one) wins over the machine's
        have = set(
            s.scalars(
                select(Transcript.sample_id).where(
                    Transcript.sample_id.in_([p["sample_id"] for p in pending])
                )
            )
        )
        rows = [{**p, "source": "asr", "version": 1} for p in pending if p["sample_id"] not in have]
        if rows:
            s.execute(insert(Transcript.__table__), rows)  # type: ignore[arg-type]  # __table__ is typed FromClause
    return len(rows)


# --------------------------------------------------------------------------- .npy features


@dataclass(frozen=True)
class NpyImportSummary:
    """:func:`import_npy_features` results: ``files`` per modality, ``dims`` D per modality,
    ``missing`` the number of project samples without a file, per modality."""

    feature_set_id: int
    files: dict[str, int]
    dims: dict[str, int]
    missing: dict[str, int]


def _check_npy(path: Path, problems: Problems) -> tuple[int, int] | None:
    """Shape ``(T, D)`` of a valid feature file, or None after adding the problem."""
    try:
        array = np.load(path, allow_pickle=False, mmap_mode="r")
    except (OSError, ValueError) as e:
        problems.add(f"not a readable .npy file: {e}", path=path, kind=FeatureError)
        return None
    if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] < 1:
        problems.add(
            f"expected a 2-D (T, D) array with T, D >= 1, got shape {array.shape}",
            path=path,
            kind=FeatureError,
        )
        return None
    if not np.issubdtype(array.dtype, np.floating):
        problems.add(
            f"expected floating point values, got {array.dtype}", path=path, kind=FeatureError
        )
        return None
    finite = np.isfinite(array)
    if not finite.all():
        problems.add(
            f"{int(finite.size - finite.sum())} values are NaN or inf", path=path, kind=FeatureError
        )
        return None
    return int(array.shape[0]), int(array.shape[1])


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def import_npy_features(
    store: Store,
    project_id: int,
    root: Path | str,
    *,
    set_name: str = "meiju-npy",
    dirs: Mapping[str, str] | None = None,
    replace: bool = False,
) -> NpyImportSummary:
    """Register a folder of per-utterance features as a feature set: all files or none.

    Layout: ``<root>/<dirs[modality]>/<utt_id>.npy``, each a 2-D ``(T, D)`` floating-point
    array (the baseline's FRAME features, reference/meiju.md §2.3; default folders
    ``wav2vec``, ``ResNet-50``, ``RoBERTa``). The files stay where they are: a ``feature_file``
    row holds each one's absolute path, shape and SHA-256; consumers read them as float32.
    Every file must belong to a sample of the project; a sample may lack a file (counted in
    ``missing``). D must be the same in every file of a modality.

    Args:
        dirs: {modality: folder name}, modality in text / audio / visual;
            default :data:`BASELINE_TYPES`.
        replace: replace a feature set of the same name (its rows, not other files).

    Raises:
        FeatureError: a file that is not a readable ``.npy``, not 2-D, not floating point,
            holds NaN or inf, or whose D differs from the modality's (names the file).
        ImportDataError: a missing folder, a file of an unknown utterance, an empty folder set,
            or an existing set without ``replace``. Nothing is stored then.
        InputError: no project ``project_id``, or an unknown modality.
    """
    root = Path(root).expanduser().resolve()
    dirs = dict(BASELINE_TYPES if dirs is None else dirs)
    unknown = set(dirs) - set(MODALITIES)
    if unknown:
        raise InputError(
            f"unknown modalities {sorted(unknown)}; expected {list(MODALITIES)}", field="dirs"
        )
    with store.read() as s:
        if s.get(Project, project_id) is None:
            raise InputError(f"no project with id {project_id}")
        sample_ids = dict(
            s.execute(select(Sample.utt_id, Sample.id).where(Sample.project_id == project_id)).all()
        )
    problems = Problems()
    files: list[dict[str, Any]] = []
    dims: dict[str, int] = {}
    for modality, folder in dirs.items():
        dim, found = _scan_modality(root, folder, modality, sample_ids, project_id, problems)
        if dim is not None:
            dims[modality] = dim
            files += found
    if not files and not problems.items:
        problems.add(f"no .npy file in {[str(root / d) for d in dirs.values()]}", path=root)
    problems.raise_if_any()
    fs_id = _store_feature_set(store, project_id, set_name, root, dirs, dims, files, replace)
    counts = Counter(f["modality"] for f in files)
    return NpyImportSummary(
        feature_set_id=fs_id,
        files={m: counts[m] for m in dirs},
        dims=dims,
        missing={m: len(sample_ids) - counts[m] for m in dirs},
    )


def _scan_modality(
    root: Path,
    folder_name: str,
    modality: str,
    sample_ids: Mapping[str, int],
    project_id: int,
    problems: Problems,
) -> tuple[int | None, list[dict[str, Any]]]:
    """The ``feature_file`` rows of one modality's folder and its D (the most common one; a file
    with another D is a problem); ``(None, [])`` when the folder has no usable file."""
    folder = root / folder_name
    if not folder.is_dir():
        problems.add(f"missing the {modality} folder {folder_name!r}", path=folder, field=modality)
        return None, []
    shapes: dict[Path, tuple[int, int]] = {}
    for path in sorted(folder.glob("*.npy")):
        if path.stem not in sample_ids:
            problems.add(f"no utterance {path.stem!r} in project {project_id}", path=path)
            continue
        shape = _check_npy(path, problems)
        if shape is not None:
            shapes[path] = shape
    if not shapes:
        return None, []
    dim = Counter(d for _, d in shapes.values()).most_common(1)[0][0]
    files = []
    for path, (t, d) in shapes.items():
        if d != dim:
            problems.add(
                f"D = {d}, but the other {modality} files have D = {dim}",
                path=path,
                kind=FeatureError,
            )
            continue
        files.append(
            {
                "sample_id": sample_ids[path.stem],
                "modality": modality,
                "path": str(path),
                "shape": [t, d],
                "content_hash": _sha256(path),
            }
        )
    return dim, files


def _store_feature_set(
    store: Store,
    project_id: int,
    set_name: str,
    root: Path,
    dirs: Mapping[str, str],
    dims: Mapping[str, int],
    files: list[dict[str, Any]],
    replace: bool,
) -> int:
    with store.write() as s:
        old = s.scalars(
            select(FeatureSet).where(
                FeatureSet.project_id == project_id, FeatureSet.name == set_name
            )
        ).first()
        if old is not None and not replace:
            raise ImportDataError(
                f"project {project_id} already has a feature set {set_name!r}; pass replace=True "
                "or choose another name",
                field="set_name",
            )
        if old is not None:
            s.execute(delete(FeatureFile).where(FeatureFile.feature_set_id == old.id))
            s.delete(old)
            s.flush()
        fs = FeatureSet(
            project_id=project_id,
            name=set_name,
            extractor="meiju-npy",
            settings={"root": str(root), "dirs": dict(dirs)},
            dims=dict(dims),
            path=str(root),
        )
        s.add(fs)
        s.flush()
        s.execute(insert(FeatureFile.__table__), [{**f, "feature_set_id": fs.id} for f in files])  # type: ignore[arg-type]  # __table__ is typed FromClause
        return fs.id


# --------------------------------------------------------------------------- baseline export


@dataclass(frozen=True)
class ExportSummary:
    """:func:`export_baseline_layout` results.

    ``written``: utterances per list (Training / Validation / Testing); ``skipped``: {list:
    {utt_id: reason}}; ``flags``: the baseline options matching these features
    (``--A_type=... --input_dim_a=...``, and the corpus name).
    """

    config_path: str
    target_root: str
    feature_root: str
    written: dict[str, int]
    skipped: dict[str, dict[str, str]]
    dims: dict[str, int]
    flags: str


def export_baseline_layout(
    store: Store,
    project_id: int,
    feature_set_id: int,
    out_dir: Path | str,
    *,
    corpus_name: str | None = None,
    types: Mapping[str, str] | None = None,
    extension: str = ".mp4",
    total_cv: int = 3,
    fill_missing: bool = False,
) -> ExportSummary:
    """Write a feature set in the official baseline's layout, so the baseline trains on exactly
    these features (reference/meiju.md §2.3, ``data/multimodal_dataset.py``)::

        <out_dir>/feature/<A_type|V_type|L_type>/<utt>.npy     float32 (T, D)
        <out_dir>/target/Training_files.txt                    "<utt><ext> <emotion> <intent>"
        <out_dir>/target/Validation_files.txt                  same
        <out_dir>/target/Testing_files.txt                     "<utt><ext>"
        <out_dir>/data/config/<corpus>_config.json             target_root, feature_root, total_cv

    Copy ``data/config/<corpus>_config.json`` into the baseline's checkout (its paths are
    absolute) and pass the options in ``ExportSummary.flags``. Training and Validation take the
    train and valid samples with gold labels for both heads; Testing takes the test samples.

    Args:
        corpus_name: default the project's ``settings["meiju"]["corpus"]``, else
            ``MEIJU_balance_Mandarin``.
        types: {modality: folder name}; default :data:`BASELINE_TYPES` (the Track 1 scripts'
            ``wav2vec`` / ``ResNet-50`` / ``RoBERTa``, so only ``--input_dim_*`` change).
        extension: appended to each id in the lists; 4 characters, since the baseline strips
            ``[:-4]``.
        fill_missing: write ``(1, D)`` zeros for a missing modality (as the baseline stores
            empty text or a video without a face) instead of skipping the utterance.

    Raises:
        InputError: no such project or feature set, a feature set of another project, an
            extension that is not 4 characters, or an id with white space.
        FeatureError: a registered feature file is missing or unreadable (names it).
    """
    if len(extension) != 4 or not extension.startswith("."):
        raise InputError(
            f"the extension must be 4 characters such as '.mp4', got {extension!r}",
            field="extension",
        )
    types = dict(BASELINE_TYPES if types is None else types)
    out = Path(out_dir).expanduser().resolve()
    src = _baseline_source(store, project_id, feature_set_id, types, corpus_name)
    feature_root, target_root = out / "feature", out / "target"
    lines, skipped = _export_splits(src, types, feature_root, extension, fill_missing)
    target_root.mkdir(parents=True, exist_ok=True)
    for name, body in lines.items():
        (target_root / f"{name}_files.txt").write_text(
            "".join(f"{x}\n" for x in body), encoding="utf-8"
        )
    config_path = out / "data" / "config" / f"{src.corpus}_config.json"
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config = {
        "target_root": str(target_root),
        "feature_root": str(feature_root),
        "total_cv": total_cv,
    }
    config_path.write_text(json.dumps(config, indent=4) + "\n", encoding="utf-8")
    flags = _baseline_flags(src.corpus, types, src.dims)
    (out / "baseline_flags.txt").write_text(flags + "\n", encoding="utf-8")
    return ExportSummary(
        config_path=str(config_path),
        target_root=str(target_root),
        feature_root=str(feature_root),
        written={n: len(v) for n, v in lines.items()},
        skipped=skipped,
        dims=src.dims,
        flags=flags,
    )


@dataclass(frozen=True)
class _BaselineSource:
    """What the export reads from the store: the corpus name, D per exported modality, the
    train / valid / test samples by utterance id, their gold labels and feature files."""

    corpus: str
    dims: dict[str, int]
    samples: Sequence[Any]  # (id, utt_id, split) rows
    gold: dict[tuple[int, str], str]  # (sample id, head) -> class
    paths: dict[tuple[int, str], str]  # (sample id, modality) -> .npy path


def _baseline_source(
    store: Store,
    project_id: int,
    feature_set_id: int,
    types: Mapping[str, str],
    corpus_name: str | None,
) -> _BaselineSource:
    with store.read() as s:
        project = s.get(Project, project_id)
        fs = s.get(FeatureSet, feature_set_id)
        if project is None or fs is None or fs.project_id != project_id:
            raise InputError(f"no feature set {feature_set_id} in project {project_id}")
        corpus = (
            corpus_name
            or (project.settings or {}).get("meiju", {}).get("corpus")
            or "MEIJU_balance_Mandarin"
        )
        dims = {m: int(d) for m, d in (fs.dims or {}).items() if m in types}
        missing_dims = [m for m in types if m not in dims]
        if missing_dims:
            raise InputError(
                f"feature set {fs.name!r} has no {missing_dims} features (dims {fs.dims})",
                field="types",
            )
        samples = s.execute(
            select(Sample.id, Sample.utt_id, Sample.split)
            .where(Sample.project_id == project_id, Sample.split.in_(list(BASELINE_LISTS)))
            .order_by(Sample.utt_id)
        ).all()
        gold = {
            (g.sample_id, g.head): g.label
            for g in s.scalars(
                select(GoldLabel)
                .join(Sample, Sample.id == GoldLabel.sample_id)
                .where(Sample.project_id == project_id)
            )
        }
        paths = {
            (f.sample_id, f.modality): f.path
            for f in s.scalars(
                select(FeatureFile).where(FeatureFile.feature_set_id == feature_set_id)
            )
        }
    return _BaselineSource(corpus, dims, samples, gold, paths)


def _export_splits(
    src: _BaselineSource,
    types: Mapping[str, str],
    feature_root: Path,
    extension: str,
    fill_missing: bool,
) -> tuple[dict[str, list[str]], dict[str, dict[str, str]]]:
    """Write each exported utterance's ``.npy`` files; returns the lines of each list and the
    utterances left out with the reason, per list."""
    lines: dict[str, list[str]] = {name: [] for name in BASELINE_LISTS.values()}
    skipped: dict[str, dict[str, str]] = {name: {} for name in BASELINE_LISTS.values()}
    for r in src.samples:
        name = BASELINE_LISTS[r.split]
        if any(ch.isspace() for ch in r.utt_id):
            raise InputError(
                f"utterance id {r.utt_id!r} has white space; the baseline's lists split on spaces"
            )
        line = _list_line(r, name, src.gold, extension)
        absent = [m for m in types if (r.id, m) not in src.paths]
        if line is None:
            skipped[name][r.utt_id] = "no gold label for emotion and intent"
        elif absent and not fill_missing:
            skipped[name][r.utt_id] = f"no {', '.join(absent)} features"
        else:
            for modality, folder in types.items():
                _export_array(
                    src.paths.get((r.id, modality)),
                    src.dims[modality],
                    feature_root / folder / f"{r.utt_id}.npy",
                )
            lines[name].append(line)
    return lines, skipped


def _baseline_flags(corpus: str, types: Mapping[str, str], dims: Mapping[str, int]) -> str:
    """The baseline's command-line options for these features."""
    flag_of = {"audio": ("A", "a"), "visual": ("V", "v"), "text": ("L", "l")}
    return " ".join(
        [f"--dataset_mode=multimodal --corpus_name={corpus}"]
        + [
            f"--{flag_of[m][0]}_type={types[m]} --input_dim_{flag_of[m][1]}={dims[m]}"
            for m in ("audio", "visual", "text")
            if m in types
        ]
    )


def _list_line(
    r: Any, name: str, gold: Mapping[tuple[int, str], str], extension: str
) -> str | None:
    if name == "Testing":
        return f"{r.utt_id}{extension}"
    emotion, intent = gold.get((r.id, "emotion")), gold.get((r.id, "intent"))
    if emotion is None or intent is None:
        return None
    return f"{r.utt_id}{extension} {emotion} {intent}"


def _export_array(source: str | None, dim: int, target: Path) -> None:
    if source is None:
        array = np.zeros((1, dim), np.float32)  # the baseline's empty-text / no-face value
    else:
        try:
            array = np.load(source, allow_pickle=False).astype(np.float32, copy=False)
        except (OSError, ValueError) as e:
            raise FeatureError(f"cannot read a registered feature file: {e}", path=source) from e
    target.parent.mkdir(parents=True, exist_ok=True)
    np.save(target, np.ascontiguousarray(array), allow_pickle=False)
