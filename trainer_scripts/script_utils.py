"""Argument parsing shared by the trainer scripts, kept apart from the package so that `--help` and bad
arguments answer before torch models, the Trainer and `datasets` are imported (the scripts import those
in `main`, after parsing)."""

import logging
import os
import sys

from transformers import HfArgumentParser


def parse_script_arguments(dataclass_types: tuple, argv=None) -> tuple:
    """The trainer scripts' arguments: one JSON file, or command-line flags (HF examples' convention).

    Also sets up logging to stdout at the training arguments' process log level (the last dataclass
    must be `TrainingArguments`).
    """
    parser = HfArgumentParser(dataclass_types)
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 1 and argv[0].endswith(".json"):
        parsed = parser.parse_json_file(os.path.abspath(argv[0]))
    else:
        parsed = parser.parse_args_into_dataclasses(argv)
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", handlers=[logging.StreamHandler(sys.stdout)]
    )
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity(parsed[-1].get_process_log_level())
    return parsed
