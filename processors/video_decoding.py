"""Reading videos with PyAV: the frames a sampler picks, as a player shows them.

`VideoReader` first demuxes the video stream (cheap: no decoding) to count the frames that are really there
-- container metadata is often missing or wrong -- and to learn their presentation timestamps and
keyframes (a `FrameTimeline`); then it decodes the requested frames in one forward pass, seeking to a
keyframe whenever that skips decoding work. If frames fail to decode, or the header's frame count (or
duration) disagrees with the packets (a sign of a truncated or damaged file), `read_video` decodes
sequentially instead, counting the frames that do decode, samples from those, and warns
(`VideoDecodingWarning`). (A damaged packet that neither the header nor the requested frames reveal is
counted as a frame.)

Frames come out as a player shows them: the display matrix (phone videos' rotation by 90/180/270 degrees,
and flips) and a non-square sample aspect ratio (stretched, never dropping pixels) are applied, unless
`keep_coded_frames=True`. Frames whose coded size differs from the stream's first (resolution changes
mid-stream) are resized to it first, with a debug-level log message. The samplers are in
`frame_sampling.py`.
"""

import errno
import io
import logging
import os
import warnings
from bisect import bisect_right
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Optional

from .requirements import require

require("av", "Reading videos (VideoMambaVideoProcessor, read_video)")

import av  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from .frame_sampling import (  # noqa: F401  (re-exported: they were defined here before)
    SAMPLING_MODES,
    FrameTimeline,
    sample_frame_indices,
    segment_indices,
    stride_indices,
)
from .video_transforms import resize  # noqa: E402

logger = logging.getLogger(__name__)

# Frame rate assumed for streams that have no timestamps and no rate (raw elementary streams).
_DEFAULT_FPS = 25.0


class VideoDecodingError(ValueError):
    """A video could not be read (empty, not a video, no video stream, nothing decodes); names the source."""


class VideoDecodingWarning(UserWarning):
    """A video was read only in part (damaged data, or fewer frames than its metadata claims)."""


@dataclass
class VideoInfo:
    """What `read_video` learnt about a video.

    `num_frames` counts the frames that are actually there (demuxed, and decoded where decoding failed),
    never a metadata field. `frame_indices` are the indices that were read (shape of the sampler output),
    `frame_timestamps` their presentation times in seconds from the first frame (same shape). `height`
    and `width` are those of the returned frames (displayed size unless `keep_coded_frames`); `fps` is the
    stream's average rate; `duration` spans the first frame to the end of the last, in seconds.
    """

    source: str
    num_frames: int
    fps: Optional[float]
    height: int
    width: int
    codec: str
    frame_indices: np.ndarray
    frame_timestamps: Optional[np.ndarray] = None
    duration: Optional[float] = None


PATH_TYPES = (str, os.PathLike)
BYTES_TYPES = (bytes, bytearray, memoryview)


def is_video_source(obj):
    """Whether `obj` is something `read_video` decodes: a path, encoded bytes or a binary file object."""
    return isinstance(obj, PATH_TYPES + BYTES_TYPES) or hasattr(obj, "read")


def _source_name(source):
    if isinstance(source, PATH_TYPES):
        return os.fspath(source)
    if isinstance(source, BYTES_TYPES):
        return f"<{len(source)} bytes>"
    return str(getattr(source, "name", "<file-like object>"))


class _Source:
    """Something PyAV can open again and again: a path, or a seekable in-memory/file object."""

    def __init__(self, source):
        self.name = _source_name(source)
        if isinstance(source, PATH_TYPES):
            path = os.fspath(source)
            if not os.path.exists(path):
                raise FileNotFoundError(errno.ENOENT, "Video file not found", path)
            if os.path.isdir(path):
                raise IsADirectoryError(errno.EISDIR, "Expected a video file, got a directory", path)
            if os.path.getsize(path) == 0:
                raise VideoDecodingError(f"Video file {path!r} is empty (0 bytes).")
            self._path, self._file = path, None
            return
        if isinstance(source, BYTES_TYPES):
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
    """Whether metadata (0: unknown) claims more frames than were counted, beyond rounding.

    Only more: frames missing are the sign of a truncated or damaged file, while a low claim is usually a
    rough estimate (MPEG-PS durations come from the bitrate) and costs nothing, since frames are counted.
    """
    return bool(claimed) and claimed - counted > max(2, 0.02 * claimed)


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




class _ReadSequentially(Exception):
    """The seeking path cannot read this stream reliably (timestamps, damage): decode it sequentially."""


def _display_matrix(frame):
    """The frame's display matrix (9 int32, FFmpeg's layout) or None."""
    for data in frame.side_data:
        if getattr(data.type, "name", "") == "DISPLAYMATRIX":
            return np.frombuffer(bytes(data), dtype=np.int32)
    return None


def orient(array, matrix):
    """Apply the right-angle part of an FFmpeg display matrix to a frame (H, W, C) as players do.

    The matrix maps a coded pixel (x, y) to the displayed `(a x + c y, b x + d y)` (a, b, c, d =
    matrix[0], [1], [3], [4]): axes swapped when |b| + |c| dominates (90/270 degrees), then reversed
    where the signs are negative. Rotations that are not right angles are taken to the nearest one.
    """
    if matrix is None:
        return array
    a, b, c, d = (int(matrix[i]) for i in (0, 1, 3, 4))
    if abs(a) + abs(d) >= abs(b) + abs(c):
        if a < 0:
            array = array[:, ::-1]
        if d < 0:
            array = array[::-1]
    else:
        array = array.transpose(1, 0, 2)
        if c < 0:
            array = array[:, ::-1]
        if b < 0:
            array = array[::-1]
    return np.ascontiguousarray(array)


def _resize_array(array, height, width):
    """uint8 (H, W, 3) -> (height, width, 3), antialiased bilinear (the processor's resize)."""
    tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)[None]
    return resize(tensor, height, width)[0].permute(1, 2, 0).numpy()


_UNREAD = object()



_REFORMAT_THREADS = {"threads": 1}


def _to_rgb_array(frame) -> "np.ndarray":
    """(H, W, 3) uint8 RGB of a decoded frame, converted on one thread.

    PyAV 18's converter otherwise starts swscale slice threads, kept by the frame; a frame that lives on in a
    reference cycle (reading its side data makes one) and is collected in a forked child (a DataLoader worker)
    waits forever on condition variables of threads the child does not have.
    """
    global _REFORMAT_THREADS
    try:
        return frame.to_ndarray(format="rgb24", **_REFORMAT_THREADS)
    except TypeError:  # PyAV before 18 has no `threads` (and converts on one thread)
        if not _REFORMAT_THREADS:
            raise
        _REFORMAT_THREADS = {}
        return frame.to_ndarray(format="rgb24")

class _FrameConverter:
    """Decoded frame -> RGB uint8 (H, W, 3) at `size` (the stream's first frame's coded size; None: the
    first frame converted), then as displayed."""

    def __init__(self, stream, size, keep_coded_frames, name):
        context = stream.codec_context
        self.size = size
        sar = stream.sample_aspect_ratio or context.sample_aspect_ratio
        self.sar = Fraction(sar) if sar and sar > 0 else Fraction(1)
        self.keep_coded_frames, self.name = keep_coded_frames, name
        # Read from the first frame only: the matrix belongs to the stream (mp4 tkhd, mkv projection), and
        # touching `frame.side_data` keeps the frame alive until the cyclic garbage collector runs (PyAV
        # 18), which grew memory by megabytes per frame in a long 720p pass.
        self.matrix = None if keep_coded_frames else _UNREAD

    def __call__(self, frame):
        array = _to_rgb_array(frame)
        if self.size is None:
            self.size = array.shape[:2]
        if array.shape[:2] != self.size:
            logger.debug(
                "%s: frame at %ss is %dx%d (%s), the stream started at %dx%d; resizing it to that.",
                self.name, frame.time, array.shape[1], array.shape[0], frame.format.name, self.size[1], self.size[0],
            )
            array = _resize_array(array, *self.size)
        if self.keep_coded_frames:
            return array
        if self.sar != 1:  # stretch the narrower dimension, so that no pixel is dropped
            height, width = array.shape[:2]
            if self.sar > 1:
                array = _resize_array(array, height, int(round(width * self.sar)))
            else:
                array = _resize_array(array, int(round(height / self.sar)), width)
        if self.matrix is _UNREAD:
            self.matrix = _display_matrix(frame)
        return orient(array, self.matrix)


class VideoReader:
    """An opened video stream: the timeline of its frames and decoding of chosen frames in one pass.

    Args:
        source: a path, bytes or a binary file object (see `read_video`).
        keep_coded_frames: return frames as coded (no display rotation/flip, no aspect-ratio stretch).
        sequential: count the frames by decoding them all first (for damaged streams) instead of
            demuxing; `read_video` switches to it by itself when the seeking path fails.
    Attributes:
        timeline (`FrameTimeline`), fps (average rate or None), codec, num_packets, errors (decoding errors).
    """

    def __init__(self, source, keep_coded_frames=False, sequential=False):
        self.source = source if isinstance(source, _Source) else _Source(source)
        self.errors = []
        container, stream = self.source.open()
        with container:
            rate = stream.average_rate or stream.guessed_rate
            self.fps = float(rate) if rate else None
            self.codec = stream.codec_context.name
            self.claimed = stream.frames or _frames_from_duration(container, stream, self.fps)
            pts, self._keyframe_pts = _index_packets(container, stream, self.errors)
            time_base = stream.time_base
        if not pts and not self.errors:
            raise VideoDecodingError(f"{self.source.name!r} has a video stream but no frames.")
        self.num_packets = len(pts)
        self.keep_coded_frames = keep_coded_frames
        usable = bool(pts) and None not in pts and len(set(pts)) == len(pts) and self._keyframe_pts and time_base
        self.seeking = bool(usable) and not sequential and not self.errors and not _disagree(self.claimed, len(pts))
        if self.seeking:
            self._order = sorted(pts)
            self.timeline = FrameTimeline.from_timestamps(np.array(self._order) * float(time_base), self.fps)
        else:
            self.timeline = self._decodable_timeline()

    def _decodable_timeline(self):
        """Decode everything once: the timeline of the frames that decode (regular if times are unusable)."""
        container, stream = self.source.open()
        with container:
            times = [frame.time for frame in _decoded_frames(container, stream, self.errors)]
        if not times:
            raise VideoDecodingError(
                f"No frame of {self.source.name!r} could be decoded ({len(self.errors)} decoding errors)."
            )
        if None in times or np.any(np.diff(times) <= 0):
            return FrameTimeline.regular(len(times), self.fps or _DEFAULT_FPS)
        return FrameTimeline.from_timestamps(times, self.fps)

    def frames(self, indices):
        """Yield `(index, frame)` for the sorted unique frame `indices`, in order, decoding forward only.

        Frames are RGB uint8 (H, W, 3), all of one size. Raises `_ReadSequentially` (seeking reader) when
        the stream cannot be read this way; `VideoDecodingError` (sequential reader) if it decodes
        differently than when counted.
        """
        indices = [int(i) for i in indices]
        container, stream = self.source.open()
        with container:
            size = None
            if self.seeking and indices and indices[0] != 0:
                # Headers may give a later size (MPEG-TS probing); the first frame's decides. The seek to
                # the first target follows, so this costs one decoded frame.
                first = next(_decoded_frames(container, stream, []), None)
                size = (first.height, first.width) if first is not None else None
            convert = _FrameConverter(stream, size, self.keep_coded_frames, self.source.name)
            if self.seeking:
                yield from self._seek_and_decode(container, stream, indices, convert)
            else:
                yield from self._decode_in_order(container, stream, indices, convert)

    def _seek_and_decode(self, container, stream, targets, convert):
        """Decode `targets`, seeking forward to a keyframe when that skips decoding work."""
        index_of = {value: i for i, value in enumerate(self._order)}
        keyframe_index = sorted(index_of[value] for value in self._keyframe_pts)
        errors, current, decoder = [], -1, None
        for target in targets:
            position = bisect_right(keyframe_index, target) - 1
            nearest_keyframe = keyframe_index[position] if position >= 0 else 0
            if decoder is None or nearest_keyframe > current + 1:
                try:
                    container.seek(self._order[nearest_keyframe], stream=stream, backward=True)
                    decoder = _decoded_frames(container, stream, errors)
                except av.FFmpegError as error:
                    if decoder is None:
                        raise _ReadSequentially() from error  # cannot even rewind
                    # else cannot seek here: decode on from where we are
            for frame in decoder:
                if errors:
                    break
                current = index_of.get(frame.pts, -1)
                if current < 0:
                    raise _ReadSequentially()  # timestamps do not map to packets
                if current == target:
                    yield target, convert(frame)
                if current >= target:
                    break
            if errors or current != target:  # a frame failed to decode, or the stream ended early
                self.errors.extend(errors)
                raise _ReadSequentially()

    def _decode_in_order(self, container, stream, targets, convert):
        """Decode from the start, counting only frames that decode (as `_decodable_timeline` did)."""
        remaining = iter(targets)
        target = next(remaining, None)
        for i, frame in enumerate(_decoded_frames(container, stream, [])):
            if target is None:
                return
            if i == target:
                yield i, convert(frame)
                target = next(remaining, None)
        if target is not None:
            raise VideoDecodingError(
                f"{self.source.name!r} decodes differently on a second pass; cannot read it reliably."
            )


def _sample(sampler, timeline, name):
    """Indices from `sampler(timeline)` (all frames if None), checked to lie in [0, num_frames)."""
    count = timeline.num_frames
    indices = np.asarray(sampler(timeline) if sampler is not None else np.arange(count), dtype=np.int64)
    if indices.size == 0 or indices.min() < 0 or indices.max() >= count:
        raise ValueError(f"The sampler returned indices outside [0, {count}) for {name!r}.")
    return indices


def read_with_fallback(source, work, keep_coded_frames=False):
    """`work(reader)` on a seeking `VideoReader`; again on a sequential one if the stream proves unreliable.

    Warns (`VideoDecodingWarning`) when the video is damaged or its metadata claims more frames than there
    are. Returns `(work's result, reader)`.
    """
    source = source if isinstance(source, _Source) else _Source(source)
    reader = VideoReader(source, keep_coded_frames)
    try:
        result = work(reader)
    except _ReadSequentially:
        errors = reader.errors
        reader = VideoReader(source, keep_coded_frames, sequential=True)
        reader.errors = errors + reader.errors
        result = work(reader)
    num_frames, errors = reader.timeline.num_frames, reader.errors
    if errors or num_frames < reader.num_packets:
        warnings.warn(
            f"{source.name!r} is damaged: {num_frames} of {reader.num_packets} frames decode ({len(errors)} "
            f"errors, first: {errors[0] if errors else None}); sampling from the frames that decode.",
            VideoDecodingWarning,
            stacklevel=3,
        )
    if _disagree(reader.claimed, num_frames):
        warnings.warn(
            f"{source.name!r}: its metadata claims about {reader.claimed} frames but {num_frames} are there "
            f"(truncated or damaged, or wrong metadata); using {num_frames}.",
            VideoDecodingWarning,
            stacklevel=3,
        )
    return result, reader


def read_video(source, sampler: Optional[Callable[[FrameTimeline], np.ndarray]] = None, *, keep_coded_frames=False):
    """Decode the frames of a video that `sampler` picks.

    Args:
        source: a path (any container FFmpeg reads: mp4, mkv, webm, avi, mov, gif, ...), bytes, or a binary
            file object.
        sampler: called with the video's `FrameTimeline` (`.num_frames`, `.timestamps`, `.duration`), returns
            integer frame indices of any shape (e.g. (num_clips, num_frames)); None reads every frame.
        keep_coded_frames: frames as coded, without the display rotation/flip and aspect-ratio stretch.
    Returns:
        `(frames, info)`: frames uint8 RGB of shape (*indices.shape, H, W, 3), and a `VideoInfo`.
    Raises:
        FileNotFoundError / IsADirectoryError for a missing path, `VideoDecodingError` (a ValueError) for
        empty, non-video, audio-only or undecodable input.
    """

    def work(reader):
        indices = _sample(sampler, reader.timeline, reader.source.name)
        return indices, dict(reader.frames(sorted(set(indices.reshape(-1).tolist()))))

    (indices, frames), reader = read_with_fallback(source, work, keep_coded_frames)
    flat = indices.reshape(-1)
    video = np.stack([frames[i] for i in flat.tolist()]).reshape(*indices.shape, *frames[int(flat[0])].shape)
    info = VideoInfo(
        reader.source.name, reader.timeline.num_frames, reader.fps, video.shape[-3], video.shape[-2], reader.codec,
        indices, reader.timeline.timestamps[indices], reader.timeline.duration,
    )
    return video, info


__all__ = [
    "FrameTimeline",
    "SAMPLING_MODES",
    "VideoDecodingError",
    "VideoDecodingWarning",
    "VideoInfo",
    "VideoReader",
    "is_video_source",
    "orient",
    "read_video",
    "read_with_fallback",
    "sample_frame_indices",
    "segment_indices",
    "stride_indices",
]
