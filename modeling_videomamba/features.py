"""Features out of a VideoMamba: one vector per clip, one per frame, or the dense patch grid.

    processor = VideoMambaVideoProcessor.from_pretrained(model_dir)
    model = VideoMambaModel.from_pretrained(model_dir)      # or any head: its backbone is used
    pixel_values = processor(video, return_tensors="pt")["pixel_values"]
    features = video_features(model, pixel_values)
    features.clip_embedding    # (B, D)
    features.frame_features    # (B, T', D)
    features.patch_features    # (B, T', h, w, D)

All three come from one forward pass, from the final-norm output of the backbone (`last_hidden_state`).
Any frame count and frame size the patching divides work: the position embeddings are interpolated as with
`interpolate_pos_encoding=True` (an identity at the model's own size).
"""

from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput

from .modeling_videomamba import VideoMambaModel
from .processors.long_video import model_device, run_windows


@dataclass
class VideoMambaFeatures(ModelOutput):
    r"""
    clip_embedding (`torch.FloatTensor` of shape `(batch, hidden_size)`):
        The backbone's `pooler_output`: the normalised cls token, or with `config.use_mean_pooling` the mean of
        the normalised patch tokens (what the classification heads read).
    frame_features (`torch.FloatTensor` of shape `(batch, T', hidden_size)`):
        The normalised patch tokens of each frame averaged over its h x w patches; T' = frames / tubelet_size
        (for the image model, T' = 1).
    patch_features (`torch.FloatTensor` of shape `(batch, T', h, w, hidden_size)`):
        The normalised patch tokens on their grid: `patch_features[b, t, i, j]` is the token of the patch in row
        i, column j of frame (tubelet) t, whatever `config.token_order` the blocks scanned in.
    """

    clip_embedding: torch.FloatTensor = None
    frame_features: torch.FloatTensor = None
    patch_features: torch.FloatTensor = None


def _backbone(model) -> VideoMambaModel:
    backbone = model if isinstance(model, VideoMambaModel) else getattr(model, "base_model", None)
    if not isinstance(backbone, VideoMambaModel):
        raise TypeError(
            f"video_features needs a VideoMambaModel or a model built on one (its heads); got {type(model).__name__}."
        )
    return backbone


def patch_grid(pixel_values: torch.Tensor, config) -> tuple:
    """(T', h, w): the token grid the embeddings cut `pixel_values` (B, T, C, H, W) or (B, C, H, W) into."""
    height, width = pixel_values.shape[-2:]
    frames = pixel_values.shape[1] // config.tubelet_size if config.modality == "video" else 1
    return frames, height // config.patch_size, width // config.patch_size


def video_features(model, pixel_values: torch.Tensor) -> VideoMambaFeatures:
    """Clip, per-frame and per-patch features of `pixel_values` (B, T, C, H, W) (images: (B, C, H, W)).

    `model` is a `VideoMambaModel` or any VideoMamba head (`VideoMambaForVideoClassification`, ...), whose
    backbone is used; gradients flow as the caller's grad mode says.
    """
    backbone = _backbone(model)
    outputs = backbone(pixel_values, interpolate_pos_encoding=True, return_dict=True)
    frames, height, width = patch_grid(pixel_values, backbone.config)
    tokens = outputs.last_hidden_state[:, 1:]
    batch, dim = tokens.shape[0], tokens.shape[-1]
    grid = tokens.reshape(batch, frames, height, width, dim)
    return VideoMambaFeatures(
        clip_embedding=outputs.pooler_output, frame_features=grid.mean(dim=(2, 3)), patch_features=grid
    )


@torch.no_grad()
def long_video_features(
    model, video_processor, source, window_seconds=10.0, stride_seconds=None, frames_per_window=None,
    batch_size=4, keep_coded_frames=False, patch_features=False,
):
    """`video_features` of each window of a long video, decoding it once (windows as `classify_long_video`'s).

    Returns `{"windows": [{"start": s, "end": s, "clip_embedding": (D,), "frame_features": (T', D)
    [, "patch_features": (T', h, w, D)]}, ...], "duration": seconds, "frames_per_window": int}`, tensors on
    the CPU. The dense grid is left out unless `patch_features=True` (it is h*w times the frame features).
    """
    frames_per_window = frames_per_window or video_processor.num_frames
    device = model_device(model)

    def extract(pixel_values):
        features = video_features(model, pixel_values.to(device))
        names = ("clip_embedding", "frame_features") + (("patch_features",) if patch_features else ())
        per_name = [getattr(features, name).cpu() for name in names]
        return [dict(zip(names, window)) for window in zip(*per_name)]

    spans, windows, duration = run_windows(
        extract, video_processor, source, window_seconds, stride_seconds, frames_per_window, batch_size,
        keep_coded_frames,
    )
    return {
        "windows": [{"start": start, "end": end, **window} for (start, end), window in zip(spans, windows)],
        "duration": duration,
        "frames_per_window": frames_per_window,
    }


__all__ = ["VideoMambaFeatures", "long_video_features", "patch_grid", "video_features"]
