"""Throughput of each builtin extractor on real data, and of the extraction job around them.

Times the functions the product runs (``meiju_core.ml.features.builtin``, ``meiju_core.services.extraction``):

- text: ``TextLSA.transform`` per utterance, on the CPED transcripts of ``demo/cped`` (the model
  fitted on them first; the fit is timed once too);
- audio: ``log_mel`` per clip, on the decoded 16 kHz audio of the 11 GRID clips (3 s) and the 5
  Mandarin recordings of ``demo/zh_speech``;
- visual: ``face_hog`` per clip, on the frames 0, 30, 60 of each GRID clip (decoded beforehand);
- whole: ``BuiltinExtractor.extract`` per GRID clip: decoding, log-mel and face HOG, plus the
  transcript's LSA vectors;
- the job: ``extraction.extract_features`` on a project of the GRID clips (each listed 12 times,
  132 samples with video) with 1 worker and with 2, files and rows written; and once on the whole
  demo data (CPED + GRID + Mandarin, about 11k samples, mostly text).

Each timed call is warmed up first; the figures are medians of ``--repeats`` runs (the job: 3
runs per worker count, interleaved, the best run shown too, as the machine may be shared).
Prints a table and writes ``benchmarks/results/features.json`` with peak memory.

Usage: ``python benchmarks/bench_features.py [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from db import Store  # noqa: E402
from db.models import Project  # noqa: E402
from meiju_core.io.cped import cped_rows, grid_rows, zh_speech_rows  # noqa: E402
from meiju_core.io.tables import bulk_insert  # noqa: E402
from meiju_core.ml import media  # noqa: E402
from meiju_core.ml.features.builtin import BuiltinExtractor, TextLSA, face_hog, log_mel  # noqa: E402
from meiju_core.schema import LabelSchema  # noqa: E402
from meiju_core.services import extraction  # noqa: E402
from meiju_core.settings import Settings  # noqa: E402

RESULT = ROOT / "benchmarks" / "results" / "features.json"
DEMO = ROOT / "demo"
GRID_COPIES = 12
JOB_REPEATS = 3  # runs of the job per worker count


class TreePss:
    """Peak memory and CPU time of this process and all its descendants (the forkserver and the
    workers), sampled every 0.1 s from ``/proc`` (Linux). Memory is the sum of proportional set
    sizes (PSS: a page shared by k processes counts 1/k to each, so forked workers are not
    counted twice); CPU is user + system seconds used while inside the ``with``."""

    def __init__(self) -> None:
        self.peak_mb = 0.0
        self._ticks: dict[int, int] = {}
        self._base: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreePss:
        self.sample()
        self._base = dict(self._ticks)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    @property
    def cpu_seconds(self) -> float:
        used = sum(t - self._base.get(pid, 0) for pid, t in self._ticks.items())
        return used / os.sysconf("SC_CLK_TCK")

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.peak_mb = max(self.peak_mb, self.sample())

    def sample(self) -> float:
        stats: dict[int, list[str]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        stats[int(entry)] = f.read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
        tree, frontier = {os.getpid()}, [os.getpid()]
        while frontier:
            pid = frontier.pop()
            kids = [c for c, st in stats.items() if int(st[1]) == pid and c not in tree]
            tree.update(kids)
            frontier += kids
        total_kb = 0
        for pid in tree:
            if pid in stats:  # utime + stime, in clock ticks
                ticks = int(stats[pid][11]) + int(stats[pid][12])
                self._ticks[pid] = max(self._ticks.get(pid, 0), ticks)
            try:
                with open(f"/proc/{pid}/smaps_rollup") as f:
                    total_kb += next(int(x.split()[1]) for x in f if x.startswith("Pss:"))
            except (OSError, StopIteration):
                continue
        return total_kb / 1024


def timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def row(name: str, items: int, unit: str, times: list[float], note: str = "") -> dict:
    med = statistics.median(times)
    return {
        "extractor": name,
        "items": items,
        "unit": unit,
        "per_second": items / med,
        "ms_per_item": 1000 * med / items,
        "seconds_median": med,
        "seconds_all": times,
        "note": note,
    }


def job_run(rows, workers: int, tmp: Path) -> tuple[float, int, float, float]:
    """One extraction job on a fresh store holding ``rows``; returns (seconds, files written,
    peak PSS in MB and CPU seconds of this process and its workers together)."""
    data = Path(tempfile.mkdtemp(prefix=f"w{workers}-", dir=tmp))
    settings = Settings.load(data_dir=str(data), database_url="")
    store = Store(settings.database_url)
    store.upgrade()
    with store.write() as s:
        p = Project(name="bench", label_schema=LabelSchema.meiju_track1().to_dict())
        s.add(p)
        s.flush()
        bulk_insert(s, p.id, rows)
        pid = p.id
    events = []
    with TreePss() as mem:
        t0 = time.perf_counter()
        extraction.extract_features(
            store, settings, project_id=pid, workers=workers, progress=events.append
        )
        seconds = time.perf_counter() - t0
    store.dispose()
    shutil.rmtree(data, ignore_errors=True)
    files = int(events[-1]["message"].split(" files written")[0].split()[-1])
    return seconds, files, mem.peak_mb, mem.cpu_seconds


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    cped = cped_rows(DEMO / "cped" / "valid_split.csv")
    grid = grid_rows(DEMO / "grid")
    speech = zh_speech_rows(DEMO / "zh_speech")
    texts = [r.text or "" for r in cped]
    results = []

    # --- text
    t0 = time.perf_counter()
    lsa = TextLSA().fit(texts)
    fit_s = time.perf_counter() - t0
    sample = texts[:2000]
    ts = timed(lambda: [lsa.transform(t) for t in sample], args.repeats)
    results.append(row("text: TextLSA.transform", len(sample), "utterance", ts, "CPED transcripts"))
    print(f"LSA fit on {len(texts)} transcripts: {fit_s:.1f} s", flush=True)

    # --- audio
    waves = [media.load_audio(r.video_path, 16000) for r in grid]
    waves += [media.load_audio(r.audio_path, 16000) for r in speech]
    seconds_audio = sum(len(w) for w in waves) / 16000
    ts = timed(lambda: [log_mel(w) for w in waves], args.repeats)
    results.append(
        row(
            "audio: log_mel",
            len(waves),
            "clip",
            ts,
            f"11 GRID clips + 5 Mandarin recordings, {seconds_audio:.0f} s of audio",
        )
    )

    # --- visual
    frames = [media.sample_frames(r.video_path, 30)[0] for r in grid]
    n_frames = sum(len(f) for f in frames)
    ts = timed(lambda: [face_hog(f) for f in frames], args.repeats)
    results.append(
        row("visual: face_hog", len(frames), "clip", ts, f"GRID, {n_frames} frames (1 in 30)")
    )

    # --- the whole builtin extractor
    extractor = BuiltinExtractor(lsa)
    samples = [{"text": r.text, "video_path": r.video_path} for r in grid]
    ts = timed(lambda: [extractor.extract(s) for s in samples], args.repeats)
    results.append(
        row(
            "all: BuiltinExtractor.extract",
            len(samples),
            "clip",
            ts,
            "GRID: decode + log-mel + face HOG + LSA, one process",
        )
    )

    # --- the job, 1 and 2 workers
    tmp = Path(tempfile.mkdtemp(prefix="meiju-bench-features-"))
    copies = [replace(r, utt_id=f"{r.utt_id}_{k}") for k in range(GRID_COPIES) for r in grid]
    job_rows: dict[int, dict] = {}
    job_peak: dict[int, float] = {}
    job_cpu: dict[int, float] = {}
    try:
        runs: dict[int, list] = {1: [], 2: []}
        for _ in range(JOB_REPEATS):  # interleaved: both see the same load
            for workers in (1, 2):
                runs[workers].append(job_run(copies, workers, tmp))
        for workers in (1, 2):
            ts = [r[0] for r in runs[workers]]
            job_peak[workers] = max(r[2] for r in runs[workers])
            job_cpu[workers] = statistics.median(r[3] for r in runs[workers]) / len(copies)
            job_rows[workers] = row(
                f"job: extract_features, {workers} worker{'s' if workers > 1 else ''}",
                len(copies),
                "clip",
                ts,
                f"{len(copies)} GRID samples, {runs[workers][0][1]} files and rows written, "
                f"{1000 * job_cpu[workers]:.0f} ms CPU per clip (all processes)",
            )
            results.append(job_rows[workers])
        demo_rows = cped + grid + speech
        demo_s, demo_files, job_peak[0], _cpu = job_run(demo_rows, 2, tmp)
        results.append(
            row(
                "job: extract_features, whole demo data",
                len(demo_rows),
                "sample",
                [demo_s],
                f"CPED + GRID + Mandarin, 2 workers, {demo_files} files and rows, one run",
            )
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    load_after = os.getloadavg()[0]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print(f"\n{'extractor':42s} {'items':>6s} {'per second':>11s} {'ms each':>9s}")
    for r in results:
        print(
            f"{r['extractor']:42s} {r['items']:6d} {r['per_second']:9.1f}/{r['unit'][0]} "
            f"{r['ms_per_item']:9.2f}"
        )
    print(
        f"peak RSS: this process {peak:.0f} MB; during the job (process + workers, PSS summed): "
        f"1 worker {job_peak[1]:.0f} MB, 2 workers {job_peak[2]:.0f} MB, "
        f"whole demo {job_peak[0]:.0f} MB"
    )

    by = {r["extractor"]: r for r in results}
    speedup = job_rows[2]["per_second"] / job_rows[1]["per_second"]
    best = {w: len(copies) / min(job_rows[w]["seconds_all"]) for w in (1, 2)}
    cores = os.cpu_count()
    summary = [
        {
            "figure": "Builtin text: LSA vectors per utterance",
            "value": f"{by['text: TextLSA.transform']['per_second']:.0f} utterances/s",
            "goal": "",
            "note": f"CPED transcripts, 1 core; fit on {len(texts)} takes {fit_s:.1f} s",
        },
        {
            "figure": "Builtin audio: log-mel per clip",
            "value": f"{by['audio: log_mel']['per_second']:.0f} clips/s",
            "goal": "",
            "note": "3-8 s clips, already decoded",
        },
        {
            "figure": "Builtin visual: face HOG per clip",
            "value": f"{by['visual: face_hog']['per_second']:.0f} clips/s",
            "goal": "",
            "note": "GRID, 3 frames a clip, already decoded",
        },
        {
            "figure": "Builtin extractor, whole clip (decode + all modalities)",
            "value": f"{by['all: BuiltinExtractor.extract']['per_second']:.1f} clips/s",
            "goal": "",
            "note": "GRID 3 s clips, one process",
        },
        {
            "figure": "Extraction job, 1 / 2 workers",
            "value": (
                f"{job_rows[1]['per_second']:.1f} / {job_rows[2]['per_second']:.1f} clips/s "
                f"({speedup:.2f}x; best runs {best[1]:.1f} / {best[2]:.1f})"
            ),
            "goal": "",
            "note": (
                f"{len(copies)} GRID samples, files + rows written, worker start included; "
                f"{cores} CPU cores shared (load average {load_before:.1f} at the start); "
                f"CPU per clip {1000 * job_cpu[1]:.0f} / {1000 * job_cpu[2]:.0f} ms; "
                f"peak memory {job_peak[1]:.0f} / {job_peak[2]:.0f} MB (PSS, workers included)"
            ),
        },
        {
            "figure": "Extraction job, whole demo data",
            "value": f"{by['job: extract_features, whole demo data']['seconds_median']:.0f} s",
            "goal": "",
            "note": f"{len(demo_rows)} samples ({demo_files} files), 2 workers, one run",
        },
    ]
    result = {
        "benchmark": "features",
        "summary": summary,
        "extractors": results,
        "lsa_fit_seconds": fit_s,
        "job_cpu_seconds_per_clip": {"1 worker": job_cpu[1], "2 workers": job_cpu[2]},
        "repeats": args.repeats,
        "memory": {
            "peak_rss_mb": peak,
            "job_peak_pss_mb_with_workers": {
                "1 worker": job_peak[1],
                "2 workers": job_peak[2],
                "whole demo, 2 workers": job_peak[0],
            },
        },
        "machine": {
            "cpus": cores,
            "platform": platform.platform(),
            "numpy": np.__version__,
            "load_average_1min": {"before": load_before, "after": load_after},
        },
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2, default=float), encoding="utf-8")
    print(f"wrote {RESULT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
