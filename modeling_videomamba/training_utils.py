"""Training helpers shared by the Trainer scripts and the demo: video-folder and `datasets` datasets
(decoded and augmented by `VideoMambaVideoProcessor`), mixup / cutmix / label smoothing, top-k metrics,
a Trainer that scales soft-label losses correctly under gradient accumulation, and resizing a model's
position embeddings to another clip length or frame size.
"""

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from transformers import Trainer, TrainerCallback

from .processors import multi_view_predict, read_video, undecoded_videos, video_cell_source

logger = logging.getLogger(__name__)

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
    """(video, label) pairs -> {"pixel_values": (T, C, H, W), "labels": int}, through a video processor.

    `samples` is a sequence of (path or encoded bytes, label id) pairs, e.g. from `load_samples` (which reads
    a `datasets` dataset lazily). `train=True` draws the processor's training sampling and augmentation from
    a generator seeded by (`seed`, epoch, index): reproducible whatever the workers, processes or
    prefetching, and a resumed run sees the same clips as an uninterrupted one (`set_epoch` is called by
    `DatasetEpochCallback`). The epoch lives in shared memory, so copies of the dataset in DataLoader
    workers (persistent ones included) see `set_epoch` too. A processor with several evaluation views
    (`num_temporal_clips` / `num_spatial_crops`) gives (views, T, C, H, W) per clip, which
    `VideoMambaTrainer` scores by averaging. `cache=True` keeps every decoded video in memory (per worker).
    """

    def __init__(self, samples, processor, train: bool, cache: bool = False, seed: int = 0):
        self.samples = samples if isinstance(samples, Sequence) else list(samples)
        self.processor, self.train, self.seed = processor, train, seed
        # Workers get a copy of the dataset (forked or pickled); a tensor in shared memory stays one value.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self._cache = {} if cache else None

    def __len__(self):
        return len(self.samples)

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int):
        self._epoch.fill_(int(epoch))

    def __getitem__(self, index):
        video, label = self.samples[index]
        if self._cache is not None:
            if index not in self._cache:
                self._cache[index] = read_video(video)[0]
            video = self._cache[index]
        rng = np.random.default_rng([self.seed, self.epoch, index]) if self.train else None
        pixel_values = self.processor(video, training=self.train, generator=rng)["pixel_values"]
        return {"pixel_values": pixel_values[0] if len(pixel_values) == 1 else pixel_values, "labels": label}


class DatasetEpochCallback(TrainerCallback):
    """Tells the training dataset which epoch starts (for `VideoClipDataset`'s per-epoch augmentation).

    Runs before the Trainer iterates the epoch's DataLoader, so workers (which read the epoch from shared
    memory when they load an item) already see the new value for the epoch's first batches.
    """

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


def random_partners(batch_size: int, rng: np.random.Generator) -> np.ndarray:
    """A random permutation of range(batch_size) with no fixed point (for batch_size >= 2): the samples in
    random order, each paired with the next one and the last with the first. (batch_size,) int64."""
    order = rng.permutation(batch_size)
    partners = np.empty(batch_size, dtype=np.int64)
    partners[order] = np.roll(order, -1)
    return partners


@dataclass
class MixupCutmix:
    """Mixes a training batch (timm-style): with probability `prob`, either mixup (blend two clips) or cutmix
    (paste a box cut from the partner clip into every frame), chosen with `switch_prob`; labels become soft
    (B, num_labels), label-smoothed by `label_smoothing`. With both alphas 0 it only smooths labels.
    Called on a collated batch {"pixel_values", "labels" (B,) long}.

    Partners come from `random_partners`: a random permutation without fixed points, so no clip is mixed
    with itself. A batch of one clip has no partner and is left unmixed (labels still smoothed; a warning
    says so once): mixing needs per-device batches of at least 2.

    Randomness comes from `generator` (an `np.random.Generator`) when the call passes one:
    `VideoMambaTrainer` passes one seeded by (training seed, process index, step, micro-batch), so every
    process draws its own lambda, box and pairing, and a resumed run repeats an uninterrupted one.
    Without it, the mixer's own stream, seeded by (`seed`, `process_index`), is used.
    """

    num_labels: int
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    prob: float = 1.0
    switch_prob: float = 0.5
    label_smoothing: float = 0.0
    seed: int = 0
    process_index: int = 0
    _stream: Optional[np.random.Generator] = field(default=None, init=False, repr=False)
    _warned_single: bool = field(default=False, init=False, repr=False)

    def _soft(self, labels: torch.Tensor) -> torch.Tensor:
        off = self.label_smoothing / self.num_labels
        soft = torch.full((len(labels), self.num_labels), off, device=labels.device)
        return soft.scatter_(1, labels[:, None], 1.0 - self.label_smoothing + off)

    def _can_mix(self, batch_size: int) -> bool:
        if self.mixup_alpha <= 0 and self.cutmix_alpha <= 0:
            return False
        if batch_size < 2:
            if not self._warned_single:
                logger.warning("Mixup/cutmix needs at least 2 clips per batch; batches of 1 are left unmixed.")
                self._warned_single = True
            return False
        return True

    def __call__(self, batch: dict, generator: Optional[np.random.Generator] = None) -> dict:
        if generator is None:
            if self._stream is None:
                self._stream = np.random.default_rng([self.seed, self.process_index])
            generator = self._stream
        pixel_values, soft = batch["pixel_values"], self._soft(batch["labels"])
        if self._can_mix(len(pixel_values)) and generator.random() < self.prob:
            use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha <= 0 or generator.random() < self.switch_prob)
            alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
            lam = float(generator.beta(alpha, alpha))
            partners = torch.from_numpy(random_partners(len(pixel_values), generator)).to(pixel_values.device)
            partner = pixel_values[partners]
            if use_cutmix:
                height, width = pixel_values.shape[-2:]
                cut_h, cut_w = int(height * math.sqrt(1 - lam)), int(width * math.sqrt(1 - lam))
                cy, cx = int(generator.integers(height)), int(generator.integers(width))
                top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
                left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
                pixel_values = pixel_values.clone()
                pixel_values[..., top:bottom, left:right] = partner[..., top:bottom, left:right]
                lam = 1.0 - (bottom - top) * (right - left) / (height * width)
            else:
                pixel_values = lam * pixel_values + (1.0 - lam) * partner
            soft = lam * soft + (1.0 - lam) * soft[partners]
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


# Parameters AdamW should not pull towards zero (Mamba's `_no_weight_decay` on A_log and D, VideoMamba's
# `no_weight_decay()` on the position embeddings and cls token): decaying A_log drives every channel's decay
# rate towards exp(0) = 1, decaying D removes the skip path, decaying embeddings erases where a patch sits.
# Every other one-dimensional parameter (biases, the dt bias, norm weights) is left undecayed too, as in timm.
NO_WEIGHT_DECAY_NAMES = ("A_log", "A_b_log", "cls_token", "position_embeddings", "temporal_position_embeddings")


def decay_parameter_names(model: torch.nn.Module) -> list:
    """Names of the parameters weight decay applies to: matrices and convolution kernels, not the above."""
    return [
        name for name, parameter in model.named_parameters()
        if parameter.ndim > 1 and name.rsplit(".", 1)[-1] not in NO_WEIGHT_DECAY_NAMES
    ]


def pin_memory_only_with_accelerator(args) -> None:
    """Turns off `args.dataloader_pin_memory` when training runs on the CPU.

    Pinned host memory only speeds up copies to an accelerator; without one, every DataLoader warns that
    pinning is unused (the Trainer builds one for training and one for evaluation).
    """
    if args.dataloader_pin_memory and args.device.type == "cpu":
        args.dataloader_pin_memory = False


class VideoMambaTrainer(Trainer):
    """`Trainer` whose loss is right for soft labels (mixup / cutmix / label smoothing).

    The stock Trainer sees that our models' `forward` takes `**kwargs`, so it expects the model to
    normalise the loss by `num_items_in_batch` and skips the division by the gradient-accumulation steps.
    The model does so for labels as the Trainer counted them, but `batch_mixer` turns (B,) class ids,
    counted one item per sample, into (B, C) soft labels inside this method. Here soft labels get the
    soft-target cross entropy, summed and divided by the number of samples in the whole accumulated (and,
    across processes, gathered) batch: exactly the normalisation hard labels receive.

    `batch_mixer` (e.g. `MixupCutmix`) mixes training batches only, never evaluation ones; it is called as
    `batch_mixer(batch, generator=...)` with an `np.random.Generator` seeded by (`args.seed`,
    `args.process_index`, global step, micro-batch), so processes mix differently and runs (resumed ones
    included) repeat.
    """

    def __init__(self, *args, batch_mixer=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.batch_mixer = batch_mixer
        self._mixing_position = (None, 0)
        self.add_callback(DatasetEpochCallback(self))
        pin_memory_only_with_accelerator(self.args)

    def get_decay_parameter_names(self, model: torch.nn.Module) -> list:
        """No weight decay on A_log, D, biases, norms, position embeddings and the cls token (`decay_parameter_names`)."""
        return decay_parameter_names(model)

    def _mixing_generator(self) -> np.random.Generator:
        """A generator for the next micro-batch's mixing, keyed by its place in training (not by history)."""
        step, micro = self._mixing_position
        micro = micro + 1 if step == self.state.global_step else 0
        self._mixing_position = (self.state.global_step, micro)
        return np.random.default_rng([self.args.seed, self.args.process_index, self.state.global_step, micro])

    def _is_soft(self, labels) -> bool:
        return torch.is_tensor(labels) and labels.is_floating_point() and labels.dim() == 2

    def compute_task_loss(self, model, inputs, num_items_in_batch=None):
        """(loss, outputs) of the task; subclasses add their terms on top."""
        labels = inputs.get("labels")
        # The Trainer counted `num_items_in_batch` on the collated labels: samples for (B,) class ids,
        # elements (B * C) for soft labels coming out of the data pipeline.
        labels_per_sample = 1 if labels is None or labels.dim() == 1 else labels.shape[-1]
        if self.batch_mixer is not None and model.training and labels is not None:
            inputs = self.batch_mixer(inputs, generator=self._mixing_generator())
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


def resize_model_inputs(model, num_frames: Optional[int] = None, image_size: Optional[int] = None) -> None:
    """Adapts a VideoMamba model (backbone or classification head) in place to clips of `num_frames` frames
    and/or frames of `image_size` pixels, as the original fine-tunes at another size and the checkpoint
    converter's --num-frames / --image-size do: the temporal position embeddings are interpolated linearly
    (`interpolate_temporal_embeddings`), the spatial ones bicubically (`interpolate_position_embeddings`),
    and the config is updated, so training, evaluation and `save_pretrained` all use the new size.
    Call it before the optimizer is created (it replaces the embedding parameters). None keeps a size.
    """
    from .modeling_videomamba_embeddings import (
        VideoMambaEmbeddings,
        interpolate_position_embeddings,
        interpolate_temporal_embeddings,
    )

    config = model.config
    if num_frames is not None and num_frames != config.num_frames:
        if config.modality != "video":
            raise ValueError(f"num_frames applies to video models; this one has modality {config.modality!r}.")
        if num_frames <= 0 or num_frames % config.tubelet_size:
            raise ValueError(f"num_frames must be a positive multiple of the tubelet size {config.tubelet_size}, got {num_frames}.")
    if image_size is not None and (image_size <= 0 or image_size % config.patch_size):
        raise ValueError(f"image_size must be a positive multiple of the patch size {config.patch_size}, got {image_size}.")
    frames = None if num_frames is None else num_frames // config.tubelet_size
    side = None if image_size is None else image_size // config.patch_size
    with torch.no_grad():
        for embeddings in (module for module in model.modules() if isinstance(module, VideoMambaEmbeddings)):
            if frames is not None and embeddings.is_video:
                old = embeddings.temporal_position_embeddings
                resized = interpolate_temporal_embeddings(old, frames).clone()
                embeddings.temporal_position_embeddings = torch.nn.Parameter(resized, requires_grad=old.requires_grad)
            if side is not None:
                old = embeddings.position_embeddings
                resized = interpolate_position_embeddings(old, side, side).clone()
                embeddings.position_embeddings = torch.nn.Parameter(resized, requires_grad=old.requires_grad)
    if num_frames is not None:
        config.num_frames = num_frames
    if image_size is not None:
        config.image_size = image_size


def _load_dataset_split(dataset_name: str, split: str):
    """A split of a `datasets` dataset: a `save_to_disk` folder (read in place) or anything `load_dataset` takes."""
    import datasets

    folder = Path(dataset_name)
    if (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file():
        loaded = datasets.load_from_disk(str(folder))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ValueError(f"Dataset {dataset_name} has no split {split!r}; its splits are {sorted(loaded)}.")
            return loaded[split]
        raise ValueError(
            f"{dataset_name} holds a single saved Dataset; save a DatasetDict with {split!r} (and validation) splits."
        )
    return datasets.load_dataset(dataset_name, split=split)


class DatasetVideoSamples(Sequence):
    """(video source, label id) pairs read from a `datasets` dataset on access, so video bytes stored in the
    dataset stay on disk (memory-mapped) until a clip is loaded. The source is a path or encoded bytes
    (`video_cell_source`); `VideoClipDataset` takes this as its `samples`."""

    def __init__(self, dataset, video_column: str, labels: list):
        self.dataset, self.video_column, self.labels = dataset.select_columns([video_column]), video_column, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        if isinstance(index, slice):
            indices = range(len(self))[index]
            return DatasetVideoSamples(self.dataset.select(indices), self.video_column, [self.labels[i] for i in indices])
        return video_cell_source(self.dataset[index][self.video_column]), self.labels[index]


def load_samples(data_dir=None, dataset_name=None, split="train", label2id=None, video_column="video", label_column="label"):
    """(video, label id) pairs and label2id from a class-folder directory or a `datasets` dataset.

    The dataset (a Hub name, a local loading script or data folder, or a `save_to_disk` folder) has a
    `video_column` of file paths or `Video` cells, which are read undecoded (`Video(decode=False)`: no
    torchcodec; cells holding bytes give bytes), and a `label_column` of class ids (ClassLabel) or names.
    """
    if data_dir:
        return scan_video_folder(data_dir, label2id)
    if not dataset_name:
        raise ValueError("Give a data directory (--train_dir/--validation_dir) or --dataset_name.")
    dataset = _load_dataset_split(dataset_name, split)
    for column in (video_column, label_column):
        if column not in dataset.column_names:
            raise ValueError(f"Dataset {dataset_name} has no column {column!r}; its columns are {dataset.column_names}.")
    dataset = undecoded_videos(dataset, video_column)
    feature = dataset.features[label_column]
    values = list(dataset[label_column])
    names = getattr(feature, "names", None) or sorted({str(v) for v in values})
    label2id = label2id or {name: i for i, name in enumerate(names)}
    if hasattr(feature, "names"):
        labels = [int(value) for value in values]
    else:
        unknown = sorted({str(v) for v in values} - set(label2id))
        if unknown:
            raise ValueError(f"Labels {unknown[:5]} of {dataset_name} ({split}) are not among the known labels {sorted(label2id)}.")
        labels = [label2id[str(value)] for value in values]
    return DatasetVideoSamples(dataset, video_column, labels), label2id


__all__ = [
    "DatasetEpochCallback",
    "DatasetVideoSamples",
    "MixupCutmix",
    "VideoClipDataset",
    "VideoMambaTrainer",
    "collate_clips",
    "compute_metrics",
    "decay_parameter_names",
    "load_samples",
    "parse_config_overrides",
    "pin_memory_only_with_accelerator",
    "random_partners",
    "resize_model_inputs",
    "scan_video_folder",
    "soft_target_cross_entropy",
    "topk_accuracy",
]
