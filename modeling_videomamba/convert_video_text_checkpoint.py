"""Convert the original multimodal (UMT-style video-text) checkpoints into `VideoMambaVideoTextModel`.

`convert_original_checkpoint` calls this for checkpoints with a vision and a text tower; the vision tower's keys
follow `original_checkpoint.py`'s tables.
"""

import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Optional

from transformers import BertConfig
from transformers.initialization import no_init_weights

from .configuration_videomamba import VideoMambaConfig
from .configuration_videomamba_video_text import VideoMambaVideoTextConfig
from .modeling_videomamba_video_text import VideoMambaVideoTextModel
from .original_checkpoint import (
    MULTIMODAL_PREFIX,
    StateDict,
    adapt_embeddings,
    check_against_model,
    config_summary,
    infer_config_kwargs,
    log_left_out,
    rename_key,
    rename_keys,
    require_keys,
    strip_prefix,
)
from .processors import VideoMambaVideoProcessor, VideoMambaVideoTextProcessor

logger = logging.getLogger(__name__)

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
    require_keys(renamed, prefix + "embeddings.word_embeddings.weight", prefix + "encoder.layer.0.intermediate.dense.weight")
    require_keys(renamed, prefix + "embeddings.position_embeddings.weight", prefix + "embeddings.token_type_embeddings.weight")
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
    vision = adapt_embeddings(vision, vision_kwargs, num_frames, image_size, inflate=False)
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
        target = None if reason else rename_key(key, VIDEO_TEXT_RENAMES, "")
        if reason:
            skipped[key] = reason
        elif target is None:
            unknown.append(key)
        else:
            renamed[target] = value
    require_keys(renamed, "vision_proj.weight", "text_proj.weight", "itm_head.weight", "temp", "pool_norm.weight")
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
    check_against_model(renamed, unknown, model)
    model.load_state_dict(renamed, strict=True)
    model.eval()
    log_left_out(skipped)
    logger.info(
        "Converted to VideoMambaVideoTextModel: video %s; text hidden_size=%d, num_hidden_layers=%d, fusion_layer=%d; "
        "projection_dim=%d, keep_temporal=%s, temperature=%.4g",
        config_summary(config.vision_config, "backbone"), bert_config.hidden_size, bert_config.num_hidden_layers,
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
