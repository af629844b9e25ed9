"""Real encoded test videos, written with PyAV, whose frames say which frame they are.

Frame `i` is a flat colour with red = `frame_level(i)`; after lossy coding the mean red of a decoded frame
still identifies `i` (levels are 9 apart), so tests can check exactly which frames a reader returned.
Shared by the test modules through `conftest.py` fixtures.
"""

import os
from fractions import Fraction

import av
import numpy as np

# (container extension, codec, pixel format): the formats the tests cover.
FORMATS = {
    "mp4": ("mp4", "h264", "yuv420p"),
    "webm": ("webm", "libvpx-vp9", "yuv420p"),
    "mkv": ("mkv", "h264", "yuv420p"),
    "avi": ("avi", "mpeg4", "yuv420p"),
    "mov": ("mov", "mpeg4", "yuv420p"),
    "gif": ("gif", "gif", "rgb8"),
}


def frame_level(index):
    """Red level of frame `index` (distinct for indices 0..24)."""
    return 16 + 9 * index


def frame_index_of(frame):
    """Recover the index of a decoded frame (H, W, 3) uint8 from its mean red level."""
    return int(round((float(np.asarray(frame)[..., 0].mean()) - 16) / 9))


def make_frames(num_frames, height=48, width=64):
    """uint8 (T, H, W, 3) frames; frame i is flat with red `frame_level(i)`, green 128, blue 64."""
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    frames[..., 1], frames[..., 2] = 128, 64
    for i in range(num_frames):
        frames[i, ..., 0] = frame_level(i)
    return frames


def write_video(path, frames, fmt="mp4", fps=10, gop=None):
    """Encode uint8 frames (T, H, W, 3) into `path` in the container/codec named by `fmt` (see FORMATS)."""
    _, codec, pix_fmt = FORMATS[fmt]
    with av.open(os.fspath(path), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = pix_fmt
        if gop is not None:
            stream.codec_context.gop_size = gop
        if codec == "h264":
            stream.options = {"crf": "10", "preset": "ultrafast"}
        elif codec == "mpeg4":
            stream.codec_context.bit_rate = 2_000_000
        for array in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def write_audio_only(path, seconds=0.5, rate=8000):
    """A WAV file with a sine tone and no video stream."""
    with av.open(os.fspath(path), mode="w") as container:
        stream = container.add_stream("pcm_s16le", rate=rate)
        stream.layout = "mono"
        samples = (np.sin(np.arange(int(seconds * rate)) / 5.0) * 10000).astype(np.int16)[None, :]
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = rate
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def patch_avi_frame_count(path, claimed):
    """Overwrite the frame counts in an AVI header (avih dwTotalFrames, strh dwLength) with `claimed`."""
    data = bytearray(open(path, "rb").read())
    avih = data.index(b"avih") + 8  # after the chunk id and size
    data[avih + 16 : avih + 20] = int(claimed).to_bytes(4, "little")
    strh = data.index(b"strh") + 8
    data[strh + 32 : strh + 36] = int(claimed).to_bytes(4, "little")
    with open(path, "wb") as file:
        file.write(bytes(data))
    return path
