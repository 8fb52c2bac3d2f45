"""meiju_core.ml.media on real GRID clips (MPEG-1 + MP2, 3 s, 25 fps) and Mandarin WAVs (16 kHz)."""

from __future__ import annotations

import shutil
import wave
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from meiju_core.errors import MediaError
from meiju_core.ml import media
from meiju_core.ml.media import load_audio, probe, sample_frames

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
GRID = sorted((DATA / "grid_samples").glob("*.mpg"))
WAVS = sorted((DATA / "zh_speech_samples").glob("*.wav"))
CLIP = DATA / "grid_samples" / "bbaf2n.mpg"


def test_real_data_is_there():
    assert len(GRID) == 11 and len(WAVS) == 5


def make_video(path: Path, pts_ms: list[int], *, size=(64, 48), codec="libx264") -> Path:
    """An H.264 MP4 (with B-frames) whose frame i is flat grey at level 8·i (mod 256), shown at
    ``pts_ms[i]`` milliseconds: irregular gaps make it variable frame rate."""
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=25)
        s.width, s.height, s.pix_fmt = size[0], size[1], "yuv420p"
        s.time_base = Fraction(1, 1000)
        s.codec_context.time_base = Fraction(1, 1000)
        for i, pts in enumerate(pts_ms):
            img = np.full((size[1], size[0], 3), (8 * i) % 256, dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, 1000)
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


# --- probe ---------------------------------------------------------------------------------------


def test_probe_grid_clip():
    info = probe(CLIP)
    assert info.has_video and info.has_audio
    assert info.duration == pytest.approx(3.0, abs=0.05)
    assert info.fps == 25.0 and (info.width, info.height) == (360, 288)
    assert info.sample_rate == 44100


def test_probe_wav_has_no_video():
    info = probe(WAVS[0])
    assert info.has_audio and not info.has_video
    assert info.fps is None and info.width is None
    assert info.sample_rate == 16000 and info.channels == 1


# --- frames --------------------------------------------------------------------------------------


@pytest.mark.parametrize("clip", GRID, ids=lambda p: p.stem)
def test_one_frame_in_30_from_each_grid_clip(clip):
    frames, times = sample_frames(clip, every=30)
    assert frames.dtype == np.uint8 and frames.shape == (3, 288, 360, 3)  # frames 0, 30, 60 of 75
    assert times.dtype == np.float64
    np.testing.assert_allclose(times, [0.0, 1.2, 2.4], atol=1e-6)
    assert frames.std() > 10  # real pictures, not blank


def test_every_and_size():
    frames, times = sample_frames(CLIP, every=1)
    assert len(frames) == 75 and np.allclose(np.diff(times), 0.04)
    assert len(sample_frames(CLIP, every=25)[0]) == 3
    assert len(sample_frames(CLIP, every=100)[0]) == 1
    small, _ = sample_frames(CLIP, every=30, size=(112, 96))
    assert small.shape == (3, 96, 112, 3)
    # the kept frames are the same frames, whatever the stride
    np.testing.assert_array_equal(sample_frames(CLIP, every=30)[0], frames[::30])
    with pytest.raises(ValueError):
        sample_frames(CLIP, every=0)


def test_variable_frame_rate_picks_by_frame_index(tmp_path):
    """Irregular timestamps and B-frames: frames 0, 7, 14, ... are kept, whatever their time."""
    rng = np.random.default_rng(0)
    pts = np.cumsum(rng.integers(10, 120, size=30)).tolist()
    pts = [0] + pts[:-1]
    path = make_video(tmp_path / "vfr.mp4", pts)
    frames, times = sample_frames(path, every=7)
    assert len(frames) == 5  # frames 0, 7, 14, 21, 28 of 30
    np.testing.assert_allclose(times, [pts[i] / 1000 for i in range(0, 30, 7)], atol=1e-3)
    levels = frames.reshape(len(frames), -1).mean(axis=1)
    np.testing.assert_allclose(levels, [8 * i for i in range(0, 30, 7)], atol=4)


def test_skipping_decode_gives_the_same_frames(tmp_path, monkeypatch):
    """The fast path (non-reference frames left undecoded) equals decoding every frame."""
    from meiju_core.ml import media

    path = make_video(tmp_path / "cfr.mp4", [40 * i for i in range(32)])
    fast = sample_frames(path, every=5)
    monkeypatch.setattr(media, "_target_pts", lambda *_: None)  # force: decode all, count frames
    slow = sample_frames(path, every=5)
    np.testing.assert_array_equal(fast[0], slow[0])
    np.testing.assert_array_equal(fast[1], slow[1])
    assert len(fast[0]) == 7


# --- audio ---------------------------------------------------------------------------------------


def test_audio_from_a_grid_clip_is_16k_mono():
    audio = load_audio(CLIP)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert len(audio) == pytest.approx(probe(CLIP).duration * 16000, rel=0.01)
    assert 0.01 < np.abs(audio).max() < 2.0


@pytest.mark.parametrize("wav", WAVS, ids=lambda p: p.stem)
def test_audio_from_mandarin_wavs(wav):
    audio = load_audio(wav)
    with wave.open(str(wav)) as w:
        n = w.getnframes()
        expected = np.frombuffer(w.readframes(n), dtype="<i2").astype(np.float32) / 32768
    assert audio.shape == (n,)  # already 16 kHz mono: same samples
    np.testing.assert_allclose(audio, expected, atol=1e-4)


def test_audio_resampled_to_another_rate():
    audio = load_audio(WAVS[0], sr=8000)
    assert len(audio) == pytest.approx(probe(WAVS[0]).duration * 8000, abs=2)


# --- every failure is a MediaError that names the file --------------------------------------------


def raises_media_error(fn, path, match):
    with pytest.raises(MediaError, match=match) as e:
        fn(path)
    assert e.value.path == str(path) and str(path) in str(e.value)


ALL = (probe, sample_frames, load_audio)


@pytest.mark.parametrize("fn", ALL)
def test_missing_file(tmp_path, fn):
    raises_media_error(fn, tmp_path / "nope.mp4", "not found")


@pytest.mark.parametrize("fn", ALL)
def test_directory(tmp_path, fn):
    raises_media_error(fn, tmp_path, "not a regular file")


@pytest.mark.parametrize("fn", ALL)
def test_empty_file(tmp_path, fn):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    raises_media_error(fn, empty, "empty file")


@pytest.mark.parametrize("fn", ALL)
def test_random_bytes(tmp_path, fn):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).bytes(50_000))
    raises_media_error(fn, junk, "cannot open")


def test_truncated_grid_clip(tmp_path):
    cut = tmp_path / "cut.mpg"
    cut.write_bytes(CLIP.read_bytes()[:3000])  # the first pack: half a picture, no audio
    raises_media_error(sample_frames, cut, "corrupt data")
    raises_media_error(load_audio, cut, "no audio stream")


def test_grid_clip_with_garbage_in_the_middle(tmp_path):
    data = bytearray(CLIP.read_bytes())
    data[20_000:-20_000] = np.random.default_rng(1).bytes(len(data) - 40_000)
    bad = tmp_path / "garbage.mpg"
    bad.write_bytes(bytes(data))
    raises_media_error(sample_frames, bad, "damaged data")
    raises_media_error(load_audio, bad, "cannot decode")


def test_grid_clip_with_flipped_bytes(tmp_path):
    data = bytearray(CLIP.read_bytes())
    rng = np.random.default_rng(2)
    for i in range(5000, len(data), 997):
        data[i] = int(rng.integers(256))
    bad = tmp_path / "flipped.mpg"
    bad.write_bytes(bytes(data))
    raises_media_error(sample_frames, bad, "corrupt data")


def test_wav_has_no_video_stream(tmp_path):
    wav = tmp_path / "speech.wav"
    shutil.copy(WAVS[0], wav)
    raises_media_error(sample_frames, wav, "no video stream")


def test_video_without_audio(tmp_path):
    silent = make_video(tmp_path / "silent.mp4", [40 * i for i in range(5)])
    assert not probe(silent).has_audio
    raises_media_error(load_audio, silent, "no audio stream")


def test_zero_length_wav(tmp_path):
    wav = tmp_path / "zero.wav"
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"")
    raises_media_error(probe, wav, "zero length")
    raises_media_error(load_audio, wav, "zero length")


def test_transcode_mp4_makes_a_browser_playable_copy(tmp_path):
    src = DATA / "grid_samples" / "bbaf2n.mpg"
    out = media.transcode_mp4(src, tmp_path / "clip.mp4")
    info = media.probe(out)
    assert info.has_video and info.has_audio and info.sample_rate == 16000
    assert abs(info.duration - media.probe(src).duration) < 0.2
    with av.open(str(out)) as c:
        assert c.streams.video[0].codec_context.name == "h264"
    frames, times = media.sample_frames(out, 30)
    assert frames.shape[0] == 3 and list(times) == pytest.approx([0.0, 1.2, 2.4])


def test_transcode_of_a_broken_file_names_it(tmp_path):
    bad = tmp_path / "bad.mpg"
    bad.write_bytes(b"not a video at all" * 100)
    with pytest.raises(MediaError, match="bad.mpg"):
        media.transcode_mp4(bad, tmp_path / "out.mp4")
    assert not (tmp_path / "out.mp4").exists()
