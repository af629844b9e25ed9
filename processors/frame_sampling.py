"""Which frames of a video to read: by frame index or by presentation time.

A `FrameTimeline` holds when each frame is shown. The samplers return frame indices of shape
(num_clips, num_frames):
- `segment_indices` / `segment_times`: the video is cut into `num_frames` equal segments (of frames, or of
  time); training takes a random point of each segment, evaluation the point `(k + 0.5) / num_clips` of
  each segment for clip `k` (one clip: the middle). This is VideoMamba's sparse sampling. In time, the
  frame shown at each point is taken, so variable-frame-rate videos are sampled evenly in time; for a
  constant frame rate both give the same indices.
- `stride_indices`: `num_frames` frames `stride` apart from a random (training) or evenly spaced
  (evaluation) start, as VideoMAE samples.
- `fps_times`: one frame every `1 / fps` seconds over the whole video (transformers' `fps=` sampling).
Videos shorter than the request repeat frames.
"""

from dataclasses import dataclass
from typing import Optional

import numpy as np

SAMPLING_MODES = ("segment", "stride")

# Slack (seconds) when matching a time to the frame shown then: keeps float rounding of timestamps from
# moving a point that falls exactly on a frame's start to the frame before.
_TIME_SLACK = 1e-6


@dataclass
class FrameTimeline:
    """When the frames of a video are shown.

    `timestamps` (float64, shape (num_frames,)): presentation times in seconds from the first frame, in
    presentation order, non-decreasing. `duration`: seconds from the first frame to the end of the last.
    """

    timestamps: np.ndarray
    duration: float

    @property
    def num_frames(self):
        return len(self.timestamps)

    @classmethod
    def regular(cls, num_frames, fps):
        """A constant-rate timeline: frame i at i / fps."""
        return cls(np.arange(num_frames) / fps, num_frames / fps)

    @classmethod
    def from_timestamps(cls, timestamps, fallback_fps=None):
        """Timeline from presentation times (seconds, any origin).

        The last frame is taken to last as long as the gap before it (its own duration is rarely stored).
        """
        times = np.sort(np.asarray(timestamps, dtype=np.float64))
        times = times - times[0]
        if len(times) > 1 and times[-1] > times[-2]:
            last = times[-1] - times[-2]
        else:
            last = 1.0 / fallback_fps if fallback_fps else 1.0
        return cls(times, float(times[-1] + last))

    def shown_at(self, times):
        """Index of the frame shown at each time (seconds from the first frame), same shape as `times`."""
        times = np.asarray(times, dtype=np.float64)
        indices = np.searchsorted(self.timestamps, times + _TIME_SLACK, side="right") - 1
        return np.clip(indices, 0, self.num_frames - 1).astype(np.int64)


def _check_counts(**counts):
    for name, value in counts.items():
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")


def _segment_points(num_frames, training, num_clips, rng):
    """Points in [0, 1) (num_clips, num_frames): one per segment, random or at `(k + 0.5) / num_clips`."""
    starts = np.arange(num_frames) / num_frames
    if training:
        rng = rng if rng is not None else np.random.default_rng()
        offsets = rng.uniform(0.0, 1.0, size=(num_clips, num_frames))
    else:
        offsets = ((np.arange(num_clips) + 0.5) / num_clips)[:, None].repeat(num_frames, axis=1)
    return starts + offsets / num_frames


def segment_indices(num_total, num_frames, *, training=False, num_clips=1, rng=None):
    """Sparse segment sampling over frame indices: one frame from each of `num_frames` equal segments.

    Args:
        num_total: frames in the video. num_frames: frames per clip.
        training: a uniformly random frame of each segment (else the segment's point `(k + 0.5) / num_clips`
            for clip `k`, i.e. the middle frame when `num_clips == 1`).
        rng: `np.random.Generator` used when `training` (a fresh unseeded one if None).
    Returns:
        int64 array (num_clips, num_frames), non-decreasing along each row, values in [0, num_total).
    """
    _check_counts(num_total=num_total, num_frames=num_frames, num_clips=num_clips)
    points = _segment_points(num_frames, training, num_clips, rng)
    # Rounded to 1e-9 frame first so that points that fall on a frame boundary stay there.
    return np.minimum(np.floor(np.round(points * num_total, 9)).astype(np.int64), num_total - 1)


def segment_times(timeline, num_frames, *, training=False, num_clips=1, rng=None, start=0.0, end=None):
    """Sparse segment sampling in time: the frames shown at one point of each of `num_frames` equal spans
    of `[start, end)` seconds (the whole video by default).

    Returns:
        int64 array (num_clips, num_frames) of frame indices into `timeline`.
    """
    _check_counts(num_frames=num_frames, num_clips=num_clips)
    end = timeline.duration if end is None else end
    points = _segment_points(num_frames, training, num_clips, rng)
    return timeline.shown_at(start + points * (end - start))


def stride_indices(num_total, num_frames, stride, *, training=False, num_clips=1, rng=None):
    """Fixed-stride sampling: `num_frames` frames `stride` apart (VideoMAE's sampling).

    The clip spans `(num_frames - 1) * stride + 1` frames; its start is random when `training`, else the
    clips' starts are spread evenly over the video (one clip: centred). Indices past the end repeat the
    last frame.
    Returns:
        int64 array (num_clips, num_frames).
    """
    _check_counts(num_total=num_total, num_frames=num_frames, num_clips=num_clips, stride=stride)
    max_start = max(num_total - ((num_frames - 1) * stride + 1), 0)
    if training:
        rng = rng if rng is not None else np.random.default_rng()
        starts = rng.integers(0, max_start + 1, size=num_clips)
    elif num_clips == 1:
        starts = np.array([max_start // 2])
    else:
        starts = np.round(np.linspace(0, max_start, num_clips)).astype(np.int64)
    indices = starts[:, None] + np.arange(num_frames)[None, :] * stride
    return np.minimum(indices, num_total - 1).astype(np.int64)


def fps_times(timeline, fps, *, training=False, rng=None):
    """One frame every `1 / fps` seconds over the whole video: the frames shown at `(k + 0.5) / fps`
    (training: `(k + u) / fps`, one uniform `u` in [0, 1)) for `k < max(1, floor(duration * fps))`.

    Returns:
        int64 array (1, count).
    """
    if not isinstance(fps, (int, float)) or isinstance(fps, bool) or fps <= 0:
        raise ValueError(f"fps must be a positive number, got {fps!r}.")
    count = max(1, int(np.floor(timeline.duration * fps + _TIME_SLACK)))
    offset = (rng if rng is not None else np.random.default_rng()).uniform() if training else 0.5
    return timeline.shown_at((np.arange(count) + offset) / fps)[None, :]


def sample_frame_indices(
    num_total, num_frames, *, sampling="segment", stride=4, training=False, num_clips=1, rng=None,
    timeline: Optional[FrameTimeline] = None,
):
    """Frame indices (num_clips, num_frames) by `sampling` (`"segment"` or `"stride"`); see the samplers.

    With a `timeline`, segment sampling is done in time (`segment_times`); stride sampling stays in frames.
    """
    if sampling == "segment":
        if timeline is not None:
            return segment_times(timeline, num_frames, training=training, num_clips=num_clips, rng=rng)
        return segment_indices(num_total, num_frames, training=training, num_clips=num_clips, rng=rng)
    if sampling == "stride":
        return stride_indices(num_total, num_frames, stride, training=training, num_clips=num_clips, rng=rng)
    raise ValueError(f"sampling must be one of {SAMPLING_MODES}, got {sampling!r}.")


__all__ = [
    "SAMPLING_MODES",
    "FrameTimeline",
    "fps_times",
    "sample_frame_indices",
    "segment_indices",
    "segment_times",
    "stride_indices",
]
