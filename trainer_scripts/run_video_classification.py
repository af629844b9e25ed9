#!/usr/bin/env python
"""Fine-tune (or train from scratch) VideoMamba for video classification with the Hugging Face Trainer.

    python trainer_scripts/run_video_classification.py \
        --train_dir data/train --validation_dir data/validation \
        --preset tiny --config_overrides "hidden_size=96,num_hidden_layers=4,image_size=64,patch_size=8,num_frames=8" \
        --output_dir out --do_train --do_eval --num_train_epochs 5

Data: class-name folders of video files, or `--dataset_name` (a `datasets` dataset, Hub name, local folder
or `save_to_disk` folder, with a video column of paths or `Video` cells, read without decoding, and a
label column). Model: `--model_name_or_path` (a saved or converted VideoMamba; `--num_frames` /
`--image_size` adapt it to another clip length / frame size by interpolating its position embeddings) or
`--preset` + `--config_overrides`. `--teacher_model_name_or_path` adds self-distillation. Multi-process:
`torchrun --nproc_per_node N trainer_scripts/run_video_classification.py ...`. All arguments can also come
from one JSON file: `python run_video_classification.py args.json`.
"""

import logging
import os
import random
import sys
from dataclasses import dataclass, field

# Only what parsing needs (TrainingArguments brings torch): models, the Trainer and datasets load in `main`,
# so --help and argument errors answer quickly.
from script_utils import end_distributed, given_arguments, parse_script_arguments, train_and_evaluate
from transformers import TrainingArguments

# The script runs from a checkout too, where the package is beside this folder.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    model_name_or_path: str = field(default=None, metadata={"help": "A saved or converted VideoMamba (directory)."})
    preset: str = field(
        default=None,
        metadata={
            "help": "Train from scratch with a paper size: tiny, small or middle (learning rate 1e-3, token_order "
            "hybrid, use_mean_pooling true and tubelet_size 2 unless given)."
        },
    )
    config_overrides: str = field(
        default=None, metadata={"help": "Config fields for --preset, e.g. 'hidden_size=96,num_hidden_layers=4,image_size=64'."}
    )
    teacher_model_name_or_path: str = field(default=None, metadata={"help": "A VideoMamba teacher for self-distillation."})
    distillation_weight: float = field(default=1.0, metadata={"help": "Weight of the distillation loss."})
    ignore_mismatched_sizes: bool = field(default=True, metadata={"help": "Re-initialise a head of another size."})


@dataclass
class DataTrainingArguments:
    train_dir: str = field(default=None, metadata={"help": "Class-name folders of training videos."})
    validation_dir: str = field(default=None, metadata={"help": "Class-name folders of validation videos."})
    dataset_name: str = field(default=None, metadata={"help": "A `datasets` dataset (video-path and label columns)."})
    train_split: str = field(default="train")
    validation_split: str = field(default="validation")
    video_column_name: str = field(default="video")
    label_column_name: str = field(default="label")
    num_frames: int = field(
        default=None,
        metadata={"help": "Frames per clip (default: the model's). A model of another length is adapted: its "
                          "temporal position embeddings are interpolated, and it is saved at the new length."},
    )
    image_size: int = field(
        default=None,
        metadata={"help": "Frame size (default: the model's). A model of another size is adapted: its spatial "
                          "position embeddings are interpolated, and it is saved at the new size."},
    )
    max_train_samples: int = field(default=None)
    max_eval_samples: int = field(default=None)
    crop_min_scale: float = field(default=0.35, metadata={"help": "Smallest area fraction of the random resized crop."})
    horizontal_flip: bool = field(default=False, metadata={"help": "Random horizontal flips (not for direction-sensitive classes)."})
    mixup: float = field(default=0.0, metadata={"help": "Mixup alpha (0: off)."})
    cutmix: float = field(default=0.0, metadata={"help": "Cutmix alpha (0: off)."})
    mixup_prob: float = field(default=1.0, metadata={"help": "Probability of mixing a batch."})
    label_smoothing: float = field(default=0.0, metadata={"help": "Label smoothing of the soft targets."})
    num_eval_views: int = field(default=1, metadata={"help": "Temporal views averaged at evaluation (multi-view testing)."})
    cache_decoded: bool = field(default=False, metadata={"help": "Keep decoded clips in memory (small datasets)."})


def _subsample(samples, count, seed):
    """A seeded random subset of `count` samples (all of them for None), so every class can appear."""
    if count is None or count >= len(samples):
        return samples
    return random.Random(seed).sample(samples, count)


# TrainingArguments' default learning rate (5e-5) suits fine-tuning; from scratch it leaves the loss at chance
# for the whole first epoch (README "Training from scratch"), so --preset runs that keep it get this instead.
FROM_SCRATCH_LEARNING_RATE = 1e-3
# Config fields --preset sets unless --config_overrides names them (README "Training from scratch"): the paper's
# spatial-first order suits weights pretrained on images, while from scratch alternating it with temporal-first
# scanning links a patch to itself through time; the head reads the mean of the patch tokens, since the cls
# token at scan position 0 sees the clip weighted by scan distance; two-frame tubelets (VideoMAE's) put
# consecutive frames into one token and halve the tokens. Converted checkpoints and --model_name_or_path keep
# the config saved with them.
FROM_SCRATCH_CONFIG = {"token_order": "hybrid", "use_mean_pooling": True, "tubelet_size": 2}


def use_from_scratch_learning_rate(model_args, training_args, argv=None):
    """With --preset and no --learning_rate in `argv` (the command line by default), train at FROM_SCRATCH_LEARNING_RATE."""
    trainer_default = TrainingArguments.__dataclass_fields__["learning_rate"].default
    if model_args.preset and "learning_rate" not in given_arguments(argv):
        logger.info(
            f"--preset trains from scratch: learning rate {FROM_SCRATCH_LEARNING_RATE} instead of the Trainer's "
            f"fine-tuning default {trainer_default} (pass another --learning_rate to choose)."
        )
        training_args.learning_rate = FROM_SCRATCH_LEARNING_RATE


def build_video_processor(model_name_or_path, config, data_args):
    """The processor saved with the model (its normalisation, resize and sampling choices) when there is one,
    else one built from the config; either way sampling the model's frames at its size, with the training
    options of this run."""
    from modeling_videomamba import VideoMambaVideoProcessor

    options = {"train_crop_scale": (data_args.crop_min_scale, 1.0), "train_flip": data_args.horizontal_flip}
    saved_config = model_name_or_path and os.path.join(model_name_or_path, "video_preprocessor_config.json")
    if not (saved_config and os.path.isfile(saved_config)):
        return VideoMambaVideoProcessor.from_model_config(config, **options)
    saved = VideoMambaVideoProcessor.from_pretrained(model_name_or_path).to_dict()
    if saved["crop_size"] != {"height": config.image_size, "width": config.image_size}:
        # --image_size changed the model: resize as for a new model rather than keep the old resize.
        saved.update(size=config.image_size, crop_size=config.image_size)
    return VideoMambaVideoProcessor(**{**saved, "num_frames": config.num_frames, **options})


def build_model(model_args, data_args, num_labels, label2id):
    """The classifier to train, at the clip length and frame size asked for (`--num_frames`, `--image_size`)."""
    from modeling_videomamba import VideoMambaConfig, VideoMambaForVideoClassification
    from modeling_videomamba.training_utils import parse_config_overrides, resize_model_inputs

    id2label = {i: name for name, i in label2id.items()}
    labels = dict(num_labels=num_labels, label2id=label2id, id2label=id2label)
    sizes = {name: getattr(data_args, name) for name in ("num_frames", "image_size") if getattr(data_args, name) is not None}
    if model_args.model_name_or_path:
        if model_args.preset or model_args.config_overrides:
            raise ValueError("--preset/--config_overrides build a new model; don't combine them with --model_name_or_path.")
        model = VideoMambaForVideoClassification.from_pretrained(
            model_args.model_name_or_path, ignore_mismatched_sizes=model_args.ignore_mismatched_sizes, **labels
        )
        resize_model_inputs(model, **sizes)
        return model
    if not model_args.preset:
        raise ValueError("Give --model_name_or_path or --preset (tiny, small, middle) to train from scratch.")
    overrides = parse_config_overrides(model_args.config_overrides)
    for name, value in sizes.items():
        if overrides.setdefault(name, value) != value:
            raise ValueError(f"--{name} {value} contradicts {name}={overrides[name]} in --config_overrides.")
    defaults = {name: value for name, value in FROM_SCRATCH_CONFIG.items() if name not in overrides}
    num_frames = overrides.get("num_frames", VideoMambaConfig.from_preset(model_args.preset).num_frames)
    if num_frames % defaults.get("tubelet_size", 1):
        del defaults["tubelet_size"]  # clips of an odd length keep one frame per token
    if "tubelet_size" in defaults and model_args.teacher_model_name_or_path:
        # Self-distillation aligns token features, so the student tokenises clips as its teacher does.
        defaults["tubelet_size"] = VideoMambaConfig.from_pretrained(model_args.teacher_model_name_or_path).tubelet_size
    if defaults:
        logger.info(
            f"--preset trains from scratch with {defaults} (name them in --config_overrides to choose; the "
            "paper's: token_order=spatial_first,use_mean_pooling=false,tubelet_size=1)."
        )
    config = VideoMambaConfig.from_preset(model_args.preset, **{**defaults, **overrides}, **labels)
    return VideoMambaForVideoClassification(config)


def main(argv=None):
    model_args, data_args, training_args = parse_script_arguments((ModelArguments, DataTrainingArguments, TrainingArguments), argv)
    logger.setLevel(training_args.get_process_log_level())
    use_from_scratch_learning_rate(model_args, training_args, argv)

    from transformers import set_seed

    from modeling_videomamba import VideoMambaForVideoClassification, VideoMambaVideoProcessor
    from modeling_videomamba.distillation import VideoMambaDistillationTrainer
    from modeling_videomamba.training_utils import (
        MixupCutmix,
        VideoClipDataset,
        VideoMambaTrainer,
        collate_clips,
        compute_metrics,
        load_samples,
        resize_model_inputs,
    )

    set_seed(training_args.seed)

    source = dict(dataset_name=data_args.dataset_name, video_column=data_args.video_column_name, label_column=data_args.label_column_name)
    train_samples, label2id = None, None
    if training_args.do_train:
        train_samples, label2id = load_samples(data_args.train_dir, split=data_args.train_split, **source)
        train_samples = _subsample(train_samples, data_args.max_train_samples, training_args.seed)
    eval_samples = None
    if training_args.do_eval:
        eval_samples, label2id = load_samples(data_args.validation_dir, split=data_args.validation_split, label2id=label2id, **source)
        eval_samples = _subsample(eval_samples, data_args.max_eval_samples, training_args.seed)
    if label2id is None:
        raise ValueError("Nothing to do: pass --do_train and/or --do_eval with data.")

    model = build_model(model_args, data_args, len(label2id), label2id)
    config = model.config
    processor = build_video_processor(model_args.model_name_or_path, config, data_args)
    eval_processor = processor
    if data_args.num_eval_views > 1:
        eval_processor = VideoMambaVideoProcessor(**{**processor.to_dict(), "num_temporal_clips": data_args.num_eval_views})
    train_set = train_samples and VideoClipDataset(train_samples, processor, train=True, cache=data_args.cache_decoded, seed=training_args.seed)
    eval_set = eval_samples and VideoClipDataset(eval_samples, eval_processor, train=False, cache=data_args.cache_decoded)

    mixer = None
    if data_args.mixup > 0 or data_args.cutmix > 0 or data_args.label_smoothing > 0:
        mixer = MixupCutmix(len(label2id), data_args.mixup, data_args.cutmix, data_args.mixup_prob, label_smoothing=data_args.label_smoothing)

    trainer_kwargs = dict(
        model=model, args=training_args, train_dataset=train_set or None, eval_dataset=eval_set or None,
        data_collator=collate_clips, compute_metrics=compute_metrics, batch_mixer=mixer, processing_class=processor,
    )
    if model_args.teacher_model_name_or_path:
        teacher = VideoMambaForVideoClassification.from_pretrained(model_args.teacher_model_name_or_path)
        # The teacher sees the student's clips.
        resize_model_inputs(teacher, num_frames=config.num_frames, image_size=config.image_size)
        trainer = VideoMambaDistillationTrainer(teacher=teacher, distillation_weight=model_args.distillation_weight, **trainer_kwargs)
    else:
        trainer = VideoMambaTrainer(**trainer_kwargs)

    return train_and_evaluate(trainer, training_args)


if __name__ == "__main__":
    main()
    end_distributed()
