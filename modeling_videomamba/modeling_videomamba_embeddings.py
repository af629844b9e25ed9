"""VideoMamba's input side: frames -> 3D patches -> tokens (cls first) with spatial and temporal position embeddings.

Tokens are the cls token followed by the patches in spatial-first order: token 1 + t*h*w + i*w + j is patch (t, i, j).
"""

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_videomamba import VideoMambaConfig
from .modeling_videomamba_blocks import autocast_is_emulated


class VideoMambaPatchEmbeddings(nn.Module):
    """Cuts frames into patches: a Conv3d over (tubelet, patch, patch) for video, a Conv2d for images."""

    def __init__(self, config: VideoMambaConfig):
        super().__init__()
        self.is_video = is_video = config.modality == "video"
        self.num_channels = config.num_channels
        self.patch_size = config.patch_size
        self.tubelet_size = config.tubelet_size if is_video else 1
        if is_video:
            kernel = (config.tubelet_size, config.patch_size, config.patch_size)
            self.projection = nn.Conv3d(config.num_channels, config.hidden_size, kernel_size=kernel, stride=kernel)
        else:
            self.projection = nn.Conv2d(
                config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size
            )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, T, C, H, W) video or (B, C, H, W) image -> patches (B, T', H/p, W/p, D)."""
        expected = "(batch, frames, channels, height, width)" if self.is_video else "(batch, channels, height, width)"
        if pixel_values.dim() != (5 if self.is_video else 4):
            raise ValueError(f"pixel_values must have shape {expected}; got a tensor of shape {tuple(pixel_values.shape)}.")
        channels = pixel_values.shape[2 if self.is_video else 1]
        if channels != self.num_channels:
            raise ValueError(
                f"pixel_values has {channels} channels but the model expects {self.num_channels} "
                f"(shape {expected}, got {tuple(pixel_values.shape)})."
            )
        height, width = pixel_values.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"Frame size {height}x{width} is not divisible by the patch size {self.patch_size}.")
        if self.is_video and pixel_values.shape[1] % self.tubelet_size:
            raise ValueError(
                f"The number of frames ({pixel_values.shape[1]}) is not divisible by tubelet_size ({self.tubelet_size})."
            )
        pixel_values = pixel_values.to(self.projection.weight.dtype)
        # (a half-precision Conv3d has no oneDNN path on CPUs without half instructions: a slow generic one)
        with torch.autocast("cpu", enabled=False) if autocast_is_emulated(pixel_values.device) else contextlib.nullcontext():
            if self.is_video:
                patches = self.projection(pixel_values.transpose(1, 2))  # (B, D, T', h, w)
            else:
                patches = self.projection(pixel_values).unsqueeze(2)  # (B, D, 1, h, w)
        return patches.permute(0, 2, 3, 4, 1)


def interpolate_position_embeddings(position_embeddings: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Resize the spatial position embeddings to a (height, width) patch grid, as the original does to
    fine-tune at another resolution; used by `interpolate_pos_encoding=True` and the checkpoint converter.

    (1, 1 + g*g, D) -> (1, 1 + height*width, D): bicubic on the g x g grid, the cls position copied.
    """
    cls_position, grid = position_embeddings[:, :1], position_embeddings[:, 1:]
    side = int(math.sqrt(grid.shape[1]))
    if (side, side) == (height, width):
        return position_embeddings
    grid = grid.reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(height, width), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, height * width, -1).to(position_embeddings.dtype)
    return torch.cat([cls_position, grid], dim=1)


def interpolate_temporal_embeddings(temporal_embeddings: torch.Tensor, frames: int) -> torch.Tensor:
    """Resize the temporal position embeddings to `frames` positions (frames / tubelet), as the original does
    to fine-tune on another clip length; used by `interpolate_pos_encoding=True` and the checkpoint converter.

    (1, T, D) -> (1, frames, D) by linear interpolation along time.
    """
    if temporal_embeddings.shape[1] == frames:
        return temporal_embeddings
    resized = F.interpolate(temporal_embeddings.transpose(1, 2).float(), size=frames, mode="linear", align_corners=False)
    return resized.transpose(1, 2).to(temporal_embeddings.dtype)


class VideoMambaEmbeddings(nn.Module):
    """Patches + cls token + spatial position embeddings (+ temporal embeddings on patches, for video)."""

    def __init__(self, config: VideoMambaConfig):
        super().__init__()
        self.config = config
        self.is_video = is_video = config.modality == "video"
        self.patch_embeddings = VideoMambaPatchEmbeddings(config)
        frames, side, _ = config.grid_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.position_embeddings = nn.Parameter(torch.zeros(1, 1 + side * side, config.hidden_size))
        if is_video:
            self.temporal_position_embeddings = nn.Parameter(torch.zeros(1, frames, config.hidden_size))
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def _check_size(self, pixel_values: torch.Tensor):
        height, width = pixel_values.shape[-2:]
        size = self.config.image_size
        if (height, width) != (size, size):
            raise ValueError(
                f"Input frame size ({height}x{width}) doesn't match the model ({size}x{size}). "
                "Pass interpolate_pos_encoding=True to run at another resolution."
            )
        if self.is_video and pixel_values.dim() == 5 and pixel_values.shape[1] != self.config.num_frames:
            raise ValueError(
                f"Input has {pixel_values.shape[1]} frames but the model expects {self.config.num_frames}. "
                "Pass interpolate_pos_encoding=True to run another number of frames."
            )

    def forward(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False):
        """Returns tokens (B, 1 + T'*h*w, D), cls first, and the patch grid (T', h, w)."""
        patches = self.patch_embeddings(pixel_values)
        if not interpolate_pos_encoding:
            self._check_size(pixel_values)
        batch, frames, height, width, dim = patches.shape
        position = interpolate_position_embeddings(self.position_embeddings, height, width)
        patches = patches + position[:, 1:].reshape(1, 1, height, width, dim)
        if self.is_video:
            temporal = interpolate_temporal_embeddings(self.temporal_position_embeddings, frames)
            patches = patches + temporal.reshape(1, frames, 1, 1, dim)
        cls = (self.cls_token + position[:, :1]).expand(batch, -1, -1)
        tokens = torch.cat([cls, patches.reshape(batch, frames * height * width, dim)], dim=1)
        return self.dropout(tokens), (frames, height, width)
