"""Masked pretraining through the Trainer: teacher targets, masks and `VideoMambaForPreTraining`'s loss.

The teacher is any Hugging Face vision model applied per frame (e.g. `CLIPVisionModel`: per-frame
tokens, the per-frame cls tokens averaged into one cls, as the original) or a video model returning
1 + T*h*w tokens (e.g. a VideoMamba). Its token grid must equal the student's. The cls attention of its
last layer drives `mask_type="attention"` (image teachers loaded with `attn_implementation="eager"`).
"""

import torch
from transformers import Trainer

from .masking import MaskingCallback, MaskingSpec, generate_mask
from .training_utils import DatasetEpochCallback


def parameters_outside_the_loss(model) -> list:
    """Parameters of a `VideoMambaForPreTraining` that no aligned record depends on, so never get a gradient:
    with `aligned_feature_source="original"` the last block (its record is the stream entering it) and, when no
    other record reads it, the final norm."""
    if model.config.aligned_feature_source != "original":
        return []
    backbone = model.videomamba
    unused = list(backbone.layers[-1].parameters())
    if model.aligned_layers() == [len(backbone.layers) - 1]:
        unused += list(backbone.norm_f.parameters())
    return unused


def _is_video_model(model) -> bool:
    return getattr(model.config, "num_frames", None) is not None


@torch.no_grad()
def teacher_targets(teacher, pixel_values: torch.Tensor, need_attention: bool = False) -> tuple:
    """Teacher features (B, 1 + T*h*w, D_teacher), cls first, patches spatial-first; and, if asked, the cls
    attention of its last layer (B, T, h*w).

    pixel_values: (B, T, C, H, W).
    """
    batch, frames = pixel_values.shape[:2]
    dtype = next(teacher.parameters()).dtype
    if _is_video_model(teacher):
        if need_attention:
            raise ValueError("Attention masking needs an attention-based teacher; this video teacher returns no attentions.")
        backbone = getattr(teacher, "videomamba", teacher)
        return backbone(pixel_values=pixel_values.to(dtype), return_dict=True).last_hidden_state, None
    outputs = teacher(pixel_values=pixel_values.flatten(0, 1).to(dtype), output_attentions=need_attention, return_dict=True)
    tokens = outputs.last_hidden_state  # (B*T, 1 + h*w, D)
    tokens = tokens.reshape(batch, frames, tokens.shape[1], tokens.shape[2])
    cls = tokens[:, :, :1].mean(1)  # one cls: the average of the frames' cls tokens
    features = torch.cat([cls, tokens[:, :, 1:].flatten(1, 2)], dim=1)
    attention = None
    if need_attention:
        if not outputs.attentions:
            raise ValueError(
                "The teacher returned no attentions; load it with attn_implementation='eager' for attention masking."
            )
        attention = outputs.attentions[-1][:, :, 0, 1:].mean(1).reshape(batch, frames, -1)
    return features, attention


class VideoMambaPreTrainingTrainer(Trainer):
    """Trainer for `VideoMambaForPreTraining`: per batch, teacher targets -> mask -> student alignment loss.

    Backbone parameters that cannot reach the loss (`parameters_outside_the_loss`) are frozen; they are still saved.

    Args:
        teacher: the frozen teacher (kept in eval mode, never saved).
        mask_type, mask_ratio: the masking strategy (see `masking`).
        mask_schedule: optional `[(start_fraction, mask_type, mask_ratio), ...]`; adds a `MaskingCallback`.
    """

    def __init__(self, *args, teacher, mask_type: str = "tube", mask_ratio: float = 0.8, mask_schedule=None, **kwargs):
        super().__init__(*args, **kwargs)
        # Frozen before `train()` builds the optimizer and DDP, which then leave them out: DDP without
        # unused-parameter search (the Trainer's choice under activation checkpointing) would otherwise wait
        # for their gradients forever ("Expected to have finished reduction in the prior iteration").
        for parameter in parameters_outside_the_loss(self.model):
            parameter.requires_grad_(False)
        self.teacher = teacher.to(self.args.device).eval().requires_grad_(False)
        self.masking = MaskingSpec(mask_type, mask_ratio)
        self.add_callback(DatasetEpochCallback(self))
        if mask_schedule:
            self.add_callback(MaskingCallback(self.masking, mask_schedule))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        pixel_values = inputs["pixel_values"]
        spec = self.masking
        features, attention = teacher_targets(self.teacher, pixel_values, need_attention=spec.mask_type == "attention")
        grid = self.accelerator.unwrap_model(model).config.grid_size
        if features.shape[1] != 1 + grid[0] * grid[1] * grid[2]:
            raise ValueError(
                f"The teacher gives {features.shape[1]} tokens; the student's grid {grid} needs 1 + {grid[0] * grid[1] * grid[2]}."
            )
        mask = generate_mask(spec.mask_type, pixel_values.shape[0], grid, spec.mask_ratio, attention=attention, device=pixel_values.device)
        outputs = model(pixel_values=pixel_values, bool_masked_pos=mask, teacher_features=features, return_dict=True)
        return (outputs.loss, outputs) if return_outputs else outputs.loss


__all__ = ["VideoMambaPreTrainingTrainer", "parameters_outside_the_loss", "teacher_targets"]
