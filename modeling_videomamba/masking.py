"""Token masks for masked video pretraining (UMT-style), and a callback that schedules them.

Every mask is a bool tensor `bool_masked_pos` of shape (batch, T*h*w) over the patch tokens in
spatial-first order (token t*h*w + i*w + j is patch (t, i, j)), True = masked, with the same number of
masked tokens in every sample; the cls token is not part of it (it is always visible).

Strategies (r = mask ratio, N = h*w tokens per frame):
- `random`: int(T*N*r) tokens anywhere in the clip.
- `tube`: one frame mask of int(N*r) tokens, repeated over time.
- `frame_row`: every frame hides int(r*h) whole rows, drawn independently per frame.
- `clip_row`: T*int(r*h) whole rows drawn from all T*h rows of the clip.
- `attention`: per frame, keep N - int(N*r) tokens drawn by multinomial sampling without replacement,
  weighted by the teacher's cls attention (B, T, N); mask the rest.
"""

from dataclasses import dataclass

import torch
from transformers import TrainerCallback

MASK_TYPES = ("random", "tube", "frame_row", "clip_row", "attention")


def _mask_from_scores(scores: torch.Tensor, num_masked: int) -> torch.Tensor:
    """Mask the `num_masked` highest-scoring entries along the last dim: (..., M) -> bool (..., M)."""
    mask = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    if num_masked > 0:
        mask.scatter_(-1, scores.topk(num_masked, dim=-1).indices, True)
    return mask


def generate_mask(
    mask_type: str,
    batch_size: int,
    grid: tuple,
    mask_ratio: float,
    attention: torch.Tensor = None,
    generator: torch.Generator = None,
    device=None,
) -> torch.Tensor:
    """A mask (batch_size, T*h*w), True = masked, for the patch grid `grid` = (T, h, w).

    `attention` (batch_size, T, h*w), non-negative, is required for `mask_type="attention"`.
    """
    if mask_type not in MASK_TYPES:
        raise ValueError(f"Unknown mask_type {mask_type!r}; expected one of {MASK_TYPES}.")
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must lie in [0, 1), got {mask_ratio!r}.")
    frames, height, width = grid
    per_frame = height * width
    device = attention.device if attention is not None else device

    def uniform(*shape):
        return torch.rand(*shape, generator=generator, device=generator.device if generator is not None else device)

    if mask_type == "random":
        return _mask_from_scores(uniform(batch_size, frames * per_frame), int(frames * per_frame * mask_ratio))
    if mask_type == "tube":
        frame_mask = _mask_from_scores(uniform(batch_size, per_frame), int(per_frame * mask_ratio))
        return frame_mask.repeat(1, frames)
    if mask_type == "frame_row":
        rows = _mask_from_scores(uniform(batch_size, frames, height), int(mask_ratio * height))
        return rows[..., None].expand(-1, -1, -1, width).reshape(batch_size, -1)
    if mask_type == "clip_row":
        rows = _mask_from_scores(uniform(batch_size, frames * height), frames * int(mask_ratio * height))
        return rows[..., None].expand(-1, -1, width).reshape(batch_size, -1)
    # attention
    if attention is None:
        raise ValueError("mask_type='attention' needs the teacher's cls attention of shape (batch, T, h*w).")
    if attention.shape != (batch_size, frames, per_frame):
        raise ValueError(
            f"attention must have shape (batch, T, h*w) = {(batch_size, frames, per_frame)}; got {tuple(attention.shape)}."
        )
    num_keep = per_frame - int(per_frame * mask_ratio)
    weights = attention.reshape(batch_size * frames, per_frame).float().clamp_min(0) + 1e-12
    kept = torch.multinomial(weights, num_keep, replacement=False, generator=generator)
    mask = torch.ones(batch_size * frames, per_frame, dtype=torch.bool, device=weights.device)
    mask.scatter_(1, kept, False)
    return mask.reshape(batch_size, frames * per_frame)


@dataclass
class MaskingSpec:
    """The mask strategy and ratio currently in use (mutable: `MaskingCallback` updates it in place)."""

    mask_type: str = "tube"
    mask_ratio: float = 0.8

    def __post_init__(self):
        if self.mask_type not in MASK_TYPES:
            raise ValueError(f"Unknown mask_type {self.mask_type!r}; expected one of {MASK_TYPES}.")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must lie in [0, 1), got {self.mask_ratio!r}.")


class MaskingCallback(TrainerCallback):
    """Schedules mask strategy and ratio during training.

    `schedule` is a list of `(start, mask_type, mask_ratio)` sorted by `start`, the fraction of training
    (0 <= start < 1) from which an entry applies; at each step the latest started entry is written into
    `spec`, the `MaskingSpec` the pretraining trainer reads. E.g. `[(0, "random", 0.5), (0.5, "tube", 0.8)]`.
    """

    def __init__(self, spec: MaskingSpec, schedule: list):
        if not schedule:
            raise ValueError("MaskingCallback needs a non-empty schedule of (start, mask_type, mask_ratio).")
        starts = [entry[0] for entry in schedule]
        if starts != sorted(starts) or starts[0] != 0 or not all(0 <= s < 1 for s in starts):
            raise ValueError(f"Schedule starts must be sorted fractions in [0, 1) beginning at 0; got {starts}.")
        for _, mask_type, mask_ratio in schedule:
            MaskingSpec(mask_type, mask_ratio)  # validates
        self.spec, self.schedule = spec, list(schedule)

    def on_step_begin(self, args, state, control, **kwargs):
        progress = state.global_step / max(state.max_steps, 1)
        _, self.spec.mask_type, self.spec.mask_ratio = [e for e in self.schedule if e[0] <= progress][-1]


__all__ = ["MASK_TYPES", "MaskingCallback", "MaskingSpec", "generate_mask"]
