"""Converting original VideoMamba checkpoints: parity with the original's outputs, every family's key
layout and wrapper, adaptation (frames, resolution, image -> video), labels, and refused inputs."""

import argparse
import json
import logging
import math

import pytest
import torch
from transformers import (
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForPreTraining,
    AutoModelForVideoClassification,
)

import modeling_videomamba
from modeling_videomamba import (
    VideoMambaConfig,
    VideoMambaForImageClassification,
    VideoMambaForPreTraining,
    VideoMambaForVideoClassification,
    VideoMambaModel,
)
from modeling_videomamba.processors import VideoMambaVideoProcessor
from modeling_videomamba.convert_original_checkpoint import convert_original_checkpoint, main
from original_fixture import fixture_path, load_fixture

LOGGER = "modeling_videomamba.convert_original_checkpoint"


@pytest.fixture(scope="module")
def fixture():
    return load_fixture()


@pytest.fixture(scope="module")
def fixture_video(fixture):
    """The fixture's input in our layout (B, T, C, H, W)."""
    return fixture["pixel_values"].permute(0, 2, 1, 3, 4)


def original_state_dict(
    hidden=32, depth=2, patch=8, image=32, frames=4, tubelet=1, state=16, classes=5, image_model=False,
    final_norm="norm_f", layer_norm=False, clip_layers=0, distill=False, seed=0,
):
    """Random tensors under the original's key names and shapes (shared/reference/original-videomamba.md)."""
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=generator) * 0.1

    inner, rank, conv = 2 * hidden, math.ceil(hidden / 16), 4
    sd = {"cls_token": rand(1, 1, hidden), "pos_embed": rand(1, 1 + (image // patch) ** 2, hidden)}
    if image_model:
        sd["patch_embed.proj.weight"] = rand(hidden, 3, patch, patch)
    else:
        sd["patch_embed.proj.weight"] = rand(hidden, 3, tubelet, patch, patch)
        sd["temporal_pos_embedding"] = rand(1, frames // tubelet, hidden)
    sd["patch_embed.proj.bias"] = rand(hidden)
    for i in range(depth):
        sd[f"layers.{i}.norm.weight"] = 1 + rand(hidden)
        if layer_norm:
            sd[f"layers.{i}.norm.bias"] = rand(hidden)
        mixer = f"layers.{i}.mixer."
        sd[mixer + "in_proj.weight"] = rand(2 * inner, hidden)
        for suffix, a_name in (("", "A_log"), ("_b", "A_b_log")):
            sd[f"{mixer}conv1d{suffix}.weight"] = rand(inner, 1, conv)
            sd[f"{mixer}conv1d{suffix}.bias"] = rand(inner)
            sd[f"{mixer}x_proj{suffix}.weight"] = rand(rank + 2 * state, inner)
            sd[f"{mixer}dt_proj{suffix}.weight"] = rand(inner, rank)
            sd[f"{mixer}dt_proj{suffix}.bias"] = rand(inner)
            sd[mixer + a_name] = rand(inner, state)
            sd[f"{mixer}D{suffix}"] = 1 + rand(inner)
        sd[mixer + "out_proj.weight"] = rand(hidden, inner)
    sd[f"{final_norm}.weight"] = 1 + rand(hidden)
    if layer_norm:
        sd[f"{final_norm}.bias"] = rand(hidden)
    if classes:
        sd["head.weight"], sd["head.bias"] = rand(classes, hidden), rand(classes)
    if distill:
        sd["distill_head.weight"], sd["distill_head.bias"] = rand(classes, hidden), rand(classes)
    for k in range(clip_layers):
        sd[f"clip_decoder.{k}.head.weight"], sd[f"clip_decoder.{k}.head.bias"] = rand(24, hidden), rand(24)
        sd[f"clip_decoder.{k}.norm.weight"], sd[f"clip_decoder.{k}.norm.bias"] = 1 + rand(24), rand(24)
    return sd


def assert_weights_match(model, sd, final_norm="norm_f"):
    """Every original tensor sits where the documented mapping puts it."""
    backbone = model if isinstance(model, VideoMambaModel) else model.videomamba
    embeddings = backbone.embeddings
    pairs = [
        (embeddings.cls_token, "cls_token"),
        (embeddings.position_embeddings, "pos_embed"),
        (embeddings.patch_embeddings.projection.weight, "patch_embed.proj.weight"),
        (embeddings.patch_embeddings.projection.bias, "patch_embed.proj.bias"),
        (backbone.norm_f.weight, f"{final_norm}.weight"),
    ]
    if "temporal_pos_embedding" in sd:
        pairs.append((embeddings.temporal_position_embeddings, "temporal_pos_embedding"))
    if "head.weight" in sd:
        pairs += [(model.classifier.weight, "head.weight"), (model.classifier.bias, "head.bias")]
    pairs += [(backbone.get_parameter(key), key) for key in sd if key.startswith("layers.")]
    for parameter, key in pairs:
        assert torch.equal(parameter.detach(), sd[key]), key


def save(tmp_path, obj, name="checkpoint.pth"):
    path = tmp_path / name
    torch.save(obj, path)
    return path


# ----------------------------------------------------------------------------------------------------
# Parity with the original implementation
# ----------------------------------------------------------------------------------------------------


def test_cli_conversion_reproduces_original_outputs(tmp_path, fixture, fixture_video):
    out = tmp_path / "converted"
    main(["--checkpoint", str(fixture_path()), "--output-dir", str(out)])
    assert (out / "model.safetensors").is_file()
    classifier = AutoModelForVideoClassification.from_pretrained(out).eval()
    backbone = AutoModel.from_pretrained(out).eval()
    assert type(classifier) is VideoMambaForVideoClassification and type(backbone) is VideoMambaModel
    with torch.no_grad():
        logits = classifier(fixture_video).logits
        hidden = backbone(fixture_video).last_hidden_state
    torch.testing.assert_close(logits, fixture["logits"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hidden, fixture["last_hidden_state"], atol=1e-5, rtol=1e-5)
    config = classifier.config
    assert (config.hidden_size, config.num_hidden_layers, config.num_labels) == (96, 3, 7)
    assert (config.image_size, config.patch_size, config.num_frames, config.time_step_rank) == (32, 8, 4, 6)
    assert config.auto_map["AutoModelForVideoClassification"].endswith("VideoMambaForVideoClassification")


WRAPPERS = {
    "bare": lambda sd: sd,
    "model+training state": lambda sd: {
        "model": sd, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3}]}, "epoch": 29,
        "args": argparse.Namespace(model="videomamba_tiny", num_frames=4),
    },
    "module": lambda sd: {"module": sd},
    "backbone. prefix": lambda sd: {"model": {f"backbone.{k}": v for k, v in sd.items()}},
    "encoder. prefix, head outside": lambda sd: {
        **{f"encoder.{k}": v for k, v in sd.items() if not k.startswith("head.")},
        **{k: v for k, v in sd.items() if k.startswith("head.")},
    },
    "module. prefix (DDP)": lambda sd: {"model": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3},
}


@pytest.mark.parametrize("wrapper", list(WRAPPERS))
def test_wrappers_and_prefixes_round_trip(tmp_path, fixture, fixture_video, wrapper):
    path = save(tmp_path, WRAPPERS[wrapper](fixture["state_dict"]))
    model = convert_original_checkpoint(path)
    with torch.no_grad():
        logits = model(fixture_video).logits
    torch.testing.assert_close(logits, fixture["logits"], atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------
# Families
# ----------------------------------------------------------------------------------------------------


def test_image_classifier_with_distill_head(tmp_path, caplog):
    sd = original_state_dict(image_model=True, classes=1000, distill=True)
    out = tmp_path / "image"
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        convert_original_checkpoint(save(tmp_path, {"model": sd}), output_dir=out)
    assert "Not converted (self-distillation head, used only in training): distill_head.* (2 keys)" in caplog.text
    model = AutoModelForImageClassification.from_pretrained(out).eval()
    assert type(model) is VideoMambaForImageClassification and model.config.modality == "image"
    assert_weights_match(model, sd)
    assert model.config.id2label[0] == "tench" and model.config.label2id["goldfish"] == 1
    assert model(torch.randn(2, 3, 32, 32)).logits.shape == (2, 1000)


def test_video_classifier_layer_norm_kinetics_labels(tmp_path):
    sd = original_state_dict(classes=400, layer_norm=True)
    out = tmp_path / "video"
    convert_original_checkpoint(save(tmp_path, sd), output_dir=out)
    model = AutoModelForVideoClassification.from_pretrained(out).eval()
    assert model.config.rms_norm is False
    assert_weights_match(model, sd)
    assert model.videomamba.norm_f.bias is not None and torch.equal(model.videomamba.norm_f.bias, sd["norm_f.bias"])
    assert "playing guitar" in model.config.label2id
    assert model.config.id2label[0] == "abseiling" and model.config.id2label[399] == "zumba"


def test_pretraining_checkpoint(tmp_path):
    sd = original_state_dict(classes=0, final_norm="norm", clip_layers=2)
    out = tmp_path / "pretrain"
    model = convert_original_checkpoint(save(tmp_path, {"model": sd, "epoch": 800}), output_dir=out)
    assert type(model) is VideoMambaForPreTraining
    loaded = AutoModelForPreTraining.from_pretrained(out)
    assert type(loaded) is VideoMambaForPreTraining
    assert (loaded.config.teacher_hidden_size, loaded.config.num_aligned_layers) == (24, 2)
    for k in range(2):
        for name in ("head.weight", "head.bias", "norm.weight", "norm.bias"):
            assert torch.equal(loaded.clip_decoder[k].get_parameter(name), sd[f"clip_decoder.{k}.{name}"])
    assert_weights_match(loaded.videomamba, sd, final_norm="norm")
    # The fine-tuning path: the backbone alone from the same directory.
    assert_weights_match(AutoModel.from_pretrained(out), sd, final_norm="norm")


def test_multimodal_vision_tower(tmp_path, caplog):
    sd = original_state_dict(classes=0, final_norm="norm", frames=8)
    checkpoint = {f"vision_encoder.{k}": v for k, v in sd.items()}
    checkpoint.update({
        "vision_encoder.pool_norm.weight": torch.ones(32),
        "vision_encoder.clip_decoder.0.head.weight": torch.zeros(24, 32),
        "text_encoder.bert.embeddings.word_embeddings.weight": torch.zeros(10, 16),
        "vision_proj.weight": torch.zeros(16, 32),
        "temp": torch.tensor(0.07),
    })
    out = tmp_path / "mm"
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        convert_original_checkpoint(save(tmp_path, {"model": checkpoint}), output_dir=out, vision_only=True)
    assert "outside the multimodal model's vision tower): temp, text_encoder.bert.embeddings.word_embeddings.weight, vision_proj.weight." in caplog.text
    assert "pool_norm.weight" in caplog.text and "clip_decoder.0.head.weight" in caplog.text
    model = AutoModel.from_pretrained(out)
    assert type(model) is VideoMambaModel and model.config.num_frames == 8
    assert_weights_match(model, sd, final_norm="norm")


def test_config_is_read_off_the_tensors():
    sd = original_state_dict(hidden=48, depth=3, patch=4, image=16, frames=8, tubelet=2, state=8, classes=3)
    config = convert_original_checkpoint(sd).config
    assert (config.hidden_size, config.num_hidden_layers, config.state_size) == (48, 3, 8)
    assert (config.patch_size, config.image_size, config.tubelet_size, config.num_frames) == (4, 16, 2, 8)
    assert (config.time_step_rank, config.conv_kernel, config.expand, config.num_labels) == (3, 4, 2, 3)
    assert config.rms_norm is True


def test_released_tiny_layout_gives_the_tiny_preset():
    """A checkpoint shaped like videomamba_t16_k400_f8_res224.pth (the paper's count: 7,033,744 parameters)."""
    sd = original_state_dict(hidden=192, depth=24, patch=16, image=224, frames=8, classes=400)
    model = convert_original_checkpoint(sd)
    preset = VideoMambaConfig.from_preset("tiny", num_labels=400, num_frames=8)
    for name in ("hidden_size", "num_hidden_layers", "image_size", "patch_size", "num_frames", "time_step_rank"):
        assert getattr(model.config, name) == getattr(preset, name), name
    assert sum(p.numel() for p in model.parameters()) == 7_033_744


# ----------------------------------------------------------------------------------------------------
# Adapting
# ----------------------------------------------------------------------------------------------------


def test_num_frames_and_image_size_interpolate_like_the_model(fixture):
    adapted = convert_original_checkpoint(fixture, num_frames=8, image_size=48)
    assert (adapted.config.num_frames, adapted.config.image_size) == (8, 48)
    embeddings = adapted.videomamba.embeddings
    assert embeddings.position_embeddings.shape == (1, 1 + 36, 96)
    assert embeddings.temporal_position_embeddings.shape == (1, 8, 96)
    assert torch.equal(embeddings.position_embeddings[0, 0], fixture["state_dict"]["pos_embed"][0, 0])
    # The model's own on-the-fly interpolation at the new size must give the same outputs.
    original = convert_original_checkpoint(fixture)
    video = torch.randn(1, 8, 3, 48, 48)
    with torch.no_grad():
        expected = original(video, interpolate_pos_encoding=True).logits
        torch.testing.assert_close(adapted(video).logits, expected, atol=1e-5, rtol=1e-5)


def test_inflate_image_to_video(tmp_path):
    sd = original_state_dict(image_model=True, classes=5)
    path = save(tmp_path, sd)
    image_model = convert_original_checkpoint(path)
    # One frame, zero temporal embedding: the video model sees exactly the image model's tokens.
    one_frame = convert_original_checkpoint(path, inflate_image_to_video=True, num_frames=1)
    image = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(one_frame(image[:, None]).logits, image_model(image).logits, atol=1e-5, rtol=1e-5)

    out = tmp_path / "inflated"
    main(["--checkpoint", str(path), "--output-dir", str(out), "--inflate-image-to-video", "--num-frames", "4"])
    video_model = AutoModelForVideoClassification.from_pretrained(out)
    assert video_model.config.modality == "video" and video_model.config.num_frames == 4
    embeddings = video_model.videomamba.embeddings
    assert torch.equal(embeddings.patch_embeddings.projection.weight[:, :, 0], sd["patch_embed.proj.weight"])
    assert not embeddings.temporal_position_embeddings.any()
    assert video_model(torch.randn(1, 4, 3, 32, 32)).logits.shape == (1, 5)


def test_image_checkpoint_at_another_resolution():
    sd = original_state_dict(image_model=True, classes=5)
    model = convert_original_checkpoint(sd, image_size=48)
    assert model.config.image_size == 48 and model.videomamba.embeddings.position_embeddings.shape == (1, 37, 32)
    assert model(torch.randn(1, 3, 48, 48)).logits.shape == (1, 5)


def test_bad_options_are_refused(fixture):
    with pytest.raises(ValueError, match="num_frames must be a positive integer, got 0"):
        convert_original_checkpoint(fixture, num_frames=0)
    with pytest.raises(ValueError, match="--image-size 50 is not divisible by the patch size 8"):
        convert_original_checkpoint(fixture, image_size=50)
    with pytest.raises(ValueError, match="no classification head"):
        convert_original_checkpoint(original_state_dict(classes=0), labels=["a"])


def test_inflating_a_video_checkpoint_is_refused(fixture):
    with pytest.raises(ValueError, match="needs an image checkpoint"):
        convert_original_checkpoint(fixture, inflate_image_to_video=True)
    with pytest.raises(ValueError, match="--num-frames applies to video models"):
        convert_original_checkpoint(original_state_dict(image_model=True), num_frames=8)


# ----------------------------------------------------------------------------------------------------
# Labels
# ----------------------------------------------------------------------------------------------------


def test_labels_from_text_and_json(tmp_path, fixture):
    names = [f"class {i}" for i in range(7)]
    text = tmp_path / "labels.txt"
    text.write_text("\n".join(names) + "\n\n")
    assert convert_original_checkpoint(fixture, labels=text).config.id2label[6] == "class 6"
    indexed = tmp_path / "labels.json"
    indexed.write_text('{"1": "b", "0": "a", "2": "c", "3": "d", "4": "e", "5": "f", "6": "g"}')
    assert convert_original_checkpoint(fixture, labels=indexed).config.label2id["b"] == 1
    with pytest.raises(ValueError, match="3 class names given for a head of 7 classes"):
        convert_original_checkpoint(fixture, labels=["a", "b", "c"])


# ----------------------------------------------------------------------------------------------------
# Video processor and pipeline
# ----------------------------------------------------------------------------------------------------


def test_converted_directory_runs_in_the_pipeline(tmp_path):
    import numpy as np
    from transformers import pipeline
    from transformers.models.auto.video_processing_auto import AutoVideoProcessor  # the top-level name needs torchvision
    from video_fixtures import write_video

    out = tmp_path / "k400"
    convert_original_checkpoint(original_state_dict(classes=400, frames=4), output_dir=out)
    processor = AutoVideoProcessor.from_pretrained(out)
    assert type(processor) is VideoMambaVideoProcessor
    assert processor.num_frames == 4 and processor.size == {"shortest_edge": 32}
    assert processor.crop_size == {"height": 32, "width": 32}
    torch.testing.assert_close(torch.tensor(processor.image_mean), torch.tensor([0.485, 0.456, 0.406]))
    torch.testing.assert_close(torch.tensor(processor.image_std), torch.tensor([0.229, 0.224, 0.225]))

    frames = np.random.default_rng(0).integers(0, 256, (12, 40, 48, 3), dtype=np.uint8)
    video = str(write_video(tmp_path / "clip.mp4", frames))
    predictions = pipeline("video-classification", model=str(out))(video, top_k=3)
    model = AutoModelForVideoClassification.from_pretrained(out).eval()
    with torch.no_grad():
        logits = model(**processor(video, return_tensors="pt")).logits[0]
    assert [p["label"] for p in predictions] == [model.config.id2label[i] for i in logits.topk(3).indices.tolist()]
    assert all(p["label"] in model.config.label2id for p in predictions)  # Kinetics names, not LABEL_i


def test_image_models_save_an_image_processor_and_no_video_processor(tmp_path):
    out = tmp_path / "image"
    convert_original_checkpoint(original_state_dict(image_model=True), output_dir=out)
    assert (out / "model.safetensors").is_file() and not (out / "video_preprocessor_config.json").exists()
    saved = json.loads((out / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == "VideoMambaImageProcessor"
    assert saved["size"] == {"shortest_edge": 36} and saved["crop_size"] == {"height": 32, "width": 32}


# ----------------------------------------------------------------------------------------------------
# Refused inputs
# ----------------------------------------------------------------------------------------------------


class NotATensor:
    pass


def test_unreadable_files_are_refused(tmp_path, fixture):
    good = save(tmp_path, fixture["state_dict"], "good.pth")
    cases = {
        "text.pth": b"this is a text file, not a checkpoint\n",
        "random.pth": torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0)).byte().numpy().tobytes(),
        "truncated.pth": good.read_bytes()[: good.stat().st_size // 2],
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(OSError, match=f"Could not read .*{name}.* damaged, truncated"):
            convert_original_checkpoint(tmp_path / name)
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(OSError, match="empty"):
        convert_original_checkpoint(tmp_path / "empty.pth")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        convert_original_checkpoint(tmp_path / "missing.pth")
    with pytest.raises(IsADirectoryError, match="got a directory"):
        convert_original_checkpoint(tmp_path)


def test_output_dir_that_is_a_file_is_refused_before_converting(tmp_path):
    path = save(tmp_path, original_state_dict())
    with pytest.raises(NotADirectoryError, match="output_dir must be a directory.*is a file"):
        convert_original_checkpoint(path, output_dir=path)


def test_pickled_objects_are_refused(tmp_path):
    path = save(tmp_path, {"model": {"cls_token": torch.zeros(1, 1, 8)}, "extra": NotATensor()})
    with pytest.raises(OSError, match="NotATensor.*weights_only=True"):
        convert_original_checkpoint(path)


def test_non_checkpoints_are_refused(tmp_path):
    with pytest.raises(ValueError, match="got a list"):
        convert_original_checkpoint(save(tmp_path, [torch.zeros(1)]))
    with pytest.raises(ValueError, match=r"Found no state dict.*\['epoch'\]"):
        convert_original_checkpoint(save(tmp_path, {"epoch": 1}))
    with pytest.raises(ValueError, match="exactly one `cls_token` key, found no"):
        convert_original_checkpoint(save(tmp_path, {"weight": torch.zeros(3)}))


def test_missing_unexpected_and_misshaped_keys_are_listed(tmp_path, fixture):
    sd = dict(fixture["state_dict"])
    del sd["layers.1.mixer.D_b"]
    sd["layers.0.mixer.bogus"] = torch.zeros(3)
    sd["fancy_head.weight"] = torch.zeros(3)
    sd["layers.2.mixer.x_proj.weight"] = torch.zeros(5, 192)
    with pytest.raises(ValueError) as error:
        convert_original_checkpoint(save(tmp_path, {"model": sd}))
    message = str(error.value)
    assert "nothing was loaded" in message
    assert "missing keys (1): ['videomamba.layers.1.mixer.D_b']" in message
    assert "fancy_head.weight" in message and "videomamba.layers.0.mixer.bogus" in message
    assert "videomamba.layers.2.mixer.x_proj.weight: checkpoint (5, 192), model (38, 192)" in message


def test_missing_layer_is_refused(fixture):
    sd = {k: v for k, v in fixture["state_dict"].items() if not k.startswith("layers.1.")}
    with pytest.raises(ValueError, match=r"missing keys \(17\): \['videomamba.layers.1.mixer.A_b_log'"):
        convert_original_checkpoint(sd)
