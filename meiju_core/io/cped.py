"""The demo project, built from real data shipped in ``demo/`` (provenance in ``demo/README.md``).

Three sources, one project with the MEIJU Track I label schema:

- ``demo/cped/valid_split.csv``: 11,137 real Chinese TV-series utterances from CPED (Chen et al.,
  2022, arXiv 2205.14727) with human emotion and dialogue-act labels, mapped onto the MEIJU classes
  by the tables below (a CPED class with no MEIJU counterpart gives no label for that head).
- ``demo/grid/``: 11 GRID speaking-face clips (English, 3.0 s) with their sentences.
- ``demo/zh_speech/``: 5 Mandarin WAVs with reference or machine transcripts.

Splits are drawn by whole dialogue (``Dialogue_ID``), so no dialogue is in two splits. The
dialogues are shuffled with ``seed``; each in turn joins the first of test, valid, train whose
count of *labelled* utterances (at least one mapped label) it brings closer to the target
(``SPLIT_TARGETS``); a dialogue that fits none, or has no labelled utterance, goes to the pool.
Each labelled split thus lands within half a dialogue (at most 15 utterances) of its target.
Utterances of a labelled split keep their mapped gold labels (source ``cped``); one without a
mapped label for a head has no ``gold_label`` row for that head (and may have none at all).
The pool has no gold labels: its mapped labels and the raw CPED ones go to ``Sample.withheld``
(``{"emotion", "intent", "cped_emotion", "cped_da"}``, None where unmapped), which the UI never
shows and benchmarks use to score pseudo-labels. GRID and WAV samples join the pool with real
media and ``withheld == {}``.
"""

from __future__ import annotations

import csv
import io
import random
import time
import wave
from collections import Counter, defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import distinct, func, select
from sqlalchemy.orm import Session

from db import Store
from db.models import SPLITS, GoldLabel, Project, Sample
from meiju_core.errors import ImportDataError
from meiju_core.io.reading import read_utf8
from meiju_core.io.tables import SampleRow, bulk_insert
from meiju_core.schema import LabelSchema

DEMO_DIR = Path(__file__).resolve().parents[2] / "demo"
DEFAULT_SEED = 336

# CPED Emotion -> MEIJU emotion (None: no emotion label). Every CPED class is listed.
CPED_EMOTION_TO_MEIJU: dict[str, str | None] = {
    "happy": "happy",
    "grateful": "happy",
    "astonished": "surprise",
    "sadness": "sad",
    "depress": "sad",
    "disgust": "disgust",
    "anger": "anger",
    "fear": "fear",
    "worried": "fear",
    "neutral": "neutral",
    "negative-other": None,
    "positive-other": None,
    "relaxed": None,
}

# CPED dialogue act (column DA) -> MEIJU intent (None: no intent label). Every CPED act is listed.
# MEIJU's encouraging and wishing have no source, so they have 0 samples in the demo.
CPED_DA_TO_MEIJU_INTENT: dict[str, str | None] = {
    "question": "questioning",
    "agreement": "agreeing",
    "acknowledge": "acknowledging",
    "comfort": "consoling",
    "command": "suggesting",
    "statement-non-opinion": "neutral",
    "statement-opinion": "neutral",
    "answer": "neutral",
    "other": None,
    "quotation": None,
    "disagreement": None,
    "interjection": None,
    "irony": None,
    "thanking": None,
    "apology": None,
    "reject": None,
    "greeting": None,
    "appreciation": None,
    "conventional-closing": None,
}

# Labelled utterances per split, filled in this order (near MEIJU Track I Mandarin: 2294/324/643).
SPLIT_TARGETS: dict[str, int] = {"test": 640, "valid": 320, "train": 2300}

CPED_COLUMNS = ("Dialogue_ID", "Utterance_ID", "Emotion", "DA", "Utterance")
GRID_DURATION_S = 3.0


def build_demo(
    store: Store,
    *,
    demo_dir: Path = DEMO_DIR,
    project_name: str = "demo",
    seed: int = DEFAULT_SEED,
) -> dict[str, Any]:
    """Create the demo project from ``demo_dir`` and return its summary (see ``demo_summary``).

    Idempotent: when a project named ``project_name`` exists, it is left untouched and its summary
    is returned (``created`` False; its ``seed`` is the one it was built with). Everything is
    inserted in one write transaction (Core executemany; 1-2 s for the 11k utterances).

    Raises ``ImportDataError`` naming the file when a demo file is missing or malformed, or when
    CPED holds a class the mapping tables do not list; nothing is stored then.
    """
    with store.read() as s:
        project = s.scalars(select(Project).where(Project.name == project_name)).first()
        if project is not None:
            return demo_summary(s, project)
    started = time.perf_counter()
    demo_dir = Path(demo_dir).resolve()
    rows = cped_rows(demo_dir / "cped" / "valid_split.csv", seed=seed)
    rows += grid_rows(demo_dir / "grid") + zh_speech_rows(demo_dir / "zh_speech")
    with store.write() as s:
        project = s.scalars(select(Project).where(Project.name == project_name)).first()
        if project is None:
            project = Project(
                name=project_name,
                label_schema=LabelSchema.meiju_track1().to_dict(),
                settings={"demo": {"seed": seed, "split_targets": SPLIT_TARGETS}},
            )
            s.add(project)
            s.flush()
            bulk_insert(s, project.id, rows)
            created = True
        else:  # built by someone else since our first look
            created = False
        summary = demo_summary(s, project)
    summary["created"] = created
    summary["seconds"] = round(time.perf_counter() - started, 3)
    return summary


# --------------------------------------------------------------------------- CPED


def map_cped(emotion: str, da: str) -> tuple[str | None, str | None]:
    """(MEIJU emotion, MEIJU intent) of one CPED utterance; None where there is no counterpart.

    Raises ``KeyError`` for a CPED class the tables do not list.
    """
    return CPED_EMOTION_TO_MEIJU[emotion], CPED_DA_TO_MEIJU_INTENT[da]


def assign_splits(
    labelled: Mapping[str, int],
    *,
    seed: int = DEFAULT_SEED,
    targets: Mapping[str, int] = SPLIT_TARGETS,
) -> dict[str, str]:
    """Split whole dialogues: {dialogue id: split}.

    ``labelled`` maps each dialogue to its number of labelled utterances. Dialogues are shuffled
    with ``seed``; each joins the first split in ``targets`` order whose count it brings strictly
    closer to the target, else the pool.
    """
    order = sorted(labelled)
    random.Random(seed).shuffle(order)
    counts = dict.fromkeys(targets, 0)
    assignment: dict[str, str] = {}
    for dialogue in order:
        n = labelled[dialogue]
        assignment[dialogue] = "pool"
        for split, target in targets.items():
            if abs(counts[split] + n - target) < abs(counts[split] - target):
                assignment[dialogue] = split
                counts[split] += n
                break
    return assignment


def _read_cped(path: Path) -> list[dict[str, str]]:
    reader = csv.DictReader(io.StringIO(read_utf8(path), newline=""))
    missing = [c for c in CPED_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise ImportDataError(
            f"missing CPED columns {missing}; columns found: {reader.fieldnames}",
            path=str(path),
            row=1,
        )
    records = list(reader)
    for row, r in enumerate(records, start=2):
        for column, table in (("Emotion", CPED_EMOTION_TO_MEIJU), ("DA", CPED_DA_TO_MEIJU_INTENT)):
            if r[column] not in table:
                raise ImportDataError(
                    f"CPED class {r[column]!r} is not in the demo mapping; expected one of "
                    f"{list(table)}",
                    path=str(path),
                    row=row,
                    field=column,
                )
    return records


def cped_rows(path: Path, *, seed: int = DEFAULT_SEED) -> list[SampleRow]:
    """The CPED utterances of ``path`` as sample rows, split by dialogue with ``seed``."""
    records = _read_cped(path)
    labelled: Counter[str] = Counter()
    for r in records:
        labelled[r["Dialogue_ID"]] += any(map_cped(r["Emotion"], r["DA"]))
    splits = assign_splits(labelled, seed=seed)
    return [_cped_row(r, splits[r["Dialogue_ID"]]) for r in records]


def _cped_row(r: dict[str, str], split: str) -> SampleRow:
    emotion, intent = map_cped(r["Emotion"], r["DA"])
    mapped = {"emotion": emotion, "intent": intent}
    pool = split == "pool"
    return SampleRow(
        utt_id=r["Utterance_ID"],
        split=split,
        source="cped",
        group_id=r["Dialogue_ID"],
        text=r["Utterance"],
        text_source="official",
        labels={} if pool else {h: c for h, c in mapped.items() if c is not None},
        label_source="cped",
        withheld={**mapped, "cped_emotion": r["Emotion"], "cped_da": r["DA"]} if pool else None,
    )


# --------------------------------------------------------------------------- media


def _read_tsv(path: Path, columns: tuple[str, ...]) -> list[dict[str, str]]:
    reader = csv.DictReader(io.StringIO(read_utf8(path), newline=""), delimiter="\t")
    missing = [c for c in columns if c not in (reader.fieldnames or [])]
    if missing:
        raise ImportDataError(
            f"missing columns {missing}; columns found: {reader.fieldnames}", path=str(path), row=1
        )
    return list(reader)


def _media_file(folder: Path, name: str, tsv: Path, row: int) -> Path:
    media = (folder / name).resolve()
    if not media.is_file():
        raise ImportDataError(f"missing media file {media}", path=str(tsv), row=row, field="file")
    return media


def grid_rows(folder: Path) -> list[SampleRow]:
    """The GRID clips listed in ``folder/transcripts.tsv``: pool samples with video, English text."""
    tsv = folder / "transcripts.tsv"
    out = []
    for row, r in enumerate(_read_tsv(tsv, ("file", "transcript")), start=2):
        video = _media_file(folder, r["file"], tsv, row)
        out.append(
            SampleRow(
                utt_id=video.stem,
                split="pool",
                source="grid",
                text=r["transcript"],
                text_source="official",
                video_path=str(video),
                duration_s=GRID_DURATION_S,
                withheld={},
            )
        )
    return out


def wav_duration(path: Path) -> float:
    """Length of a PCM WAV in seconds, from its header (stdlib ``wave``)."""
    try:
        with wave.open(str(path), "rb") as w:
            return w.getnframes() / w.getframerate()
    except (wave.Error, EOFError) as e:
        raise ImportDataError(f"not a readable PCM WAV file: {e}", path=str(path)) from None


def zh_speech_rows(folder: Path) -> list[SampleRow]:
    """The Mandarin WAVs listed in ``folder/transcripts.tsv``: pool samples with audio only.

    A transcript the tsv marks as ``machine`` gets source ``asr``; a (partial) reference gets
    ``official``.
    """
    tsv = folder / "transcripts.tsv"
    out = []
    for row, r in enumerate(_read_tsv(tsv, ("file", "reference_or_asr", "text")), start=2):
        audio = _media_file(folder, r["file"], tsv, row)
        machine = r["reference_or_asr"].strip().lower().startswith("machine")
        out.append(
            SampleRow(
                utt_id=audio.stem,
                split="pool",
                source="zh_speech",
                text=r["text"],
                text_source="asr" if machine else "official",
                audio_path=str(audio),
                duration_s=round(wav_duration(audio), 3),
                withheld={},
            )
        )
    return out


# --------------------------------------------------------------------------- summary


def demo_summary(s: Session, project: Project) -> dict[str, Any]:
    """Counts of a project: samples per split and per source, labelled samples per split, gold
    labels per split, head and class (every class listed, 0 included), and the pool's withheld
    labels per head and class."""
    schema = LabelSchema.from_dict(project.label_schema)
    in_project = Sample.project_id == project.id
    splits = dict.fromkeys(SPLITS, 0)
    splits |= dict(
        s.execute(select(Sample.split, func.count()).where(in_project).group_by(Sample.split)).all()
    )
    sources = dict(
        s.execute(
            select(Sample.source, func.count()).where(in_project).group_by(Sample.source)
        ).all()
    )
    gold = select(Sample.split, GoldLabel.head, GoldLabel.label, func.count()).join(
        GoldLabel, GoldLabel.sample_id == Sample.id
    )
    labels: dict[str, dict[str, dict[str, int]]] = {
        split: {h: dict.fromkeys(schema.classes(h), 0) for h in schema.head_names}
        for split in SPLITS
    }
    for split, head, label, n in s.execute(
        gold.where(in_project).group_by(Sample.split, GoldLabel.head, GoldLabel.label)
    ):
        labels[split][head][label] = n
    labelled = dict.fromkeys(SPLITS, 0)
    labelled |= dict(
        s.execute(
            select(Sample.split, func.count(distinct(Sample.id)))
            .join(GoldLabel, GoldLabel.sample_id == Sample.id)
            .where(in_project)
            .group_by(Sample.split)
        ).all()
    )
    withheld: dict[str, dict[str, int]] = defaultdict(Counter)
    for w in s.scalars(select(Sample.withheld).where(in_project, Sample.split == "pool")):
        for head in schema.head_names:
            if w and w.get(head):
                withheld[head][w[head]] += 1
    return {
        "project_id": project.id,
        "project": project.name,
        "seed": (project.settings or {}).get("demo", {}).get("seed"),
        "created": False,
        "samples": sum(splits.values()),
        "splits": splits,
        "labelled": labelled,
        "sources": sources,
        "labels": labels,
        "withheld": {h: {c: withheld[h][c] for c in schema.classes(h)} for h in schema.head_names},
    }
