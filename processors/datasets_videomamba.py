"""Feeding a `datasets` video dataset through the video processor, without torchcodec.

    from datasets import load_dataset
    dataset = load_dataset("videofolder", data_dir="clips/")["train"]  # clips/<label>/<name>.mp4 (mkv, avi, mov)
    dataset = undecoded_videos(dataset)                                 # rows hold {"path", "bytes"}
    dataset.set_transform(dataset_video_transform(processor, training=True))
    dataset[0]["pixel_values"]  # (T, C, H, W); DataLoader/Trainer batches give (B, T, C, H, W)

`Video(decode=False)` (what `undecoded_videos` casts to) keeps `datasets` from decoding (it would need
torchcodec); the processor reads the path or bytes with PyAV instead.
"""

import os

import numpy as np
import torch

from .video_decoding import is_video_source


def undecoded_videos(dataset, video_column: str = "video"):
    """The dataset with `video_column` cast to `Video(decode=False)` if it is a decoding `Video` column.

    Its cells then come out as {"path": str or None, "bytes": bytes or None} (Hub datasets often store
    bytes); path columns (plain strings) are returned unchanged.
    """
    from datasets import Video

    if isinstance(dataset.features.get(video_column), Video) and dataset.features[video_column].decode:
        dataset = dataset.cast_column(video_column, Video(decode=False))
    return dataset


def video_cell_source(video):
    """What `read_video` can open from one cell of a video column: the bytes of a `Video(decode=False)`
    cell if stored, else its path; a plain path or bytes as is."""
    if isinstance(video, dict):
        if video.get("bytes"):
            return video["bytes"]
        if video.get("path"):
            return video["path"]
        raise ValueError(f"A video cell needs 'path' or 'bytes'; got keys {sorted(video)} with no value.")
    if not is_video_source(video):
        raise ValueError(
            f"A video cell must be a path, bytes or a {{'path', 'bytes'}} dict, got {type(video).__name__}; "
            "cast decoding video columns first: `undecoded_videos(dataset, column)` (Video(decode=False))."
        )
    return video


def _process_rank() -> int:
    """This process's rank in a distributed run (0 otherwise); also right inside its DataLoader workers."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", 0))


def _batch_generator() -> np.random.Generator:
    """A generator for one batch's augmentation, drawn from torch's global RNG and the process rank.

    torch's RNG is what `Trainer`/`set_seed` seed in the main process, what a DataLoader seeds per worker
    (its base seed, drawn from the main process's RNG for every new iterator, plus the worker id) and what
    the Trainer checkpoints: so runs repeat (resumed ones too), workers draw differently, epochs draw anew
    (persistent workers continue their stream) and the rank keeps identically seeded processes apart.
    """
    return np.random.default_rng([int(torch.randint(2**62, ()).item()), _process_rank()])


def dataset_video_transform(processor, video_column="video", label_column="label", training=False, **processor_kwargs):
    """A batch transform for `Dataset.set_transform`/`with_transform`.

    Args:
        processor: a `VideoMambaVideoProcessor` (or a `VideoMambaProcessor`).
        video_column: column of `Video(decode=False)` cells (dicts with `path`/`bytes`) or plain paths.
        label_column: column copied to `labels` (skipped if the dataset has none).
        training: random sampling and augmentation (see the processor), drawn from torch's RNG (seeded by
            the `Trainer` / `set_seed` and, in DataLoader workers, per worker) and the process rank: runs
            repeat, while workers, ranks and epochs differ. (Rows carry no index here, so, unlike
            `VideoClipDataset`, which clip gets which draw depends on the batch and worker layout.)
        processor_kwargs: per-call processor options (`num_frames`, ...); single-view only.
    Returns:
        a function mapping a batch dict to `{"pixel_values": (B, T, C, H, W), "labels": (B,)}`.
    """
    if processor_kwargs.get("num_temporal_clips", 1) > 1 or processor_kwargs.get("num_spatial_crops", 1) > 1:
        raise ValueError("dataset_video_transform gives one row per video; use multi-view evaluation on batches instead.")

    def transform(batch):
        sources = [video_cell_source(video) for video in batch[video_column]]
        rng = _batch_generator() if training else None
        outputs = processor(sources, training=training, generator=rng, return_tensors="pt", **processor_kwargs)
        result = {"pixel_values": outputs["pixel_values"]}
        if label_column in batch:
            result["labels"] = torch.as_tensor(batch[label_column])
        return result

    return transform


__all__ = ["dataset_video_transform", "undecoded_videos", "video_cell_source"]
