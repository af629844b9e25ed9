"""Fine-tuning through the Trainer: the built-in dataset, run_video_classification.py (outputs, resume,
errors, two processes), soft-label loss scaling under gradient accumulation, metrics."""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForVideoClassification, Trainer, TrainingArguments

from modeling_videomamba import VideoMambaConfig, VideoMambaForVideoClassification, VideoMambaVideoProcessor, read_video
from modeling_videomamba.synthetic_data import APPEARANCE_CLASSES, CLASS_PAIRS, generate_dataset, render_clip
from modeling_videomamba.synthetic_data import main as synthetic_main
from test_video_text_training import _check_saved, retrieval_setup  # noqa: F401 (a fixture, for the bf16 video-text phase)
from modeling_videomamba.training_utils import (
    MixupCutmix,
    VideoClipDataset,
    VideoMambaTrainer,
    collate_clips,
    load_samples,
    parse_config_overrides,
    random_partners,
    resize_model_inputs,
    scan_video_folder,
    topk_accuracy,
)
from torchrun_launch import run_two_processes

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


def test_a_seed_gives_the_same_bytes_and_another_seed_other_clips(tmp_path):
    """Clips are encoded single-threaded, so a dataset draw is reproducible from its seed."""
    kwargs = dict(train_per_class=2, validation_per_class=1, num_frames=8, size=32, classes=("darkening", "square"))
    first, again, other = (generate_dataset(tmp_path / name, seed=seed, **kwargs) for name, seed in (("a", 4), ("b", 4), ("c", 5)))
    for split in first:
        for (path, _), (same, _), (different, _) in zip(first[split], again[split], other[split]):
            assert path.read_bytes() == same.read_bytes()
            assert path.read_bytes() != different.read_bytes()


@pytest.mark.parametrize("shape", APPEARANCE_CLASSES)
def test_appearance_classes_keep_their_shape_and_move_in_any_direction(shape):
    clips = [render_clip(shape, 8, 32, np.random.default_rng(seed)) for seed in range(6)]
    for clip in clips:
        assert clip.shape == (8, 32, 32, 3) and clip.dtype == np.uint8
        area = (clip.min(-1) > 140).sum((1, 2))  # object pixels per frame (objects are bright, backgrounds dark)
        assert area.min() > 0 and area.max() - area.min() <= 0.4 * area.max()  # pixel rounding only
    # Drift directions are random, so a reversed clip is as plausible as the clip itself.
    drift = [np.sign(np.nonzero(c[-1].min(-1) > 140)[1].mean() - np.nonzero(c[0].min(-1) > 140)[1].mean()) for c in clips]
    assert {-1.0, 1.0} <= set(drift)


def test_darkening_darkens_the_whole_frame():
    clip = render_clip("darkening", 8, 32, np.random.default_rng(0)).astype(float)
    brightness = clip.mean((1, 2, 3))
    assert all(later < earlier for earlier, later in zip(brightness, brightness[1:]))


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


def test_from_scratch_run_trains_with_the_script_defaults(tmp_path, synthetic_videos):
    """--preset with only sizes and batch given: the run trains at the script's from-scratch learning rate (1e-3,
    not the Trainer's 5e-5) and saves a model with its from-scratch architecture (FROM_SCRATCH_CONFIG)."""
    output = tmp_path / "run"
    _run_script([
        "--train_dir", synthetic_videos / "train", "--preset", "tiny", "--config_overrides",
        "hidden_size=32,num_hidden_layers=2,image_size=32,patch_size=8,num_frames=8", "--output_dir", output,
        "--do_train", "--max_steps", "3", "--logging_steps", "1", "--save_strategy", "no", "--cache_decoded", "true",
        *COMMON,
    ])
    state = json.loads((output / "trainer_state.json").read_text())
    peak = max(entry["learning_rate"] for entry in state["log_history"] if "learning_rate" in entry)
    assert peak == pytest.approx(1e-3, rel=0.05)
    saved = VideoMambaConfig.from_pretrained(output)
    assert (saved.token_order, saved.use_mean_pooling, saved.tubelet_size) == ("hybrid", True, 2)


@pytest.mark.parametrize(
    "argv, parsed_rate, expected",
    [
        (["--preset", "tiny"], None, 1e-3),
        (["--preset", "tiny", "--learning_rate", "5e-5"], 5e-5, 5e-5),  # explicit, though equal to the Trainer's default
        (["--preset", "tiny", "--learning-rate=2e-3"], 2e-3, 2e-3),
        (["--model_name_or_path", "saved"], None, 5e-5),  # fine-tuning keeps the Trainer's default
    ],
)
def test_from_scratch_learning_rate_unless_given(tmp_path, argv, parsed_rate, expected):
    from run_video_classification import ModelArguments, use_from_scratch_learning_rate

    model_args = ModelArguments(preset="tiny" if "--preset" in argv else None)
    training_args = TrainingArguments(output_dir=str(tmp_path), **({"learning_rate": parsed_rate} if parsed_rate else {}))
    use_from_scratch_learning_rate(model_args, training_args, argv)
    assert training_args.learning_rate == expected


def test_given_arguments_reads_flags_and_json_files(tmp_path):
    from script_utils import given_arguments

    assert given_arguments(["--preset", "tiny", "--learning-rate=2e-3", "--do_train"]) == {"preset", "learning_rate", "do_train"}
    arguments = tmp_path / "args.json"
    arguments.write_text(json.dumps({"preset": "tiny", "learning_rate": 5e-5, "output_dir": "out"}))
    assert given_arguments([str(arguments)]) == {"preset", "learning_rate", "output_dir"}


def test_script_arguments_come_from_flags_or_one_json_file(tmp_path):
    from run_video_classification import DataTrainingArguments, ModelArguments
    from script_utils import parse_script_arguments

    arguments = tmp_path / "args.json"
    arguments.write_text(json.dumps({"preset": "small", "learning_rate": 2e-4, "output_dir": str(tmp_path / "out")}))
    dataclasses = (ModelArguments, DataTrainingArguments, TrainingArguments)
    model_args, _, training_args = parse_script_arguments(dataclasses, [str(arguments)])
    assert (model_args.preset, training_args.learning_rate) == ("small", 2e-4)
    model_args, _, training_args = parse_script_arguments(dataclasses, ["--preset", "tiny", "--output_dir", str(tmp_path)])
    assert (model_args.preset, training_args.learning_rate) == ("tiny", 5e-5)


def test_videomae_comparison_trains_both_models_and_reports_every_epoch(tmp_path, capsys):
    sys.path.insert(0, str(REPO / "benchmarks"))
    from compare_videomae_training import epoch_means, main

    assert epoch_means([3.0, 1.0, 2.0, 4.0, 6.0], 2) == [2.0, 3.0, 6.0]
    accuracies = main([
        "--data-dir", str(tmp_path), "--train-per-class", "2", "--validation-per-class", "1", "--epochs", "2",
        "--batch-size", "8", "--classes", "darkening", "brightening", "--image-size", "32", "--hidden-size", "32",
        "--num-layers", "2", "--data-seeds", "0", "--learning-rates", "1e-3", "--seeds", "0", "--threads", "1",
    ])
    assert set(accuracies) == {("VideoMamba", 1e-3), ("VideoMAE", 1e-3)} and all(len(v) == 1 for v in accuracies.values())
    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    rows = [cells for cells in lines if len(cells) > 1 and cells[0] in ("VideoMamba", "VideoMAE") and cells[1].endswith("k")]
    # model, params, data, lr, seed, accuracy, CPU s, 2 epochs, then "class: accuracy" for both classes
    assert len(rows) == 2 and all(len(row) == 7 + 2 + 2 * 2 for row in rows), rows
    for row in rows:
        assert [row[9], row[11]] == ["brightening:", "darkening:"]
        # one held-out clip a class: the overall accuracy is the mean of the per-class ones
        assert abs((float(row[10]) + float(row[12])) / 2 - float(row[5])) < 1e-3, row



def test_from_scratch_defaults_are_pinned():
    from run_video_classification import FROM_SCRATCH_CONFIG

    # README "Training from scratch" and benchmarks/README.md measure exactly these.
    assert FROM_SCRATCH_CONFIG == {"token_order": "hybrid", "use_mean_pooling": True, "tubelet_size": 2}


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ("hidden_size=32", ("hybrid", True, 2)),
        ("token_order=spatial_first", ("spatial_first", True, 2)),
        ("use_mean_pooling=false,tubelet_size=1", ("hybrid", False, 1)),
    ],
)
def test_preset_applies_the_from_scratch_defaults_unless_given(overrides, expected):
    from run_video_classification import DataTrainingArguments, ModelArguments, build_model

    model_args = ModelArguments(preset="tiny", config_overrides=f"{overrides},num_hidden_layers=2,image_size=32,patch_size=8")
    config = build_model(model_args, DataTrainingArguments(), num_labels=2, label2id={"a": 0, "b": 1}).config
    assert (config.token_order, config.use_mean_pooling, config.tubelet_size) == expected


def test_a_loaded_model_keeps_its_saved_config(tmp_path):
    """--model_name_or_path (a converted or saved model) is never given the --preset defaults."""
    from run_video_classification import DataTrainingArguments, ModelArguments, build_model

    saved = VideoMambaConfig(hidden_size=32, num_hidden_layers=2, image_size=32, patch_size=8, num_frames=4, num_labels=2)
    VideoMambaForVideoClassification(saved).save_pretrained(tmp_path / "saved")
    config = build_model(ModelArguments(model_name_or_path=str(tmp_path / "saved")), DataTrainingArguments(), 2, {"a": 0, "b": 1}).config
    assert (config.token_order, config.use_mean_pooling, config.tubelet_size) == ("spatial_first", False, 1)


def test_trainer_does_not_decay_ssm_parameters_norms_or_embeddings(tmp_path):
    """Weight decay reaches the matrices and kernels only (Mamba's and VideoMamba's own recipes)."""
    config = VideoMambaConfig(hidden_size=32, num_hidden_layers=2, image_size=32, patch_size=8, num_frames=4, num_labels=2)
    model = VideoMambaForVideoClassification(config)  # RMSNorm, the default
    trainer = VideoMambaTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), weight_decay=0.05, report_to=[], use_cpu=True))
    trainer.create_optimizer()
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for group in trainer.optimizer.param_groups if group["weight_decay"] > 0 for p in group["params"]}
    undecayed = {names[id(p)] for group in trainer.optimizer.param_groups if group["weight_decay"] == 0 for p in group["params"]}
    assert decayed | undecayed == set(names.values()) and not decayed & undecayed
    leaves = {name.rsplit(".", 1)[-1] for name in undecayed}
    assert {"A_log", "D", "cls_token", "position_embeddings", "temporal_position_embeddings", "bias"} <= leaves
    assert any("norm" in name for name in undecayed)  # RMSNorm weights, which the stock Trainer would decay
    assert all(model.get_parameter(name).ndim > 1 for name in decayed)
    assert any(name.endswith("in_proj.weight") for name in decayed) and any("classifier" in name for name in decayed)


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
    with pytest.raises(ValueError, match="--num_frames 8 contradicts num_frames=4"):
        _run_script(["--train_dir", synthetic_videos / "train", "--num_frames", "8", *base])


def test_config_overrides_are_typed():
    assert parse_config_overrides("hidden_size=96, rms_norm=false,drop_path_rate=0.1,dt_init=mamba") == {
        "hidden_size": 96, "rms_norm": False, "drop_path_rate": 0.1, "dt_init": "mamba"
    }


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


def test_soft_labels_scale_right_under_accumulation_with_the_stock_trainer_and_ours(tmp_path):
    """Soft labels from the data: one batch of 4 and two accumulated micro-batches of 2 give the same update,
    with our Trainer and with transformers' (the model's loss honours `num_items_in_batch` for soft labels)."""

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
    stock_whole, stock_accumulated = update(Trainer, 4, 1), update(Trainer, 2, 2)
    torch.testing.assert_close(stock_accumulated, stock_whole, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(stock_whole, ours_whole, atol=1e-6, rtol=1e-5)


def test_mixup_and_cutmix_make_valid_soft_labels():
    batch = {"pixel_values": torch.rand(4, 2, 3, 16, 16, generator=torch.Generator().manual_seed(0)), "labels": torch.tensor([0, 1, 2, 1])}
    for mixer in (MixupCutmix(3, mixup_alpha=0.8), MixupCutmix(3, cutmix_alpha=1.0), MixupCutmix(3, 0.8, 1.0, label_smoothing=0.1)):
        mixed = mixer(dict(batch))
        assert mixed["labels"].shape == (4, 3)
        torch.testing.assert_close(mixed["labels"].sum(-1), torch.ones(4))
        assert (mixed["labels"] >= 0).all()
    cut = MixupCutmix(3, cutmix_alpha=1.0)(dict(batch), generator=np.random.default_rng(3))
    # Every pixel of a cutmixed clip comes from the clip itself or from one other clip (its partner).
    own = batch["pixel_values"]
    for i in range(4):
        pasted = cut["pixel_values"][i] != own[i]
        assert pasted.any()
        donors = [j for j in range(4) if j != i and (cut["pixel_values"][i][pasted] == own[j][pasted]).all()]
        assert len(donors) == 1


def test_mixup_partners_are_random_permutations_without_fixed_points():
    rng = np.random.default_rng(0)
    for size in range(2, 9):
        for _ in range(20):
            partners = random_partners(size, rng)
            assert sorted(partners.tolist()) == list(range(size))
            assert (partners != np.arange(size)).all()
    # Random, not a fixed pairing such as the old flip (0 <-> 3): clip 0 meets every other clip.
    assert {int(random_partners(4, rng)[0]) for _ in range(60)} == {1, 2, 3}


@pytest.mark.parametrize("size", [2, 3, 5])
def test_mixup_never_mixes_a_clip_with_itself(size):
    """Clip i is constant i, so a mixed clip's value is the label-weighted mean of the class ids, and a clip
    mixed with itself would keep its value (the middle clip of an odd batch did, with the old flip)."""
    pixel_values = torch.arange(float(size))[:, None, None, None, None].expand(size, 2, 3, 4, 4).contiguous()
    batch = {"pixel_values": pixel_values, "labels": torch.arange(size)}
    for seed in range(5):
        mixed = MixupCutmix(size, mixup_alpha=1.0)(dict(batch), generator=np.random.default_rng(seed))
        values = mixed["pixel_values"][:, 0, 0, 0, 0]
        assert (values != torch.arange(float(size))).all()
        torch.testing.assert_close(values, mixed["labels"] @ torch.arange(float(size)))


def test_mixup_leaves_a_single_clip_unmixed_and_says_so(caplog):
    batch = {"pixel_values": torch.rand(1, 2, 3, 8, 8), "labels": torch.tensor([2])}
    mixer = MixupCutmix(3, mixup_alpha=1.0, cutmix_alpha=1.0, label_smoothing=0.3)
    with caplog.at_level("WARNING"):
        mixed = mixer(dict(batch))
        mixer(dict(batch))
    assert torch.equal(mixed["pixel_values"], batch["pixel_values"])
    torch.testing.assert_close(mixed["labels"], torch.tensor([[0.1, 0.1, 0.8]]))  # smoothing still applies
    assert sum("at least 2 clips" in record.getMessage() for record in caplog.records) == 1


def test_mixing_randomness_differs_per_process_and_repeats_per_seed(tmp_path, monkeypatch):
    """The Trainer seeds each micro-batch's mixing by (seed, process index, step, micro-batch)."""
    model = VideoMambaForVideoClassification(VideoMambaConfig(image_size=32, patch_size=8, num_frames=4, hidden_size=32, num_hidden_layers=1, num_labels=3))

    def draws(seed=0):
        args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], seed=seed)
        trainer = VideoMambaTrainer(model=model, args=args, batch_mixer=MixupCutmix(3, mixup_alpha=1.0))
        first_step = [trainer._mixing_generator().random() for _ in range(2)]  # two micro-batches
        trainer.state.global_step = 1
        return first_step + [trainer._mixing_generator().random()]

    rank0 = draws()
    assert len(set(rank0)) == 3 and draws() == rank0 and draws(seed=1) != rank0
    monkeypatch.setattr(TrainingArguments, "process_index", property(lambda self: 1))
    rank1 = draws()
    assert set(rank1).isdisjoint(rank0)
    # Standalone mixers draw their own per-process streams too.
    batch = {"pixel_values": torch.rand(4, 2, 3, 8, 8), "labels": torch.tensor([0, 1, 2, 1])}
    labels = [MixupCutmix(3, mixup_alpha=1.0, seed=0, process_index=rank)(dict(batch))["labels"] for rank in (0, 0, 1)]
    assert torch.equal(labels[0], labels[1]) and not torch.equal(labels[0], labels[2])


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


# ---------------------------------------------------------------------------------------------------
# Clip length and frame size of a saved model
# ---------------------------------------------------------------------------------------------------


def test_resize_model_inputs_matches_interpolating_at_run_time():
    torch.manual_seed(0)
    model = VideoMambaForVideoClassification(VideoMambaConfig(image_size=32, patch_size=8, num_frames=4, hidden_size=32, num_hidden_layers=2, num_labels=3)).eval()
    with torch.no_grad():
        model.videomamba.embeddings.temporal_position_embeddings.normal_()  # zero at init: give it content
    pixel_values = torch.randn(2, 8, 3, 48, 48)
    with torch.no_grad():
        expected = model(pixel_values, interpolate_pos_encoding=True).logits
        with pytest.raises(ValueError, match="doesn't match the model"):
            model(pixel_values)
        resize_model_inputs(model, num_frames=8, image_size=48)
        torch.testing.assert_close(model(pixel_values).logits, expected)
    assert model.videomamba.embeddings.temporal_position_embeddings.shape == (1, 8, 32)
    assert (model.config.num_frames, model.config.image_size) == (8, 48)
    with pytest.raises(ValueError, match="multiple of the patch size 8"):
        resize_model_inputs(model, image_size=50)


def test_num_frames_adapts_a_model_saved_at_another_length(tmp_path, synthetic_videos):
    torch.manual_seed(0)
    config = VideoMambaConfig(image_size=32, patch_size=8, num_frames=4, hidden_size=32, num_hidden_layers=2, num_labels=4, dt_init="mamba")
    VideoMambaForVideoClassification(config).save_pretrained(tmp_path / "four_frames")
    # The model's own processor, with a normalisation of its own that fine-tuning must keep.
    VideoMambaVideoProcessor(num_frames=4, size=32, crop_size=32, image_mean=[0.5] * 3, image_std=[0.25] * 3).save_pretrained(tmp_path / "four_frames")
    output = tmp_path / "eight_frames"
    _run_script([
        "--model_name_or_path", tmp_path / "four_frames", "--num_frames", "8",
        "--train_dir", synthetic_videos / "train", "--validation_dir", synthetic_videos / "validation",
        "--output_dir", output, "--do_train", "--do_eval", "--max_steps", "2", "--save_strategy", "no", "--cache_decoded", "true", *COMMON,
    ])
    assert 0.0 <= json.loads((output / "eval_results.json").read_text())["eval_accuracy"] <= 1.0
    model = AutoModelForVideoClassification.from_pretrained(output).eval()
    assert model.config.num_frames == 8 and model.videomamba.embeddings.temporal_position_embeddings.shape == (1, 8, 32)
    processor = VideoMambaVideoProcessor.from_pretrained(output)
    assert processor.num_frames == 8
    assert list(processor.image_mean) == [0.5] * 3 and list(processor.image_std) == [0.25] * 3
    path = next((synthetic_videos / "validation").glob("*/*.mp4"))
    pixel_values = processor(str(path), return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (1, 8, 3, 32, 32)
    with torch.no_grad():
        assert torch.isfinite(model(pixel_values).logits).all()


# ---------------------------------------------------------------------------------------------------
# Data pipeline: epochs in workers, reproducible augmentation, `datasets` input, pin memory
# ---------------------------------------------------------------------------------------------------


def _tiny_model(num_labels=3):
    return VideoMambaForVideoClassification(VideoMambaConfig(image_size=32, patch_size=8, num_frames=4, hidden_size=32, num_hidden_layers=1, num_labels=num_labels))


class _EpochReportingClips(VideoClipDataset):
    def __getitem__(self, index):
        return {**super().__getitem__(index), "epoch": self.epoch}


def _collate_with_epoch(examples):
    return {**collate_clips(examples), "seen_epoch": torch.tensor([example["epoch"] for example in examples])}


class _EpochRecordingTrainer(VideoMambaTrainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.seen.append(inputs.pop("seen_epoch").tolist())
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


def test_persistent_dataloader_workers_see_each_new_epoch(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (4, 8, 32, 32, 3), dtype=np.uint8)
    processor = VideoMambaVideoProcessor(num_frames=4, size=32, crop_size=32)
    dataset = _EpochReportingClips([(clip, i % 3) for i, clip in enumerate(frames)], processor, train=True)
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=2, num_train_epochs=3, use_cpu=True, report_to=[],
        save_strategy="no", disable_tqdm=True, dataloader_num_workers=2, dataloader_persistent_workers=True,
        remove_unused_columns=False,
    )
    trainer = _EpochRecordingTrainer(model=_tiny_model(), args=args, train_dataset=dataset, data_collator=_collate_with_epoch)
    trainer.seen = []
    trainer.train()
    # Two batches per epoch, one from each worker process, which lives through all three epochs.
    assert trainer.seen == [[0, 0], [0, 0], [1, 1], [1, 1], [2, 2], [2, 2]]


def test_dataset_video_transform_is_reproducible_and_differs_per_worker_and_epoch(videos):
    from datasets import Dataset

    from modeling_videomamba import dataset_video_transform

    processor = VideoMambaVideoProcessor(num_frames=4, size=32, crop_size=32, train_crop_scale=(0.2, 1.0))
    dataset = Dataset.from_dict({"video": [str(videos["mp4"])] * 4})  # the same clip in every row
    dataset.set_transform(dataset_video_transform(processor, training=True))

    def epochs(num_workers, count=2):
        torch.manual_seed(0)  # what the Trainer's set_seed does
        loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=num_workers, persistent_workers=num_workers > 0)
        return [torch.cat([batch["pixel_values"] for batch in loader]) for _ in range(count)]

    for num_workers in (0, 2):
        first, second = epochs(num_workers)
        assert all(torch.equal(a, b) for a, b in zip(first, epochs(num_workers)[0]))  # repeats with the seed
        assert not torch.equal(first, second)  # a new epoch draws anew
        assert not torch.equal(first[0], first[1])  # rows 0 and 1: another draw (another worker for 2 workers)


def _save_dataset_dict(root, synthetic_videos, as_bytes):
    """The synthetic clips as a `datasets` DatasetDict saved to disk, with ClassLabel labels and a video column of
    either file paths (strings) or a decoding `Video` feature (`save_to_disk` stores its files' bytes)."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value, Video

    _, label2id = scan_video_folder(synthetic_videos / "train")
    features = Features(video=Video() if as_bytes else Value("string"), label=ClassLabel(names=sorted(label2id, key=label2id.get)))
    splits = {}
    for split in ("train", "validation"):
        samples, _ = scan_video_folder(synthetic_videos / split, label2id)
        cells = [path for path, _ in samples]
        splits[split] = Dataset.from_dict({"video": cells, "label": [label for _, label in samples]}, features=features)
    DatasetDict(splits).save_to_disk(str(root))
    return root, label2id


@pytest.mark.parametrize("as_bytes", [False, True], ids=["paths", "bytes"])
def test_datasets_video_columns_are_read_without_decoding(tmp_path, synthetic_videos, as_bytes):
    root, label2id = _save_dataset_dict(tmp_path / "saved", synthetic_videos, as_bytes)
    samples, found = load_samples(dataset_name=str(root), split="validation")
    assert found == label2id and len(samples) == 8
    expected, _ = scan_video_folder(synthetic_videos / "validation", label2id)
    for (source, label), (path, expected_label) in zip(samples, expected):
        assert label == expected_label
        assert source == (Path(path).read_bytes() if as_bytes else path)
    processor = VideoMambaVideoProcessor(num_frames=4, size=32, crop_size=32)
    item = VideoClipDataset(samples, processor, train=False)[0]
    torch.testing.assert_close(item["pixel_values"], processor(expected[0][0])["pixel_values"][0])
    with pytest.raises(ValueError, match="no split 'test'"):
        load_samples(dataset_name=str(root), split="test")


def test_script_trains_on_a_datasets_dataset_holding_bytes(tmp_path, synthetic_videos):
    root, _ = _save_dataset_dict(tmp_path / "saved", synthetic_videos, as_bytes=True)
    output = tmp_path / "run"
    _run_script([
        "--dataset_name", root, "--preset", "tiny", "--config_overrides", TINY_OVERRIDES, "--output_dir", output,
        "--do_train", "--do_eval", "--max_steps", "2", "--save_strategy", "no", *COMMON,
    ])
    assert 0.0 <= json.loads((output / "eval_results.json").read_text())["eval_accuracy"] <= 1.0
    assert AutoModelForVideoClassification.from_pretrained(output).config.num_labels == 4


def test_no_pin_memory_warning_without_an_accelerator(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=4, report_to=[], save_strategy="no", disable_tqdm=True)
    assert args.dataloader_pin_memory  # the default, on any machine
    trainer = VideoMambaTrainer(model=_tiny_model(), args=args, train_dataset=_Clips(), eval_dataset=_Clips(4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
        trainer.evaluate()
    assert args.dataloader_pin_memory is (args.device.type != "cpu")
    assert not [w for w in caught if "pin_memory" in str(w.message)]


def test_script_help_does_not_import_models_or_datasets():
    """--help answers after importing only transformers' argument classes (and torch, which they need)."""
    code = (
        "import os, runpy, sys\n"
        "for script in sys.argv[1:]:\n"
        "    sys.argv, sys.path[0] = [script, '--help'], os.path.dirname(script)  # as `python script --help`\n"
        "    try:\n"
        "        runpy.run_path(script, run_name='__main__')\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = [name for name in ('modeling_videomamba', 'datasets', 'transformers.trainer', 'transformers.modeling_utils') if name in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    scripts = [str(SCRIPT), str(REPO / "trainer_scripts" / "run_pretraining.py"), str(REPO / "trainer_scripts" / "run_video_text_retrieval.py")]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", code, *scripts], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--num_frames" in result.stdout and "--mask_type" in result.stdout and "--rerank_k" in result.stdout
    assert "HEAVY []" in result.stdout
def test_two_process_runs(tmp_path, synthetic_videos, retrieval_setup):
    """One `torchrun --nproc_per_node 2` (gloo on CPU; --use_cpu is what makes accelerate set up MULTI_CPU
    without a GPU) runs tests/torchrun_phases.py: classification with activation checkpointing and
    self-distillation with mixup (the script), the distillation callback on a stock Trainer with activation
    checkpointing and gradient accumulation, masked pretraining with and without activation checkpointing and
    with both feature sources; then under --bf16: classification, distillation, pretraining and video-text
    training. Every saved model loads and runs."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from modeling_videomamba import VideoMambaForPreTraining

    teachers, runs = tmp_path / "teachers", tmp_path / "runs"
    torch.manual_seed(1)
    VideoMambaForVideoClassification(VideoMambaConfig(hidden_size=24, image_size=32, patch_size=8, num_frames=4, num_hidden_layers=1, num_labels=4)).save_pretrained(teachers / "videomamba")
    clip = CLIPVisionConfig(hidden_size=24, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8)
    CLIPVisionModel(clip).save_pretrained(teachers / "clip")
    run_two_processes("torchrun_phases.py", runs, synthetic_videos, teachers, retrieval_setup[0])

    def history(name):
        return json.loads((runs / name / "trainer_state.json").read_text())

    # 24 clips, 4 per process, 2 processes: 3 steps (one process would take 6).
    assert history("classification_ckpt")["global_step"] == 3
    # --preset's from-scratch architecture; a student tokenises clips as its (tubelet 1) teacher does.
    for name, tubelet in (("classification_ckpt", 2), ("script_distill_mixup", 1)):
        config = VideoMambaConfig.from_pretrained(runs / name)
        assert (config.token_order, config.use_mean_pooling, config.tubelet_size) == ("hybrid", True, tubelet), name
    for name in ("script_distill_mixup", "stock_trainer_distill_ckpt"):
        logged = [entry for entry in history(name)["log_history"] if "loss" in entry]
        assert len(logged) == 2 and all(0 < entry["distill_loss"] <= 4 for entry in logged), name
        assert not [key for key in load_file(runs / name / "model.safetensors") if "distill" in key], name
    clips = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        for name in ("classification_ckpt", "script_distill_mixup", "stock_trainer_distill_ckpt"):
            assert torch.isfinite(VideoMambaForVideoClassification.from_pretrained(runs / name)(clips).logits).all(), name
        for name in ("pretrain_original", "pretrain_original_ckpt", "pretrain_final_norm_ckpt"):
            assert history(name)["global_step"] == 2, name
            assert torch.isfinite(VideoMambaForPreTraining.from_pretrained(runs / name)(clips).aligned_features).all(), name
            assert torch.isfinite(VideoMambaForVideoClassification.from_pretrained(runs / name, num_labels=4)(clips).logits).all(), name
        for name in ("bf16_classification", "bf16_distill", "bf16_pretrain", "bf16_video_text"):
            assert history(name)["global_step"] == 2, name
        for name in ("bf16_classification", "bf16_distill"):
            assert torch.isfinite(VideoMambaForVideoClassification.from_pretrained(runs / name)(clips).logits).all(), name
        assert torch.isfinite(VideoMambaForPreTraining.from_pretrained(runs / "bf16_pretrain")(clips).aligned_features).all()
    _check_saved(runs / "bf16_video_text", retrieval_setup[0])
