"""VideoMamba's block: pre-norm residual around the bidirectional Mamba mixer, and the token orders it scans in.

The selective scan itself lives in `selective_scan.py` (its CPU and GPU implementations beside it).
"""

import functools
import os

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from .configuration_videomamba import VideoMambaConfig
# (`from .module import`: the form transformers' remote code follows to copy a module along)
from .mixer_fused import conv_silu_both_directions, fusable, gate_both_directions
from .selective_scan import (
    causal_conv1d,
    causal_conv1d_tokens_first,
    TOKENS_FIRST_IMPLEMENTATIONS,
    resolve_implementation,
    selective_scan,
    selective_scan_tokens_first,
)


def _at_least_fp32(tensor: torch.Tensor) -> torch.Tensor:
    """Upcast half precision to float32; float64 stays float64."""
    return tensor if tensor.dtype == torch.float64 else tensor.float()


def compute_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype the matmuls run in for parameters of `dtype` on `device`: autocast's when it is on there
    and would cast them (float32), else `dtype` itself (a model loaded or cast to bf16, fp16 or fp64)."""
    device_type = torch.device(device).type
    # (autocast exists for some device types only: the meta device of a FLOP count has none)
    autocasting = torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)
    if dtype == torch.float32 and autocasting:
        return torch.get_autocast_dtype(device_type)
    return dtype


# Set to 0 to keep CPU autocast's half-precision matmuls even where the CPU only emulates them.
HALF_FALLBACK_ENV_VAR = "VIDEOMAMBA_CPU_HALF_FALLBACK"


@functools.lru_cache(maxsize=None)
def cpu_has_half_matmuls(dtype: torch.dtype) -> bool:
    """Whether oneDNN runs `dtype` matmuls on this CPU's own instructions (bf16: AVX512-BF16 or AMX;
    fp16: AVX512-FP16 or AMX-FP16) rather than a conversion-heavy emulation, 3-6x slower than fp32."""
    probes = {torch.bfloat16: "_is_mkldnn_bf16_supported", torch.float16: "_is_mkldnn_fp16_supported"}
    if dtype not in probes:
        return True
    try:
        return bool(getattr(torch.ops.mkldnn, probes[dtype])())
    except (AttributeError, RuntimeError):  # a torch built without oneDNN: keep autocast as it is
        return True


def autocast_is_emulated(device: torch.device) -> bool:
    """True under CPU autocast to a half dtype this CPU has no matmul instructions for: the blocks and the
    patch embedding then compute in fp32 with autocast off (faster there, and more exact); their outputs
    keep autocast's dtype where callers see them. VIDEOMAMBA_CPU_HALF_FALLBACK=0 keeps half precision."""
    if torch.device(device).type != "cpu" or not torch.is_autocast_enabled("cpu"):
        return False
    if os.environ.get(HALF_FALLBACK_ENV_VAR, "1") == "0":
        return False
    return not cpu_has_half_matmuls(torch.get_autocast_dtype("cpu"))


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
        """The token-major path (TOKENS_FIRST_IMPLEMENTATIONS): (B, L, channels) layout, both directions at once.

        Channels [:inner] are the forward direction, [inner:] the backward one on the flipped sequence.
        Both directions share the gate silu(z), so it is applied once, after flipping back and summing.
        """
        inner, rank, state = self.intermediate_size, self.time_step_rank, self.state_size
        x, z = self.in_proj(hidden_states).chunk(2, dim=-1)  # (B, L, inner) each
        weight = torch.cat([self.conv1d.weight, self.conv1d_b.weight]).squeeze(1)
        bias = torch.cat([self.conv1d.bias, self.conv1d_b.bias])
        # Inference with the native scan does the flips, cat, conv, SiLU and gate in two fused passes
        # (mixer_fused.py); they have no backward, so training keeps these PyTorch expressions.
        if fusable(implementation, x, weight, bias):
            u = conv_silu_both_directions(x, weight, bias)
        else:
            u = causal_conv1d_tokens_first(torch.cat([x, x.flip(1)], dim=-1), weight, bias)
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
        if fusable(implementation, y, z):
            gated = gate_both_directions(y, z)
        else:
            y_forward, y_backward = y.split(inner, dim=-1)
            gated = (y_forward + y_backward.flip(1)) * F.silu(z.to(y.dtype))
        return self.out_proj(gated.to(hidden_states.dtype))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(B, L, hidden_size) -> (B, L, hidden_size), in the compute dtype."""
        implementation = resolve_implementation(
            self.config.scan_implementation,
            hidden_states.device,
            state_size=self.state_size,
            conv_kernel=self.config.conv_kernel,
        )
        if implementation in TOKENS_FIRST_IMPLEMENTATIONS:
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
        normed = self.norm(hidden_states)  # at least fp32
        if autocast_is_emulated(hidden_states.device):
            with torch.autocast("cpu", enabled=False):
                mixed = self._mix(normed, scan_order)
        else:
            # The norm's weight gives the compute dtype: it is always a float, unlike a quantized Linear's weight.
            # Under autocast the norm's output goes to the mixer in autocast's dtype, as the original's fused norm.
            mixed = self._mix(normed.to(compute_dtype(self.norm.weight.dtype, hidden_states.device)), scan_order)
        return hidden_states + self.drop_path(mixed).to(hidden_states.dtype)

    def _mix(self, normed: torch.Tensor, scan_order: torch.Tensor = None) -> torch.Tensor:
        """The mixer over the tokens in `scan_order`, returned in the stream's token order (B, L, D)."""
        if scan_order is None:
            return self.mixer(normed)
        # The mixer's output dtype (autocast's, under autocast) need not be its input's.
        reordered = self.mixer(normed[:, scan_order])
        mixed = torch.empty_like(reordered)
        mixed[:, scan_order] = reordered
        return mixed


def temporal_first_order(frames: int, height: int, width: int, device=None) -> torch.Tensor:
    """Token permutation (1 + T*h*w,) visiting each position through time before moving on; cls stays first."""
    patches = torch.arange(frames * height * width, device=device).reshape(frames, height * width)
    return torch.cat([torch.zeros(1, dtype=torch.long, device=device), 1 + patches.t().reshape(-1)])
