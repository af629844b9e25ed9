"""Spatial transforms of a clip, in torch only (no torchvision): resize, crops, flip, normalisation.

Every function takes and returns a float tensor of shape (T, C, H, W) and applies the same geometry to all
frames of the clip, as video models are trained.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize(video, height, width):
    """Bilinear resize with antialiasing (as PIL and torchvision's antialiased resize) to (height, width)."""
    if video.shape[-2:] == (height, width):
        return video
    return F.interpolate(video, size=(height, width), mode="bilinear", align_corners=False, antialias=True)


def resize_shortest_edge(video, shortest_edge):
    """Resize so that the shorter side is `shortest_edge`, keeping the aspect ratio (longer side floored)."""
    height, width = video.shape[-2:]
    short, long = min(height, width), max(height, width)
    new_long = int(shortest_edge * long / short)
    new_height, new_width = (shortest_edge, new_long) if height <= width else (new_long, shortest_edge)
    return resize(video, new_height, new_width)


def crop(video, top, left, height, width):
    return video[..., top : top + height, left : left + width]


def _check_fits(video, height, width):
    if video.shape[-2] < height or video.shape[-1] < width:
        raise ValueError(
            f"Cannot crop {height}x{width} from frames of {video.shape[-2]}x{video.shape[-1]}; "
            "resize first (do_resize=True with size['shortest_edge'] >= the crop size)."
        )


def center_crop(video, height, width):
    """The central (height, width) window."""
    _check_fits(video, height, width)
    top = (video.shape[-2] - height) // 2
    left = (video.shape[-1] - width) // 2
    return crop(video, top, left, height, width)


def three_crops(video, height, width):
    """Three (height, width) windows along the longer side: start, centre, end (the 3-crop test protocol).

    Returns:
        a list of 3 tensors (T, C, height, width).
    """
    _check_fits(video, height, width)
    full_height, full_width = video.shape[-2:]
    if full_width >= full_height:
        top = (full_height - height) // 2
        lefts = (0, (full_width - width) // 2, full_width - width)
        return [crop(video, top, left, height, width) for left in lefts]
    left = (full_width - width) // 2
    tops = (0, (full_height - height) // 2, full_height - height)
    return [crop(video, top, left, height, width) for top in tops]


def random_resized_crop_box(height, width, scale, ratio, rng):
    """(top, left, box_height, box_width) of a random crop with area fraction in `scale` and aspect ratio
    (w / h) in `ratio` (log-uniform), as the Inception-style crop; falls back to the largest central box
    of a ratio within range after 10 failed draws."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        box_width = int(round(math.sqrt(target_area * aspect)))
        box_height = int(round(math.sqrt(target_area / aspect)))
        if 0 < box_width <= width and 0 < box_height <= height:
            top = int(rng.integers(0, height - box_height + 1))
            left = int(rng.integers(0, width - box_width + 1))
            return top, left, box_height, box_width
    aspect = width / height
    if aspect < ratio[0]:
        box_width, box_height = width, int(round(width / ratio[0]))
    elif aspect > ratio[1]:
        box_height, box_width = height, int(round(height * ratio[1]))
    else:
        box_height, box_width = height, width
    return (height - box_height) // 2, (width - box_width) // 2, box_height, box_width


def random_resized_crop(video, height, width, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), rng=None):
    """One random crop box for the whole clip (see `random_resized_crop_box`), resized to (height, width)."""
    rng = rng if rng is not None else np.random.default_rng()
    box = random_resized_crop_box(video.shape[-2], video.shape[-1], scale, ratio, rng)
    return resize(crop(video, *box), height, width)


def horizontal_flip(video):
    return video.flip(-1)


def rescale_and_normalize(video, rescale_factor=None, mean=None, std=None):
    """`video * rescale_factor`, then `(x - mean) / std` per channel; None skips a step."""
    if rescale_factor is not None:
        video = video * rescale_factor
    if mean is not None:
        mean = torch.as_tensor(mean, dtype=video.dtype, device=video.device).view(-1, 1, 1)
        std = torch.as_tensor(std, dtype=video.dtype, device=video.device).view(-1, 1, 1)
        video = (video - mean) / std
    return video


__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "center_crop",
    "horizontal_flip",
    "random_resized_crop",
    "random_resized_crop_box",
    "rescale_and_normalize",
    "resize",
    "resize_shortest_edge",
    "three_crops",
]
