"""Preprocessing speed: our PyAV readers against the ``ffmpeg`` command line, same clips, same run.

The work is what the features need from each clip (reference/meiju.md §4.1): frames 0, 30, 60, ...
as RGB arrays and the audio as 16 kHz mono float32, both in numpy.

- ours: ``meiju_core.ml.media.sample_frames(clip, 30)`` + ``meiju_core.ml.media.load_audio(clip,
  16000)``, the functions the extractors call;
- ffmpeg, one command per clip with two outputs (the fastest way the CLI does both):
  ``ffmpeg -i clip -map 0:v:0 -vf "select=not(mod(n\\,30))" -fps_mode vfr -f rawvideo
  -pix_fmt rgb24 frames.rgb -map 0:a:0 -ac 1 -ar 16000 -f f32le audio.f32`` into a RAM
  folder, then ``numpy.fromfile``;
- ffmpeg, two commands per clip piping to this process (the brief's form):
  ``ffmpeg -i clip -vf "select=not(mod(n\\,30))" -fps_mode vfr -f rawvideo -pix_fmt rgb24 -``
  and ``ffmpeg -i clip -vn -ac 1 -ar 16000 -f f32le -``.

Clip sets: the 11 GRID clips of ``demo/grid`` (MPEG-1 360x288 25 fps + MP2 44.1 kHz, 3 s each),
repeated 5 times; and a synthetic 20 s H.264 720p30 clip (x264 defaults: B-frames, GOP 250) with
48 kHz stereo AAC, written once with PyAV into a temporary folder. Each method runs once on every
clip as a warm-up, then ``--repeats`` times in turn (the methods interleaved, so a busy machine
hurts all alike); the figure is the median. Outputs are checked to agree: same frame count and
size, audio length within 0.1 %.

Usage: ``python benchmarks/bench_media.py [--repeats 5]``; needs ``ffmpeg`` on PATH (Debian:
``apt-get install -y ffmpeg``, done by ``make bench``). Writes ``benchmarks/results/media.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from meiju_core.ml import media  # noqa: E402

RESULT = ROOT / "benchmarks" / "results" / "media.json"
EVERY, SR = 30, 16000
GRID_REPEAT = 5
SELECT = f"select=not(mod(n\\,{EVERY}))"
FFMPEG_BASE = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error"]


def make_720p(path: Path, seconds: int = 20, fps: int = 30) -> Path:
    """A 1280x720 H.264 clip (moving gradient and square, x264 defaults) with 48 kHz stereo AAC."""
    w, h = 1280, 720
    yy, xx = np.mgrid[0:h, 0:w]
    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.options = {"preset": "veryfast", "crf": "23"}
        aus = c.add_stream("aac", rate=48000, layout="stereo")
        for i in range(seconds * fps):
            img = np.empty((h, w, 3), np.uint8)
            img[..., 0] = (xx + 4 * i) % 256
            img[..., 1] = (yy + 2 * i) % 256
            img[..., 2] = (xx + yy) // 8 % 256
            x0 = (16 * i) % (w - 200)
            img[200:400, x0 : x0 + 200] = (250, 250, 250)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            c.mux(vs.encode(frame))
        c.mux(vs.encode(None))
        t = np.arange(seconds * 48000) / 48000
        wave = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 0.5 * t)) / 1.5
        stereo = np.stack([wave, wave[::-1]]).astype(np.float32)
        for start in range(0, stereo.shape[1], 1024):
            chunk = np.ascontiguousarray(stereo[:, start : start + 1024])
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
            frame.sample_rate, frame.pts = 48000, start
            frame.time_base = Fraction(1, 48000)
            c.mux(aus.encode(frame))
        c.mux(aus.encode(None))
    return path


# --------------------------------------------------------------------------- the three methods


def ours(clip: Path, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    frames, _times = media.sample_frames(clip, EVERY)
    return frames, media.load_audio(clip, SR)


def ffmpeg_one_command(clip: Path, size: tuple[int, int], tmp: Path) -> tuple[np.ndarray, ...]:
    w, h = size
    rgb, pcm = tmp / "frames.rgb", tmp / "audio.f32"
    cmd = [*FFMPEG_BASE, "-y", "-i", str(clip)]
    cmd += ["-map", "0:v:0", "-vf", SELECT, "-fps_mode", "vfr"]
    cmd += ["-f", "rawvideo", "-pix_fmt", "rgb24", str(rgb)]
    cmd += ["-map", "0:a:0", "-ac", "1", "-ar", str(SR), "-f", "f32le", str(pcm)]
    subprocess.run(cmd, check=True)
    frames = np.fromfile(rgb, np.uint8).reshape(-1, h, w, 3)
    return frames, np.fromfile(pcm, np.float32)


def ffmpeg_two_pipes(clip: Path, size: tuple[int, int]) -> tuple[np.ndarray, ...]:
    w, h = size
    video = [*FFMPEG_BASE, "-i", str(clip), "-vf", SELECT, "-fps_mode", "vfr"]
    video += ["-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    audio = [*FFMPEG_BASE, "-i", str(clip), "-vn", "-ac", "1", "-ar", str(SR), "-f", "f32le", "-"]
    out_v = subprocess.run(video, check=True, capture_output=True).stdout
    out_a = subprocess.run(audio, check=True, capture_output=True).stdout
    frames = np.frombuffer(out_v, np.uint8).reshape(-1, h, w, 3)
    return frames, np.frombuffer(out_a, np.float32)


# --------------------------------------------------------------------------- memory

# VmHWM, not getrusage: a child started by vfork inherits its parent's size in ru_maxrss
OURS_PEAK = """
import sys
from meiju_core.ml import media
frames, _ = media.sample_frames(sys.argv[1], {every})
audio = media.load_audio(sys.argv[1], {sr})
print(next(x for x in open("/proc/self/status") if x.startswith("VmHWM")).split()[1])
"""


def peak_rss_mb(clip: Path, tmp: Path) -> dict[str, float]:
    """Peak resident memory of one clip's preprocessing, each method in a fresh process: ours in
    a new Python (imports included), ffmpeg (1 command) as its own ``-benchmark`` reports it,
    started from ``sh`` so that the figure is not this process's size."""
    code = OURS_PEAK.format(every=EVERY, sr=SR)
    out = subprocess.run(
        [sys.executable, "-c", code, str(clip)], capture_output=True, text=True, check=True
    )
    ours_kb = int(out.stdout.strip().splitlines()[-1])
    cmd = [*FFMPEG_BASE[:-2], "-loglevel", "info", "-nostats", "-benchmark", "-y", "-i", str(clip)]
    cmd += ["-map", "0:v:0", "-vf", SELECT, "-fps_mode", "vfr", "-f", "rawvideo"]
    cmd += ["-pix_fmt", "rgb24", str(tmp / "m.rgb"), "-map", "0:a:0", "-ac", "1", "-ar", str(SR)]
    cmd += ["-f", "f32le", str(tmp / "m.f32")]
    quoted = " ".join(f"'{c}'" for c in cmd)
    err = subprocess.run(["sh", "-c", f"{quoted}; :"], capture_output=True, text=True).stderr
    ff_kb = next(int(x.split("=")[1][:-2]) for x in err.split() if x.startswith("maxrss="))
    return {"ours": ours_kb / 1024, "ffmpeg": ff_kb / 1024}


# --------------------------------------------------------------------------- timing


def run_set(name: str, clips: list[Path], repeats: int, tmp: Path) -> dict:
    memory = peak_rss_mb(clips[0], tmp)
    sizes = {}
    for clip in set(clips):
        info = media.probe(clip)
        sizes[clip] = (info.width, info.height)
    methods = {
        "ours (PyAV)": lambda c: ours(c, sizes[c]),
        "ffmpeg CLI, 1 command": lambda c: ffmpeg_one_command(c, sizes[c], tmp),
        "ffmpeg CLI, 2 pipes": lambda c: ffmpeg_two_pipes(c, sizes[c]),
    }
    # warm-up, and check that the methods agree
    outputs = {m: [fn(c) for c in dict.fromkeys(clips)] for m, fn in methods.items()}
    ref = outputs["ours (PyAV)"]
    max_pixel_diff = 0
    for m, outs in outputs.items():
        for (f0, a0), (f1, a1) in zip(ref, outs, strict=True):
            assert f0.shape == f1.shape, (name, m, f0.shape, f1.shape)
            assert abs(len(a0) - len(a1)) <= max(2, 0.001 * len(a0)), (name, m, len(a0), len(a1))
            for a, b in zip(f0, f1, strict=True):  # frame by frame: int16 copies stay small
                max_pixel_diff = max(max_pixel_diff, int(np.abs(a.astype(np.int16) - b).max()))
    times: dict[str, list[float]] = {m: [] for m in methods}
    for _ in range(repeats):
        for m, fn in methods.items():
            t0 = time.perf_counter()
            for clip in clips:
                fn(clip)
            times[m].append(time.perf_counter() - t0)
    rows = {}
    for m, ts in times.items():
        med = statistics.median(ts)
        rows[m] = {
            "clips_per_second": len(clips) / med,
            "seconds_median": med,
            "seconds_min": min(ts),
            "seconds_max": max(ts),
            "seconds_all": ts,
        }
    f0, a0 = ref[0]
    return {
        "peak_rss_mb_one_clip": memory,
        "set": name,
        "clips": len(clips),
        "distinct_clips": len(set(clips)),
        "frames_per_clip": int(f0.shape[0]),
        "frame_size": list(f0.shape[1:3][::-1]),
        "audio_samples_per_clip": len(a0),
        "max_pixel_difference_vs_ours": max_pixel_diff,
        "methods": rows,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--make-720p", metavar="PATH", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.make_720p:
        make_720p(Path(args.make_720p))
        return 0
    if shutil.which("ffmpeg") is None:
        print("ffmpeg is not on PATH: apt-get install -y ffmpeg", file=sys.stderr)
        return 1
    ffmpeg_version = subprocess.run(
        ["ffmpeg", "-version"], capture_output=True, text=True, check=True
    ).stdout.split("\n")[0]
    load_before = os.getloadavg()[0]
    grid = sorted((ROOT / "demo" / "grid").glob("*.mpg"))
    tmp_dir = Path(tempfile.mkdtemp(prefix="meiju-bench-media-", dir="/dev/shm"))
    try:
        t0 = time.perf_counter()
        clip720 = tmp_dir / "synthetic_720p30_h264.mp4"
        # in a child process, so that the encoder's memory does not count as ours
        subprocess.run([sys.executable, __file__, "--make-720p", str(clip720)], check=True)
        print(f"wrote {clip720.name} in {time.perf_counter() - t0:.1f} s", flush=True)
        sets = [
            run_set("GRID (11 clips x 5)", grid * GRID_REPEAT, args.repeats, tmp_dir),
            run_set("720p H.264 20 s", [clip720], args.repeats, tmp_dir),
        ]
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    load_after = os.getloadavg()[0]

    print(f"\n{'set':22s} {'method':24s} {'clips/s':>9s} {'median s':>9s} {'min s':>7s}")
    for s in sets:
        for m, r in s["methods"].items():
            print(
                f"{s['set']:22s} {m:24s} {r['clips_per_second']:9.2f} "
                f"{r['seconds_median']:9.3f} {r['seconds_min']:7.3f}"
            )
    peak_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for s in sets:
        m = s["peak_rss_mb_one_clip"]
        print(
            f"peak RSS, one clip of {s['set']}: ours {m['ours']:.0f} MB (Python, numpy and PyAV "
            f"included), ffmpeg {m['ffmpeg']:.0f} MB"
        )
    print(f"peak RSS of this benchmark process: {peak_self:.0f} MB")

    summary = []
    for s in sets:
        m = s["methods"]
        best_ff = max(
            m["ffmpeg CLI, 1 command"],
            m["ffmpeg CLI, 2 pipes"],
            key=lambda r: r["clips_per_second"],
        )
        ratio = m["ours (PyAV)"]["clips_per_second"] / best_ff["clips_per_second"]
        summary.append(
            {
                "figure": f"Preprocessing {s['set']}: ours / ffmpeg CLI",
                "value": (
                    f"{m['ours (PyAV)']['clips_per_second']:.1f} / "
                    f"{best_ff['clips_per_second']:.1f} clips/s ({ratio:.2f}x)"
                ),
                "goal": "ours >= ffmpeg",
                "note": (
                    f"frames 1 in 30 as RGB + 16 kHz mono audio; the faster ffmpeg form; "
                    f"median of {args.repeats}, {os.cpu_count()} CPU cores; peak RSS "
                    f"{s['peak_rss_mb_one_clip']['ours']:.0f} / "
                    f"{s['peak_rss_mb_one_clip']['ffmpeg']:.0f} MB"
                ),
            }
        )
    result = {
        "benchmark": "media",
        "summary": summary,
        "sets": sets,
        "ffmpeg": ffmpeg_version,
        "pyav": {"version": av.__version__, "libavcodec": list(av.library_versions["libavcodec"])},
        "repeats": args.repeats,
        "memory": {"peak_rss_mb_benchmark_process": peak_self},
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_1min": {"before": load_before, "after": load_after},
        },
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2, default=float), encoding="utf-8")
    print(f"wrote {RESULT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
