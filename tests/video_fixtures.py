"""Real encoded test videos, written with PyAV, whose frames say which frame they are.

Frame `i` is a flat colour with red = `frame_level(i)`; after lossy coding the mean red of a decoded frame
still identifies `i` (levels are 9 apart), so tests can check exactly which frames a reader returned.
Shared by the test modules through `conftest.py` fixtures.
"""

import os
import struct
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
    "flv": ("flv", "flv", "yuv420p"),
    "wmv": ("wmv", "wmv2", "yuv420p"),
    "3gp": ("3gp", "mpeg4", "yuv420p"),
    "mpg": ("mpg", "mpeg2video", "yuv420p"),
    "ts": ("ts", "h264", "yuv420p"),
    "h264": ("h264", "h264", "yuv420p"),  # a raw elementary stream: no timestamps, no frame rate
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
        elif codec in ("mpeg4", "wmv2", "flv", "mpeg2video"):  # their default bit rates blur the levels
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


# ---- videos as phones, editors and broadcasts make them ------------------------------------------------


def asymmetric_pattern(height=48, width=64):
    """uint8 (H, W, 3) that no flip or rotation maps onto itself: a red top-left square, a blue bottom band."""
    image = np.full((height, width, 3), 128, dtype=np.uint8)
    image[: height // 3, : width // 4] = (255, 0, 0)
    image[-height // 3 :, :] = (0, 0, 255)
    return image


def patch_mp4_display_matrix(path, a, b, c, d):
    """Write the 2x2 part (a, b; c, d, in whole units) of the first track's tkhd matrix of an mp4, as phones
    record their rotation; FFmpeg reads it back as the stream's display matrix."""
    data = bytearray(open(path, "rb").read())
    start = data.index(b"tkhd") + 4  # version byte
    matrix = start + 4 + (32 if data[start] == 1 else 20) + 16  # flags, times/ids/duration, reserved..volume
    data[matrix : matrix + 36] = struct.pack(">9i", a << 16, b << 16, 0, c << 16, d << 16, 0, 0, 0, 1 << 30)
    with open(path, "wb") as file:
        file.write(bytes(data))
    return path


def write_h264(path, frames, fps=10, pts=None, time_base=None, container_format=None, sample_aspect_ratio=None,
               pix_fmt="yuv420p"):
    """h264 frames (T, H, W, 3) with optional explicit timestamps `pts` (in `time_base`) and a sample aspect
    ratio; any container PyAV writes (`container_format` for extension-less names)."""
    with av.open(os.fspath(path), mode="w", format=container_format) as container:
        stream = container.add_stream("h264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        stream.options = {"crf": "10", "preset": "ultrafast"}
        if sample_aspect_ratio is not None:
            stream.codec_context.sample_aspect_ratio = Fraction(sample_aspect_ratio)
        if time_base is not None:
            stream.codec_context.time_base = Fraction(time_base)
        for i, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = int(pts[i]), Fraction(time_base)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def write_with_audio(path, frames, fps=10, audio_rate=16000):
    """mp4 with h264 video (T, H, W, 3) and an AAC tone as long as the video."""
    with av.open(os.fspath(path), mode="w") as container:
        video = container.add_stream("h264", rate=Fraction(fps))
        video.width, video.height, video.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        video.options = {"crf": "23", "preset": "ultrafast"}
        audio = container.add_stream("aac", rate=audio_rate)
        audio.layout = "mono"
        samples_per_frame = audio_rate // fps
        for i, array in enumerate(frames):
            container.mux(video.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
            t = np.arange(i * samples_per_frame, (i + 1) * samples_per_frame) / audio_rate
            sound = av.AudioFrame.from_ndarray((np.sin(2 * np.pi * 440 * t) * 0.3).astype(np.float32)[None], "flt", "mono")
            sound.sample_rate, sound.pts = audio_rate, i * samples_per_frame
            container.mux(audio.encode(sound))
        container.mux(video.encode(None))
        container.mux(audio.encode(None))
    return path
