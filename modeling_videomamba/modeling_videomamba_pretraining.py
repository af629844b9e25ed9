"""VideoMamba's masked-pretraining student (UMT-style): masked tokens dropped, the last blocks aligned to a teacher.

The Trainer side (teacher targets, masks) is in `pretraining.py`.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.utils import ModelOutput

from .configuration_videomamba import VideoMambaConfig
from .modeling_videomamba import VideoMambaModel, VideoMambaPreTrainedModel
from .modeling_videomamba_blocks import _at_least_fp32, compute_dtype


def sinusoidal_position_table(num_positions: int, dim: int) -> torch.Tensor:
    """Fixed 1-D table (num_positions, dim): row p, column j is p / 10000^(2*floor(j/2)/dim), sin on even
    j, cos on odd j; computed in float64 and returned in float32 (as the original)."""
    position = torch.arange(num_positions, dtype=torch.float64)[:, None]
    exponent = 2 * (torch.arange(dim) // 2).to(torch.float64) / dim
    angles = position / torch.pow(10000.0, exponent)
    table = torch.where(torch.arange(dim) % 2 == 0, torch.sin(angles), torch.cos(angles))
    return table.float()


@dataclass
class VideoMambaForPreTrainingOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor`, *optional*): mean(2 - 2 cos) between `aligned_features` and the teacher's.
    aligned_features (`torch.FloatTensor` of shape `(K, batch, 1 + N_visible, teacher_hidden_size)`):
        L2-normalised decoder outputs of the K aligned blocks at the visible tokens (cls first).
    bool_masked_pos (`torch.BoolTensor` of shape `(batch, T*h*w)`): The mask used.
    hidden_states (`tuple(torch.FloatTensor)`, *optional*, with `output_hidden_states=True`):
        Visible tokens only (the masked ones never enter the blocks): the residual stream entering each
        block, then the stream after the last block (before the final norm): `num_hidden_layers + 1`
        tensors of shape `(batch, 1 + N_visible, hidden_size)`, cls first, then the visible patches in
        spatial-first order (`VideoMambaModelOutput.hidden_states` restricted to the kept tokens).
    """

    loss: torch.FloatTensor = None
    aligned_features: torch.FloatTensor = None
    bool_masked_pos: torch.BoolTensor = None
    hidden_states: tuple = None


class VideoMambaAlignmentDecoder(nn.Module):
    """Linear(hidden_size -> teacher_hidden_size) -> LayerNorm (the original's `clip_decoder.k`)."""

    def __init__(self, config: VideoMambaConfig):
        super().__init__()
        self.head = nn.Linear(config.hidden_size, config.teacher_hidden_size)
        self.norm = nn.LayerNorm(config.teacher_hidden_size, eps=1e-5)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.norm(self.head(hidden_states))


def alignment_loss(aligned: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean(2 - 2 cos) over all features; `target` broadcasts against `aligned` (both (..., D))."""
    aligned = F.normalize(aligned.float(), dim=-1)
    target = F.normalize(target.float(), dim=-1).expand_as(aligned)
    return (2 - 2 * (aligned * target).sum(-1)).mean()


class VideoMambaForPreTraining(VideoMambaPreTrainedModel):
    """Masked pretraining student: drops masked tokens, aligns the last K blocks to a teacher.

    Its `videomamba` backbone loads into `VideoMambaForVideoClassification` for fine-tuning (the
    decoders are dropped there).
    """

    def __init__(self, config: VideoMambaConfig):
        super().__init__(config)
        if config.modality != "video":
            raise ValueError("VideoMambaForPreTraining pretrains the video model; config.modality must be 'video'.")
        self.videomamba = VideoMambaModel(config)
        self.clip_decoder = nn.ModuleList([VideoMambaAlignmentDecoder(config) for _ in range(config.num_aligned_layers)])
        self.register_buffer("position_table", self.build_position_table(), persistent=False)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if module is self:
            # Not saved: models are built on the meta device when loaded, so the table is rebuilt here.
            init.copy_(module.position_table, module.build_position_table())

    def build_position_table(self) -> torch.Tensor:
        """The fixed sinusoid (1, 1 + T*h*w, hidden_size) added to the records before the decoders, float32."""
        frames, side, _ = self.config.grid_size
        return sinusoidal_position_table(1 + frames * side * side, self.config.hidden_size)[None]

    def aligned_layers(self) -> list:
        """Indices of the aligned blocks, in the order their records come out (ascending)."""
        depth, interval = self.config.num_hidden_layers, self.config.aligned_layer_interval
        return sorted(depth - 1 - k * interval for k in range(self.config.num_aligned_layers))

    def _records(self, stream: torch.Tensor, output_hidden_states: bool = False) -> tuple:
        """Runs the blocks on the visible stream (B, 1 + N_visible, D); returns the K block records and, if asked,
        the stream entering each block and after the last one (else None)."""
        backbone, wanted = self.videomamba, set(self.aligned_layers())
        depth, records, streams = len(backbone.layers), [], []
        original = self.config.aligned_feature_source == "original"
        for idx, layer in enumerate(backbone.layers):
            if idx - 1 in wanted:
                records.append(backbone.norm_f(stream))
            if output_hidden_states:
                streams.append(stream)
            if original and idx == depth - 1 and idx in wanted:
                # The original's quirk: the record for the last block is the raw stream entering it. The
                # original still runs that block and discards the result; skipping it changes nothing
                # unless its output is asked for (`output_hidden_states`).
                records.append(stream)
                if not output_hidden_states:
                    return records, None
            stream = layer(stream)
        if output_hidden_states:
            streams.append(stream)
        if depth - 1 in wanted and not original:
            records.append(backbone.norm_f(stream))
        return records, (tuple(streams) if output_hidden_states else None)

    def forward(
        self,
        pixel_values: torch.Tensor = None,
        bool_masked_pos: torch.Tensor = None,
        teacher_features: torch.Tensor = None,
        output_hidden_states: bool = None,
        return_dict: bool = None,
    ):
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch, frames, channels, height, width)`).
        bool_masked_pos (`torch.BoolTensor` of shape `(batch, T*h*w)`, *optional*): True = masked patch
            (spatial-first order), the same count in every sample; the cls token is always kept.
            None keeps every token.
        teacher_features (`torch.FloatTensor`, *optional*): Targets of shape `(batch, 1 + T*h*w, teacher_hidden_size)`
            (all tokens; the visible ones are picked with the mask), `(batch, 1 + N_visible, teacher_hidden_size)`,
            or with a leading `K` axis for one target per aligned block. Gives `loss`.
        output_hidden_states (`bool`, *optional*): Also return the residual stream of the visible tokens
            entering each block and after the last one (`hidden_states`).
        """
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if pixel_values is None:
            raise ValueError("VideoMambaForPreTraining needs pixel_values.")
        if self.config.token_order != "spatial_first":
            raise ValueError(f"Masked pretraining scans visible tokens in spatial-first order; token_order is {self.config.token_order!r}.")
        tokens, grid = self.videomamba.embeddings(pixel_values)
        batch, length = tokens.shape[:2]
        if bool_masked_pos is None:
            bool_masked_pos = torch.zeros(batch, length - 1, dtype=torch.bool, device=tokens.device)
        if bool_masked_pos.shape != (batch, length - 1):
            raise ValueError(
                f"bool_masked_pos must have shape (batch, T*h*w) = {(batch, length - 1)}; got {tuple(bool_masked_pos.shape)}."
            )
        bool_masked_pos = bool_masked_pos.to(device=tokens.device, dtype=torch.bool)
        counts = bool_masked_pos.sum(-1)
        if (counts != counts[0]).any():
            raise ValueError(f"Every sample must mask the same number of tokens; got counts {counts.tolist()}.")
        visible = torch.cat([torch.ones_like(bool_masked_pos[:, :1]), ~bool_masked_pos], dim=1)  # cls kept
        num_visible = int(visible[0].sum())
        tokens = tokens[visible].reshape(batch, num_visible, -1)  # boolean indexing keeps token order
        stream = _at_least_fp32(tokens) if self.config.residual_in_fp32 else tokens
        positions = self.position_table.to(stream.dtype).expand(batch, -1, -1)[visible].reshape(batch, num_visible, -1)
        records, hidden_states = self._records(stream, output_hidden_states)
        aligned = []
        for record, decoder in zip(records, self.clip_decoder):
            decoded = decoder((record + positions).to(compute_dtype(tokens.dtype, tokens.device)))
            aligned.append(F.normalize(decoded, dim=-1))
        aligned = torch.stack(aligned)  # (K, B, 1 + N_visible, teacher_hidden_size)

        loss = None
        if teacher_features is not None:
            target = teacher_features.to(aligned.device)
            if target.shape[-2] == length and length != num_visible:
                target = target[..., visible, :].reshape(*target.shape[:-3], batch, num_visible, target.shape[-1])
            if target.shape[-3:] != aligned.shape[-3:] or target.dim() not in (3, 4):
                raise ValueError(
                    f"teacher_features must be ([K,] batch, 1 + T*h*w or 1 + N_visible, {self.config.teacher_hidden_size}); "
                    f"got {tuple(teacher_features.shape)} for aligned features {tuple(aligned.shape)}."
                )
            loss = alignment_loss(aligned, target)
        if not return_dict:
            return tuple(v for v in (loss, aligned, bool_masked_pos, hidden_states) if v is not None)
        return VideoMambaForPreTrainingOutput(
            loss=loss, aligned_features=aligned, bool_masked_pos=bool_masked_pos, hidden_states=hidden_states
        )


__all__ = ["VideoMambaForPreTraining", "VideoMambaForPreTrainingOutput", "sinusoidal_position_table"]
