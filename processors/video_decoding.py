"""Reading videos with PyAV and choosing which frames to read.

`read_video` decodes only the frames a sampler asks for. It first demuxes the video stream (cheap: no
decoding) to count the frames that are really there -- container metadata is often missing or wrong --
and to learn their timestamps and keyframes; then it decodes the requested frames, seeking to a keyframe
whenever that skips decoding work. If frames fail to decode, or the header's frame count (or duration)
disagrees with the packets (a sign of a truncated or damaged file), it decodes sequentially instead,
counting the frames that do decode, samples from that count, and warns (`VideoDecodingWarning`).
(A damaged packet that neither the header nor the requested frames reveal is counted as a frame.)

The samplers return frame indices of shape (num_clips, num_frames):
- `segment_indices`: the clip is cut into `num_frames` equal segments; training takes a random frame of
  each segment, evaluation the middle one (clip `k` of `num_clips` takes the point `(k + 0.5) / num_clips`
  of each segment). This is VideoMamba's sparse sampling.
- `stride_indices`: `num_frames` frames `stride` apart from a random (training) or evenly spaced
  (evaluation) start, as VideoMAE samples.
Videos shorter than the request repeat frames.
"""

import errno
import io
import os
import warnings
from bisect import bisect_right
from dataclasses import dataclass
from typing import Callable, Optional

import av
import numpy as np

SAMPLING_MODES = ("segment", "stride")


class VideoDecodingError(ValueError):
    """A video could not be read (empty, not a video, no video stream, nothing decodes); names the source."""


class VideoDecodingWarning(UserWarning):
    """A video was read only in part (damaged data, or fewer frames than its metadata claims)."""


@dataclass
class VideoInfo:
    """What `read_video` learnt about a video.

    `num_frames` counts the frames that are actually there (demuxed, and decoded where decoding failed),
    never a metadata field. `frame_indices` are the indices that were read, shape of the sampler output.
    """

    source: str
    num_frames: int
    fps: Optional[float]
    height: int
    width: int
    codec: str
    frame_indices: np.ndarray


def _check_counts(num_total, num_frames, num_clips):
    for name, value in (("num_total", num_total), ("num_frames", num_frames), ("num_clips", num_clips)):
        if not isinstance(value, (int, np.integer)) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")


def segment_indices(num_total, num_frames, *, training=False, num_clips=1, rng=None):
    """Sparse segment sampling: one frame from each of `num_frames` equal segments of the video.

    Args:
        num_total: frames in the video. num_frames: frames per clip.
        training: a uniformly random frame of each segment (else the segment's point `(k + 0.5) / num_clips`
            for clip `k`, i.e. the middle frame when `num_clips == 1`).
        rng: `np.random.Generator` used when `training` (a fresh unseeded one if None).
    Returns:
        int64 array (num_clips, num_frames), non-decreasing along each row, values in [0, num_total).
    """
    _check_counts(num_total, num_frames, num_clips)
    segment = num_total / num_frames
    starts = np.arange(num_frames) * segment
    if training:
        rng = rng if rng is not None else np.random.default_rng()
        offsets = rng.uniform(0.0, segment, size=(num_clips, num_frames))
    else:
        offsets = ((np.arange(num_clips) + 0.5) / num_clips * segment)[:, None].repeat(num_frames, axis=1)
    return np.minimum(np.floor(starts + offsets).astype(np.int64), num_total - 1)


def stride_indices(num_total, num_frames, stride, *, training=False, num_clips=1, rng=None):
    """Fixed-stride sampling: `num_frames` frames `stride` apart (VideoMAE's sampling).

    The clip spans `(num_frames - 1) * stride + 1` frames; its start is random when `training`, else the
    clips' starts are spread evenly over the video (one clip: centred). Indices past the end repeat the
    last frame.
    Returns:
        int64 array (num_clips, num_frames).
    """
    _check_counts(num_total, num_frames, num_clips)
    if not isinstance(stride, (int, np.integer)) or stride <= 0:
        raise ValueError(f"stride must be a positive integer, got {stride!r}.")
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


def sample_frame_indices(num_total, num_frames, *, sampling="segment", stride=4, training=False, num_clips=1, rng=None):
    """Frame indices (num_clips, num_frames) by `sampling` (`"segment"` or `"stride"`); see the samplers."""
    if sampling == "segment":
        return segment_indices(num_total, num_frames, training=training, num_clips=num_clips, rng=rng)
    if sampling == "stride":
        return stride_indices(num_total, num_frames, stride, training=training, num_clips=num_clips, rng=rng)
    raise ValueError(f"sampling must be one of {SAMPLING_MODES}, got {sampling!r}.")


def _source_name(source):
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    return str(getattr(source, "name", "<file-like object>"))


class _Source:
    """Something PyAV can open again and again: a path, or a seekable in-memory/file object."""

    def __init__(self, source):
        self.name = _source_name(source)
        if isinstance(source, (str, os.PathLike)):
            path = os.fspath(source)
            if not os.path.exists(path):
                raise FileNotFoundError(errno.ENOENT, "Video file not found", path)
            if os.path.isdir(path):
                raise IsADirectoryError(errno.EISDIR, "Expected a video file, got a directory", path)
            if os.path.getsize(path) == 0:
                raise VideoDecodingError(f"Video file {path!r} is empty (0 bytes).")
            self._path, self._file = path, None
            return
        if isinstance(source, (bytes, bytearray, memoryview)):
            source = io.BytesIO(bytes(source))
        elif not hasattr(source, "read"):
            raise VideoDecodingError(
                f"Expected a video as a path, bytes or a binary file object, got {type(source).__name__}."
            )
        elif not (hasattr(source, "seekable") and source.seekable()):
            # Counting frames before decoding them needs two passes over the data.
            source = io.BytesIO(source.read())
        self._path, self._file = None, source
        self._start = source.tell()
        source.seek(0, io.SEEK_END)
        if source.tell() == self._start:
            raise VideoDecodingError(f"Video {self.name} is empty (0 bytes).")

    def open(self):
        """An opened PyAV container and its first video stream; clear errors for what is not a video."""
        if self._file is not None:
            self._file.seek(self._start)
        try:
            container = av.open(self._path if self._path is not None else self._file, mode="r", metadata_errors="ignore")
        except av.FFmpegError as error:
            raise VideoDecodingError(f"Could not open {self.name!r} as a video: {error}") from error
        if not container.streams.video:
            kinds = sorted({stream.type for stream in container.streams}) or ["no streams"]
            container.close()
            raise VideoDecodingError(f"{self.name!r} has no video stream (it holds: {', '.join(kinds)}).")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        return container, stream


def _frames_from_duration(container, stream, fps):
    """Frames the header's duration implies (0 if unknown), to notice truncated files that lack a count."""
    if not fps:
        return 0
    if stream.duration and stream.time_base:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration and len(container.streams) == 1:  # a container duration may be the audio's
        seconds = container.duration / av.time_base
    else:
        return 0
    return int(round(seconds * fps))


def _disagree(claimed, counted):
    """Whether a frame count from metadata (0: unknown) is off from the counted one beyond rounding."""
    return bool(claimed) and abs(claimed - counted) > max(2, 0.02 * claimed)


def _decoded_frames(container, stream, errors):
    """Decoded frames of `stream` from the container's current position, skipping packets that fail.

    `errors` (a list) collects the decoding errors so that the caller can warn about them once.
    """
    try:
        for packet in container.demux(stream):
            try:
                yield from packet.decode()
            except av.FFmpegError as error:  # a damaged packet: keep going with the next one
                errors.append(error)
    except av.FFmpegError as error:  # the demuxer gave up (truncated or damaged container)
        errors.append(error)


def _index_packets(container, stream, errors):
    """Timestamps (presentation order) and keyframe timestamps of the stream's packets, by demuxing only."""
    pts, keyframe_pts = [], []
    try:
        for packet in container.demux(stream):
            if packet.size == 0:  # the end-of-stream flush packet
                continue
            pts.append(packet.pts)
            if packet.is_keyframe:
                keyframe_pts.append(packet.pts)
    except av.FFmpegError as error:
        errors.append(error)
    return pts, keyframe_pts


def _read_with_seeks(container, stream, targets, pts, keyframe_pts, errors):
    """Decode the frames at sorted indices `targets`, seeking forward to a keyframe when that skips work.

    Returns {index: RGB uint8 array (H, W, 3)} (a frame that does not decode is absent), or None where
    seeking or timestamps do not work for this stream.
    """
    order = sorted(pts)
    index_of = {value: i for i, value in enumerate(order)}
    keyframe_index = sorted(index_of[value] for value in keyframe_pts)
    wanted = set(targets)
    frames, current, decoder = {}, -1, None
    for target in targets:
        if target in frames:
            continue
        position = bisect_right(keyframe_index, target) - 1
        nearest_keyframe = keyframe_index[position] if position >= 0 else 0
        if decoder is None or nearest_keyframe > current + 1:
            try:
                container.seek(order[nearest_keyframe], stream=stream, backward=True)
                decoder = _decoded_frames(container, stream, errors)
            except av.FFmpegError:
                if decoder is None:
                    return None  # cannot even rewind: let the caller decode sequentially
                # else cannot seek here: decode on from where we are
        for frame in decoder:
            current = index_of.get(frame.pts, -1)
            if current < 0:
                return None  # timestamps do not map to packets: let the caller decode sequentially
            if current in wanted and current not in frames:
                frames[current] = frame.to_ndarray(format="rgb24")
            if current >= target:
                break
        else:
            break  # the stream ended before `target`
    return frames


def _sample(sampler, count, name):
    """Indices from `sampler(count)` (all frames if None), checked to lie in [0, count)."""
    indices = np.asarray(sampler(count) if sampler is not None else np.arange(count), dtype=np.int64)
    if indices.size == 0 or indices.min() < 0 or indices.max() >= count:
        raise ValueError(f"The sampler returned indices outside [0, {count}) for {name!r}.")
    return indices


def _read_sequentially(source, sampler, errors):
    """Fallback for damaged streams or unusable timestamps: count what decodes, sample, decode again.

    Returns `(frames by index, indices, count of decodable frames)`.
    """
    container, stream = source.open()
    with container:
        count = sum(1 for _ in _decoded_frames(container, stream, errors))
    if count == 0:
        raise VideoDecodingError(f"No frame of {source.name!r} could be decoded ({len(errors)} decoding errors).")
    indices = _sample(sampler, count, source.name)
    wanted = set(indices.reshape(-1).tolist())
    last, frames = max(wanted), {}
    container, stream = source.open()
    with container:
        for i, frame in enumerate(_decoded_frames(container, stream, [])):
            if i in wanted:
                frames[i] = frame.to_ndarray(format="rgb24")
            if i >= last:
                break
    if len(frames) != len(wanted):
        raise VideoDecodingError(f"{source.name!r} decodes differently on a second pass; cannot read it reliably.")
    return frames, indices, count


def read_video(source, sampler: Optional[Callable[[int], np.ndarray]] = None):
    """Decode the frames of a video that `sampler` picks.

    Args:
        source: a path (any container FFmpeg reads: mp4, mkv, webm, avi, mov, gif, ...), bytes, or a binary
            file object.
        sampler: called with the number of frames in the video, returns integer indices of any shape
            (e.g. (num_clips, num_frames)); None reads every frame.
    Returns:
        `(frames, info)`: frames uint8 RGB of shape (*indices.shape, H, W, 3), and a `VideoInfo`.
    Raises:
        FileNotFoundError / IsADirectoryError for a missing path, `VideoDecodingError` (a ValueError) for
        empty, non-video, audio-only or undecodable input.
    """
    source = _Source(source)
    errors = []
    container, stream = source.open()
    with container:
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else None
        codec, claimed = stream.codec_context.name, stream.frames or _frames_from_duration(container, stream, fps)
        pts, keyframe_pts = _index_packets(container, stream, errors)
        frames = None
        if not pts and not errors:
            raise VideoDecodingError(f"{source.name!r} has a video stream but no frames.")
        timestamps_usable = pts and None not in pts and len(set(pts)) == len(pts) and keyframe_pts
        # A packet count far from the header's suggests damage: then count what decodes instead.
        if timestamps_usable and not errors and not _disagree(claimed, len(pts)):
            indices = _sample(sampler, len(pts), source.name)
            targets = sorted(set(indices.reshape(-1).tolist()))
            try:
                frames = _read_with_seeks(container, stream, targets, pts, keyframe_pts, errors)
            except av.FFmpegError as error:
                errors.append(error)
            if frames is not None and (errors or len(frames) < len(targets)):
                frames = None  # some frames did not decode: indices over the packets would be off
    num_frames = len(pts)
    if frames is None:
        frames, indices, num_frames = _read_sequentially(source, sampler, errors)
    if errors or num_frames < len(pts):
        warnings.warn(
            f"{source.name!r} is damaged: {num_frames} of {len(pts)} frames decode ({len(errors)} errors, "
            f"first: {errors[0] if errors else None}); sampling from the frames that decode.",
            VideoDecodingWarning,
            stacklevel=2,
        )
    if _disagree(claimed, num_frames):
        warnings.warn(
            f"{source.name!r}: its metadata claims about {claimed} frames but {num_frames} are there "
            f"(truncated or damaged, or wrong metadata); using {num_frames}.",
            VideoDecodingWarning,
            stacklevel=2,
        )
    flat = indices.reshape(-1)
    video = np.stack([frames[i] for i in flat.tolist()]).reshape(*indices.shape, *frames[int(flat[0])].shape)
    info = VideoInfo(source.name, num_frames, fps, video.shape[-3], video.shape[-2], codec, indices)
    return video, info


__all__ = [
    "SAMPLING_MODES",
    "VideoDecodingError",
    "VideoDecodingWarning",
    "VideoInfo",
    "read_video",
    "sample_frame_indices",
    "segment_indices",
    "stride_indices",
]
