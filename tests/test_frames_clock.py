from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
import pytest

from anchor.core.clock import video_frame_span, video_frames_complete
from anchor.core.frames import AudioChunk, EndOfUtterance, Interrupt, MelChunk, TextDelta, VideoFrame


def test_audio_chunk_validates_and_is_read_only() -> None:
    pcm = np.zeros(480, dtype=np.float32)
    chunk = AudioChunk(pcm=pcm, sample_rate=48000, pts=960, utterance_id="u")
    assert chunk.num_samples == 480 and chunk.end_pts == 1440 and chunk.duration_ms == 10.0
    with pytest.raises(ValueError, match="read-only"):
        chunk.pcm[0] = 1.0
    pcm[0] = 0.5  # the caller's array stays writable
    with pytest.raises(ValueError, match="must be float32, got int16"):
        AudioChunk(pcm=np.zeros(4, dtype=np.int16), sample_rate=16000)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"shaped \(samples,\) or \(samples, channels\), got \(2, 2, 2\)"):
        AudioChunk(pcm=np.zeros((2, 2, 2), dtype=np.float32), sample_rate=16000)
    with pytest.raises(ValueError, match="sample_rate must be positive, got 0"):
        AudioChunk(pcm=pcm, sample_rate=0)
    with pytest.raises(ValueError, match="pts must be >= 0, got -1"):
        AudioChunk(pcm=pcm, sample_rate=48000, pts=-1)


def test_frames_are_immutable_and_stamped() -> None:
    delta = TextDelta(text="hi", utterance_id="u")
    with pytest.raises(AttributeError):
        delta.text = "other"  # type: ignore[misc]
    stamped = delta.stamped("tts").stamped("face")
    assert [name for name, _ in stamped.stamps] == ["tts", "face"]
    assert stamped.stamps[0][1] <= stamped.stamps[1][1]
    assert delta.stamps == ()
    assert Interrupt().system and not EndOfUtterance().system and not delta.system


def test_video_frame_pts_follow_the_audio_clock() -> None:
    image = np.zeros((4, 4, 3), dtype=np.uint8)
    frame = VideoFrame(image=image, index=3, fps=Fraction(25), sample_rate=48000, offset=100)
    assert (frame.pts, frame.end_pts) == (100 + 3 * 1920, 100 + 4 * 1920)
    with pytest.raises(ValueError, match=r"\(height, width, 3\), got \(4, 4\)"):
        VideoFrame(image=np.zeros((4, 4), dtype=np.uint8), index=0, fps=Fraction(25), sample_rate=48000)


def test_mel_chunk_duration_and_validation() -> None:
    mel = MelChunk(mel=np.zeros((80, 10), dtype=np.float32), sample_rate=22050, hop_length=256)
    assert mel.num_frames == 10
    assert mel.duration_ms == pytest.approx(1000 * 2560 / 22050)
    with pytest.raises(ValueError, match=r"2-D array \(n_mels, frames\), got \(80,\)"):
        MelChunk(mel=np.zeros(80, dtype=np.float32), sample_rate=22050, hop_length=256)


def test_video_spans_tile_the_audio_without_drift() -> None:
    assert video_frame_span(0, 48000, 25) == (0, 1920)
    assert video_frame_span(7, 16000, 25) == (4480, 5120)
    ntsc = Fraction(30000, 1001)
    ends = [video_frame_span(i, 48000, ntsc) for i in range(1_000_000 - 3, 1_000_000)]
    for (_, end), (start, _) in itertools.pairwise(ends):
        assert end == start
    assert ends[-1][1] == int(1_000_000 * Fraction(48000) / ntsc)
    assert video_frames_complete(1919, 48000, 25) == 0
    assert video_frames_complete(1920, 48000, 25) == 1
