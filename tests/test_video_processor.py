"""VideoMambaVideoProcessor / VideoMambaProcessor: inputs, sampling, transforms, views, save/load, datasets."""

import json
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
import torch
from PIL import Image
from video_fixtures import (
    asymmetric_pattern,
    frame_index_of,
    frame_level,
    make_frames,
    patch_mp4_display_matrix,
    write_h264,
)
from transformers import AutoProcessor
from transformers.models.auto.video_processing_auto import AutoVideoProcessor
from transformers.video_utils import VideoMetadata

from modeling_videomamba import (
    VideoMambaForVideoClassification,
    VideoMambaProcessor,
    VideoMambaVideoProcessor,
    multi_view_predict,
    read_video,
)
from modeling_videomamba.processors.video_decoding import segment_indices
from modeling_videomamba.processors.video_transforms import IMAGENET_MEAN, IMAGENET_STD, random_resized_crop_box

MEAN, STD = np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)


@pytest.fixture
def processor():
    return VideoMambaVideoProcessor(num_frames=4, size=32, crop_size=32)


def _red_indices(pixel_values):
    """Frame indices of processed flat-colour test frames (B, T, 3, H, W), read off the red channel."""
    red = pixel_values[..., 0, :, :].mean((-1, -2)).numpy() * STD[0] + MEAN[0]
    return np.rint((red * 255 - 16) / 9).astype(int).tolist()


def _pil_reference(frames, shortest_edge, crop):
    """Independent reference of the evaluation transform with PIL: bilinear resize of the shorter side,
    centre crop, 1/255, ImageNet normalisation; (T, 3, crop, crop)."""
    out = []
    for frame in frames:
        image = Image.fromarray(frame)
        width, height = image.size
        scale = shortest_edge / min(width, height)
        image = image.resize((int(width * scale) if width > height else shortest_edge,
                              int(height * scale) if height > width else shortest_edge), Image.BILINEAR)
        width, height = image.size
        left, top = (width - crop) // 2, (height - crop) // 2
        array = np.asarray(image.crop((left, top, left + crop, top + crop)), dtype=np.float64) / 255
        out.append(((array - MEAN) / STD).transpose(2, 0, 1))
    return np.stack(out)


def test_file_input_gives_normalised_pixel_values_of_the_sampled_frames(processor, videos):
    inputs = processor(videos["mp4"], return_tensors="pt")
    pixel_values = inputs["pixel_values"]
    assert pixel_values.shape == (1, 4, 3, 32, 32) and pixel_values.dtype == torch.float32
    assert _red_indices(pixel_values) == [[2, 7, 12, 17]]  # middle frames of 4 segments of 20
    green = pixel_values[0, :, 1].mean().item()
    assert green == pytest.approx((128 / 255 - MEAN[1]) / STD[1], abs=0.05)
    assert set(inputs.keys()) == {"pixel_values"}


def test_transform_matches_a_pil_reference(processor):
    rng = np.random.default_rng(0)
    for shape in ((4, 45, 60, 3), (4, 80, 50, 3)):  # landscape and portrait
        video = rng.integers(0, 256, shape, dtype=np.uint8)
        ours = processor(video, do_sample_frames=False)["pixel_values"][0].numpy()
        reference = _pil_reference(video, 32, 32)
        assert ours.shape == reference.shape == (4, 3, 32, 32)
        # In 0-255 levels: both resize uint8 with an antialiased bilinear filter and round, so at most
        # one level apart where the two roundings differ, and almost everywhere equal.
        levels = np.abs(ours - reference) * STD[:, None, None] * 255
        assert levels.max() < 1.001 and levels.mean() < 0.02


def test_every_input_type_gives_the_same_pixels(processor, videos):
    frames = make_frames(20)
    expected = processor(frames)["pixel_values"]
    variants = [
        torch.from_numpy(frames),
        frames.transpose(0, 3, 1, 2),  # (T, C, H, W)
        list(frames),
        [Image.fromarray(frame) for frame in frames],
        frames[None],  # a 5-D batch of one
    ]
    for variant in variants:
        assert torch.equal(processor(variant)["pixel_values"], expected)
    decoded, _ = read_video(videos["mkv"])
    from_file = processor(videos["mkv"])["pixel_values"]
    assert torch.equal(from_file, processor(decoded)["pixel_values"])
    assert torch.equal(processor(videos["mkv"].read_bytes())["pixel_values"], from_file)
    with open(videos["mkv"], "rb") as file:
        assert torch.equal(processor(file)["pixel_values"], from_file)
    from transformers.image_utils import ChannelDimension

    # 3 frames of 3 rows: both axes could be channels, the stated format decides.
    square = np.random.default_rng(0).integers(0, 256, (3, 3, 3, 3), dtype=np.uint8)
    first = processor(square, do_sample_frames=False, do_resize=False, crop_size=3, input_data_format="channels_first")
    last = processor(square.transpose(0, 2, 3, 1), do_sample_frames=False, do_resize=False, crop_size=3,
                     input_data_format=ChannelDimension.LAST)
    assert torch.equal(first["pixel_values"], last["pixel_values"])
    grey = processor(frames[..., :1])["pixel_values"]  # 1 channel -> RGB
    assert torch.allclose(grey[:, :, 0], grey[:, :, 2] * STD[2] / STD[0] + (MEAN[2] - MEAN[0]) / STD[0], atol=1e-5)


def test_batches_of_different_lengths_sizes_and_kinds(processor, videos):
    batch = [videos["mp4"], videos["tall"], make_frames(3, 40, 30), videos["gif"]]
    pixel_values = processor(batch)["pixel_values"]
    assert pixel_values.shape == (4, 4, 3, 32, 32)
    # 9 frames in 4 segments: 1.125, 3.375, 5.625, 7.875; 3 frames repeat: 0.375, 1.125, 1.875, 2.625.
    assert _red_indices(pixel_values) == [[2, 7, 12, 17], [1, 3, 5, 7], [0, 1, 1, 2], [2, 7, 12, 17]]


def test_call_options_override_the_config(processor, videos):
    assert processor(videos["mp4"], num_frames=5)["pixel_values"].shape == (1, 5, 3, 32, 32)
    strided = processor(videos["mp4"], sampling="stride", frame_stride=2)["pixel_values"]
    assert _red_indices(strided) == [[6, 8, 10, 12]]  # span 7 in 20 frames: start 13 // 2 = 6
    whole = processor(make_frames(7), do_sample_frames=False)["pixel_values"]
    assert _red_indices(whole) == [list(range(7))]
    bigger = processor(videos["mp4"], size=48, crop_size={"height": 40, "width": 48})["pixel_values"]
    assert bigger.shape == (1, 4, 3, 40, 48)
    raw = processor(make_frames(4), do_normalize=False, do_rescale=False)["pixel_values"]
    assert raw[0, :, 0].mean((-1, -2)).tolist() == pytest.approx([frame_level(i) for i in range(4)], abs=1e-3)
    as_numpy = processor(videos["mp4"], return_tensors="np")["pixel_values"]
    assert isinstance(as_numpy, np.ndarray) and as_numpy.shape == (1, 4, 3, 32, 32)


def test_training_is_random_reproducible_and_augments(processor, videos):
    first = processor(videos["long"], training=True, generator=3)["pixel_values"]
    assert torch.equal(first, processor(videos["long"], training=True, generator=3)["pixel_values"])
    runs = [processor(videos["long"], training=True, generator=seed)["pixel_values"] for seed in range(8)]
    assert len({tuple(map(tuple, _red_indices(run))) for run in runs}) > 1  # sampled frames differ
    # A horizontal ramp: flipped clips have their bright side on the left.
    ramp = np.tile(np.linspace(0, 255, 64, dtype=np.uint8)[None, None, :, None], (8, 48, 1, 3))
    def slope(**kwargs):  # +1 when red grows to the right in the first frame, -1 when flipped
        red = processor(ramp, training=True, **kwargs)["pixel_values"][0, 0, 0]
        return np.sign(red.mean(0).diff().sum().item())

    assert {slope(generator=seed) for seed in range(12)} == {-1.0, 1.0}
    assert {slope(generator=seed, train_flip=False) for seed in range(12)} == {1.0}


def test_random_resized_crop_boxes_respect_scale_and_ratio():
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, height, width = random_resized_crop_box(60, 80, (0.2, 0.6), (0.75, 1.3334), rng)
        assert 0 <= top and top + height <= 60 and 0 <= left and left + width <= 80
        assert 0.18 <= height * width / 4800 <= 0.62 and 0.7 <= width / height <= 1.4


def test_multi_view_clips_and_crops(processor, videos):
    ramp = np.tile(np.linspace(0, 255, 64, dtype=np.uint8)[None, None, :, None], (20, 32, 1, 3))
    inputs = processor([ramp, ramp], num_temporal_clips=2, num_spatial_crops=3)
    assert inputs["num_views"] == 6 and inputs["pixel_values"].shape == (12, 4, 3, 32, 32)
    means = inputs["pixel_values"][:6, 0, 0].mean((-1, -2)).tolist()
    assert means[0] < means[1] < means[2] and means[3:] == means[:3]  # left, centre, right crops
    clips = processor(videos["mp4"], num_temporal_clips=2)
    # 4 segments of 5: clip 0 at 1.25 into each segment, clip 1 at 3.75.
    assert _red_indices(clips["pixel_values"]) == [[1, 6, 11, 16], [3, 8, 13, 18]]
    tall = processor(videos["tall"], num_spatial_crops=3)["pixel_values"]
    assert tall.shape == (3, 4, 3, 32, 32)


def test_multi_view_predict_averages_over_the_views_of_each_video(processor, videos, tiny_config):
    torch.manual_seed(0)
    model = VideoMambaForVideoClassification(tiny_config).eval()
    inputs = processor([videos["mp4"], videos["webm"]], num_temporal_clips=2, num_spatial_crops=3)
    probs = multi_view_predict(model, inputs["pixel_values"], inputs["num_views"], chunk_size=5)
    with torch.no_grad():
        per_view = [model(pixel_values=row[None]).logits[0] for row in inputs["pixel_values"]]
    expected = torch.stack(per_view).softmax(-1).view(2, 6, 3).mean(1)
    assert probs.shape == (2, 3) and torch.allclose(probs, expected, atol=1e-5)
    logits = multi_view_predict(model, inputs["pixel_values"], 6, average="logits")
    assert torch.allclose(logits, torch.stack(per_view).view(2, 6, 3).mean(1), atol=1e-5)
    with pytest.raises(ValueError, match="num_views=5"):
        multi_view_predict(model, inputs["pixel_values"], 5)


@pytest.mark.parametrize(
    "videos_arg, kwargs, message",
    [
        (make_frames(4), {"nonsense": 1}, "Unexpected arguments"),
        (make_frames(4), {"return_tensors": "tf"}, "return_tensors"),
        (make_frames(4), {"sampling": "dense"}, "sampling"),
        (make_frames(4), {"num_spatial_crops": 2}, "num_spatial_crops"),
        (make_frames(4), {"num_frames": 0}, "num_frames"),
        (make_frames(4), {"training": True, "num_temporal_clips": 2}, "evaluation"),
        ([], {}, "empty"),
        (np.zeros((4, 5)), {}, "shape"),
        (np.zeros((0, 8, 8, 3), np.uint8), {}, "at least one frame"),
        ([np.zeros((8, 8, 3), np.uint8), np.zeros((9, 8, 3), np.uint8)], {}, r"share one size.*\(8, 8, 3\), \(9, 8, 3\)"),
        (np.zeros((4, 8, 8, 7)), {}, "channel"),
        (make_frames(4), {"input_data_format": "last"}, "input_data_format"),
        ([make_frames(4), make_frames(2, 20, 20)], {"do_sample_frames": False}, "different shapes"),
        ("https://example.com/v.mp4", {}, "Download"),
        (make_frames(4, 16, 16), {"do_resize": False}, "Cannot crop"),
    ],
)
def test_bad_input_raises_a_clear_error(processor, videos_arg, kwargs, message):
    with pytest.raises(ValueError, match=message):
        processor(videos_arg, **kwargs)


def test_save_load_and_auto_classes(tmp_path, videos, tiny_config):
    config = tiny_config
    processor = VideoMambaVideoProcessor.from_model_config(config, sampling="stride", num_spatial_crops=3)
    assert (processor.num_frames, processor.size["shortest_edge"], processor.crop_size) == (
        4, 32, {"height": 32, "width": 32}
    )
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "video_preprocessor_config.json").read_text())
    assert saved["num_frames"] == 4 and saved["video_processor_type"] == "VideoMambaVideoProcessor"
    assert saved["auto_map"]["AutoVideoProcessor"] == "video_processing_videomamba.VideoMambaVideoProcessor"
    assert (tmp_path / "video_processing_videomamba.py").exists() and (tmp_path / "video_decoding.py").exists()
    loaded = VideoMambaVideoProcessor.from_pretrained(tmp_path)
    assert loaded.to_dict() == processor.to_dict()
    assert VideoMambaVideoProcessor.from_pretrained(tmp_path, num_frames=6).num_frames == 6
    config.save_pretrained(tmp_path)
    auto = AutoVideoProcessor.from_pretrained(tmp_path)
    assert type(auto) is VideoMambaVideoProcessor and auto.sampling == "stride"
    assert torch.equal(auto(videos["mp4"])["pixel_values"], processor(videos["mp4"])["pixel_values"])


def test_processor_wraps_the_video_processor(tmp_path, videos, tiny_config):
    config = tiny_config
    config.save_pretrained(tmp_path)
    processor = VideoMambaProcessor(VideoMambaVideoProcessor.from_model_config(config, frame_stride=2))
    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded) is VideoMambaProcessor and loaded.video_processor.frame_stride == 2
    expected = processor.video_processor(videos["mp4"])["pixel_values"]
    assert torch.equal(loaded(videos=videos["mp4"])["pixel_values"], expected)
    assert loaded.model_input_names == ["pixel_values"]
    with pytest.raises(ValueError, match="videos"):
        processor()
    with pytest.raises(TypeError, match="VideoProcessorMixin"):
        VideoMambaProcessor(video_processor="not a processor")


def test_datasets_videofolder_rows_go_through_the_processor(tmp_path, videos):
    from datasets import Video, load_dataset

    from modeling_videomamba import dataset_video_transform

    for label, name in (("run", "mp4"), ("walk", "mov"), ("walk", "mkv")):  # videofolder lists no webm
        (tmp_path / "data" / label).mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / label / videos[name].name).write_bytes(videos[name].read_bytes())
    dataset = load_dataset(
        "videofolder", data_dir=str(tmp_path / "data"), split="train", cache_dir=str(tmp_path / "cache")
    )
    dataset = dataset.cast_column("video", Video(decode=False))
    processor = VideoMambaVideoProcessor(num_frames=4, size=32, crop_size=32)
    batch = dataset.with_transform(dataset_video_transform(processor))[:3]
    assert batch["pixel_values"].shape == (3, 4, 3, 32, 32)
    assert sorted(batch["labels"].tolist()) == [0, 1, 1]
    assert _red_indices(batch["pixel_values"]) == [[2, 7, 12, 17]] * 3
    row = dataset.with_transform(dataset_video_transform(processor, training=True))[0]
    assert row["pixel_values"].shape == (4, 3, 32, 32)  # one row: (T, C, H, W)
    in_memory = dataset_video_transform(processor)({"video": [{"bytes": videos["mp4"].read_bytes(), "path": None}]})
    assert torch.equal(in_memory["pixel_values"], processor(videos["mp4"])["pixel_values"])
    with pytest.raises(ValueError, match="one row per video"):
        dataset_video_transform(processor, num_temporal_clips=4)


def test_nothing_imports_torchvision(videos):
    code = (
        "import sys, modeling_videomamba as m\n"
        f"m.VideoMambaVideoProcessor(num_frames=2, size=16, crop_size=16)({str(videos['mp4'])!r})\n"
        "assert 'torchvision' not in sys.modules, 'torchvision was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_frame_fixture_is_self_consistent():
    assert [frame_index_of(frame) for frame in make_frames(25)] == list(range(25))
    assert segment_indices(25, 5).tolist() == [[2, 7, 12, 17, 22]]


# ---- time-based sampling, metadata, orientation ---------------------------------------------------------

# 20 frames at 20 fps, then 4 at 4 fps (milliseconds): 2 seconds.
VFR_MS = [50 * i for i in range(20)] + [1000 + 250 * i for i in range(4)]


@pytest.fixture(scope="module")
def vfr_clip(tmp_path_factory):
    return write_h264(tmp_path_factory.mktemp("vfr") / "vfr.mp4", make_frames(24), pts=VFR_MS, time_base=Fraction(1, 1000))


def test_fps_sampling_is_even_in_time_on_a_variable_frame_rate_file(processor, vfr_clip):
    out = processor(vfr_clip, fps=2, return_metadata=True)
    # One frame per half second at 0.25, 0.75, 1.25, 1.75 s: the frames shown then (independent lookup).
    expected = [max(i for i, ms in enumerate(VFR_MS) if ms <= t) for t in (250, 750, 1250, 1750)]
    assert _red_indices(out["pixel_values"]) == [expected]
    (metadata,) = out["video_metadata"]
    assert isinstance(metadata, VideoMetadata)
    assert metadata.frames_indices == expected
    assert metadata.timestamps == pytest.approx([VFR_MS[i] / 1000 for i in expected])
    assert metadata.total_num_frames == 24 and metadata.duration == pytest.approx(2.0)
    assert (metadata.height, metadata.width) == (48, 64) and metadata.video_backend == "pyav"
    four = processor(vfr_clip, fps=4)["pixel_values"]
    assert four.shape[1] == 8  # 2 s at 4 fps
    # num_frames segments are even in time too (not in frame indices).
    assert _red_indices(processor(vfr_clip)["pixel_values"]) == [expected]


def test_fps_and_num_frames_in_one_call_are_refused_and_array_fps_needs_metadata(processor, vfr_clip):
    with pytest.raises(ValueError, match="mutually exclusive"):
        processor(vfr_clip, fps=2, num_frames=4)
    with pytest.raises(ValueError, match="frame rate"):
        processor(make_frames(20), fps=2)
    with pytest.raises(ValueError, match="fps must be"):
        processor(vfr_clip, fps=0)
    # A constructor's fps gives way to a call's num_frames.
    by_fps = VideoMambaVideoProcessor(num_frames=4, size=32, crop_size=32, fps=5)
    assert by_fps(vfr_clip)["pixel_values"].shape[1] == 10
    assert by_fps(vfr_clip, num_frames=3)["pixel_values"].shape[1] == 3


def test_video_metadata_times_pre_decoded_arrays(processor):
    frames = make_frames(20)  # 2 s at 10 fps
    out = processor(frames, fps=2, video_metadata=VideoMetadata(total_num_frames=20, fps=10), return_metadata=True)
    assert _red_indices(out["pixel_values"]) == [[2, 7, 12, 17]]  # frames shown at 0.25, 0.75, 1.25, 1.75 s
    assert out["video_metadata"][0].timestamps == pytest.approx([0.2, 0.7, 1.2, 1.7])
    # An array holding frames 0, 2, 4, ... of a 10 fps video: its frame k is at 0.2 k seconds.
    held = {"fps": 10, "frames_indices": list(range(0, 40, 2)), "total_num_frames": 40}
    out = processor(frames, fps=1, video_metadata=held, return_metadata=True)
    assert _red_indices(out["pixel_values"]) == [[2, 7, 12, 17]]  # shown at 0.5, 1.5, 2.5, 3.5 s
    assert out["video_metadata"][0].frames_indices == [4, 14, 24, 34]
    with pytest.raises(ValueError, match="per video"):
        processor([frames, frames], video_metadata=[{"fps": 10}])


def test_rotated_phone_video_is_processed_upright(processor, tmp_path):
    path = patch_mp4_display_matrix(write_h264(tmp_path / "phone.mp4", np.stack([asymmetric_pattern()] * 4)), 0, 1, -1, 0)
    upright = np.rot90(asymmetric_pattern(), k=-1)  # displayed 48 wide, 64 high
    expected = processor(np.stack([upright] * 4))["pixel_values"]
    got = processor(path)["pixel_values"]
    assert (got - expected).abs().mean() < 0.05
    sideways = processor(path, keep_coded_frames=True)["pixel_values"]
    assert (sideways - processor(np.stack([asymmetric_pattern()] * 4))["pixel_values"]).abs().mean() < 0.05
    assert (sideways - expected).abs().mean() > 0.3
