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
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Optional, Union

from transformers.initialization import no_init_weights

from .configuration_videomamba import VideoMambaConfig
from .convert_video_text_checkpoint import (
    convert_video_text_checkpoint,
    is_video_text_checkpoint,
    save_converted_video_text,
)
from .modeling_videomamba import VideoMambaForImageClassification, VideoMambaForVideoClassification, VideoMambaModel
from .model_card import push_converted, write_model_card
from .modeling_videomamba_pretraining import VideoMambaForPreTraining
from .original_checkpoint import (
    MULTIMODAL_PREFIX,
    adapt_embeddings,
    check_against_model,
    config_summary,
    default_labels,
    infer_config_kwargs,
    load_labels,
    load_original_checkpoint,
    log_left_out,
    rename_keys,
    strip_prefix,
    unwrap_state_dict,
)
from .processors import VideoMambaImageProcessor, VideoMambaVideoProcessor

logger = logging.getLogger(__name__)

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
    checkpoint_name: Optional[str] = None,
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
        checkpoint_name: the released file's name, for the model card's reported results (default: the
            checkpoint's file name when a path is given).
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
        checkpoint_name = checkpoint_name or Path(checkpoint).name
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
            write_model_card(model, output_dir, checkpoint_name)
        return model
    state_dict, prefix, ignored = strip_prefix(state_dict)

    kwargs = infer_config_kwargs(state_dict)
    state_dict = adapt_embeddings(state_dict, kwargs, num_frames, image_size, inflate_image_to_video)
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
    check_against_model(renamed, unknown, model)
    model.load_state_dict(renamed, strict=True)
    model.eval()
    log_left_out({**ignored, **skipped})
    logger.info("Converted to %s: %s", type(model).__name__, config_summary(config, task))

    if output_dir is not None:
        save_converted(model, output_dir)
        write_model_card(model, output_dir, checkpoint_name)
    return model


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
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the converted directory to this Hub repository")
    parser.add_argument("--private", action="store_true", help="with --push-to-hub: create the repository as private")
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
    if args.push_to_hub:
        push_converted(args.output_dir, args.push_to_hub, private=args.private)
        print(f"Uploaded {args.output_dir} to {args.push_to_hub}")


if __name__ == "__main__":
    main()
