"""Train VideoMamba and a VideoMAE of about the same size from scratch on the built-in temporal-order task.

Both models see the same generated mp4 clips (synthetic_data: time-reversed class pairs, so frame order
is needed), through the same `VideoMambaVideoProcessor` (segment sampling, light random crop, no flips),
with the same `TrainingArguments` (AdamW, learning rate, warmup, cosine decay, weight decay, epochs,
batch) and seed. VideoMamba uses the library's defaults (spatial-first scan, default initialisation)
unless `--videomamba-overrides` says otherwise; VideoMAE (transformers' VideoMAEForVideoClassification,
mean pooling, tubelet 2 as VideoMAE's own) gets the hidden size that brings its parameter count closest
to VideoMamba's at the same depth. Prints one row per model and seed (held-out accuracy and the mean
training loss of each epoch, which shows when the loss starts to fall), then the mean accuracy per model.

    python benchmarks/compare_videomae_training.py                     # 8 classes, 32x32, 8 frames, 16 epochs
    python benchmarks/compare_videomae_training.py --seeds 0 1 --epochs 8
    python benchmarks/compare_videomae_training.py --classes moving_left moving_right rotating_clockwise \
        rotating_counterclockwise --image-size 64 --hidden-size 96 --num-layers 4 --train-per-class 60 --epochs 8
"""

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import PrinterCallback, TrainingArguments, VideoMAEConfig, VideoMAEForVideoClassification

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import machine_description, print_table  # noqa: E402
from modeling_videomamba import VideoMambaConfig, VideoMambaForVideoClassification, VideoMambaVideoProcessor  # noqa: E402
from modeling_videomamba.synthetic_data import CLASS_NAMES, generate_dataset  # noqa: E402
from modeling_videomamba.training_utils import (  # noqa: E402
    VideoClipDataset,
    VideoMambaTrainer,
    collate_clips,
    compute_metrics,
    parse_config_overrides,
    scan_video_folder,
)


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


def train_and_evaluate(model, train_set, eval_set, processor, args, seed: int, output_dir: Path) -> tuple:
    """(held-out accuracy, process CPU seconds of training, training loss of every step) under the shared recipe."""
    training_args = TrainingArguments(
        output_dir=str(output_dir), num_train_epochs=args.epochs, per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=64, learning_rate=args.learning_rate, weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps, lr_scheduler_type=args.lr_scheduler, eval_strategy="no", save_strategy="no",
        logging_steps=1, report_to=[], seed=seed, dataloader_num_workers=0, disable_tqdm=True, use_cpu=True,
    )
    trainer = VideoMambaTrainer(
        model=model, args=training_args, train_dataset=train_set, eval_dataset=eval_set,
        data_collator=collate_clips, compute_metrics=compute_metrics, processing_class=processor,
    )
    trainer.remove_callback(PrinterCallback)  # the loss is logged at every step for the per-epoch means, not printed
    start = time.process_time()
    trainer.train()
    seconds = time.process_time() - start
    step_losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return trainer.evaluate()["eval_accuracy"], seconds, step_losses


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None, help="Where to generate the clips (default: a temporary folder).")
    parser.add_argument("--train-per-class", type=int, default=64)
    parser.add_argument("--validation-per-class", type=int, default=24)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--patch-size", type=int, default=8)
    parser.add_argument("--num-frames", type=int, default=8)
    parser.add_argument("--hidden-size", type=int, default=64, help="VideoMamba's width (VideoMAE's is matched).")
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--videomamba-overrides", default="", help="VideoMambaConfig fields, e.g. 'token_order=temporal_first'.")
    parser.add_argument("--videomae-head-dim", type=int, default=16)
    parser.add_argument("--videomae-tubelet-size", type=int, default=2)
    parser.add_argument("--epochs", type=float, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=5e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--warmup-steps", type=int, default=20)
    parser.add_argument("--lr-scheduler", default="cosine", help="A transformers lr_scheduler_type, e.g. cosine or linear.")
    parser.add_argument("--classes", nargs="+", default=list(CLASS_NAMES), choices=CLASS_NAMES)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice).")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as scratch:
        data_dir = Path(args.data_dir or scratch) / "data"
        if not (data_dir / "validation").is_dir():
            generate_dataset(data_dir, args.train_per_class, args.validation_per_class, classes=args.classes, seed=0)
        train_samples, label2id = scan_video_folder(data_dir / "train")
        eval_samples, _ = scan_video_folder(data_dir / "validation", label2id)
        labels = dict(num_labels=len(label2id), label2id=label2id, id2label={i: name for name, i in label2id.items()})
        mamba_config = VideoMambaConfig(
            image_size=args.image_size, patch_size=args.patch_size, num_frames=args.num_frames,
            hidden_size=args.hidden_size, num_hidden_layers=args.num_layers,
            **parse_config_overrides(args.videomamba_overrides), **labels,
        )
        mae_config = videomae_config_like(mamba_config, args.videomae_head_dim, args.videomae_tubelet_size)
        # No flips: a mirrored "moving left" clip is a "moving right" one.
        processor = VideoMambaVideoProcessor.from_model_config(mamba_config, train_crop_scale=(0.9, 1.0), train_flip=False)
        train_set = VideoClipDataset(train_samples, processor, train=True, cache=True)
        eval_set = VideoClipDataset(eval_samples, processor, train=False, cache=True)

        builders = {
            "VideoMamba": lambda: VideoMambaForVideoClassification(mamba_config),
            "VideoMAE": lambda: VideoMAEForVideoClassification(mae_config),
        }
        rows, accuracies = [], {name: [] for name in builders}
        steps_per_epoch = -(-len(train_samples) // args.batch_size)
        for seed in args.seeds:
            for name, build in builders.items():
                torch.manual_seed(seed)
                model = build()
                accuracy, seconds, step_losses = train_and_evaluate(
                    model, train_set, eval_set, processor, args, seed, Path(scratch) / name
                )
                accuracies[name].append(accuracy)
                rows.append([
                    name, f"{count_parameters(model) / 1e3:.0f}k", seed, f"{accuracy:.3f}", f"{seconds:.0f}",
                    " ".join(f"{loss:.2f}" for loss in epoch_means(step_losses, steps_per_epoch)),
                ])
                print(f"{name} seed {seed}: held-out accuracy {accuracy:.3f}", flush=True)

    steps = int(args.epochs * steps_per_epoch)
    print(
        f"\n{len(label2id)} classes ({len(train_samples)} training / {len(eval_samples)} held-out clips, chance "
        f"{1 / len(label2id):.3f}), {args.num_frames}x{args.image_size}x{args.image_size}, {args.epochs:g} epochs "
        f"({steps} steps of {args.batch_size}), AdamW lr {args.learning_rate:g} {args.lr_scheduler}, warmup {args.warmup_steps}, "
        f"weight decay {args.weight_decay:g}; VideoMamba {mamba_config.hidden_size}x{mamba_config.num_hidden_layers} "
        f"{mamba_config.token_order} dt_init={mamba_config.dt_init}; VideoMAE {mae_config.hidden_size}x"
        f"{mae_config.num_hidden_layers}, {mae_config.num_attention_heads} heads, tubelet {mae_config.tubelet_size}; "
        f"{machine_description()}"
    )
    print_table(
        f"Held-out accuracy after training from scratch (chance loss ln {len(label2id)} = {math.log(len(label2id)):.2f})",
        ["model", "params", "seed", "accuracy", "train CPU s", "mean training loss per epoch"], rows,
    )
    for name, values in accuracies.items():
        print(f"{name}: mean accuracy {sum(values) / len(values):.3f} over {len(values)} seed(s)")
    return accuracies


if __name__ == "__main__":
    main()
