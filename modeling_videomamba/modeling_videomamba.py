"""PyTorch VideoMamba (arXiv 2403.06977): patches -> tokens -> bidirectional Mamba blocks -> norm -> heads.

Input video `pixel_values` is (batch, frames, channels, height, width), as VideoMAE's. Tokens are the
cls token followed by the patches in spatial-first order: token 1 + t*h*w + i*w + j is patch (t, i, j).
"""

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.loss.loss_utils import fixed_cross_entropy
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput

from .configuration_videomamba import VideoMambaConfig
from .modeling_videomamba_blocks import (
    VideoMambaLayer,
    VideoMambaMixer,
    VideoMambaRMSNorm,
    _at_least_fp32,
    compute_dtype,
    make_norm,
    temporal_first_order,
)
from .modeling_videomamba_embeddings import (
    VideoMambaEmbeddings,
    interpolate_position_embeddings,
    interpolate_temporal_embeddings,
)


@dataclass
class VideoMambaModelOutput(BaseModelOutputWithPooling):
    r"""
    last_hidden_state (`torch.FloatTensor` of shape `(batch, 1 + T*h*w, hidden_size)`):
        Final-norm output of every token, cls first, patches in spatial-first order.
    pooler_output (`torch.FloatTensor` of shape `(batch, hidden_size)`):
        `last_hidden_state[:, 0]`, the normalised cls token; with `config.use_mean_pooling`,
        `last_hidden_state[:, 1:].mean(1)`, the mean of the normalised patch tokens.
    hidden_states (`tuple(torch.FloatTensor)`, *optional*):
        The residual stream entering each block, then the stream after the last block (before the
        final norm): `num_hidden_layers + 1` tensors of shape `(batch, 1 + T*h*w, hidden_size)`.
    """


class VideoMambaPreTrainedModel(PreTrainedModel):
    config_class = VideoMambaConfig
    config: VideoMambaConfig
    base_model_prefix = "videomamba"
    main_input_name = "pixel_values"
    input_modalities = "video"
    supports_gradient_checkpointing = True
    _no_split_modules = ["VideoMambaEmbeddings", "VideoMambaLayer"]
    # The SSM parameters stay in fp32 when loading in fp16 or bf16 (the scan state is fp32 anyway); the mixer
    # also creates them in fp32, for models built in half precision. `.to(dtype)` / `.half()` still cast
    # every parameter (transformers applies the list at build and load time only); the scan upcasts them.
    _keep_in_fp32_modules_strict = ["A_log", "A_b_log", "D", "D_b"]

    @torch.no_grad()
    def _init_weights(self, module):
        """Initialise fresh weights: VideoMamba's recipe, with Mamba's mixer init under `dt_init="mamba"` (the default).

        Only fresh weights see this; loaded checkpoints keep their values, so the choice never changes
        what a converted model computes.
        """
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            # The original leaves convolutions at PyTorch's default initialisation.
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                fan_in = module.weight[0].numel()
                bound = 1 / math.sqrt(fan_in)
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, (VideoMambaRMSNorm, nn.LayerNorm)):
            init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                init.zeros_(module.bias)
        elif isinstance(module, VideoMambaEmbeddings):
            init.zeros_(module.cls_token)
            init.trunc_normal_(module.position_embeddings, std=std)
            if module.is_video:
                init.zeros_(module.temporal_position_embeddings)
        elif isinstance(module, VideoMambaMixer):
            # Runs after the mixer's own Linear children (`apply` visits children first), so it may override them.
            log_a = torch.log(torch.arange(1, module.state_size + 1, dtype=torch.float32)).repeat(module.intermediate_size, 1)
            init.copy_(module.A_log, log_a)
            init.copy_(module.A_b_log, log_a)
            init.ones_(module.D)
            init.ones_(module.D_b)
            # GPT-2-style rescaling of the residual branch's output projection, as the original.
            init.kaiming_uniform_(module.out_proj.weight, a=math.sqrt(5))
            init.copy_(module.out_proj.weight, module.out_proj.weight / math.sqrt(self.config.num_hidden_layers))
            if self.config.dt_init == "mamba":
                self._init_mamba_mixer(module)

    def _init_mamba_mixer(self, mixer: VideoMambaMixer):
        """Mamba's mixer init, which VideoMamba's blanket std-0.02 Linear init overwrites.

        - in_proj and x_proj keep PyTorch's fan-in uniform init (std 1/sqrt(3 fan_in)): at small widths std 0.02
          makes B, C and the gate so small that the scan barely mixes tokens at first.
        - Step size dt ~ logUniform[time_step_min, time_step_max] through an inverse-softplus bias (dt_proj
          weight uniform in +-rank^-0.5): slow channels remember the whole clip, whereas the original's zero
          bias gives dt = softplus(0) = 0.69, a decay of at most 0.5 per token, so the cls token (first in
          the sequence) sees only a few neighbouring patches of the first frame.
        """
        for projection in (mixer.in_proj, mixer.x_proj, mixer.x_proj_b):
            init.kaiming_uniform_(projection.weight, a=math.sqrt(5))
        low, high = math.log(self.config.time_step_min), math.log(self.config.time_step_max)
        bound = mixer.time_step_rank**-0.5
        for projection in (mixer.dt_proj, mixer.dt_proj_b):
            init.uniform_(projection.weight, -bound, bound)
            dt = torch.exp(torch.rand(mixer.intermediate_size) * (high - low) + low).clamp(min=1e-4)
            init.copy_(projection.bias, dt + torch.log(-torch.expm1(-dt)))


class VideoMambaModel(VideoMambaPreTrainedModel):
    """The VideoMamba backbone; `config.modality == "image"` builds the image variant (no temporal embedding)."""

    def __init__(self, config: VideoMambaConfig):
        super().__init__(config)
        self.is_video = config.modality == "video"
        self.embeddings = VideoMambaEmbeddings(config)
        depth = config.num_hidden_layers
        rates = [config.drop_path_rate * idx / max(depth - 1, 1) for idx in range(depth)]
        self.layers = nn.ModuleList(
            [VideoMambaLayer(config, idx, drop_path_rate=rate) for idx, rate in enumerate(rates)]
        )
        self.norm_f = make_norm(config)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.patch_embeddings

    def _scan_orders(self, grid, device):
        """Per block, the token permutation its mixer scans in (None = spatial-first)."""
        order = self.config.token_order
        if order == "spatial_first" or not self.is_video:
            return [None] * len(self.layers)
        temporal = temporal_first_order(*grid, device=device)
        if order == "temporal_first":
            return [temporal] * len(self.layers)
        return [temporal if idx % 2 else None for idx in range(len(self.layers))]

    def forward(
        self,
        pixel_values: torch.Tensor = None,
        interpolate_pos_encoding: bool = False,
        output_hidden_states: bool = None,
        return_dict: bool = None,
        **kwargs,
    ):
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch, frames, channels, height, width)`, or
            `(batch, channels, height, width)` for the image variant):
            Frames normalised as the video processor does.
        interpolate_pos_encoding (`bool`): Interpolate the position (bicubic) and temporal (linear)
            embeddings to the input's size instead of raising on a mismatch.
        """
        if pixel_values is None:
            raise ValueError("VideoMambaModel needs pixel_values.")
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict

        tokens, grid = self.embeddings(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
        stream = _at_least_fp32(tokens) if self.config.residual_in_fp32 else tokens
        all_hidden_states = []
        for layer, scan_order in zip(self.layers, self._scan_orders(grid, tokens.device)):
            if output_hidden_states:
                all_hidden_states.append(stream)
            stream = layer(stream, scan_order)
        if output_hidden_states:
            all_hidden_states.append(stream)
        last_hidden_state = self.norm_f(stream).to(compute_dtype(tokens.dtype, tokens.device))
        pooled = last_hidden_state[:, 1:].mean(1) if self.config.use_mean_pooling else last_hidden_state[:, 0]
        hidden_states = tuple(all_hidden_states) if output_hidden_states else None
        if not return_dict:
            return tuple(v for v in (last_hidden_state, pooled, hidden_states) if v is not None)
        return VideoMambaModelOutput(last_hidden_state=last_hidden_state, pooler_output=pooled, hidden_states=hidden_states)


def classification_loss(
    logits: torch.Tensor, labels: torch.Tensor, problem_type: str = None, num_items_in_batch=None, **kwargs
) -> torch.Tensor:
    """The classifier's loss: transformers' `problem_type` conventions, plus soft targets, never writing to the config.

    logits (batch, num_labels). labels: (batch,) class ids -> cross-entropy (`ignore_index=-100` skipped);
    float (batch, num_labels) probabilities (mixup, label smoothing) -> soft cross-entropy,
    -sum(labels * log_softmax(logits)) averaged over samples; regression (`num_labels == 1` or
    `problem_type="regression"`) -> MSE; multi-hot floats with `problem_type="multi_label_classification"` ->
    binary cross-entropy. `problem_type=None` (the config's default) picks regression for one label and
    single-label otherwise, for this call only: unlike transformers' default, float labels mean soft targets,
    so multi-label needs the config to say so. `num_items_in_batch` (the Trainer's count of label elements
    over the accumulated batch) turns the mean into a sum over that count, as transformers' losses do.
    """
    num_labels = logits.shape[-1]
    labels = labels.to(logits.device)
    inferred = problem_type is None
    if inferred:
        problem_type = "regression" if num_labels == 1 else "single_label_classification"
    if problem_type == "regression":
        if num_labels == 1:
            logits, labels = logits.squeeze(), labels.squeeze()
        return F.mse_loss(logits, labels.to(logits.dtype))
    if problem_type == "multi_label_classification":
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
    if problem_type != "single_label_classification":
        raise ValueError(
            f"problem_type must be 'regression', 'single_label_classification' or 'multi_label_classification'; got {problem_type!r}."
        )
    if not labels.is_floating_point():
        return fixed_cross_entropy(logits.float(), labels.view(-1), num_items_in_batch=num_items_in_batch, **kwargs)
    if labels.shape != logits.shape:
        raise ValueError(
            f"Soft labels must be probabilities of shape (batch, num_labels) = {tuple(logits.shape)}; got {tuple(labels.shape)}. "
            "Pass class ids as an integer tensor of shape (batch,)."
        )
    if inferred and not torch.allclose(labels.sum(-1).float(), torch.ones((), device=labels.device), atol=1e-3):
        raise ValueError(
            "Float labels are read as probabilities (soft cross-entropy), but these rows do not sum to 1. For "
            "multi-hot targets set config.problem_type = 'multi_label_classification'; for soft targets, normalise them."
        )
    per_sample = F.cross_entropy(logits.float(), labels.float(), reduction="none")
    if num_items_in_batch is None:
        return per_sample.mean()
    # The Trainer counted every element of the (batch, num_labels) labels: num_labels per sample.
    return per_sample.sum() * num_labels / num_items_in_batch


class _VideoMambaClassifierMixin:
    """A linear head on the normalised cls token; the loss is `classification_loss` (follows `problem_type`)."""

    def _build_head(self, config: VideoMambaConfig):
        self.num_labels = config.num_labels
        self.videomamba = VideoMambaModel(config)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()

    def forward(
        self,
        pixel_values: torch.Tensor = None,
        labels: torch.Tensor = None,
        interpolate_pos_encoding: bool = False,
        output_hidden_states: bool = None,
        return_dict: bool = None,
        **kwargs,
    ):
        r"""
        labels (`torch.LongTensor` of shape `(batch,)`, or float `(batch, num_labels)`): Class ids, or
            probabilities (soft cross-entropy; mixup, label smoothing), or multi-hot targets when
            `config.problem_type == "multi_label_classification"`; floats `(batch,)` for regression
            (`num_labels == 1`). See `classification_loss`; the config is never changed.
        Returns logits of shape `(batch, num_labels)`.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.videomamba(
            pixel_values,
            interpolate_pos_encoding=interpolate_pos_encoding,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        logits = self.classifier(self.dropout(outputs.pooler_output))
        loss = None if labels is None else classification_loss(logits, labels, self.config.problem_type, **kwargs)
        if not return_dict:
            output = (logits,) + ((outputs.hidden_states,) if outputs.hidden_states is not None else ())
            return ((loss,) + output) if loss is not None else output
        return ImageClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


class VideoMambaForVideoClassification(_VideoMambaClassifierMixin, VideoMambaPreTrainedModel):
    """VideoMamba with a linear head on the cls token. Input (B, T, C, H, W); logits (B, num_labels)."""

    def __init__(self, config: VideoMambaConfig):
        if config.modality != "video":
            raise ValueError(
                f"VideoMambaForVideoClassification needs a config with modality='video', got {config.modality!r}; "
                "use VideoMambaForImageClassification for image models."
            )
        super().__init__(config)
        self._build_head(config)
        self.post_init()


class VideoMambaForImageClassification(_VideoMambaClassifierMixin, VideoMambaPreTrainedModel):
    """The paper's ImageNet model: Conv2d patches, no temporal embedding. Input (B, C, H, W); logits (B, num_labels)."""

    input_modalities = "image"

    def __init__(self, config: VideoMambaConfig):
        if config.modality != "image":
            # A copy: setting it on the caller's config would silently turn later video models built from it into
            # image models.
            config = copy.deepcopy(config)
            config.modality = "image"
        super().__init__(config)
        self._build_head(config)
        self.post_init()


__all__ = [
    "classification_loss",
    "interpolate_position_embeddings",
    "interpolate_temporal_embeddings",
    "VideoMambaModel",
    "VideoMambaForVideoClassification",
    "VideoMambaForImageClassification",
    "VideoMambaPreTrainedModel",
    "VideoMambaModelOutput",
]
