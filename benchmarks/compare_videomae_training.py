"""Train VideoMamba and a VideoMAE of about the same size from scratch through `run_video_classification.py`.

Both models go through the training script exactly as a user runs it: VideoMamba with `--preset tiny
--config_overrides <sizes>` (so with the script's from-scratch defaults, plus `--videomamba-overrides`),
VideoMAE (transformers' VideoMAEForVideoClassification, mean pooling, tubelet 2 as VideoMAE's own, the
hidden size that brings its parameter count closest to VideoMamba's at the same depth) through the same
script with only the model swapped: same generated mp4 clips, processor, Trainer, optimizer, schedule,
epochs, batch and seed. The grid is every dataset draw (`--data-seeds`, each generated from its seed:
byte-identical clips for one seed) x learning rate x seed. Prints one row per run (held-out accuracy,
training CPU time, mean training loss of each epoch) and the mean accuracy per model and learning rate.

    python benchmarks/compare_videomae_training.py --threads 1             # the order-only task, 2 draws x 2 lrs x 3 seeds
    python benchmarks/compare_videomae_training.py --classes moving_left moving_right moving_up moving_down \
        rotating_clockwise rotating_counterclockwise shrinking growing --image-size 32 --hidden-size 64 \
        --num-layers 2 --train-per-class 64 --validation-per-class 24 --epochs 16 --learning-rates 5e-3 \
        --data-seeds 0 --script-args "--warmup_steps 20 --lr_scheduler_type cosine --crop_min_scale 0.9"   # the demo's task
"""

import argparse
import math
import shlex
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch
from transformers import VideoMAEConfig, VideoMAEForVideoClassification

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "trainer_scripts"))

import run_video_classification as script  # noqa: E402
from benchmarks.timing import machine_description, print_table  # noqa: E402
from modeling_videomamba import VideoMambaConfig, VideoMambaForVideoClassification  # noqa: E402
from modeling_videomamba.synthetic_data import CLASS_NAMES, generate_dataset  # noqa: E402

# Four classes that differ only in the order of their frames: a turning hand, a fading scene.
ORDER_ONLY_CLASSES = ("rotating_clockwise", "rotating_counterclockwise", "darkening", "brightening")


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def videomae_config_like(mamba: VideoMambaConfig, head_dim: int, tubelet_size: int) -> VideoMAEConfig:
    """A VideoMAE config of VideoMamba's input, depth and labels whose parameter count is closest to VideoMamba's."""
    target = count_parameters(VideoMambaForVideoClassification(mamba))
    best = None
    for heads in range(1, 33):
        hidden = heads * head_dim
        config = VideoMAEConfig(
            image_size=mamba.image_size, patch_size=mamba.patch_size, num_channels=mamba.num_channels,
            num_frames=mamba.num_frames, tubelet_size=tubelet_size, hidden_size=hidden,
            num_hidden_layers=mamba.num_hidden_layers, num_attention_heads=heads, intermediate_size=4 * hidden,
            use_mean_pooling=True, num_labels=mamba.num_labels, id2label=mamba.id2label, label2id=mamba.label2id,
        )
        gap = abs(count_parameters(VideoMAEForVideoClassification(config)) - target)
        if best is None or gap < best[0]:
            best = (gap, config)
    return best[1]


def epoch_means(step_losses: list, steps_per_epoch: int) -> list:
    """Mean training loss of each epoch from the losses of every step."""
    chunks = (step_losses[i : i + steps_per_epoch] for i in range(0, len(step_losses), steps_per_epoch))
    return [sum(chunk) / len(chunk) for chunk in chunks]


def per_class_accuracy(trainer) -> dict:
    """{class name: held-out accuracy of that class}: shows which pair of an order-only task is at chance."""
    prediction = trainer.predict(trainer.eval_dataset)
    predicted, labels = prediction.predictions.argmax(-1), prediction.label_ids
    names = trainer.model.config.id2label
    return {names[int(c)]: float((predicted[labels == c] == c).mean()) for c in sorted(set(labels.tolist()))}


def run_script(argv: list, model=None) -> tuple:
    """(held-out accuracy, process CPU seconds of the run, training loss of every step, parameter count,
    per-class held-out accuracy) of one run of the training script; `model` (a classifier) replaces the one
    `--preset` would build, everything else as the script does it."""
    start = time.process_time()
    if model is None:
        trainer = script.main(argv)
    else:
        with mock.patch.object(script, "build_model", lambda *args: model):
            trainer = script.main(argv)
    seconds = time.process_time() - start
    history = trainer.state.log_history
    losses = [entry["loss"] for entry in history if "loss" in entry]
    accuracy = [entry["eval_accuracy"] for entry in history if "eval_accuracy" in entry][-1]
    return accuracy, seconds, losses, count_parameters(trainer.model), per_class_accuracy(trainer)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None, help="Where to generate the clips (default: a temporary folder); kept between runs.")
    parser.add_argument("--data-seeds", type=int, nargs="+", default=[0, 1], help="One independently generated dataset per seed.")
    parser.add_argument("--classes", nargs="+", default=list(ORDER_ONLY_CLASSES), choices=CLASS_NAMES)
    parser.add_argument("--train-per-class", type=int, default=60)
    parser.add_argument("--validation-per-class", type=int, default=15)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--patch-size", type=int, default=8)
    parser.add_argument("--num-frames", type=int, default=8)
    parser.add_argument("--hidden-size", type=int, default=96, help="VideoMamba's width (VideoMAE's is matched).")
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument("--videomamba-overrides", default="", help="More --config_overrides, e.g. 'token_order=spatial_first'.")
    parser.add_argument("--videomae-head-dim", type=int, default=16)
    parser.add_argument("--videomae-tubelet-size", type=int, default=2)
    parser.add_argument("--epochs", type=float, default=8)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rates", type=float, nargs="+", default=[1e-3, 5e-3])
    parser.add_argument("--warmup", type=float, default=0.1, help="--warmup_steps (a fraction below 1).")
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--script-args", default="", help="More arguments for the training script, e.g. '--lr_scheduler_type cosine'.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", default=["VideoMamba", "VideoMAE"], choices=["VideoMamba", "VideoMAE"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice).")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    sizes = f"hidden_size={args.hidden_size},num_hidden_layers={args.num_layers},image_size={args.image_size}," \
            f"patch_size={args.patch_size},num_frames={args.num_frames}"
    overrides = ",".join(filter(None, [sizes, args.videomamba_overrides]))
    rows, accuracies, steps_per_epoch = [], {}, None
    with tempfile.TemporaryDirectory() as scratch:
        for data_seed in args.data_seeds:
            data_dir = Path(args.data_dir or scratch) / f"data_{data_seed}"
            if not (data_dir / "validation").is_dir():
                generate_dataset(
                    data_dir, args.train_per_class, args.validation_per_class, num_frames=args.num_frames,
                    size=args.image_size, classes=args.classes, seed=data_seed,
                )
            for learning_rate in args.learning_rates:
                for seed in args.seeds:
                    common = [
                        "--train_dir", str(data_dir / "train"), "--validation_dir", str(data_dir / "validation"),
                        "--do_train", "--do_eval", "--num_train_epochs", str(args.epochs),
                        "--per_device_train_batch_size", str(args.batch_size), "--learning_rate", str(learning_rate),
                        "--warmup_steps", str(args.warmup), "--weight_decay", str(args.weight_decay), "--seed", str(seed),
                        "--logging_strategy", "steps", "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none",
                        "--disable_tqdm", "true", "--dataloader_num_workers", "0", "--cache_decoded", "true",
                        "--use_cpu", "true", "--log_level", "warning", "--preset", "tiny", "--config_overrides", overrides,
                        *shlex.split(args.script_args),
                    ]
                    for name in args.models:
                        output_dir = ["--output_dir", str(Path(scratch) / f"{name}_{data_seed}_{learning_rate:g}_{seed}")]
                        model = None
                        if name == "VideoMAE":
                            # The VideoMamba the script would build gives the VideoMAE its input, depth, labels and size.
                            model_args, data_args, _ = script.parse_script_arguments(
                                (script.ModelArguments, script.DataTrainingArguments, script.TrainingArguments), common + output_dir
                            )
                            labels = sorted(p.name for p in (data_dir / "train").iterdir() if p.is_dir())
                            mamba = script.build_model(model_args, data_args, len(labels), {n: i for i, n in enumerate(labels)})
                            torch.manual_seed(seed)
                            model = VideoMAEForVideoClassification(videomae_config_like(mamba.config, args.videomae_head_dim, args.videomae_tubelet_size))
                        accuracy, seconds, losses, parameters, by_class = run_script(common + output_dir, model)
                        count = sum(1 for _ in (data_dir / "train").rglob("*.mp4"))
                        steps_per_epoch = -(-count // args.batch_size)
                        accuracies.setdefault((name, learning_rate), []).append(accuracy)
                        rows.append([
                            name, f"{parameters / 1e3:.0f}k", data_seed, f"{learning_rate:g}", seed, f"{accuracy:.3f}", f"{seconds:.0f}",
                            " ".join(f"{loss:.2f}" for loss in epoch_means(losses, steps_per_epoch)),
                            " ".join(f"{name_}: {value:.2f}" for name_, value in by_class.items()),
                        ])
                        print(f"{name} ({parameters / 1e3:.0f}k) data {data_seed} lr {learning_rate:g} seed {seed}: held-out "
                              f"accuracy {accuracy:.3f} ({rows[-1][-1]}), {seconds:.0f} CPU s, epoch losses {rows[-1][-2]}", flush=True)

    print(
        f"\n{len(args.classes)} classes ({args.train_per_class} training / {args.validation_per_class} held-out clips a class, "
        f"chance {1 / len(args.classes):.3f}), {args.num_frames}x{args.image_size}x{args.image_size}, {args.epochs:g} epochs "
        f"of batch {args.batch_size}, warmup {args.warmup:g}, weight decay {args.weight_decay:g}, script defaults otherwise "
        f"{args.script_args!r}; VideoMamba --preset tiny --config_overrides {overrides!r}; {machine_description()}"
    )
    print_table(
        f"Held-out accuracy after training from scratch (chance loss ln {len(args.classes)} = {math.log(len(args.classes)):.2f})",
        ["model", "params", "data", "lr", "seed", "accuracy", "train CPU s", "mean training loss per epoch", "per class"], rows,
    )
    for (name, learning_rate), values in accuracies.items():
        print(f"{name} lr {learning_rate:g}: mean accuracy {sum(values) / len(values):.3f}, min {min(values):.3f} over {len(values)} run(s)")
    return accuracies


if __name__ == "__main__":
    main()
