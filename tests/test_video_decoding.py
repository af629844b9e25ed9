"""PyAV reading (processors/video_decoding.py) on real encoded files, and the frame samplers."""

import io
import logging
import os
from fractions import Fraction

import av
import numpy as np
import pytest
from video_fixtures import (
    FORMATS,
    asymmetric_pattern,
    frame_index_of,
    make_frames,
    patch_mp4_display_matrix,
    write_h264,
)

from modeling_videomamba.processors import video_decoding
from modeling_videomamba.processors.video_decoding import (
    VideoDecodingError,
    VideoDecodingWarning,
    FrameTimeline,
    read_video,
    sample_frame_indices,
    segment_indices,
    stride_indices,
)


def _plain_decode(path, wanted=None):
    """Independent reference: decode every packet in order with PyAV (skipping packets that fail to decode);
    keep the frames at `wanted` indices."""
    frames = []
    with av.open(os.fspath(path)) as container:
        for packet in container.demux(video=0):
            try:
                # (one-thread conversion: a threaded frame left to the collector hangs forked test workers)
                frames.extend(video_decoding._to_rgb_array(frame) for frame in packet.decode())
            except av.InvalidDataError:
                pass
    return frames if wanted is None else np.stack([frames[i] for i in wanted])


# ---- samplers -------------------------------------------------------------------------------------------


def test_segment_eval_takes_the_middle_frame_of_each_segment():
    # 20 frames in 4 segments of 5: middles at 2.5, 7.5, 12.5, 17.5.
    assert segment_indices(20, 4).tolist() == [[2, 7, 12, 17]]
    # 10 frames in 4 segments of 2.5: middles at 1.25, 3.75, 6.25, 8.75.
    assert segment_indices(10, 4).tolist() == [[1, 3, 6, 8]]


def test_segment_clips_spread_inside_each_segment():
    clips = segment_indices(40, 4, num_clips=4)  # segments of 10; clip k at 10 * (k + 0.5) / 4
    assert clips[:, 0].tolist() == [1, 3, 6, 8]
    assert (clips[:, 1:] - clips[:, :1] == np.arange(1, 4) * 10).all()


def test_segment_training_draws_one_random_frame_per_segment():
    rng = np.random.default_rng(0)
    draws = np.concatenate([segment_indices(40, 4, training=True, rng=rng) for _ in range(300)])
    segment_of = draws // 10
    assert (segment_of == np.arange(4)).all()  # each index stays in its own segment
    assert all(len(set(draws[:, i])) == 10 for i in range(4))  # every frame of a segment gets drawn
    again = segment_indices(40, 4, training=True, rng=np.random.default_rng(5))
    assert (again == segment_indices(40, 4, training=True, rng=np.random.default_rng(5))).all()


def test_short_videos_repeat_frames():
    assert segment_indices(2, 4).tolist() == [[0, 0, 1, 1]]
    assert segment_indices(1, 3).tolist() == [[0, 0, 0]]
    assert stride_indices(5, 4, 4).tolist() == [[0, 4, 4, 4]]


def test_stride_sampling_as_videomae():
    # span of 4 frames at stride 4 is 13; 100 frames leave starts 0..87; one eval clip is centred.
    assert stride_indices(100, 4, 4).tolist() == [[43, 47, 51, 55]]
    assert stride_indices(100, 4, 4, num_clips=2)[:, 0].tolist() == [0, 87]
    rng = np.random.default_rng(1)
    starts = {int(stride_indices(100, 4, 4, training=True, rng=rng)[0, 0]) for _ in range(400)}
    assert min(starts) >= 0 and max(starts) <= 87 and len(starts) > 50
    assert sample_frame_indices(100, 4, sampling="stride", stride=4).tolist() == [[43, 47, 51, 55]]


@pytest.mark.parametrize(
    "call",
    [
        lambda: segment_indices(0, 4),
        lambda: segment_indices(10, 0),
        lambda: stride_indices(10, 4, 0),
        lambda: sample_frame_indices(10, 4, sampling="dense"),
    ],
)
def test_sampler_arguments_are_checked(call):
    with pytest.raises(ValueError):
        call()


# ---- reading --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_every_container_reads_the_sampled_frames(videos, fmt):
    frames, info = read_video(videos[fmt], lambda t: segment_indices(t.num_frames, 4))
    assert info.num_frames == 20
    assert info.fps == pytest.approx(25.0 if fmt == "h264" else 10.0)  # FFmpeg guesses 25 for raw streams
    assert frames.shape == (1, 4, 48, 64, 3) and frames.dtype == np.uint8
    assert [frame_index_of(f) for f in frames[0]] == [2, 7, 12, 17]
    everything, info_all = read_video(videos[fmt])
    assert everything.shape == (20, 48, 64, 3) and info_all.frame_indices.tolist() == list(range(20))
    assert [frame_index_of(f) for f in everything] == list(range(20))


@pytest.mark.parametrize("name", ["long", "long_mkv"])
def test_seeking_decodes_only_what_is_needed_and_matches_sequential_decoding(videos, name, decoded_frame_pts):
    decoded = decoded_frame_pts
    frames, info = read_video(videos[name], lambda t: segment_indices(t.num_frames, 4))
    assert info.frame_indices.tolist() == [[30, 90, 150, 210]]
    # A keyframe every 12 frames: at most 12 frames decoded per target instead of 211 sequentially.
    assert 4 <= len(decoded) <= 4 * 12
    assert (frames[0] == _plain_decode(videos[name], [30, 90, 150, 210])).all()


def test_real_world_clip_matches_plain_pyav_decoding(real_clip):
    frames, info = read_video(real_clip, lambda t: segment_indices(t.num_frames, 8))
    reference = _plain_decode(real_clip)
    assert info.num_frames == len(reference) == 132
    assert frames.shape == (1, 8, 720, 1280, 3)
    assert (frames[0] == np.stack([reference[i] for i in info.frame_indices[0]])).all()


def test_bytes_and_file_objects_read_like_paths(videos):
    path = videos["webm"]
    expected, _ = read_video(path, lambda t: segment_indices(t.num_frames, 3))
    from_bytes, info = read_video(path.read_bytes(), lambda t: segment_indices(t.num_frames, 3))
    assert info.source.startswith("<") and (from_bytes == expected).all()
    with open(path, "rb") as file:
        assert (read_video(file, lambda t: segment_indices(t.num_frames, 3))[0] == expected).all()

    class Unseekable(io.RawIOBase):
        def __init__(self, data):
            self._data = io.BytesIO(data)

        def readable(self):
            return True

        def seekable(self):
            return False

        def readinto(self, buffer):
            return self._data.readinto(buffer)

    assert (read_video(Unseekable(path.read_bytes()), lambda t: segment_indices(t.num_frames, 3))[0] == expected).all()


def test_portrait_video_keeps_its_shape(videos):
    frames, info = read_video(videos["tall"])
    assert frames.shape == (9, 64, 40, 3) and (info.height, info.width) == (64, 40)


def test_wrong_frame_count_in_metadata_is_ignored_with_a_warning(broken_videos):
    path = broken_videos["wrong_count_avi"]
    with av.open(os.fspath(path)) as container:
        assert container.streams.video[0].frames == 1000  # the header really lies
    with pytest.warns(VideoDecodingWarning, match="1000"):
        frames, info = read_video(path, lambda t: segment_indices(t.num_frames, 4))
    assert info.num_frames == 12
    assert [frame_index_of(f) for f in frames[0]] == [1, 4, 7, 10]


@pytest.mark.parametrize("kind", ["truncated_mkv", "corrupt_mkv"])
def test_damaged_files_keep_the_frames_that_decode(broken_videos, kind):
    path = broken_videos[kind]
    reference = _plain_decode(path)
    assert 0 < len(reference) < 240
    with pytest.warns(VideoDecodingWarning, match="damaged"):
        frames, info = read_video(path, lambda t: segment_indices(t.num_frames, 4))
    assert info.num_frames == len(reference)
    assert (frames[0] == np.stack([reference[i] for i in info.frame_indices[0]])).all()


@pytest.mark.parametrize(
    "kind, message",
    [
        ("empty", "empty"),
        ("garbage", "Could not open"),
        ("truncated_header", "Could not open"),
        ("audio_only", "no video stream"),
        ("undecodable", "No frame"),
    ],
)
def test_unreadable_files_raise_a_clear_error_naming_the_file(broken_videos, kind, message):
    path = broken_videos[kind]
    with pytest.raises(VideoDecodingError, match=message) as error:
        read_video(path, lambda t: segment_indices(t.num_frames, 4))
    assert path.name in str(error.value)
    assert isinstance(error.value, ValueError)


def test_missing_files_and_bad_sources_raise(broken_videos, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        read_video(broken_videos["missing"])
    with pytest.raises(IsADirectoryError):
        read_video(tmp_path)
    with pytest.raises(VideoDecodingError, match="empty"):
        read_video(b"")
    with pytest.raises(VideoDecodingError, match="int"):
        read_video(42)


def test_sampler_indices_out_of_range_are_rejected(videos):
    with pytest.raises(ValueError, match=r"outside \[0, 20\)"):
        read_video(videos["mp4"], lambda t: np.array([0, t.num_frames]))


# ---- as players show them: display matrix, sample aspect ratio, resolution changes, timestamps ---------

# Display matrices (a, b; c, d) as phones and editors write them, and what a player shows for a coded
# image: numpy's own rotations and flips, written independently of `orient`. (Cross-checked once against
# the ffmpeg command line's autorotation, which gave identical pixels for all seven.)
ORIENTATIONS = {
    "rotate_90": ((0, 1, -1, 0), lambda image: np.rot90(image, k=-1)),  # portrait phone video
    "rotate_270": ((0, -1, 1, 0), lambda image: np.rot90(image, k=1)),
    "rotate_180": ((-1, 0, 0, -1), lambda image: np.rot90(image, k=2)),
    "hflip": ((-1, 0, 0, 1), lambda image: image[:, ::-1]),
    "vflip": ((1, 0, 0, -1), lambda image: image[::-1]),
    "transpose": ((0, 1, 1, 0), lambda image: image.transpose(1, 0, 2)),
    "antitranspose": ((0, -1, -1, 0), lambda image: np.rot90(image, k=2).transpose(1, 0, 2)),
}


@pytest.fixture(scope="module")
def oriented_clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("oriented")
    frames = np.stack([asymmetric_pattern()] * 3)
    return {
        name: patch_mp4_display_matrix(write_h264(root / f"{name}.mp4", frames), *matrix)
        for name, (matrix, _) in ORIENTATIONS.items()
    }


@pytest.mark.parametrize("name", sorted(ORIENTATIONS))
def test_display_matrix_is_applied_pixel_wise(oriented_clips, name):
    expected = ORIENTATIONS[name][1](asymmetric_pattern())
    frames, info = read_video(oriented_clips[name], lambda t: np.array([1]))
    assert frames.shape[1:] == expected.shape and (info.height, info.width) == expected.shape[:2]
    error = np.abs(frames[0].astype(int) - expected).mean()
    others = [np.abs(frames[0].astype(int) - f(asymmetric_pattern())).mean()
              for other, (_, f) in ORIENTATIONS.items() if f(asymmetric_pattern()).shape == expected.shape
              and not np.array_equal(f(asymmetric_pattern()), expected)]
    assert error < 4 and min(others) > 15  # upright, and no other orientation comes close
    coded, coded_info = read_video(oriented_clips[name], lambda t: np.array([1]), keep_coded_frames=True)
    assert np.abs(coded[0].astype(int) - asymmetric_pattern()).mean() < 4
    assert (coded_info.height, coded_info.width) == (48, 64)


@pytest.mark.parametrize("sar, shape", [(Fraction(2, 1), (48, 128)), (Fraction(1, 2), (96, 64))])
def test_non_square_pixels_are_stretched_to_the_displayed_aspect(tmp_path, sar, shape):
    path = write_h264(tmp_path / "anamorphic.mkv", np.stack([asymmetric_pattern()] * 2), sample_aspect_ratio=sar)
    frames, info = read_video(path)
    assert frames.shape == (2, *shape, 3) and (info.height, info.width) == shape
    # The stretch repeats pixels along one axis: subsampling it back gives the coded image.
    back = frames[0][:, ::2] if sar > 1 else frames[0][::2]
    assert np.abs(back.astype(int) - asymmetric_pattern()).mean() < 6
    assert read_video(path, keep_coded_frames=True)[0].shape == (2, 48, 64, 3)


@pytest.fixture(scope="module")
def resolution_change(tmp_path_factory):
    """MPEG-TS whose h264 stream switches from 64x48 yuv420p to 40x32 yuv444p at frame 6 (as broadcast or
    concatenated streams do): two muxed halves, timestamps continuing, joined byte-wise."""
    root = tmp_path_factory.mktemp("resolution")
    first = write_h264(root / "a.ts", make_frames(6), pts=range(6), time_base=Fraction(1, 10))
    second = write_h264(
        root / "b.ts", make_frames(12, 32, 40)[6:], pts=range(6, 12), time_base=Fraction(1, 10), pix_fmt="yuv444p"
    )
    path = root / "change.ts"
    path.write_bytes(first.read_bytes() + second.read_bytes())
    return path


def test_resolution_change_mid_stream_is_resized_to_the_first_frames_size(resolution_change, caplog):
    with av.open(os.fspath(resolution_change)) as container:  # the file really changes size and format
        sizes = {(f.width, f.height, f.format.name) for f in container.decode(video=0)}
    assert sizes == {(64, 48, "yuv420p"), (40, 32, "yuv444p")}
    with caplog.at_level(logging.DEBUG, logger=video_decoding.__name__):
        frames, info = read_video(resolution_change, lambda t: segment_indices(t.num_frames, 4))
    assert frames.shape == (1, 4, 48, 64, 3) and info.num_frames == 12
    assert [frame_index_of(f) for f in frames[0]] == [1, 4, 7, 10]
    assert any("40x32" in record.getMessage() and "64x48" in record.getMessage() for record in caplog.records)
    everything, _ = read_video(resolution_change)
    assert everything.shape == (12, 48, 64, 3)


# 20 frames at 20 fps, then 4 at 4 fps: 2 seconds, most frames in the first.
VFR_MS = [50 * i for i in range(20)] + [1000 + 250 * i for i in range(4)]


@pytest.fixture(scope="module")
def vfr_clip(tmp_path_factory):
    root = tmp_path_factory.mktemp("vfr")
    return write_h264(root / "vfr.mkv", make_frames(24), pts=VFR_MS, time_base=Fraction(1, 1000))


def _shown_at(seconds):
    """Reference: the last frame whose presentation time is not after `seconds` (from VFR_MS)."""
    return max(i for i, ms in enumerate(VFR_MS) if ms <= seconds * 1000 + 1e-6)


def test_variable_frame_rate_timeline_and_time_based_segments(vfr_clip):
    frames, info = read_video(vfr_clip, lambda t: video_decoding.sample_frame_indices(t.num_frames, 4, timeline=t))
    assert info.frame_timestamps[0].tolist() == pytest.approx([VFR_MS[i] / 1000 for i in info.frame_indices[0]])
    assert info.duration == pytest.approx(2.0)
    # Segment middles in time: 0.25, 0.75, 1.25, 1.75 s -- not the frame-index middles (2, 8, 14, 20 ...).
    expected = [_shown_at(t) for t in (0.25, 0.75, 1.25, 1.75)]
    assert info.frame_indices[0].tolist() == expected == [5, 15, 21, 23]
    assert [frame_index_of(f) for f in frames[0]] == expected


def test_time_and_index_sampling_agree_at_a_constant_frame_rate():
    rng = np.random.default_rng(3)
    for num_total in (7, 20, 33, 240):
        timeline = FrameTimeline.regular(num_total, 29.97)
        for num_frames in (1, 4, 8, 16):
            for num_clips in (1, 3):
                by_time = video_decoding.sample_frame_indices(num_total, num_frames, num_clips=num_clips, timeline=timeline)
                assert (by_time == segment_indices(num_total, num_frames, num_clips=num_clips)).all()
        seed = int(rng.integers(1000))
        by_time = video_decoding.sample_frame_indices(
            num_total, 8, training=True, rng=np.random.default_rng(seed), timeline=timeline
        )
        assert (by_time == segment_indices(num_total, 8, training=True, rng=np.random.default_rng(seed))).all()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (DataLoader workers fork on Linux)")
def test_frames_left_for_the_garbage_collector_do_not_hang_a_forked_worker(tmp_path):
    """A decoded frame that outlives its decoding in a reference cycle may be collected in a forked DataLoader
    worker; its converter must hold no threads there (PyAV 18's default started swscale slice threads, and the
    worker then waited forever while freeing them)."""
    import gc
    import signal
    import time

    path = write_h264(tmp_path / "clip.mp4", make_frames(12, 48, 64), fps=10)
    gc.collect()  # only this test's frames are left for the child to collect
    gc.disable()
    try:
        read_video(path)
        pid = os.fork()
        if pid == 0:
            gc.collect()
            os._exit(0)
    finally:
        gc.enable()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail("a forked child hung while collecting frames decoded in its parent")
