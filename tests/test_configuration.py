import json

import pytest
import torch

from modeling_videomamba import VideoMambaConfig, VideoMambaForImageClassification, VideoMambaForVideoClassification


def count_parameters(model_class, config):
    with torch.device("meta"):
        model = model_class(config)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "preset, hidden, depth, expected",
    [("tiny", 192, 24, 7_033_744), ("small", 384, 24, 25_568_656), ("middle", 576, 32, 73_875_856)],
)
def test_video_presets_have_the_original_parameter_counts(preset, hidden, depth, expected):
    config = VideoMambaConfig.from_preset(preset, num_labels=400, num_frames=8)
    assert (config.hidden_size, config.num_hidden_layers) == (hidden, depth)
    assert count_parameters(VideoMambaForVideoClassification, config) == expected


def test_image_base_preset_parameter_count():
    config = VideoMambaConfig.from_preset("base", num_labels=1000)
    assert count_parameters(VideoMambaForImageClassification, config) == 97_598_440


def test_preset_overrides_and_auto_rank():
    config = VideoMambaConfig.from_preset("small", num_frames=16, image_size=288)
    assert (config.hidden_size, config.num_frames, config.image_size) == (384, 16, 288)
    assert config.time_step_rank == 24  # ceil(384 / 16)
    assert VideoMambaConfig(hidden_size=100).time_step_rank == 7
    assert config.intermediate_size == 768
    assert config.grid_size == (16, 18, 18)


def test_unknown_preset_is_named():
    with pytest.raises(ValueError, match="huge"):
        VideoMambaConfig.from_preset("huge")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"image_size": 30, "patch_size": 8}, "divisible by patch_size"),
        ({"num_frames": 5, "tubelet_size": 2}, "divisible by tubelet_size"),
        ({"hidden_size": 0}, "hidden_size must be a positive integer"),
        ({"state_size": 2.5}, "state_size"),
        ({"scan_implementation": "flash"}, "scan_implementation"),
        ({"token_order": "random"}, "token_order"),
        ({"drop_path_rate": 1.5}, "drop_path_rate"),
        ({"modality": "audio"}, "modality"),
        ({"dt_init": "zeros"}, "dt_init"),
        ({"use_mean_pooling": "yes"}, "use_mean_pooling"),
        ({"scan_implementation": "cuda", "conv_kernel": 5}, r"'cuda' cannot run.*conv widths \(2, 3, 4\), got conv_kernel=5"),
        ({"scan_implementation": "cuda", "state_size": 512}, r"'cuda' cannot run.*state sizes <= 256, got state_size=512"),
    ],
)
def test_invalid_values_are_refused_clearly(kwargs, message):
    with pytest.raises(ValueError, match=message):
        VideoMambaConfig(**kwargs)


def test_sizes_the_cuda_kernels_lack_are_fine_for_other_scans():
    # "auto" falls back at run time (tests/test_selective_scan.py); only an explicit "cuda" is refused.
    for scan in ("auto", "fast", "triton"):
        assert VideoMambaConfig(scan_implementation=scan, conv_kernel=5, state_size=512).conv_kernel == 5


def test_round_trip_keeps_fields_and_writes_auto_map(tmp_path):
    config = VideoMambaConfig.from_preset("tiny", num_labels=5, token_order="hybrid", scan_implementation="reference")
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "videomamba"
    assert saved["auto_map"]["AutoModelForVideoClassification"] == "modeling_videomamba.VideoMambaForVideoClassification"
    assert saved["auto_map"]["AutoModel"] == "modeling_videomamba.VideoMambaModel"
    loaded = VideoMambaConfig.from_pretrained(tmp_path)
    for field in ("hidden_size", "num_hidden_layers", "time_step_rank", "token_order", "scan_implementation", "num_labels"):
        assert getattr(loaded, field) == getattr(config, field)
