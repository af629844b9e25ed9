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
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.utils import ModelOutput

from .configuration_videomamba import VideoMambaConfig
from .selective_scan import (
    causal_conv1d,
    causal_conv1d_tokens_first,
    resolve_implementation,
    selective_scan,
    selective_scan_tokens_first,
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


# ----------------------------------------------------------------------------------------------------
# Embeddings
# ----------------------------------------------------------------------------------------------------


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
        pixel_values = pixel_values.to(self.projection.weight.dtype)
        if self.is_video:
            if pixel_values.shape[1] % self.tubelet_size:
                raise ValueError(
                    f"The number of frames ({pixel_values.shape[1]}) is not divisible by tubelet_size ({self.tubelet_size})."
                )
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


# ----------------------------------------------------------------------------------------------------
# Blocks
# ----------------------------------------------------------------------------------------------------


def _at_least_fp32(tensor: torch.Tensor) -> torch.Tensor:
    """Upcast half precision to float32; float64 stays float64."""
    return tensor if tensor.dtype == torch.float64 else tensor.float()


class VideoMambaRMSNorm(nn.Module):
    """RMSNorm computed in (at least) float32: x * rsqrt(mean(x^2) + eps) * weight."""

    def __init__(self, hidden_size: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., D) in float32 or float64 (callers cast to their compute dtype)."""
        hidden_states = _at_least_fp32(hidden_states)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        return hidden_states * torch.rsqrt(variance + self.eps) * self.weight.to(hidden_states.dtype)


class VideoMambaLayerNorm(nn.LayerNorm):
    """LayerNorm computed in (at least) float32 (the `rms_norm=False` variant)."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., D) in float32 or float64 (callers cast to their compute dtype)."""
        hidden_states = _at_least_fp32(hidden_states)
        bias = None if self.bias is None else self.bias.to(hidden_states.dtype)
        return F.layer_norm(hidden_states, self.normalized_shape, self.weight.to(hidden_states.dtype), bias, self.eps)


def make_norm(config: VideoMambaConfig) -> nn.Module:
    """The block and final norm the config asks for: RMSNorm (`rms_norm=True`, the paper's) or LayerNorm."""
    if config.rms_norm:
        return VideoMambaRMSNorm(config.hidden_size, eps=config.layer_norm_epsilon)
    return VideoMambaLayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)


class VideoMambaDropPath(nn.Module):
    """Stochastic depth: zeroes whole samples of a residual branch during training, rescaling the rest."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(B, ...) -> (B, ...); identity in eval mode."""
        if self.drop_prob == 0.0 or not self.training:
            return hidden_states
        keep = 1.0 - self.drop_prob
        mask = hidden_states.new_empty((hidden_states.shape[0],) + (1,) * (hidden_states.dim() - 1)).bernoulli_(keep)
        return hidden_states * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.drop_prob}"


class VideoMambaMixer(nn.Module):
    """Bidirectional Mamba ("bimamba v2"): a selective scan forward and one over the flipped sequence.

    Both branches share `in_proj` and `out_proj` and have their own conv, projections, A and D (the
    backward ones suffixed `_b`). out = out_proj(f(x, z) + flip(f_b(flip(x), flip(z)))).
    """

    def __init__(self, config: VideoMambaConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        hidden, inner = config.hidden_size, config.intermediate_size
        rank, state, kernel = config.time_step_rank, config.state_size, config.conv_kernel
        self.intermediate_size, self.time_step_rank, self.state_size = inner, rank, state

        self.in_proj = nn.Linear(hidden, 2 * inner, bias=False)
        # Parameter names follow the original checkpoints, so converted weights load without renaming.
        self.conv1d = nn.Conv1d(inner, inner, kernel, groups=inner, padding=kernel - 1)
        # A and D are created in at least float32 whatever the default dtype: transformers applies
        # `_keep_in_fp32_modules_strict` only to weights read from a checkpoint, so a model built in half
        # precision (`config.dtype`, `from_config(dtype=...)`) would otherwise hold them in half.
        ssm_dtype = torch.promote_types(torch.get_default_dtype(), torch.float32)
        self.x_proj = nn.Linear(inner, rank + 2 * state, bias=False)
        self.dt_proj = nn.Linear(rank, inner, bias=True)
        self.A_log = nn.Parameter(torch.empty(inner, state, dtype=ssm_dtype))
        self.D = nn.Parameter(torch.ones(inner, dtype=ssm_dtype))
        self.conv1d_b = nn.Conv1d(inner, inner, kernel, groups=inner, padding=kernel - 1)
        self.x_proj_b = nn.Linear(inner, rank + 2 * state, bias=False)
        self.dt_proj_b = nn.Linear(rank, inner, bias=True)
        self.A_b_log = nn.Parameter(torch.empty(inner, state, dtype=ssm_dtype))
        self.D_b = nn.Parameter(torch.ones(inner, dtype=ssm_dtype))
        self.out_proj = nn.Linear(inner, hidden, bias=False)

    def _stacked_ssm_parameters(self):
        """A (2*inner, state), D (2*inner,) and the dt bias (2*inner,) of both directions, forward first, in fp32."""
        A = torch.cat([-torch.exp(self.A_log.float()), -torch.exp(self.A_b_log.float())])
        D = torch.cat([self.D, self.D_b]).float()
        delta_bias = torch.cat([self.dt_proj.bias, self.dt_proj_b.bias]).float()
        return A, D, delta_bias

    def _branch_inputs(self, x, conv, x_proj, dt_proj, use_kernel):
        """x (B, inner, L) -> u, delta (B, inner, L) and B, C (B, state, L) of one scan direction."""
        u = causal_conv1d(x, conv.weight.squeeze(1), conv.bias, use_kernel=use_kernel)
        dt, B, C = x_proj(u.transpose(1, 2)).split([self.time_step_rank, self.state_size, self.state_size], dim=-1)
        delta = (dt @ dt_proj.weight.t()).transpose(1, 2)  # dt bias is added inside the scan, in fp32
        return u, delta, B.transpose(1, 2), C.transpose(1, 2)

    def _forward_tokens_first(self, hidden_states: torch.Tensor, implementation: str = "fast") -> torch.Tensor:
        """The "fast", "native" and "triton" path: the same computation in (B, L, channels) layout, both directions at once.

        Channels [:inner] are the forward direction, [inner:] the backward one on the flipped sequence.
        Both directions share the gate silu(z), so it is applied once, after flipping back and summing.
        """
        inner, rank, state = self.intermediate_size, self.time_step_rank, self.state_size
        x, z = self.in_proj(hidden_states).chunk(2, dim=-1)  # (B, L, inner) each
        x = torch.cat([x, x.flip(1)], dim=-1)
        weight = torch.cat([self.conv1d.weight, self.conv1d_b.weight]).squeeze(1)
        bias = torch.cat([self.conv1d.bias, self.conv1d_b.bias])
        u = causal_conv1d_tokens_first(x, weight, bias)
        projected = [proj(part) for proj, part in zip((self.x_proj, self.x_proj_b), u.split(inner, dim=-1))]
        dt, B, C = zip(*(p.split([rank, state, state], dim=-1) for p in projected))
        # One matmul with a block-diagonal weight gives both directions' delta already side by side;
        # the dt bias is added inside the scan, in fp32.
        delta = torch.cat(dt, dim=-1) @ torch.block_diag(self.dt_proj.weight.t(), self.dt_proj_b.weight.t())
        A, D, delta_bias = self._stacked_ssm_parameters()
        y, _ = selective_scan_tokens_first(
            u,
            delta,
            A,
            torch.stack(B, dim=2),
            torch.stack(C, dim=2),
            D=D,
            delta_bias=delta_bias,
            delta_softplus=True,
            implementation=implementation,
        )
        y_forward, y_backward = y.split(inner, dim=-1)
        gated = (y_forward + y_backward.flip(1)) * F.silu(z.to(y.dtype))
        return self.out_proj(gated.to(hidden_states.dtype))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(B, L, hidden_size) -> (B, L, hidden_size), in the compute dtype."""
        implementation = resolve_implementation(self.config.scan_implementation, hidden_states.device)
        if implementation in ("fast", "native", "triton"):
            return self._forward_tokens_first(hidden_states, implementation)
        use_kernel = implementation == "cuda"
        x, z = self.in_proj(hidden_states).transpose(1, 2).chunk(2, dim=1)  # (B, inner, L) each
        forward = self._branch_inputs(x, self.conv1d, self.x_proj, self.dt_proj, use_kernel)
        backward = self._branch_inputs(x.flip(-1), self.conv1d_b, self.x_proj_b, self.dt_proj_b, use_kernel)
        # Both directions run as one scan: channels stacked, each direction its own B/C group.
        A, D, delta_bias = self._stacked_ssm_parameters()
        y = selective_scan(
            torch.cat([forward[0], backward[0]], dim=1),
            torch.cat([forward[1], backward[1]], dim=1),
            A,
            torch.stack([forward[2], backward[2]], dim=1),
            torch.stack([forward[3], backward[3]], dim=1),
            D=D,
            z=torch.cat([z, z.flip(-1)], dim=1),
            delta_bias=delta_bias,
            delta_softplus=True,
            implementation=implementation,
        )
        y_forward, y_backward = y.chunk(2, dim=1)
        return self.out_proj((y_forward + y_backward.flip(-1)).transpose(1, 2))


class VideoMambaLayer(GradientCheckpointingLayer):
    """Pre-norm residual block: stream + drop_path(mixer(norm(stream))), the stream in fp32 if configured."""

    def __init__(self, config: VideoMambaConfig, layer_idx: int, drop_path_rate: float = 0.0):
        super().__init__()
        self.norm = make_norm(config)
        self.mixer = VideoMambaMixer(config, layer_idx)
        self.drop_path = VideoMambaDropPath(drop_path_rate)

    def forward(self, hidden_states: torch.Tensor, scan_order: torch.Tensor = None) -> torch.Tensor:
        """hidden_states: the residual stream (B, L, D). `scan_order` (L,) permutes the tokens the mixer sees."""
        # The norm's weight gives the compute dtype: it is always a float, unlike a quantized Linear's weight.
        normed = self.norm(hidden_states).to(self.norm.weight.dtype)
        if scan_order is None:
            mixed = self.mixer(normed)
        else:
            mixed = torch.empty_like(normed)
            mixed[:, scan_order] = self.mixer(normed[:, scan_order])
        return hidden_states + self.drop_path(mixed).to(hidden_states.dtype)


def temporal_first_order(frames: int, height: int, width: int, device=None) -> torch.Tensor:
    """Token permutation (1 + T*h*w,) visiting each position through time before moving on; cls stays first."""
    patches = torch.arange(frames * height * width, device=device).reshape(frames, height * width)
    return torch.cat([torch.zeros(1, dtype=torch.long, device=device), 1 + patches.t().reshape(-1)])


# ----------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------


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
        elif isinstance(module, VideoMambaForPreTraining):
            # Not saved: models are built on the meta device when loaded, so the table is rebuilt here.
            init.copy_(module.position_table, module.build_position_table())

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
        last_hidden_state = self.norm_f(stream).to(tokens.dtype)
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


# ----------------------------------------------------------------------------------------------------
# Masked pretraining (UMT-style alignment to a teacher)
# ----------------------------------------------------------------------------------------------------


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
            decoded = decoder((record + positions).to(tokens.dtype))
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


__all__ = [
    "classification_loss",
    "interpolate_position_embeddings",
    "interpolate_temporal_embeddings",
    "VideoMambaModel",
    "VideoMambaForVideoClassification",
    "VideoMambaForImageClassification",
    "VideoMambaPreTrainedModel",
    "VideoMambaModelOutput",
    "VideoMambaForPreTraining",
    "VideoMambaForPreTrainingOutput",
]
