"""Training helpers shared by the Trainer scripts and the demo: video-folder datasets (decoded and
augmented by `VideoMambaVideoProcessor`), mixup / cutmix / label smoothing, top-k metrics and a Trainer
that scales soft-label losses correctly under gradient accumulation.
"""

import logging
import math
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from transformers import HfArgumentParser, Trainer, TrainerCallback

from .processors import multi_view_predict, read_video

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".gif")


# ----------------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------------


def scan_video_folder(root, label2id: dict = None) -> tuple:
    """Class-name folders of videos -> ([(path, label id)], label2id). Clear errors for bad layouts."""
    root = Path(root)
    if not root.is_dir():
        raise OSError(f"Data directory {root} does not exist or is not a directory.")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise ValueError(
            f"Data directory {root} has no class folders; expected {root}/<class name>/<video files>."
        )
    if label2id is None:
        label2id = {p.name: i for i, p in enumerate(class_dirs)}
    samples = []
    for class_dir in class_dirs:
        if class_dir.name not in label2id:
            raise ValueError(f"Class folder {class_dir} is not among the known labels {sorted(label2id)}.")
        videos = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS)
        if not videos:
            raise ValueError(f"Class folder {class_dir} holds no video files (expected one of {VIDEO_EXTENSIONS}).")
        samples.extend((str(path), label2id[class_dir.name]) for path in videos)
    return samples, label2id


class VideoClipDataset(torch.utils.data.Dataset):
    """(path, label) pairs -> {"pixel_values": (T, C, H, W), "labels": int}, through a video processor.

    `train=True` draws the processor's training sampling and augmentation from a generator seeded by
    (`seed`, epoch, index): reproducible whatever the workers, processes or prefetching, and a resumed run
    sees the same clips as an uninterrupted one (`set_epoch` is called by `DatasetEpochCallback`). A processor
    with several evaluation views (`num_temporal_clips` / `num_spatial_crops`) gives (views, T, C, H, W) per
    clip, which `VideoMambaTrainer` scores by averaging. `cache=True` keeps every decoded video in memory.
    """

    def __init__(self, samples, processor, train: bool, cache: bool = False, seed: int = 0):
        self.samples, self.processor, self.train, self.seed = list(samples), processor, train, seed
        self.epoch = 0
        self._cache = {} if cache else None

    def __len__(self):
        return len(self.samples)

    def set_epoch(self, epoch: int):
        self.epoch = int(epoch)

    def __getitem__(self, index):
        path, label = self.samples[index]
        video = path
        if self._cache is not None:
            if path not in self._cache:
                self._cache[path] = read_video(path)[0]
            video = self._cache[path]
        rng = np.random.default_rng([self.seed, self.epoch, index]) if self.train else None
        pixel_values = self.processor(video, training=self.train, generator=rng)["pixel_values"]
        return {"pixel_values": pixel_values[0] if len(pixel_values) == 1 else pixel_values, "labels": label}


class DatasetEpochCallback(TrainerCallback):
    """Tells the training dataset which epoch starts (for `VideoClipDataset`'s per-epoch augmentation)."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs):
        dataset = self.trainer.train_dataset
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(int(round(state.epoch or 0.0, 6)))


def collate_clips(examples: list) -> dict:
    """Stack examples into {"pixel_values": (B, ...), "labels": (B,) long} ("labels" only where examples have them)."""
    batch = {"pixel_values": torch.stack([example["pixel_values"] for example in examples])}
    if all("labels" in example for example in examples):
        batch["labels"] = torch.tensor([int(example["labels"]) for example in examples], dtype=torch.long)
    return batch


@dataclass
class MixupCutmix:
    """Mixes a training batch (timm-style): with probability `prob`, either mixup (blend two clips) or cutmix
    (paste a box cut from the partner clip into every frame), chosen with `switch_prob`; labels become soft
    (B, num_labels), label-smoothed by `label_smoothing`. The partner of sample i is sample B-1-i. With both
    alphas 0 it only smooths labels. Called on a collated batch {"pixel_values", "labels" (B,) long}."""

    num_labels: int
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    prob: float = 1.0
    switch_prob: float = 0.5
    label_smoothing: float = 0.0

    def _soft(self, labels: torch.Tensor) -> torch.Tensor:
        off = self.label_smoothing / self.num_labels
        soft = torch.full((len(labels), self.num_labels), off, device=labels.device)
        return soft.scatter_(1, labels[:, None], 1.0 - self.label_smoothing + off)

    def __call__(self, batch: dict) -> dict:
        pixel_values, soft = batch["pixel_values"], self._soft(batch["labels"])
        use_mix = (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and random.random() < self.prob
        if use_mix:
            use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha <= 0 or random.random() < self.switch_prob)
            lam = float(np.random.beta(*(2 * [self.cutmix_alpha if use_cutmix else self.mixup_alpha])))
            partner = pixel_values.flip(0)
            if use_cutmix:
                height, width = pixel_values.shape[-2:]
                cut_h, cut_w = int(height * math.sqrt(1 - lam)), int(width * math.sqrt(1 - lam))
                cy, cx = random.randrange(height), random.randrange(width)
                top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
                left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
                pixel_values = pixel_values.clone()
                pixel_values[..., top:bottom, left:right] = partner[..., top:bottom, left:right]
                lam = 1.0 - (bottom - top) * (right - left) / (height * width)
            else:
                pixel_values = lam * pixel_values + (1.0 - lam) * partner
            soft = lam * soft + (1.0 - lam) * soft.flip(0)
        return {**batch, "pixel_values": pixel_values, "labels": soft}


# ----------------------------------------------------------------------------------------------------
# Metrics and loss
# ----------------------------------------------------------------------------------------------------


def topk_accuracy(logits, labels, ks=(1, 5)) -> dict:
    """{"accuracy": top-1, "top5_accuracy": ...} for logits (N, C) and integer labels (N,); k > C is skipped."""
    logits, labels = torch.as_tensor(logits), torch.as_tensor(labels)
    if labels.dim() == 2:  # soft labels: score against their argmax
        labels = labels.argmax(-1)
    results = {}
    for k in ks:
        if k > logits.shape[-1]:
            continue
        hits = (logits.topk(k, dim=-1).indices == labels[:, None]).any(-1).float().mean().item()
        results["accuracy" if k == 1 else f"top{k}_accuracy"] = hits
    return results


def compute_metrics(eval_prediction) -> dict:
    """`Trainer(compute_metrics=...)`: top-1 (`accuracy`) and top-5 accuracy, computed locally (no hub)."""
    logits = eval_prediction.predictions
    logits = logits[0] if isinstance(logits, tuple) else logits
    return topk_accuracy(logits, eval_prediction.label_ids)


def soft_target_cross_entropy(logits: torch.Tensor, soft_labels: torch.Tensor) -> torch.Tensor:
    """Per-sample cross entropy against soft targets: (B, C), (B, C) -> (B,)."""
    return -(soft_labels * F.log_softmax(logits.float(), dim=-1)).sum(-1)


class VideoMambaTrainer(Trainer):
    """`Trainer` whose loss is right for soft labels (mixup / cutmix / label smoothing).

    The stock Trainer sees that our models' `forward` takes `**kwargs`, so it expects the model to
    normalise the loss by `num_items_in_batch` and skips the division by the gradient-accumulation steps;
    but soft (B, C) float labels make transformers' loss pick a multi-label BCE that ignores
    `num_items_in_batch`. Here soft labels get the soft-target cross entropy, summed and divided by the
    number of samples in the whole accumulated (and, across processes, gathered) batch: exactly the
    normalisation hard labels receive.

    `batch_mixer` (e.g. `MixupCutmix`) mixes training batches only, never evaluation ones.
    """

    def __init__(self, *args, batch_mixer=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.batch_mixer = batch_mixer
        self.add_callback(DatasetEpochCallback(self))

    def _is_soft(self, labels) -> bool:
        return torch.is_tensor(labels) and labels.is_floating_point() and labels.dim() == 2

    def compute_task_loss(self, model, inputs, num_items_in_batch=None):
        """(loss, outputs) of the task; subclasses add their terms on top."""
        labels = inputs.get("labels")
        # The Trainer counted `num_items_in_batch` on the collated labels: samples for (B,) class ids,
        # elements (B * C) for soft labels coming out of the data pipeline.
        labels_per_sample = 1 if labels is None or labels.dim() == 1 else labels.shape[-1]
        if self.batch_mixer is not None and model.training and labels is not None:
            inputs = self.batch_mixer(inputs)
            labels = inputs["labels"]
        if inputs["pixel_values"].dim() == 6:
            return self._multi_view_loss(model, inputs)
        if not self._is_soft(labels):
            return super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        inputs = {k: v for k, v in inputs.items() if k != "labels"}
        outputs = model(**inputs)
        per_sample = soft_target_cross_entropy(outputs["logits"], labels.to(outputs["logits"].device))
        if outputs.get("loss") is not None:
            # A loss the model returned without labels (self-distillation's term, a per-batch mean): each sample
            # carries it, so it is normalised as the task loss is.
            per_sample = per_sample + outputs["loss"]
        if self.model_accepts_loss_kwargs and num_items_in_batch is not None:
            samples = num_items_in_batch / labels_per_sample
            loss = per_sample.sum() / samples.to(per_sample.device) if torch.is_tensor(samples) else per_sample.sum() / samples
            if self.args.average_tokens_across_devices and self.accelerator.num_processes > 1:
                # DDP averages gradients over processes; the gathered count already spans them.
                loss = loss * self.accelerator.num_processes
        else:
            loss = per_sample.mean()
        outputs["loss"] = loss
        return loss, outputs

    def _multi_view_loss(self, model, inputs):
        """(B, V, T, C, H, W) views (evaluation): probabilities averaged over the views; returns their log as logits."""
        pixel_values, labels = inputs["pixel_values"], inputs.get("labels")
        probs = multi_view_predict(model, pixel_values.flatten(0, 1), pixel_values.shape[1], average="probs")
        logits = probs.clamp_min(1e-12).log()
        loss = None if labels is None else F.nll_loss(logits, labels)
        return loss, {"loss": loss, "logits": logits}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = self.compute_task_loss(model, inputs, num_items_in_batch)
        return (loss, outputs) if return_outputs else loss


# ----------------------------------------------------------------------------------------------------
# Script helpers
# ----------------------------------------------------------------------------------------------------


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
    transformers.utils.logging.set_verbosity(parsed[-1].get_process_log_level())
    return parsed


def parse_config_overrides(overrides: str) -> dict:
    """`"hidden_size=96,dt_init=mamba,rms_norm=false"` -> typed dict, types taken from the config's defaults."""
    from .configuration_videomamba import VideoMambaConfig

    defaults, parsed = VideoMambaConfig(), {}
    for item in filter(None, (part.strip() for part in (overrides or "").split(","))):
        key, sep, value = item.partition("=")
        if not sep or not hasattr(defaults, key.strip()):
            raise ValueError(f"Bad config override {item!r}: expected key=value with a VideoMambaConfig field as key.")
        key, default = key.strip(), getattr(defaults, key.strip())
        if isinstance(default, bool):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"Override {key} expects true/false, got {value!r}.")
            parsed[key] = value.lower() in ("true", "1")
        elif isinstance(default, int):
            parsed[key] = int(value)
        elif isinstance(default, float):
            parsed[key] = float(value)
        else:
            parsed[key] = value
    return parsed


def load_samples(data_dir=None, dataset_name=None, split="train", label2id=None, video_column="video", label_column="label"):
    """(path, label id) pairs and label2id from a class-folder directory or a `datasets` dataset whose
    `video_column` holds file paths (or {"path": ...}) and `label_column` class ids (ClassLabel)."""
    if data_dir:
        return scan_video_folder(data_dir, label2id)
    if not dataset_name:
        raise ValueError("Give a data directory (--train_dir/--validation_dir) or --dataset_name.")
    import datasets

    dataset = datasets.load_dataset(dataset_name, split=split)
    for column in (video_column, label_column):
        if column not in dataset.column_names:
            raise ValueError(f"Dataset {dataset_name} has no column {column!r}; its columns are {dataset.column_names}.")
    feature = dataset.features[label_column]
    names = getattr(feature, "names", None) or sorted({str(v) for v in dataset[label_column]})
    label2id = label2id or {name: i for i, name in enumerate(names)}
    samples = []
    for video, label in zip(dataset[video_column], dataset[label_column]):
        path = video["path"] if isinstance(video, dict) else video
        samples.append((path, label if hasattr(feature, "names") else label2id[str(label)]))
    return samples, label2id


__all__ = [
    "DatasetEpochCallback",
    "MixupCutmix",
    "VideoClipDataset",
    "VideoMambaTrainer",
    "collate_clips",
    "compute_metrics",
    "load_samples",
    "parse_config_overrides",
    "scan_video_folder",
    "soft_target_cross_entropy",
    "topk_accuracy",
]
