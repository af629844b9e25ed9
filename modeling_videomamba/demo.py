"""The README's main job: generate a temporal-order video dataset, fine-tune a small VideoMamba on CPU,
compare it with a frame-averaging baseline and classify a clip.

    python -m modeling_videomamba.demo [--output-dir videomamba_demo] [--epochs 16] [--seed 0]

The classes are time-reversed pairs (see `synthetic_data`), so averaging frames leaves only the pair
identifiable: the baseline stays near 1/2 accuracy on 8 classes, while VideoMamba's scan reads the order.
"""

import argparse
import time
from pathlib import Path

import torch
from torch import nn
from transformers import TrainingArguments, pipeline

from .configuration_videomamba import VideoMambaConfig
from .modeling_videomamba import VideoMambaForVideoClassification
from .processors import VideoMambaVideoProcessor
from .synthetic_data import DEMO_CLASSES, generate_dataset
from .training_utils import VideoClipDataset, VideoMambaTrainer, collate_clips, compute_metrics, parse_config_overrides, scan_video_folder

# Temporal-first scanning puts a patch position's frames next to each other, so the mixers' short
# convolutions see motion directly: the model learns direction within the demo's CPU budget. The rest
# (initialisation included) is the library's from-scratch default.
DEMO_CONFIG = dict(
    image_size=32, patch_size=8, num_frames=8, hidden_size=64, num_hidden_layers=2, token_order="temporal_first",
)


def markdown_table(header: list, rows: list) -> str:
    """A Markdown table whose columns line up in a terminal too."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    lines = [header, ["-" * width for width in widths], *rows]
    return "\n".join("| " + " | ".join(str(cell).ljust(width) for cell, width in zip(line, widths)) + " |" for line in lines)


def frame_average_baseline(train_set: VideoClipDataset, eval_set: VideoClipDataset, num_labels: int, steps: int = 300) -> float:
    """Held-out accuracy of a classifier that only sees the time-averaged frame (an MLP on it)."""

    def averaged(dataset):
        items = [dataset[i] for i in range(len(dataset))]
        features = torch.stack([item["pixel_values"].mean(0).flatten() for item in items])
        return features, torch.tensor([item["labels"] for item in items])

    train_x, train_y = averaged(train_set)
    eval_x, eval_y = averaged(eval_set)
    torch.manual_seed(0)
    classifier = nn.Sequential(nn.Linear(train_x.shape[1], 256), nn.GELU(), nn.Linear(256, num_labels))
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=1e-3, weight_decay=1e-2)
    for _ in range(steps):
        loss = nn.functional.cross_entropy(classifier(train_x), train_y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return (classifier(eval_x).argmax(-1) == eval_y).float().mean().item()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", default="videomamba_demo")
    parser.add_argument("--train-per-class", type=int, default=64)
    parser.add_argument("--validation-per-class", type=int, default=24)
    parser.add_argument("--epochs", type=float, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=5e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config-overrides", default="", help="VideoMambaConfig fields, e.g. 'hidden_size=96,token_order=hybrid'.")
    args = parser.parse_args(argv)

    start = time.time()
    output_dir = Path(args.output_dir)
    data_dir = output_dir / "data"
    if not (data_dir / "validation").is_dir():
        print(f"Generating {len(DEMO_CLASSES)} classes of mp4 clips in {data_dir} ...")
        generate_dataset(data_dir, args.train_per_class, args.validation_per_class, seed=args.seed)
    train_samples, label2id = scan_video_folder(data_dir / "train")
    eval_samples, _ = scan_video_folder(data_dir / "validation", label2id)
    id2label = {i: name for name, i in label2id.items()}

    overrides = {**DEMO_CONFIG, **parse_config_overrides(args.config_overrides)}
    config = VideoMambaConfig(**overrides, num_labels=len(label2id), id2label=id2label, label2id=label2id)
    # No flips: a mirrored "moving left" clip is a "moving right" one.
    processor = VideoMambaVideoProcessor.from_model_config(config, train_crop_scale=(0.9, 1.0), train_flip=False)
    train_set = VideoClipDataset(train_samples, processor, train=True, cache=True, seed=args.seed)
    eval_set = VideoClipDataset(eval_samples, processor, train=False, cache=True)

    torch.manual_seed(args.seed)
    model = VideoMambaForVideoClassification(config)
    training_args = TrainingArguments(
        output_dir=str(output_dir / "model"),
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=64,
        learning_rate=args.learning_rate,
        weight_decay=0.05,
        warmup_steps=20,
        lr_scheduler_type="cosine",
        eval_strategy="no",
        save_strategy="no",
        logging_steps=10,
        report_to=[],
        seed=args.seed,
        dataloader_num_workers=0,
        disable_tqdm=False,
    )
    trainer = VideoMambaTrainer(
        model=model, args=training_args, train_dataset=train_set, eval_dataset=eval_set,
        data_collator=collate_clips, compute_metrics=compute_metrics, processing_class=processor,
    )
    trainer.train()
    metrics = trainer.evaluate()
    trainer.save_model()

    baseline = frame_average_baseline(VideoClipDataset(train_samples, processor, train=False, cache=True), eval_set, len(label2id))
    elapsed = time.time() - start
    print()
    print(markdown_table(
        ["model", f"held-out accuracy ({len(eval_set)} clips)"],
        [
            [f"VideoMamba ({sum(p.numel() for p in model.parameters()) / 1e3:.0f}k params)", f"{metrics['eval_accuracy']:.3f}"],
            ["frame-averaging baseline", f"{baseline:.3f}"],
            ["chance", f"{1 / len(label2id):.3f}"],
        ],
    ))
    print(f"total time {elapsed:.0f} s")
    print(f"model and video processor saved in {Path(training_args.output_dir).resolve()} (load it with from_pretrained or pipeline)")

    classifier = pipeline("video-classification", model=training_args.output_dir)
    path, label = eval_samples[0]
    top = classifier(path, top_k=2)
    print(f"pipeline on {path} (true class {id2label[label]}): {top}")
    return {"eval_accuracy": metrics["eval_accuracy"], "baseline_accuracy": baseline, "seconds": elapsed}


if __name__ == "__main__":
    main()
