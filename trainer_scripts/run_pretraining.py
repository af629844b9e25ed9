#!/usr/bin/env python
"""Masked video pretraining of VideoMamba (UMT-style: align visible tokens to a frozen teacher).

    python trainer_scripts/run_pretraining.py --train_dir data/train \
        --teacher_model_name_or_path path/to/clip-vision-or-videomamba \
        --preset tiny --config_overrides "image_size=64,patch_size=8,num_frames=8" \
        --mask_type attention --mask_ratio 0.8 --output_dir pt --do_train --num_train_epochs 10

The teacher is a CLIP vision tower (applied per frame) or any model loadable with `AutoModel` whose
features have the student's token grid. The output directory loads into
`VideoMambaForVideoClassification` (pass it as `--model_name_or_path` to run_video_classification.py).
`--mask_schedule "0:random:0.5,0.5:tube:0.8"` switches strategy / ratio at fractions of training.
"""

import logging
import os
import sys
from dataclasses import dataclass, field

# Only what parsing needs (TrainingArguments brings torch): models, the Trainer and datasets load in `main`,
# so --help and argument errors answer quickly.
from script_utils import end_distributed, parse_script_arguments, train_and_evaluate
from transformers import TrainingArguments

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

logger = logging.getLogger(__name__)


@dataclass
class PreTrainingArguments:
    teacher_model_name_or_path: str = field(default=None, metadata={"help": "The frozen teacher (CLIP vision tower or video model)."})
    model_name_or_path: str = field(default=None, metadata={"help": "Start the student from a saved VideoMamba."})
    preset: str = field(default=None, metadata={"help": "Student size from scratch: tiny, small or middle."})
    config_overrides: str = field(default=None, metadata={"help": "Student config fields, e.g. 'image_size=64,num_frames=8'."})
    mask_type: str = field(default="tube", metadata={"help": "A strategy of modeling_videomamba.masking.MASK_TYPES."})
    mask_ratio: float = field(default=0.8)
    mask_schedule: str = field(default=None, metadata={"help": "'start:type:ratio,...' with start a fraction of training."})


@dataclass
class DataArguments:
    train_dir: str = field(default=None, metadata={"help": "Folders of videos (class names are ignored)."})
    dataset_name: str = field(default=None)
    train_split: str = field(default="train")
    video_column_name: str = field(default="video")
    label_column_name: str = field(default="label")
    max_train_samples: int = field(default=None)
    crop_min_scale: float = field(default=0.35)
    horizontal_flip: bool = field(default=True)
    cache_decoded: bool = field(default=False)


def parse_mask_schedule(text: str) -> list:
    """'0:random:0.5,0.5:tube:0.8' -> [(0.0, 'random', 0.5), (0.5, 'tube', 0.8)]."""
    schedule = []
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        parts = item.split(":")
        if len(parts) != 3:
            raise ValueError(f"Bad mask schedule entry {item!r}; expected start:mask_type:ratio.")
        schedule.append((float(parts[0]), parts[1], float(parts[2])))
    return schedule


def load_teacher(path: str, need_attention: bool):
    """A CLIP checkpoint gives its vision tower; anything else goes through AutoModel."""
    from transformers import AutoConfig, AutoModel, CLIPVisionModel

    kwargs = {"attn_implementation": "eager"} if need_attention else {}
    if AutoConfig.from_pretrained(path).model_type in ("clip", "clip_vision_model"):
        return CLIPVisionModel.from_pretrained(path, **kwargs)
    return AutoModel.from_pretrained(path, **kwargs)


def main(argv=None):
    model_args, data_args, training_args = parse_script_arguments((PreTrainingArguments, DataArguments, TrainingArguments), argv)

    from transformers import set_seed

    from modeling_videomamba import VideoMambaConfig, VideoMambaForPreTraining, VideoMambaVideoProcessor
    from modeling_videomamba.pretraining import VideoMambaPreTrainingTrainer
    from modeling_videomamba.training_utils import (
        VideoClipDataset,
        collate_clips,
        load_samples,
        parse_config_overrides,
        pin_memory_only_with_accelerator,
    )

    if not model_args.teacher_model_name_or_path:
        raise ValueError("Masked pretraining needs --teacher_model_name_or_path.")
    schedule = parse_mask_schedule(model_args.mask_schedule)
    need_attention = "attention" in [model_args.mask_type] + [entry[1] for entry in schedule]
    set_seed(training_args.seed)

    teacher = load_teacher(model_args.teacher_model_name_or_path, need_attention)
    teacher_dim = teacher.config.hidden_size
    if model_args.model_name_or_path:
        model = VideoMambaForPreTraining.from_pretrained(model_args.model_name_or_path, teacher_hidden_size=teacher_dim)
    elif model_args.preset:
        overrides = {"teacher_hidden_size": teacher_dim, **parse_config_overrides(model_args.config_overrides)}
        model = VideoMambaForPreTraining(VideoMambaConfig.from_preset(model_args.preset, **overrides))
    else:
        raise ValueError("Give --model_name_or_path or --preset for the student.")

    samples, _ = load_samples(
        data_args.train_dir, data_args.dataset_name, data_args.train_split,
        video_column=data_args.video_column_name, label_column=data_args.label_column_name,
    )
    processor = VideoMambaVideoProcessor.from_model_config(
        model.config, train_crop_scale=(data_args.crop_min_scale, 1.0), train_flip=data_args.horizontal_flip
    )
    train_set = VideoClipDataset(samples[: data_args.max_train_samples], processor, train=True, cache=data_args.cache_decoded, seed=training_args.seed)

    pin_memory_only_with_accelerator(training_args)
    trainer = VideoMambaPreTrainingTrainer(
        model=model, args=training_args, train_dataset=train_set, data_collator=collate_clips, processing_class=processor,
        teacher=teacher, mask_type=model_args.mask_type, mask_ratio=model_args.mask_ratio, mask_schedule=schedule,
    )
    return train_and_evaluate(trainer, training_args, train=True, evaluate=False)


if __name__ == "__main__":
    main()
    end_distributed()
