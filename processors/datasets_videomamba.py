"""Feeding a `datasets` video dataset through the video processor, without torchcodec.

    from datasets import Video, load_dataset
    dataset = load_dataset("videofolder", data_dir="clips/")["train"]  # clips/<label>/<name>.mp4 (mkv, avi, mov)
    dataset = dataset.cast_column("video", Video(decode=False))          # rows hold {"path", "bytes"}
    dataset.set_transform(dataset_video_transform(processor, training=True))
    dataset[0]["pixel_values"]  # (T, C, H, W); DataLoader/Trainer batches give (B, T, C, H, W)

`Video(decode=False)` keeps `datasets` from decoding (it would need torchcodec); the processor reads the
path or bytes with PyAV instead.
"""

import torch


def _row_source(video):
    """The readable part of a `Video(decode=False)` cell: its bytes if stored, else its path."""
    if isinstance(video, dict):
        if video.get("bytes"):
            return video["bytes"]
        if video.get("path"):
            return video["path"]
        raise ValueError(f"A video cell needs 'path' or 'bytes'; got keys {sorted(video)} with no value.")
    return video


def dataset_video_transform(processor, video_column="video", label_column="label", training=False, **processor_kwargs):
    """A batch transform for `Dataset.set_transform`/`with_transform`.

    Args:
        processor: a `VideoMambaVideoProcessor` (or a `VideoMambaProcessor`).
        video_column: column of `Video(decode=False)` cells (dicts with `path`/`bytes`) or plain paths.
        label_column: column copied to `labels` (skipped if the dataset has none).
        training: random sampling and augmentation (see the processor).
        processor_kwargs: per-call processor options (`num_frames`, ...); single-view only.
    Returns:
        a function mapping a batch dict to `{"pixel_values": (B, T, C, H, W), "labels": (B,)}`.
    """
    if processor_kwargs.get("num_temporal_clips", 1) > 1 or processor_kwargs.get("num_spatial_crops", 1) > 1:
        raise ValueError("dataset_video_transform gives one row per video; use multi-view evaluation on batches instead.")

    def transform(batch):
        sources = [_row_source(video) for video in batch[video_column]]
        outputs = processor(sources, training=training, return_tensors="pt", **processor_kwargs)
        result = {"pixel_values": outputs["pixel_values"]}
        if label_column in batch:
            result["labels"] = torch.as_tensor(batch[label_column])
        return result

    return transform


__all__ = ["dataset_video_transform"]
