#!/usr/bin/env python
"""Fine-tune VideoMambaVideoTextModel for text-video retrieval with the Hugging Face Trainer.

    python trainer_scripts/run_video_text_retrieval.py \
        --model_name_or_path videomamba-middle-25m --tokenizer_name bert-base-uncased \
        --train_file train.csv --validation_file val.csv \
        --output_dir out --do_train --do_eval --num_train_epochs 5 --per_device_train_batch_size 32

Data: a CSV / JSON / JSON-lines file with a video-path column and a caption column (one row per caption; relative
paths are relative to the file), or `--dataset_name` (a `datasets` dataset with such columns). Model: a converted
or saved `VideoMambaVideoTextModel` directory; the tokenizer (bert-base-uncased's files for the released models)
comes from `--tokenizer_name` or the model directory. Loss: the model's contrastive loss, gathered across
processes (with gradient), plus its matching loss with hard negatives. Evaluation: text->video and video->text
Recall@1/5/10, median and mean rank, with and without re-ranking the top `--rerank_k` by the matching head.
Multi-process: `torchrun --nproc_per_node N trainer_scripts/run_video_text_retrieval.py ...`. All arguments can
also come from one JSON file.
"""

import logging
import os
import sys
from dataclasses import dataclass, field

# Only what parsing needs (TrainingArguments brings torch): models, the Trainer and datasets load in `main`,
# so --help and argument errors answer quickly.
from script_utils import end_distributed, parse_script_arguments, train_and_evaluate
from transformers import TrainingArguments

# The script runs from a checkout too, where the package is beside this folder.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    model_name_or_path: str = field(metadata={"help": "A converted or saved VideoMambaVideoTextModel (directory)."})
    tokenizer_name: str = field(default=None, metadata={"help": "Directory with the BERT tokenizer files (default: the model's)."})
    max_text_length: int = field(default=32, metadata={"help": "Captions are truncated to this many tokens (MSRVTT: 32)."})
    rerank_k: int = field(default=16, metadata={"help": "Evaluation re-ranks each query's top k by the matching head (0: off)."})


@dataclass
class DataTrainingArguments:
    train_file: str = field(default=None, metadata={"help": "CSV / JSON / JSON-lines file of training video-caption pairs."})
    validation_file: str = field(default=None, metadata={"help": "The same for evaluation."})
    dataset_name: str = field(default=None, metadata={"help": "A `datasets` dataset with video-path and caption columns."})
    train_split: str = field(default="train")
    validation_split: str = field(default="validation")
    video_column_name: str = field(default="video")
    caption_column_name: str = field(default="caption")
    crop_min_scale: float = field(default=0.5, metadata={"help": "Smallest area fraction of the random resized crop."})
    cache_decoded: bool = field(default=False, metadata={"help": "Keep decoded clips in memory (small datasets)."})


def build_processor(model, model_args):
    """The saved video processor (or one matching the model's video config) and the BERT tokenizer."""
    from transformers import BertTokenizer
    from transformers.utils import VIDEO_PROCESSOR_NAME

    from modeling_videomamba import VideoMambaVideoProcessor, VideoMambaVideoTextProcessor

    directory = model_args.model_name_or_path
    if os.path.isfile(os.path.join(directory, VIDEO_PROCESSOR_NAME)):
        video_processor = VideoMambaVideoProcessor.from_pretrained(directory)
    else:
        video_processor = VideoMambaVideoProcessor.from_model_config(model.config.vision_config)
    tokenizer = BertTokenizer.from_pretrained(model_args.tokenizer_name or directory)
    return VideoMambaVideoTextProcessor(video_processor, tokenizer)


def main(argv=None):
    model_args, data_args, training_args = parse_script_arguments((ModelArguments, DataTrainingArguments, TrainingArguments), argv)
    logger.setLevel(training_args.get_process_log_level())
    from transformers import set_seed

    from modeling_videomamba import VideoMambaVideoProcessor, VideoMambaVideoTextModel
    from modeling_videomamba.training_utils import pin_memory_only_with_accelerator
    from modeling_videomamba.video_text_training import (
        VideoCaptionCollator,
        VideoCaptionDataset,
        VideoTextRetrievalTrainer,
        load_caption_samples,
    )

    pin_memory_only_with_accelerator(training_args)
    # Captions are tokenised by the collator: the Trainer must not drop the "caption" field beforehand.
    training_args.remove_unused_columns = False

    set_seed(training_args.seed)

    model = VideoMambaVideoTextModel.from_pretrained(model_args.model_name_or_path)
    processor = build_processor(model, model_args)
    train_processor = VideoMambaVideoProcessor(
        **{**processor.video_processor.to_dict(), "train_crop_scale": (data_args.crop_min_scale, 1.0)}
    )
    source = dict(dataset_name=data_args.dataset_name, video_column=data_args.video_column_name,
                  caption_column=data_args.caption_column_name)
    train_set = eval_set = None
    if training_args.do_train:
        samples = load_caption_samples(data_args.train_file, split=data_args.train_split, **source)
        train_set = VideoCaptionDataset(samples, train_processor, train=True, cache=data_args.cache_decoded, seed=training_args.seed)
    if training_args.do_eval:
        samples = load_caption_samples(data_args.validation_file, split=data_args.validation_split, **source)
        eval_set = VideoCaptionDataset(samples, processor.video_processor, train=False, cache=data_args.cache_decoded)
    if train_set is None and eval_set is None:
        raise ValueError("Nothing to do: pass --do_train and/or --do_eval with data.")

    trainer = VideoTextRetrievalTrainer(
        model=model, args=training_args, train_dataset=train_set, eval_dataset=eval_set,
        data_collator=VideoCaptionCollator(processor.tokenizer, model_args.max_text_length), processing_class=processor,
        tokenizer=processor.tokenizer, max_length=model_args.max_text_length, rerank_k=model_args.rerank_k,
    )
    return train_and_evaluate(trainer, training_args)


if __name__ == "__main__":
    main()
    end_distributed()
