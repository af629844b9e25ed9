"""Convert checkpoints of the original VideoMamba (OpenGVLab/VideoMamba) into this package's models.

    python -m modeling_videomamba.convert_original_checkpoint --checkpoint videomamba_s16_k400_f8_res224.pth \
        --output-dir videomamba-small-k400

The configuration is read off the tensors alone (no hand-written config). Every key of the checkpoint
is either mapped onto the model, or dropped on purpose with a logged reason (self-distillation head, a
multimodal checkpoint's text tower and decoders); anything else, and any missing
or mis-shaped weight, stops the conversion with an error listing the offending keys.

Families handled (see docs/conversion.md): video classifiers (Kinetics-400, SSv2, Breakfast, COIN),
ImageNet-1K image classifiers, masked-pretraining checkpoints and multimodal (video-text) ones, which become a
full `VideoMambaVideoTextModel` (`--vision-only` keeps just their vision tower):

    python -m modeling_videomamba.convert_original_checkpoint --checkpoint videomamba_m16_25M_f8_res224.pth \
        --output-dir videomamba-middle-25m --text-config bert-base-uncased/config.json --tokenizer bert-base-uncased
"""

import argparse
import json
import logging
import math
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Optional, Union

import torch
from transformers import BertConfig
from transformers.initialization import no_init_weights

from .configuration_videomamba import VideoMambaConfig
from .configuration_videomamba_video_text import VideoMambaVideoTextConfig
from .modeling_videomamba import (
    VideoMambaForImageClassification,
    VideoMambaForPreTraining,
    VideoMambaForVideoClassification,
    VideoMambaModel,
    interpolate_position_embeddings,
    interpolate_temporal_embeddings,
)
from .modeling_videomamba_video_text import VideoMambaVideoTextModel
from .processors import VideoMambaImageProcessor, VideoMambaVideoProcessor, VideoMambaVideoTextProcessor

logger = logging.getLogger(__name__)

# Entries under which training scripts store the state dict, tried in this order.
WRAPPER_KEYS = ("model", "module", "state_dict", "model_state")
# The vision tower of the multimodal (UMT-style) checkpoints; their other towers are not converted.
MULTIMODAL_PREFIX = "vision_encoder."

# Original name prefix -> our name prefix, relative to the backbone (VideoMambaModel).
BACKBONE_RENAMES = (
    ("cls_token", "embeddings.cls_token"),
    ("pos_embed", "embeddings.position_embeddings"),
    ("temporal_pos_embedding", "embeddings.temporal_position_embeddings"),
    ("patch_embed.proj.", "embeddings.patch_embeddings.projection."),
    ("layers.", "layers."),  # block and mixer parameter names are the original's
    ("norm_f.", "norm_f."),
    ("norm.", "norm_f."),  # masked-pretraining and multimodal checkpoints name the final norm `norm`
)
# Original name prefix -> our name prefix, relative to the task model, per task.
TASK_RENAMES = {
    "video-classification": (("head.", "classifier."),),
    "image-classification": (("head.", "classifier."),),
    "pretraining": (("clip_decoder.", "clip_decoder."),),  # VideoMambaForPreTraining keeps the original's names
    "backbone": (),
}
# Original name prefix -> why it is left out (when the task's table does not take it).
SKIPPED_PREFIXES = (
    ("distill_head.", "self-distillation head, used only in training"),
    ("clip_decoder.", "CLIP-alignment decoder of the multimodal pretraining, outside the vision backbone"),
    ("pool_norm.", "pooling norm of the multimodal model, outside the backbone"),
)

# Class names shipped with the package, used for heads of these sizes unless --labels says otherwise.
DEFAULT_LABEL_FILES = {400: "kinetics400.json", 1000: "imagenet1k.json"}

StateDict = dict[str, torch.Tensor]


# ----------------------------------------------------------------------------------------------------
# Reading the file
# ----------------------------------------------------------------------------------------------------


def load_original_checkpoint(path: Union[str, Path]) -> object:
    """`torch.load` with `weights_only=True`, turning every failure into an error that names the file."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"Expected a checkpoint file, got a directory: {str(path)!r}.")
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {str(path)!r} does not exist or is not a file.")
    if path.stat().st_size == 0:
        raise OSError(f"Checkpoint {str(path)!r} is empty (0 bytes).")
    # The original training scripts store their argparse options under `args`; a Namespace only holds
    # attributes, which the weights-only unpickler still restricts to plain types.
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load fails with many types on damaged input; all mean the same here
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if refused:
            raise OSError(
                f"Refusing to load {str(path)!r}: it holds a {refused.group(1)} object, which "
                "torch.load(weights_only=True) does not unpickle. Save only its state dict and convert that."
            ) from error
        # Keep torch's diagnosis, not its advice to retry with weights_only=False.
        unpickler = re.search(r"WeightsUnpickler error:\s*(.+)", str(error))
        lines = [line.strip() for line in (unpickler.group(1) if unpickler else str(error)).splitlines()]
        first_line = next((line for line in lines if line), "")
        raise OSError(
            f"Could not read {str(path)!r} as a PyTorch checkpoint: the file is damaged, truncated or of "
            f"another format ({type(error).__name__}: {first_line[:200]})."
        ) from error


def unwrap_state_dict(checkpoint: object) -> StateDict:
    """The tensors of a checkpoint: a bare state dict or one stored under `model`, `module`, `state_dict`."""
    if not isinstance(checkpoint, Mapping):
        raise ValueError(
            f"Expected a state dict (a dict of tensors) or a dict holding one under {WRAPPER_KEYS}; "
            f"got a {type(checkpoint).__name__}."
        )
    if checkpoint and all(isinstance(value, torch.Tensor) for value in checkpoint.values()):
        return dict(checkpoint)
    for key in WRAPPER_KEYS:
        if isinstance(checkpoint.get(key), Mapping):
            return unwrap_state_dict(checkpoint[key])
    raise ValueError(
        f"Found no state dict in the checkpoint: expected a dict of tensors or one under {WRAPPER_KEYS}; "
        f"the top-level entries are {sorted(map(str, checkpoint))[:20]}."
    )


def strip_prefix(state_dict: StateDict) -> tuple[StateDict, str, dict[str, str]]:
    """Remove the wrapper prefix (`module.`, `backbone.`, `encoder.`, `vision_encoder.`, ...) from the keys.

    The prefix is whatever precedes the one `cls_token` key. Keys outside it are kept (a top-level `head.`
    next to a `backbone.`), except in a multimodal checkpoint, whose other towers are returned as ignored.
    Returns (state dict with original key names, the prefix, {ignored key: reason}).
    """
    anchors = [key for key in state_dict if key == "cls_token" or key.endswith(".cls_token")]
    if len(anchors) > 1:
        anchors = [key for key in anchors if MULTIMODAL_PREFIX in key] or anchors
    if len(anchors) != 1:
        found = "no" if not anchors else f"{len(anchors)} ({anchors})"
        raise ValueError(
            f"Not an original VideoMamba checkpoint: expected exactly one `cls_token` key, found {found}. "
            f"First keys: {sorted(state_dict)[:10]}."
        )
    prefix = anchors[0][: -len("cls_token")]
    if prefix:
        logger.info("Stripping the key prefix %r.", prefix)
    multimodal = MULTIMODAL_PREFIX in prefix
    stripped, ignored = {}, {}
    for key, value in state_dict.items():
        if key.startswith(prefix):
            stripped[key[len(prefix):]] = value
        elif multimodal:
            ignored[key] = "outside the multimodal model's vision tower"
        else:
            stripped[key] = value
    return stripped, prefix, ignored


# ----------------------------------------------------------------------------------------------------
# Renaming and configuration
# ----------------------------------------------------------------------------------------------------


def rename_keys(state_dict: StateDict, task: str) -> tuple[StateDict, dict[str, str], list[str]]:
    """Original names -> ours for `task` (see TASK_RENAMES). Returns (renamed tensors, {skipped key: reason},
    [unknown keys]). Backbone names get the task model's `videomamba.` prefix unless task is "backbone"."""
    renamed, skipped, unknown = {}, {}, []
    backbone_prefix = "" if task == "backbone" else "videomamba."
    sources = {}
    for key, value in state_dict.items():
        target = _rename(key, BACKBONE_RENAMES, backbone_prefix) or _rename(key, TASK_RENAMES[task], "")
        if target is None:
            reason = next((why for prefix, why in SKIPPED_PREFIXES if key.startswith(prefix)), None)
            if reason is None:
                unknown.append(key)
            else:
                skipped[key] = reason
            continue
        if target in renamed:
            raise ValueError(f"Checkpoint keys {sources[target]!r} and {key!r} both map to {target!r}.")
        renamed[target], sources[target] = value, key
    return renamed, skipped, unknown


def _rename(key: str, table, prefix: str) -> Optional[str]:
    for old, new in table:
        if key == old or (old.endswith(".") and key.startswith(old)):
            return prefix + new + key[len(old):]
    return None


def _require(state_dict: StateDict, *keys: str) -> None:
    missing = [key for key in keys if key not in state_dict]
    if missing:
        raise ValueError(
            f"The checkpoint lacks {missing}, needed to infer the model's configuration "
            f"(its keys start with {sorted(state_dict)[:10]})."
        )


def infer_config_kwargs(state_dict: StateDict) -> dict:
    """VideoMambaConfig arguments read off the shapes of an original-named state dict.

    Not stored in checkpoints and taken as in every released model: norm epsilon 1e-5, residual in fp32.
    """
    _require(state_dict, "cls_token", "pos_embed", "patch_embed.proj.weight", "layers.0.mixer.in_proj.weight")
    _require(state_dict, "layers.0.mixer.A_log", "layers.0.mixer.dt_proj.weight", "layers.0.mixer.conv1d.weight")
    hidden_size = state_dict["cls_token"].shape[-1]
    patch_weight = state_dict["patch_embed.proj.weight"]  # (D, C, k, p, p) video, (D, C, p, p) image
    if patch_weight.dim() not in (4, 5) or patch_weight.shape[-1] != patch_weight.shape[-2]:
        raise ValueError(
            "patch_embed.proj.weight must have shape (D, C, k, p, p) or (D, C, p, p) with square patches; "
            f"got {tuple(patch_weight.shape)}."
        )
    modality = "video" if patch_weight.dim() == 5 else "image"
    patch_size = patch_weight.shape[-1]
    patches = state_dict["pos_embed"].shape[1] - 1
    side = math.isqrt(patches)
    if side * side != patches:
        raise ValueError(f"pos_embed holds {patches} patch positions, not a square grid; only square inputs convert.")
    inner = state_dict["layers.0.mixer.in_proj.weight"].shape[0] // 2
    if inner % hidden_size:
        raise ValueError(f"Mixer width {inner} is not a multiple of the hidden size {hidden_size}.")
    depth = 1 + max(int(match.group(1)) for key in state_dict if (match := re.match(r"layers\.(\d+)\.", key)))
    kwargs = {
        "hidden_size": hidden_size,
        "num_hidden_layers": depth,
        "num_channels": patch_weight.shape[1],
        "patch_size": patch_size,
        "image_size": side * patch_size,
        "state_size": state_dict["layers.0.mixer.A_log"].shape[1],
        "time_step_rank": state_dict["layers.0.mixer.dt_proj.weight"].shape[1],
        "conv_kernel": state_dict["layers.0.mixer.conv1d.weight"].shape[-1],
        "expand": inner // hidden_size,
        "rms_norm": "norm_f.bias" not in state_dict and "norm.bias" not in state_dict,
        "layer_norm_epsilon": 1e-5,
        "residual_in_fp32": True,
        "modality": modality,
    }
    if modality == "video":
        _require(state_dict, "temporal_pos_embedding")
        kwargs["tubelet_size"] = patch_weight.shape[2]
        kwargs["num_frames"] = state_dict["temporal_pos_embedding"].shape[1] * patch_weight.shape[2]
    if "head.weight" in state_dict:
        kwargs["num_labels"] = state_dict["head.weight"].shape[0]
    decoders = {int(m.group(1)) for key in state_dict if (m := re.match(r"clip_decoder\.(\d+)\.", key))}
    if decoders:
        _require(state_dict, "clip_decoder.0.head.weight")
        # The spacing of the aligned blocks is not stored; every released run aligns consecutive blocks.
        kwargs["teacher_hidden_size"] = state_dict["clip_decoder.0.head.weight"].shape[0]
        kwargs["num_aligned_layers"] = max(decoders) + 1
    return kwargs


# ----------------------------------------------------------------------------------------------------
# Adapting: other frame counts and resolutions, image -> video
# ----------------------------------------------------------------------------------------------------


def inflate_to_video(state_dict: StateDict, num_frames: int) -> StateDict:
    """Turn an image checkpoint (original names) into a video one: Conv2d kernel -> Conv3d with tubelet 1
    (the original's centre-index inflation, trivial for a one-frame tubelet), temporal embedding zeros."""
    weight = state_dict["patch_embed.proj.weight"]
    if weight.dim() != 4:
        raise ValueError(
            f"--inflate-image-to-video needs an image checkpoint (a 2-D patch kernel (D, C, p, p)); this one's "
            f"patch kernel has shape {tuple(weight.shape)}."
        )
    if "temporal_pos_embedding" in state_dict:
        raise ValueError("--inflate-image-to-video: the checkpoint already has a temporal_pos_embedding.")
    inflated = dict(state_dict)
    inflated["patch_embed.proj.weight"] = weight.unsqueeze(2)
    inflated["temporal_pos_embedding"] = weight.new_zeros(1, num_frames, weight.shape[0])
    return inflated


def resize_embeddings(state_dict: StateDict, image_size: int, patch_size: int, frames: Optional[int]) -> StateDict:
    """Interpolate pos_embed (bicubic grid, cls copied) and temporal_pos_embedding (linear) as the original
    does when fine-tuning at another size. `frames` counts temporal positions (frames / tubelet)."""
    if image_size % patch_size:
        raise ValueError(f"--image-size {image_size} is not divisible by the patch size {patch_size}.")
    resized = dict(state_dict)
    side = image_size // patch_size
    resized["pos_embed"] = interpolate_position_embeddings(state_dict["pos_embed"], side, side)
    if frames is not None:
        temporal = state_dict["temporal_pos_embedding"]
        resized["temporal_pos_embedding"] = interpolate_temporal_embeddings(temporal, frames)
    return resized


# ----------------------------------------------------------------------------------------------------
# Labels and processor
# ----------------------------------------------------------------------------------------------------


def load_labels(path: Union[str, Path]) -> list:
    """Class names from a JSON list, a JSON {index: name} dict, or a text file with one name per line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Labels file {str(path)!r} does not exist.")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() != ".json":
        return [line.strip() for line in text.splitlines() if line.strip()]
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"Labels file {str(path)!r} is not valid JSON ({error}).") from error
    if isinstance(data, dict):
        try:
            indexed = {int(index): str(name) for index, name in data.items()}
        except ValueError as error:
            raise ValueError(f"Labels file {str(path)!r}: a JSON object must map class indices to names.") from error
        if sorted(indexed) != list(range(len(indexed))):
            raise ValueError(f"Labels file {str(path)!r}: the class indices must be 0..{len(indexed) - 1}.")
        return [indexed[index] for index in range(len(indexed))]
    if isinstance(data, list) and all(isinstance(name, str) for name in data):
        return data
    raise ValueError(f"Labels file {str(path)!r} must hold a list of names or an {{index: name}} object.")


def default_labels(num_labels: int) -> Optional[list]:
    """The shipped Kinetics-400 or ImageNet-1K class names for a head of 400 or 1000 classes, else None."""
    name = DEFAULT_LABEL_FILES.get(num_labels)
    if name is None:
        return None
    return json.loads(resources.files(__package__).joinpath("labels", name).read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------------------------------
# Conversion
# ----------------------------------------------------------------------------------------------------


MODEL_CLASSES = {
    "video-classification": VideoMambaForVideoClassification,
    "image-classification": VideoMambaForImageClassification,
    "pretraining": VideoMambaForPreTraining,
    "backbone": VideoMambaModel,
}


def _task(kwargs: dict, multimodal: bool) -> str:
    """What the checkpoint is: a classifier (it has a head), a masked-pretraining student (CLIP decoders,
    outside a multimodal model) or a bare backbone."""
    if "num_labels" in kwargs:
        return f"{kwargs['modality']}-classification"
    if "num_aligned_layers" in kwargs and not multimodal:
        return "pretraining"
    return "backbone"


def _check_against_model(renamed: StateDict, unknown: list, model: torch.nn.Module) -> None:
    """Refuse any partial or mis-shaped load, listing every problem at once."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(renamed))
    unexpected = sorted(unknown) + sorted(set(renamed) - set(expected))
    misshaped = [
        f"{key}: checkpoint {tuple(value.shape)}, model {tuple(expected[key].shape)}"
        for key, value in sorted(renamed.items())
        if key in expected and value.shape != expected[key].shape
    ]
    problems = [
        f"{title} ({len(keys)}): {keys}"
        for title, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("mis-shaped keys", misshaped))
        if keys
    ]
    if problems:
        raise ValueError(
            f"The checkpoint does not match a {type(model).__name__} with the configuration read from it; "
            "nothing was loaded. " + "; ".join(problems)
        )


def _adapt(state_dict: StateDict, kwargs: dict, num_frames, image_size, inflate: bool) -> StateDict:
    """Apply --inflate-image-to-video / --num-frames / --image-size to the tensors, updating `kwargs`."""
    for name, value in (("num_frames", num_frames), ("image_size", image_size)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    if inflate:
        frames = num_frames if num_frames is not None else VideoMambaConfig().num_frames
        state_dict = inflate_to_video(state_dict, frames)
        kwargs.update(modality="video", tubelet_size=1, num_frames=frames)
    elif num_frames is not None and kwargs["modality"] == "image":
        raise ValueError("--num-frames applies to video models; add --inflate-image-to-video for an image checkpoint.")
    video = kwargs["modality"] == "video"
    if num_frames is not None or image_size is not None:
        if num_frames is not None:
            kwargs["num_frames"] = num_frames
        if image_size is not None:
            kwargs["image_size"] = image_size
        if video and kwargs["num_frames"] % kwargs["tubelet_size"]:
            raise ValueError(f"--num-frames {num_frames} is not divisible by the tubelet size {kwargs['tubelet_size']}.")
        positions = kwargs["num_frames"] // kwargs["tubelet_size"] if video else None
        state_dict = resize_embeddings(state_dict, kwargs["image_size"], kwargs["patch_size"], positions)
    return state_dict


def _label_kwargs(num_labels: int, labels) -> dict:
    """id2label/label2id from the given names (a list or a file), else the shipped ones for 400/1000 classes."""
    names = load_labels(labels) if isinstance(labels, (str, Path)) else labels
    names = names if names is not None else default_labels(num_labels)
    if names is None:
        return {}
    if len(names) != num_labels:
        raise ValueError(f"{len(names)} class names given for a head of {num_labels} classes.")
    if len(set(names)) != len(names):
        raise ValueError("The class names must be distinct (label2id maps each name to one index).")
    return {"id2label": dict(enumerate(names)), "label2id": {name: index for index, name in enumerate(names)}}


def convert_original_checkpoint(
    checkpoint: Union[str, Path, Mapping],
    output_dir: Optional[Union[str, Path]] = None,
    num_frames: Optional[int] = None,
    image_size: Optional[int] = None,
    inflate_image_to_video: bool = False,
    labels: Optional[Union[str, Path, list]] = None,
    vision_only: bool = False,
    text_config=None,
    keep_temporal: bool = True,
    tokenizer=None,
):
    """Convert an original VideoMamba checkpoint and optionally save it with `save_pretrained`.

    Args:
        checkpoint: path of a `.pth` file (loaded with `weights_only=True`) or an already loaded checkpoint.
        output_dir: where to save the model (safetensors + config with `auto_map` + modeling files) and
            its video or image processor config. Nothing is saved when None.
        num_frames: frames of the converted video model; the temporal embedding is linearly interpolated.
        image_size: input side of the converted model; the position grid is bicubically interpolated.
        inflate_image_to_video: turn an ImageNet (image) checkpoint into a video model.
        labels: class names (a list or a JSON/text file); defaults to Kinetics-400 / ImageNet-1K names
            for heads of 400 / 1000 classes.
        vision_only: convert only the vision tower of a multimodal (video-text) checkpoint, as `VideoMambaModel`.
        text_config: for a video-text checkpoint, the original BERT config (a JSON file, dict or `BertConfig`) for
            what the tensors do not tell (heads, activation, epsilon); default BERT-base's.
        keep_temporal: for a video-text checkpoint, pool one vector per frame (True, the zero-shot configs) or one
            per clip.
        tokenizer: for a video-text checkpoint, a BERT tokenizer (or a directory with its files) to save a
            `VideoMambaVideoTextProcessor` with; without it only the video processor is saved.

    Returns:
        The converted model in eval mode: `VideoMambaForVideoClassification`,
        `VideoMambaForImageClassification`, `VideoMambaForPreTraining` (masked-pretraining checkpoints), or
        `VideoMambaVideoTextModel` (multimodal checkpoints) or `VideoMambaModel` (other checkpoints without a
        head, e.g. a multimodal model's vision tower with `vision_only`).
    """
    if output_dir is not None and Path(output_dir).exists() and not Path(output_dir).is_dir():
        # Checked first: save_pretrained would only fail after the whole conversion, with an AssertionError.
        raise NotADirectoryError(f"output_dir must be a directory (or a new path); {str(output_dir)!r} is a file.")
    if not isinstance(checkpoint, Mapping):
        checkpoint = load_original_checkpoint(checkpoint)
    state_dict = unwrap_state_dict(checkpoint)
    video_text = is_video_text_checkpoint(state_dict) and not vision_only
    if not video_text and (text_config is not None or tokenizer is not None):
        raise ValueError("text_config and tokenizer apply to the full conversion of a multimodal (video-text) checkpoint.")
    if video_text:
        if labels is not None or inflate_image_to_video:
            raise ValueError("labels and inflate_image_to_video do not apply to a video-text checkpoint.")
        model = convert_video_text_checkpoint(state_dict, text_config, keep_temporal, num_frames, image_size)
        if output_dir is not None:
            save_converted_video_text(model, output_dir, tokenizer)
        return model
    state_dict, prefix, ignored = strip_prefix(state_dict)

    kwargs = infer_config_kwargs(state_dict)
    state_dict = _adapt(state_dict, kwargs, num_frames, image_size, inflate_image_to_video)
    task = _task(kwargs, multimodal=MULTIMODAL_PREFIX in prefix)
    if task != "pretraining":
        for name in ("teacher_hidden_size", "num_aligned_layers"):
            kwargs.pop(name, None)
    if task.endswith("classification"):
        kwargs.update(_label_kwargs(kwargs["num_labels"], labels))
    elif labels is not None:
        raise ValueError("Class names were given, but the checkpoint has no classification head.")

    renamed, skipped, unknown = rename_keys(state_dict, task)
    config = VideoMambaConfig(**kwargs)
    # Every parameter is overwritten by the strict load below, so random initialisation is skipped
    # (it is most of the conversion time for the larger models).
    with no_init_weights():
        model = MODEL_CLASSES[task](config)
    _check_against_model(renamed, unknown, model)
    model.load_state_dict(renamed, strict=True)
    model.eval()
    _log_left_out({**ignored, **skipped})
    logger.info("Converted to %s: %s", type(model).__name__, _summary(config, task))

    if output_dir is not None:
        save_converted(model, output_dir)
    return model


# ----------------------------------------------------------------------------------------------------
# Multimodal (video-text) checkpoints
# ----------------------------------------------------------------------------------------------------

TEXT_PREFIX = "text_encoder."
# Original name prefix -> our name prefix in VideoMambaVideoTextModel, outside the vision tower. The pre-training
# layout nests BERT under `text_encoder.bert.`; the zero-shot evaluation renames it to `text_encoder.`.
VIDEO_TEXT_RENAMES = (
    ("vision_encoder.pool_norm.", "pool_norm."),
    ("text_encoder.bert.", "text_model."),
    ("text_encoder.", "text_model."),
    ("vision_proj.", "vision_proj."),
    ("text_proj.", "text_proj."),
    ("itm_head.", "itm_head."),
    ("temp", "temp"),
)
# Checked before VIDEO_TEXT_RENAMES: original name prefix -> why it is left out.
VIDEO_TEXT_SKIPPED = (
    ("text_encoder.bert.embeddings.position_ids", "BERT's position-id buffer (rebuilt by the model)"),
    ("text_encoder.embeddings.position_ids", "BERT's position-id buffer (rebuilt by the model)"),
    ("text_encoder.cls.", "masked-language-model head of the pre-training, unused by retrieval"),
    ("clip_teacher.", "CLIP teacher of the pre-training (alignment targets only)"),
)
# Keys of the original BERT config JSON (xbert's) that are no BertConfig fields; fusion_layer is checked.
XBERT_ONLY_KEYS = ("fusion_layer", "encoder_width", "cross_module", "architectures", "model_type", "gradient_checkpointing")


def is_video_text_checkpoint(state_dict: StateDict) -> bool:
    """A multimodal checkpoint: a `vision_encoder.` tower and a `text_encoder.` tower."""
    return any(k.startswith(MULTIMODAL_PREFIX) for k in state_dict) and any(k.startswith(TEXT_PREFIX) for k in state_dict)


def _read_text_config(text_config) -> dict:
    """BertConfig fields from None (BERT-base's), a BertConfig, a dict or a JSON file (the original's
    `config_bert.json` works: its xbert-only keys are dropped)."""
    if text_config is None:
        return {}
    if isinstance(text_config, BertConfig):
        return text_config.to_dict()
    if isinstance(text_config, (str, Path)):
        path = Path(text_config)
        if not path.is_file():
            raise FileNotFoundError(f"Text config {str(path)!r} does not exist (expected a BertConfig JSON file).")
        try:
            text_config = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"Text config {str(path)!r} is not valid JSON ({error}).") from error
    if not isinstance(text_config, Mapping):
        raise ValueError(f"text_config must be a BertConfig, a dict or a JSON file; got {type(text_config).__name__}.")
    return dict(text_config)


def infer_text_config(renamed: StateDict, text_config=None, vision_width: int = None) -> tuple:
    """(BertConfig, fusion_layer) for our-named text tensors (`text_model.*`): sizes and the fusion layer are read
    off the tensors; what they cannot tell (heads, activation, norm epsilon, dropout) comes from `text_config`.
    A size given in `text_config` that contradicts the tensors is an error."""
    prefix = "text_model."
    _require(renamed, prefix + "embeddings.word_embeddings.weight", prefix + "encoder.layer.0.intermediate.dense.weight")
    _require(renamed, prefix + "embeddings.position_embeddings.weight", prefix + "embeddings.token_type_embeddings.weight")
    vocab_size, hidden_size = renamed[prefix + "embeddings.word_embeddings.weight"].shape
    layers = {int(m.group(1)) for key in renamed if (m := re.match(r"text_model\.encoder\.layer\.(\d+)\.", key))}
    depth = max(layers) + 1
    fusing = sorted({int(m.group(1)) for key in renamed if (m := re.match(r"text_model\.encoder\.layer\.(\d+)\.crossattention\.", key))})
    if not fusing or fusing != list(range(fusing[0], depth)):
        raise ValueError(
            f"Expected the text encoder's last layers to have cross-attention (layers fusion_layer..{depth - 1}); "
            f"found it in layers {fusing}."
        )
    fusion_layer = fusing[0]
    read = {
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "num_hidden_layers": depth,
        "intermediate_size": renamed[prefix + "encoder.layer.0.intermediate.dense.weight"].shape[0],
        "max_position_embeddings": renamed[prefix + "embeddings.position_embeddings.weight"].shape[0],
        "type_vocab_size": renamed[prefix + "embeddings.token_type_embeddings.weight"].shape[0],
    }
    given = _read_text_config(text_config)
    if given.get("fusion_layer", fusion_layer) != fusion_layer:
        raise ValueError(f"The text config says fusion_layer {given['fusion_layer']}, the tensors {fusion_layer}.")
    if vision_width is not None and given.get("encoder_width", vision_width) != vision_width:
        raise ValueError(f"The text config says encoder_width {given['encoder_width']}, the video width is {vision_width}.")
    given = {key: value for key, value in given.items() if key not in XBERT_ONLY_KEYS}
    conflicts = [f"{key}: config {given[key]}, tensors {value}" for key, value in read.items() if given.get(key, value) != value]
    if conflicts:
        raise ValueError(f"The text config contradicts the checkpoint's tensors: {conflicts}.")
    config = BertConfig(**{**given, **read})
    if config.hidden_size % config.num_attention_heads:
        raise ValueError(
            f"The text width {config.hidden_size} is not divisible by num_attention_heads {config.num_attention_heads}; "
            "pass the original BERT config with --text-config."
        )
    return config, fusion_layer


def convert_video_text_checkpoint(
    state_dict: StateDict,
    text_config=None,
    keep_temporal: bool = True,
    num_frames: Optional[int] = None,
    image_size: Optional[int] = None,
) -> VideoMambaVideoTextModel:
    """A multimodal state dict (original names) -> `VideoMambaVideoTextModel` in eval mode.

    The video encoder's configuration, the projection width, the text sizes and `fusion_layer` are read off the
    tensors; `text_config` supplies the rest of BERT's (default: BERT-base's), `keep_temporal` the pooling mode.
    """
    if not isinstance(keep_temporal, bool):
        raise ValueError(f"keep_temporal must be True or False, got {keep_temporal!r}.")
    vision, prefix, others = strip_prefix(state_dict)
    vision_kwargs = infer_config_kwargs(vision)
    vision = _adapt(vision, vision_kwargs, num_frames, image_size, inflate=False)
    for name in ("teacher_hidden_size", "num_aligned_layers", "num_labels"):
        vision_kwargs.pop(name, None)
    renamed_vision, skipped, unknown = rename_keys(vision, "backbone")
    renamed = {f"vision_model.{key}": value for key, value in renamed_vision.items()}
    skipped = {prefix + key: why for key, why in skipped.items() if not key.startswith("pool_norm.")}
    unknown = [prefix + key for key in unknown if not key.startswith("pool_norm.")]
    for key, value in state_dict.items():
        if key.startswith(prefix) and not key.startswith(prefix + "pool_norm."):
            continue
        reason = next((why for old, why in VIDEO_TEXT_SKIPPED if key == old or key.startswith(old)), None)
        target = None if reason else _rename(key, VIDEO_TEXT_RENAMES, "")
        if reason:
            skipped[key] = reason
        elif target is None:
            unknown.append(key)
        else:
            renamed[target] = value
    _require(renamed, "vision_proj.weight", "text_proj.weight", "itm_head.weight", "temp", "pool_norm.weight")
    bert_config, fusion_layer = infer_text_config(renamed, text_config, vision_kwargs["hidden_size"])
    temperature = float(renamed["temp"])
    config = VideoMambaVideoTextConfig(
        vision_config=VideoMambaConfig(**vision_kwargs),
        text_config=bert_config,
        fusion_layer=fusion_layer,
        projection_dim=renamed["vision_proj.weight"].shape[0],
        keep_temporal=keep_temporal,
        pooling="cls+avg",  # every released multimodal model pools cls + mean of the patch tokens
        initial_temperature=min(max(temperature, 0.001), 0.5),
    )
    with no_init_weights():
        model = VideoMambaVideoTextModel(config)
    _check_against_model(renamed, unknown, model)
    model.load_state_dict(renamed, strict=True)
    model.eval()
    _log_left_out(skipped)
    logger.info(
        "Converted to VideoMambaVideoTextModel: video %s; text hidden_size=%d, num_hidden_layers=%d, fusion_layer=%d; "
        "projection_dim=%d, keep_temporal=%s, temperature=%.4g",
        _summary(config.vision_config, "backbone"), bert_config.hidden_size, bert_config.num_hidden_layers,
        fusion_layer, config.projection_dim, keep_temporal, temperature,
    )
    return model


def save_converted_video_text(model: VideoMambaVideoTextModel, output_dir, tokenizer=None) -> None:
    """save_pretrained for the model and its video processor, or its VideoMambaVideoTextProcessor when a
    tokenizer (a tokenizer object or a directory with bert-base-uncased's files) is given."""
    model.save_pretrained(output_dir)
    video_processor = VideoMambaVideoProcessor.from_model_config(model.config.vision_config)
    if tokenizer is None:
        video_processor.save_pretrained(output_dir)
        return
    if isinstance(tokenizer, (str, Path)):
        from transformers import BertTokenizer

        tokenizer = BertTokenizer.from_pretrained(str(tokenizer))
    VideoMambaVideoTextProcessor(video_processor, tokenizer).save_pretrained(output_dir)


def _log_left_out(left_out: dict) -> None:
    """One warning per reason; a multimodal text tower has hundreds of keys, so they are counted per prefix."""
    by_reason = {}
    for key, reason in sorted(left_out.items()):
        by_reason.setdefault(reason, {}).setdefault(key.split(".")[0], []).append(key)
    for reason, groups in by_reason.items():
        listed = [keys[0] if len(keys) == 1 else f"{prefix}.* ({len(keys)} keys)" for prefix, keys in groups.items()]
        logger.warning("Not converted (%s): %s.", reason, ", ".join(listed))


def save_converted(model, output_dir: Union[str, Path]) -> None:
    """save_pretrained for the model and the matching video processor (video models) or image processor
    (image models), so that pipeline("video-classification"/"image-classification", model=output_dir) works."""
    model.save_pretrained(output_dir)
    if model.config.modality == "video":
        # The processor's defaults are the original's evaluation transform (shorter side resized to the
        # input size, centre crop, ImageNet mean/std); the model's config gives the frames and size.
        VideoMambaVideoProcessor.from_model_config(model.config).save_pretrained(output_dir)
    else:
        VideoMambaImageProcessor.from_model_config(model.config).save_pretrained(output_dir)


def _summary(config: VideoMambaConfig, task: str) -> str:
    fields = ["modality", "hidden_size", "num_hidden_layers", "image_size", "patch_size"]
    fields += ["num_frames"] if config.modality == "video" else []
    fields += ["num_labels"] if task.endswith("classification") else []
    fields += ["teacher_hidden_size", "num_aligned_layers"] if task == "pretraining" else []
    return ", ".join(f"{name}={getattr(config, name)}" for name in fields)


# ----------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m modeling_videomamba.convert_original_checkpoint",
        description="Convert an original VideoMamba checkpoint (.pth) into a transformers model directory.",
    )
    parser.add_argument("--checkpoint", required=True, help="the original .pth file")
    parser.add_argument("--output-dir", required=True, help="directory to save the converted model in")
    parser.add_argument("--num-frames", type=int, help="frames of the converted video model (temporal embedding interpolated)")
    parser.add_argument("--image-size", type=int, help="input side of the converted model (position grid interpolated)")
    parser.add_argument(
        "--inflate-image-to-video", action="store_true", help="turn an ImageNet image checkpoint into a video model"
    )
    parser.add_argument("--labels", help="class names: a JSON list / {index: name} object, or a text file, one per line")
    parser.add_argument(
        "--vision-only", action="store_true", help="multimodal checkpoints: convert only the vision tower (VideoMambaModel)"
    )
    parser.add_argument(
        "--text-config", help="multimodal checkpoints: the original BERT config JSON (heads etc.; default BERT-base's)"
    )
    parser.add_argument(
        "--keep-temporal", type=_parse_bool, default=True, metavar="{true,false}",
        help="multimodal checkpoints: one video vector per frame (default true, as the zero-shot configs) or per clip",
    )
    parser.add_argument("--tokenizer", help="multimodal checkpoints: directory with the BERT tokenizer files to save with")
    return parser.parse_args(argv)


def _parse_bool(value: str) -> bool:
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    model = convert_original_checkpoint(
        args.checkpoint,
        output_dir=args.output_dir,
        num_frames=args.num_frames,
        image_size=args.image_size,
        inflate_image_to_video=args.inflate_image_to_video,
        labels=args.labels,
        vision_only=args.vision_only,
        text_config=args.text_config,
        keep_temporal=args.keep_temporal,
        tokenizer=args.tokenizer,
    )
    print(f"Saved {type(model).__name__} to {args.output_dir}")


if __name__ == "__main__":
    main()
