"""Worker for test_training.py::test_two_process_runs, started by `torchrun --nproc_per_node 2` (gloo on CPU).

One process group runs several short trainings in turn (starting torchrun once is most of the cost), each into
its own folder under `output_root`; the test then loads and runs what they saved.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/torchrun_phases.py OUTPUT_ROOT DATA_DIR TEACHERS_DIR RETRIEVAL_DIR

RETRIEVAL_DIR holds a video-text model (`model/`, with its vocabulary) and `train.csv` captions
(test_video_text_training.py's `retrieval_setup`). The `bf16_*` phases train under `--bf16 true` (bfloat16 autocast).
"""

import os
import sys
from pathlib import Path

import torch
from transformers import Trainer, TrainingArguments

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "trainer_scripts"))

import run_pretraining  # noqa: E402
import run_video_classification  # noqa: E402
import run_video_text_retrieval  # noqa: E402
from script_utils import end_distributed  # noqa: E402

from modeling_videomamba import VideoMambaConfig, VideoMambaForVideoClassification  # noqa: E402
from modeling_videomamba.distillation import VideoMambaDistillationCallback  # noqa: E402
from modeling_videomamba.training_utils import parse_config_overrides  # noqa: E402

TINY = "hidden_size=32,num_hidden_layers=2,image_size=32,patch_size=8,num_frames=4"
COMMON = ["--report_to", "none", "--disable_tqdm", "true", "--per_device_train_batch_size", "2", "--seed", "0",
          "--dataloader_num_workers", "0", "--use_cpu", "true", "--max_steps", "2", "--logging_steps", "1",
          "--save_strategy", "no", "--cache_decoded", "true"]


class _Clips(torch.utils.data.Dataset):
    def __init__(self, count=8):
        generator = torch.Generator().manual_seed(0)
        self.pixel_values = torch.randn(count, 4, 3, 32, 32, generator=generator)
        self.labels = torch.randint(0, 4, (count,), generator=generator)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return {"pixel_values": self.pixel_values[index], "labels": int(self.labels[index])}


def _script(arguments):
    run_video_classification.main([str(argument) for argument in arguments])


def classification_with_checkpointing(output, data, teachers):
    """The script, one epoch with activation checkpointing (DDP then searches no unused parameters)."""
    _script(["--train_dir", data / "train", "--preset", "tiny", "--config_overrides", TINY, "--output_dir", output,
             "--do_train", "--activation_checkpointing", "true", *COMMON, "--max_steps", "-1", "--num_train_epochs", "1",
             "--per_device_train_batch_size", "4"])


def distillation_with_mixup_through_the_script(output, data, teachers):
    """The script with a teacher and mixup (soft labels: the task loss is computed outside the model)."""
    _script(["--train_dir", data / "train", "--preset", "tiny", "--config_overrides", TINY, "--output_dir", output,
             "--do_train", "--teacher_model_name_or_path", teachers / "videomamba", "--mixup", "0.8", *COMMON])


def distillation_callback_on_a_stock_trainer_with_checkpointing(output, data, teachers):
    """The callback on transformers' Trainer: hard labels, gradient accumulation, activation checkpointing."""
    torch.manual_seed(0)
    student = VideoMambaForVideoClassification(VideoMambaConfig.from_preset("tiny", **parse_config_overrides(TINY), num_labels=4))
    teacher = VideoMambaForVideoClassification.from_pretrained(teachers / "videomamba")
    args = TrainingArguments(
        output_dir=str(output), per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=2, logging_steps=1,
        activation_checkpointing=True, report_to=[], save_strategy="no", disable_tqdm=True, use_cpu=True, seed=0,
        dataloader_num_workers=0,
    )
    trainer = Trainer(model=student, args=args, train_dataset=_Clips(), callbacks=[VideoMambaDistillationCallback(teacher)])
    trainer.train()
    trainer.save_model()
    trainer.save_state()


def pretraining(extra):
    def run(output, data, teachers, retrieval=None, more=()):
        run_pretraining.main([str(argument) for argument in [
            "--train_dir", data / "train", "--teacher_model_name_or_path", teachers / "clip", "--preset", "tiny",
            "--config_overrides", TINY + extra["config"], "--mask_ratio", "0.5", "--output_dir", output,
            "--activation_checkpointing", extra["checkpointing"], *COMMON, *more,
        ]])

    return run


def bf16_classification(teacher):
    """The script under bf16 autocast: --preset tiny (hybrid token order), with or without a teacher."""
    def run(output, data, teachers, retrieval):
        distill = ["--teacher_model_name_or_path", teachers / "videomamba"] if teacher else []
        _script(["--train_dir", data / "train", "--preset", "tiny", "--config_overrides", TINY, "--output_dir", output,
                 "--do_train", *distill, "--bf16", "true", *COMMON])

    return run


def bf16_pretraining(output, data, teachers, retrieval):
    pretraining({"config": "", "checkpointing": "false"})(output, data, teachers, retrieval, ["--bf16", "true"])


def bf16_video_text(output, data, teachers, retrieval):
    run_video_text_retrieval.main([str(argument) for argument in [
        "--model_name_or_path", retrieval / "model", "--train_file", retrieval / "train.csv", "--output_dir", output,
        "--do_train", "--bf16", "true", "--report_to", "none", "--disable_tqdm", "true", "--per_device_train_batch_size", "4",
        "--seed", "0", "--dataloader_num_workers", "0", "--use_cpu", "true", "--max_steps", "2", "--logging_steps", "1",
        "--save_strategy", "no", "--cache_decoded", "true",
    ]])


PHASES = {
    "classification_ckpt": classification_with_checkpointing,
    "script_distill_mixup": distillation_with_mixup_through_the_script,
    "stock_trainer_distill_ckpt": distillation_callback_on_a_stock_trainer_with_checkpointing,
    "pretrain_original": pretraining({"config": "", "checkpointing": "false"}),
    "pretrain_original_ckpt": pretraining({"config": "", "checkpointing": "true"}),
    "pretrain_final_norm_ckpt": pretraining({"config": ",aligned_feature_source=final_norm,num_aligned_layers=2", "checkpointing": "true"}),
    "bf16_classification": bf16_classification(teacher=False),
    "bf16_distill": bf16_classification(teacher=True),
    "bf16_pretrain": bf16_pretraining,
    "bf16_video_text": bf16_video_text,
}


def main(output_root, data, teachers, retrieval):
    for name, phase in PHASES.items():
        if name.startswith("bf16_"):
            phase(Path(output_root) / name, Path(data), Path(teachers), Path(retrieval))
        else:
            phase(Path(output_root) / name, Path(data), Path(teachers))
        if int(os.environ.get("RANK", 0)) == 0:
            print(f"phase {name} done", flush=True)
    end_distributed()


if __name__ == "__main__":
    main(*sys.argv[1:5])
