"""The original VideoMamba checkpoints' layout: reading a `.pth`, its key names, and the configuration its tensors imply.

Shared by the classifier / pretraining conversion (`convert_original_checkpoint.py`) and the multimodal one
(`convert_video_text_checkpoint.py`).
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

from .configuration_videomamba import VideoMambaConfig
from .modeling_videomamba_embeddings import interpolate_position_embeddings, interpolate_temporal_embeddings

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
        target = rename_key(key, BACKBONE_RENAMES, backbone_prefix) or rename_key(key, TASK_RENAMES[task], "")
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


def rename_key(key: str, table, prefix: str) -> Optional[str]:
    for old, new in table:
        if key == old or (old.endswith(".") and key.startswith(old)):
            return prefix + new + key[len(old):]
    return None


def require_keys(state_dict: StateDict, *keys: str) -> None:
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
    require_keys(state_dict, "cls_token", "pos_embed", "patch_embed.proj.weight", "layers.0.mixer.in_proj.weight")
    require_keys(state_dict, "layers.0.mixer.A_log", "layers.0.mixer.dt_proj.weight", "layers.0.mixer.conv1d.weight")
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
        require_keys(state_dict, "temporal_pos_embedding")
        kwargs["tubelet_size"] = patch_weight.shape[2]
        kwargs["num_frames"] = state_dict["temporal_pos_embedding"].shape[1] * patch_weight.shape[2]
    if "head.weight" in state_dict:
        kwargs["num_labels"] = state_dict["head.weight"].shape[0]
    decoders = {int(m.group(1)) for key in state_dict if (m := re.match(r"clip_decoder\.(\d+)\.", key))}
    if decoders:
        require_keys(state_dict, "clip_decoder.0.head.weight")
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
# Checks and adaptations shared by the conversions
# ----------------------------------------------------------------------------------------------------


def check_against_model(renamed: StateDict, unknown: list, model: torch.nn.Module) -> None:
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


def adapt_embeddings(state_dict: StateDict, kwargs: dict, num_frames, image_size, inflate: bool) -> StateDict:
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


def log_left_out(left_out: dict) -> None:
    """One warning per reason; a multimodal text tower has hundreds of keys, so they are counted per prefix."""
    by_reason = {}
    for key, reason in sorted(left_out.items()):
        by_reason.setdefault(reason, {}).setdefault(key.split(".")[0], []).append(key)
    for reason, groups in by_reason.items():
        listed = [keys[0] if len(keys) == 1 else f"{prefix}.* ({len(keys)} keys)" for prefix, keys in groups.items()]
        logger.warning("Not converted (%s): %s.", reason, ", ".join(listed))


def config_summary(config: VideoMambaConfig, task: str) -> str:
    fields = ["modality", "hidden_size", "num_hidden_layers", "image_size", "patch_size"]
    fields += ["num_frames"] if config.modality == "video" else []
    fields += ["num_labels"] if task.endswith("classification") else []
    fields += ["teacher_hidden_size", "num_aligned_layers"] if task == "pretraining" else []
    return ", ".join(f"{name}={getattr(config, name)}" for name in fields)
