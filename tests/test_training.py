"""Fine-tuning through the Trainer: the built-in dataset, run_video_classification.py (outputs, resume,
errors, two processes), soft-label loss scaling under gradient accumulation, metrics."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForVideoClassification, Trainer, TrainingArguments

from modeling_videomamba import VideoMambaConfig, VideoMambaForVideoClassification, VideoMambaVideoProcessor, read_video
from modeling_videomamba.synthetic_data import CLASS_PAIRS, generate_dataset, render_clip
from modeling_videomamba.synthetic_data import main as synthetic_main
from modeling_videomamba.training_utils import (
    MixupCutmix,
    VideoMambaTrainer,
    parse_config_overrides,
    scan_video_folder,
    topk_accuracy,
)

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "trainer_scripts" / "run_video_classification.py"
sys.path.insert(0, str(REPO / "trainer_scripts"))
TINY_OVERRIDES = "hidden_size=32,num_hidden_layers=2,image_size=32,patch_size=8,num_frames=4,dt_init=mamba"
COMMON = ["--report_to", "none", "--disable_tqdm", "true", "--per_device_train_batch_size", "4", "--seed", "0", "--dataloader_num_workers", "0"]


def _run_script(argv):
    import run_video_classification

    return run_video_classification.main([str(a) for a in argv])


# ---------------------------------------------------------------------------------------------------
# Built-in dataset
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("forward,backward", CLASS_PAIRS)
def test_pair_classes_are_time_reversals_with_identical_frames(forward, backward):
    a = render_clip(forward, 10, 32, np.random.default_rng(5))
    b = render_clip(backward, 10, 32, np.random.default_rng(5))
    assert np.array_equal(a[::-1], b)
    # A frame-averaging model sees the same input for both classes.
    assert np.array_equal(a.mean(0), b.mean(0))
    assert not np.array_equal(a[0], a[-1])  # but the clip does move


def test_generated_files_are_real_videos_in_class_folders(synthetic_videos):
    samples, label2id = scan_video_folder(synthetic_videos / "train")
    assert sorted(label2id) == sorted(["moving_left", "moving_right", "rotating_clockwise", "rotating_counterclockwise"])
    assert len(samples) == 4 * 6
    frames, info = read_video(samples[0][0])
    assert frames.shape == (8, 32, 32, 3) and frames.dtype == np.uint8


def test_moving_left_really_moves_left(tmp_path):
    generate_dataset(tmp_path, 1, 0, num_frames=8, size=32, classes=("moving_left",), seed=3)
    frames, _ = read_video(next((tmp_path / "train" / "moving_left").glob("*.mp4")))
    square = frames.min(-1) > 140  # object colours are >= 0.6 * 255 per channel, backgrounds <= ~0.4 * 255
    centre = [np.nonzero(frame)[1].mean() for frame in square]
    assert all(later < earlier for earlier, later in zip(centre, centre[1:]))
    assert centre[-1] < centre[0] - 10


def test_cli_writes_the_requested_counts(tmp_path):
    synthetic_main(["--output-dir", str(tmp_path), "--train-per-class", "1", "--validation-per-class", "1",
                    "--num-frames", "4", "--size", "16", "--classes", "growing", "shrinking"])
    assert len(list((tmp_path / "train").glob("*/*.mp4"))) == 2
    assert len(list((tmp_path / "validation").glob("*/*.mp4"))) == 2
    with pytest.raises(ValueError, match="Unknown classes"):
        generate_dataset(tmp_path, 1, 1, classes=("jumping",))


# ---------------------------------------------------------------------------------------------------
# The script
# ---------------------------------------------------------------------------------------------------


def test_training_lowers_the_loss_and_writes_every_output(tmp_path, synthetic_videos):
    output = tmp_path / "run"
    _run_script([
        "--train_dir", synthetic_videos / "train", "--validation_dir", synthetic_videos / "validation",
        "--preset", "tiny", "--config_overrides", TINY_OVERRIDES, "--output_dir", output, "--do_train", "--do_eval",
        "--max_steps", "20", "--max_train_samples", "8", "--learning_rate", "3e-3", "--logging_steps", "1",
        "--save_strategy", "no", "--cache_decoded", "true", "--crop_min_scale", "1.0", "--num_eval_views", "2", *COMMON,
    ])
    state = json.loads((output / "trainer_state.json").read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert len(losses) == 20
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.1
    evaluation = json.loads((output / "eval_results.json").read_text())
    assert 0.0 <= evaluation["eval_accuracy"] <= 1.0 and "eval_top5_accuracy" not in evaluation  # 4 classes < 5
    assert json.loads((output / "train_results.json").read_text())["train_loss"] > 0
    model = AutoModelForVideoClassification.from_pretrained(output)
    assert model.config.label2id["moving_left"] in range(4) and model.config.num_labels == 4
    processor = VideoMambaVideoProcessor.from_pretrained(output)
    assert processor.num_frames == 4 and processor.train_flip is False


def test_resume_from_a_checkpoint_continues_the_same_run(tmp_path, synthetic_videos):
    args = [
        "--train_dir", synthetic_videos / "train", "--preset", "tiny", "--config_overrides", TINY_OVERRIDES,
        "--do_train", "--max_steps", "4", "--save_steps", "2", "--learning_rate", "3e-3", "--cache_decoded", "true",
        "--mixup", "0.8", "--label_smoothing", "0.1", *COMMON,
    ]
    _run_script(args + ["--output_dir", tmp_path / "straight"])
    _run_script(args + ["--output_dir", tmp_path / "straight", "--resume_from_checkpoint", tmp_path / "straight" / "checkpoint-2",
                        "--save_strategy", "no"])
    straight = load_file(tmp_path / "straight" / "checkpoint-4" / "model.safetensors")
    resumed = load_file(tmp_path / "straight" / "model.safetensors")
    assert straight.keys() == resumed.keys()
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], atol=1e-6, rtol=1e-5, msg=name)
    # The resumed run picked up at step 2: its history has steps 3-4 only after the checkpoint's.
    state = json.loads((tmp_path / "straight" / "trainer_state.json").read_text())
    assert state["global_step"] == 4


def test_bad_data_directories_give_clear_errors(tmp_path, synthetic_videos):
    base = ["--preset", "tiny", "--config_overrides", TINY_OVERRIDES, "--output_dir", tmp_path / "out", "--do_train", *COMMON]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class folders"):
        _run_script(["--train_dir", tmp_path / "empty", *base])
    (tmp_path / "no_videos" / "cats").mkdir(parents=True)
    (tmp_path / "no_videos" / "cats" / "notes.txt").write_text("not a video")
    with pytest.raises(ValueError, match="no video files"):
        _run_script(["--train_dir", tmp_path / "no_videos", *base])
    with pytest.raises(OSError, match="does not exist"):
        _run_script(["--train_dir", tmp_path / "missing", *base])
    with pytest.raises(ValueError, match="--model_name_or_path or --preset"):
        _run_script(["--train_dir", synthetic_videos / "train", "--output_dir", tmp_path / "out", "--do_train", *COMMON])
    with pytest.raises(ValueError, match="Bad config override"):
        parse_config_overrides("hidden_size")


def test_config_overrides_are_typed():
    assert parse_config_overrides("hidden_size=96, rms_norm=false,drop_path_rate=0.1,dt_init=mamba") == {
        "hidden_size": 96, "rms_norm": False, "drop_path_rate": 0.1, "dt_init": "mamba"
    }


def test_two_processes_train_data_parallel(tmp_path, synthetic_videos):
    """torchrun --nproc_per_node 2 (gloo on CPU; --use_cpu is what makes accelerate set up MULTI_CPU without
    a GPU): each step consumes 2 x per-device batch samples."""
    output = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517", str(SCRIPT),
        "--train_dir", str(synthetic_videos / "train"), "--preset", "tiny", "--config_overrides", TINY_OVERRIDES,
        "--output_dir", str(output), "--do_train", "--num_train_epochs", "1", "--save_strategy", "no",
        "--cache_decoded", "true", "--logging_steps", "1", "--use_cpu", "true", *COMMON,
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((output / "trainer_state.json").read_text())
    # 24 clips, 4 per process, 2 processes: 3 steps (one process would take 6).
    assert state["global_step"] == 3
    assert (output / "model.safetensors").is_file()


# ---------------------------------------------------------------------------------------------------
# Soft labels and gradient accumulation
# ---------------------------------------------------------------------------------------------------


class _Clips(torch.utils.data.Dataset):
    def __init__(self, count=8, num_labels=3):
        generator = torch.Generator().manual_seed(0)
        self.pixel_values = torch.randn(count, 4, 3, 32, 32, generator=generator)
        self.labels = torch.randint(0, num_labels, (count,), generator=generator)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return {"pixel_values": self.pixel_values[index], "labels": int(self.labels[index])}


def _one_update(tmp_path, trainer_class, batch_size, accumulation, **trainer_kwargs):
    torch.manual_seed(0)
    model = VideoMambaForVideoClassification(VideoMambaConfig(image_size=32, patch_size=8, num_frames=4, hidden_size=32, num_hidden_layers=2, num_labels=3))
    args = TrainingArguments(
        output_dir=str(tmp_path / f"{trainer_class.__name__}{batch_size}"), per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation, max_steps=1, learning_rate=0.5, optim="sgd", lr_scheduler_type="constant",
        report_to=[], save_strategy="no", disable_tqdm=True, use_cpu=True, seed=0, max_grad_norm=0,
    )
    trainer = trainer_class(model=model, args=args, train_dataset=_Clips(), **trainer_kwargs)
    trainer.train()
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_soft_label_loss_is_scaled_for_gradient_accumulation(tmp_path):
    smoothing = dict(batch_mixer=MixupCutmix(num_labels=3, label_smoothing=0.2))  # deterministic soft labels
    whole = _one_update(tmp_path, VideoMambaTrainer, 4, 1, **smoothing)
    accumulated = _one_update(tmp_path, VideoMambaTrainer, 2, 2, **smoothing)
    torch.testing.assert_close(accumulated, whole, atol=1e-5, rtol=1e-4)
    # Hard labels take the stock path and agree too.
    torch.testing.assert_close(_one_update(tmp_path, VideoMambaTrainer, 2, 2), _one_update(tmp_path, VideoMambaTrainer, 4, 1), atol=1e-5, rtol=1e-4)


class _SoftLabelClips(_Clips):
    def __getitem__(self, index):
        item = super().__getitem__(index)
        return {**item, "labels": torch.nn.functional.one_hot(torch.tensor(item["labels"]), 3).float() * 0.8 + 0.2 / 3}


def test_stock_trainer_mis_scales_soft_labels_which_ours_fixes(tmp_path):
    """The premise: transformers' Trainer with soft labels from the data does NOT divide by accumulation."""

    def update(trainer_class, batch_size, accumulation):
        torch.manual_seed(0)
        model = VideoMambaForVideoClassification(VideoMambaConfig(image_size=32, patch_size=8, num_frames=4, hidden_size=32, num_hidden_layers=2, num_labels=3))
        args = TrainingArguments(
            output_dir=str(tmp_path / "x"), per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation,
            max_steps=1, learning_rate=0.5, optim="sgd", lr_scheduler_type="constant", report_to=[], save_strategy="no",
            disable_tqdm=True, use_cpu=True, seed=0, max_grad_norm=0,
        )
        before = torch.cat([p.detach().flatten() for p in model.parameters()]).clone()
        trainer_class(model=model, args=args, train_dataset=_SoftLabelClips()).train()
        return torch.cat([p.detach().flatten() for p in model.parameters()]) - before

    ours_whole, ours_accumulated = update(VideoMambaTrainer, 4, 1), update(VideoMambaTrainer, 2, 2)
    torch.testing.assert_close(ours_accumulated, ours_whole, atol=1e-5, rtol=1e-4)
    # The stock Trainer sums the two micro-batch losses: its accumulated update is twice its whole-batch one.
    stock_whole, stock_accumulated = update(Trainer, 4, 1), update(Trainer, 2, 2)
    torch.testing.assert_close(stock_accumulated, 2 * stock_whole, atol=1e-5, rtol=1e-3)


def test_mixup_and_cutmix_make_valid_soft_labels():
    torch.manual_seed(0)
    batch = {"pixel_values": torch.rand(4, 2, 3, 16, 16), "labels": torch.tensor([0, 1, 2, 1])}
    for mixer in (MixupCutmix(3, mixup_alpha=0.8), MixupCutmix(3, cutmix_alpha=1.0), MixupCutmix(3, 0.8, 1.0, label_smoothing=0.1)):
        mixed = mixer(dict(batch))
        assert mixed["labels"].shape == (4, 3)
        torch.testing.assert_close(mixed["labels"].sum(-1), torch.ones(4))
        assert (mixed["labels"] >= 0).all()
    cut = MixupCutmix(3, cutmix_alpha=1.0)(dict(batch))
    # Every pixel of a cutmixed clip comes from the clip or its partner (B-1-i).
    own, partner = batch["pixel_values"], batch["pixel_values"].flip(0)
    assert ((cut["pixel_values"] == own) | (cut["pixel_values"] == partner)).all()


def test_topk_accuracy_counts_hits():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5]])
    assert topk_accuracy(logits, torch.tensor([1, 2, 1]), ks=(1, 2)) == pytest.approx({"accuracy": 1 / 3, "top2_accuracy": 2 / 3})
    assert "top5_accuracy" not in topk_accuracy(logits, torch.tensor([1, 2, 1]))


def test_demo_runs_end_to_end_on_a_tiny_budget(tmp_path, capsys):
    from modeling_videomamba import demo

    result = demo.main([
        "--output-dir", str(tmp_path), "--train-per-class", "2", "--validation-per-class", "1", "--epochs", "1",
        "--batch-size", "8", "--config-overrides", "hidden_size=32,num_hidden_layers=1,num_frames=4",
    ])
    printed = capsys.readouterr().out
    assert "frame-averaging baseline" in printed and "pipeline on" in printed
    assert f"saved in {(tmp_path / 'model').resolve()}" in printed
    table = [line for line in printed.splitlines() if line.startswith("| ")]
    assert len(table) == 5 and len({len(line) for line in table}) == 1  # header, rule, three rows, aligned
    assert 0.0 <= result["eval_accuracy"] <= 1.0 and 0.0 <= result["baseline_accuracy"] <= 1.0
    assert len(list((tmp_path / "data" / "validation").glob("*/*.mp4"))) == 8
