"""Argument parsing shared by the trainer scripts, kept apart from the package so that `--help` and bad
arguments answer before torch models, the Trainer and `datasets` are imported (the scripts import those
in `main`, after parsing)."""

import json
import logging
import os
import sys

from transformers import HfArgumentParser


def _arguments_file(argv: list):
    """The JSON file the arguments come from (HF examples' convention: it is the only argument), or None."""
    return argv[0] if len(argv) == 1 and str(argv[0]).endswith(".json") else None


def parse_script_arguments(dataclass_types: tuple, argv=None) -> tuple:
    """The trainer scripts' arguments: one JSON file, or command-line flags (HF examples' convention).

    Also sets up logging to stdout at the training arguments' process log level (the last dataclass
    must be `TrainingArguments`).
    """
    parser = HfArgumentParser(dataclass_types)
    argv = sys.argv[1:] if argv is None else argv
    if arguments_file := _arguments_file(argv):
        parsed = parser.parse_json_file(os.path.abspath(arguments_file))
    else:
        parsed = parser.parse_args_into_dataclasses(argv)
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", handlers=[logging.StreamHandler(sys.stdout)]
    )
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity(parsed[-1].get_process_log_level())
    _check_precision(parsed[-1])
    return parsed


def _check_precision(training_args):
    """fp16 mixed precision needs a GPU (its loss scaler and kernels); on CPU bf16 autocast is what runs."""
    if training_args.fp16 and training_args.device.type == "cpu":
        raise ValueError(
            "--fp16 needs a CUDA device, but this run is on CPU (no GPU, or --use_cpu). Use --bf16 true for mixed "
            "precision on CPU (bfloat16 autocast), or drop --fp16 to train in float32."
        )


def given_arguments(argv=None) -> set:
    """Names of the arguments written out in `argv` (flags, `--name=value` included, or the keys of one JSON
    file), with dashes as underscores: what tells an explicit value from a default that happens to equal it."""
    argv = sys.argv[1:] if argv is None else argv
    if arguments_file := _arguments_file(argv):
        with open(arguments_file) as handle:
            return set(json.load(handle))
    return {arg[2:].split("=", 1)[0].replace("-", "_") for arg in map(str, argv) if arg.startswith("--")}


def train_and_evaluate(trainer, training_args, train: bool = None, evaluate: bool = None):
    """The scripts' epilogue (HF examples' order). Training resumes from `--resume_from_checkpoint`, else from
    the last checkpoint in `--output_dir` (rerun the same command to continue), then saves the model, the
    metrics and the Trainer state; evaluation writes `eval_results.json`. `train` / `evaluate` default to
    `--do_train` / `--do_eval`."""
    from transformers.trainer_utils import get_last_checkpoint

    train = training_args.do_train if train is None else train
    evaluate = training_args.do_eval if evaluate is None else evaluate
    logger = logging.getLogger(__name__)
    logger.setLevel(training_args.get_process_log_level())
    if train:
        checkpoint = training_args.resume_from_checkpoint
        if checkpoint is None and os.path.isdir(training_args.output_dir):
            checkpoint = get_last_checkpoint(training_args.output_dir)
            if checkpoint is not None:
                logger.info(f"Resuming from {checkpoint} (pass another --output_dir to start over).")
        result = trainer.train(resume_from_checkpoint=checkpoint)
        trainer.save_model()
        trainer.log_metrics("train", result.metrics)
        trainer.save_metrics("train", result.metrics)
        trainer.save_state()
    if evaluate:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    return trainer


def end_distributed():
    """Tear down the process group of a multi-process run once every process is done. Left to interpreter
    exit, gloo's threads can abort a process after its work is finished ("terminate called without an
    active exception"), failing the whole torchrun."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
