"""classify_long_video (processors/long_video.py): windows, one streaming pass, bounded memory."""

import tracemalloc
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from video_fixtures import make_frames, write_with_audio

from modeling_videomamba import VideoMambaForVideoClassification, VideoMambaVideoProcessor, read_video
from modeling_videomamba.processors.long_video import classify_long_video, window_spans

FPS = 10


def _moving_frames(num_frames, height=48, width=64):
    """Frames that differ from each other (a moving bar over the flat test colours)."""
    frames = np.concatenate([make_frames(24, height, width)] * (num_frames // 24 + 1))[:num_frames].copy()
    for i, frame in enumerate(frames):
        frame[:, (3 * i) % width : (3 * i) % width + 6, 1] = 250
    return frames


@pytest.fixture(scope="module")
def long_clips(tmp_path_factory):
    """{seconds: mp4 path} of h264 + AAC clips at 10 fps, 64x48."""
    root = tmp_path_factory.mktemp("long")
    return {seconds: write_with_audio(root / f"long_{seconds}s.mp4", _moving_frames(seconds * FPS), fps=FPS)
            for seconds in (12, 20, 60)}


def test_window_spans():
    assert window_spans(10, 4) == [(0, 4), (4, 8), (6, 10)]  # the tail gets a window ending at the end
    assert window_spans(10, 4, 2) == [(0, 4), (2, 6), (4, 8), (6, 10)]
    assert window_spans(12, 4, 6) == [(0, 4), (6, 10), (8, 12)]  # gaps when the stride exceeds the window
    assert window_spans(3, 4) == [(0, 3)]
    with pytest.raises(ValueError, match="stride_seconds"):
        window_spans(10, 4, 0)


class _Recorder(torch.nn.Module):
    """Wraps a classifier and keeps every batch of pixel_values it is given."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config, self.batches = model, model.config, []

    def forward(self, pixel_values):
        self.batches.append(pixel_values.clone())
        return self.model(pixel_values=pixel_values)


def test_windows_get_the_right_frames_and_scores(tiny_model_dir, long_clips):
    model = VideoMambaForVideoClassification.from_pretrained(tiny_model_dir).eval()
    processor = VideoMambaVideoProcessor.from_pretrained(tiny_model_dir)
    recorder = _Recorder(model)
    path = long_clips[12]
    result = classify_long_video(recorder, processor, path, window_seconds=3, stride_seconds=2, top_k=2, batch_size=2)
    spans = [(0, 3), (2, 5), (4, 7), (6, 9), (8, 11), (9, 12)]
    assert [(w["start"], w["end"]) for w in result["windows"]] == spans
    assert result["duration"] == pytest.approx(12.0) and result["frames_per_window"] == 4
    # Reference: each window's 4 frames at the middles of 0.75 s spans, at a constant 10 fps.
    everything, _ = read_video(path)
    clips = torch.cat(recorder.batches)
    with torch.no_grad():
        for (start, end), window, clip in zip(spans, result["windows"], clips):
            indices = [int(np.floor((start + (j + 0.5) * (end - start) / 4) * FPS)) for j in range(4)]
            expected = processor(everything[indices])["pixel_values"]
            assert torch.equal(clip, expected[0])
            probs = model(pixel_values=expected).logits[0].softmax(-1)
            assert [label["score"] for label in window["labels"]] == pytest.approx(probs.topk(2).values.tolist(), abs=1e-6)
    mean = torch.stack([model(pixel_values=clip[None]).logits[0].softmax(-1) for clip in clips]).mean(0).detach()
    assert [v["score"] for v in result["video"]] == pytest.approx(mean.topk(2).values.tolist(), abs=1e-6)
    assert [v["label"] for v in result["video"]] == [model.config.id2label[i] for i in mean.topk(2).indices.tolist()]


class _ZeroClassifier(torch.nn.Module):
    """Stands in for a model: constant logits (the test is about decoding, not scores)."""

    config = SimpleNamespace(id2label={0: "a", 1: "b"})

    def forward(self, pixel_values):
        return SimpleNamespace(logits=torch.zeros(pixel_values.shape[0], 2))


class _NumpyBackedProcessor(VideoMambaVideoProcessor):
    """Returns pixel_values in numpy-allocated memory, which tracemalloc sees (torch's own it does not)."""

    def __call__(self, videos, **kwargs):
        out = super().__call__(videos, **kwargs)
        out["pixel_values"] = torch.from_numpy(out["pixel_values"].numpy().copy())
        return out


def test_decoding_streams_once_with_bounded_memory(long_clips, decoded_frame_pts):
    decoded = decoded_frame_pts
    processor = _NumpyBackedProcessor(num_frames=4, size=32, crop_size=32)
    work, peaks = {}, {}
    for seconds in (20, 60):
        decoded.clear()
        tracemalloc.start()
        result = classify_long_video(_ZeroClassifier(), processor, long_clips[seconds], window_seconds=2, stride_seconds=1)
        peaks[seconds] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        # The index pass only demuxes; frames are decoded in one pass, each at most once (+1: the first
        # frame, whose size is the reference).
        assert len(decoded) <= seconds * FPS + 1 and len(set(decoded)) == len(decoded) - 1
        assert len(result["windows"]) == seconds - 1
        work[seconds] = len(decoded)
    assert 2.7 < work[60] / work[20] < 3.3  # linear in the length
    prepared_bytes = 60 * FPS * 3 * 32 * 32 * 4  # every prepared frame of the long clip
    assert peaks[60] < 1.5 * peaks[20] + 200_000 and peaks[60] < prepared_bytes / 4, peaks
