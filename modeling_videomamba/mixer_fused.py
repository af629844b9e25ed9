"""The mixer's element-wise work around the native scan, fused for CPU inference (csrc/mixer_cpu.cpp).

Around the scan, the token-major mixer flips and concatenates x for the backward direction, runs the
4-tap conv + SiLU, and afterwards flips the backward output back, adds and gates it with silu(z): a
dozen passes over (B, L, inner) tensors, about a sixth of a CPU forward. The two ops here do each
half in one pass, reading the strided views of in_proj's output in place. They have no backward, so
the mixer uses them only where no gradient is needed (`fusable`); the PyTorch expressions they replace
stay the definition (tests/test_mixer_fused.py checks the two agree).
"""

import torch

from .native_scan import load_native_scan, op_namespace

# Off: the mixer always takes the PyTorch expressions (benchmarks compare the two by flipping this).
ENABLED = True
_DTYPES = (torch.float32, torch.float64)
_NAMESPACE = op_namespace(__name__)


def fusable(implementation: str, *tensors: torch.Tensor) -> bool:
    """Whether the fused ops may replace the PyTorch expressions on `tensors`: the native scan runs
    (so the library is loaded, on CPU), ENABLED, no autograd through them, and one dtype, fp32 or fp64."""
    if not ENABLED or implementation != "native":
        return False
    if torch.is_grad_enabled() and any(tensor.requires_grad for tensor in tensors):
        return False
    dtype = tensors[0].dtype
    return dtype in _DTYPES and all(tensor.dtype == dtype and tensor.device.type == "cpu" for tensor in tensors)


@torch.library.custom_op(f"{_NAMESPACE}::conv_silu_both_directions", mutates_args=())
def conv_silu_both_directions(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """x (B, L, inner) (any strides), weight (2 inner, K), bias (2 inner,) -> u (B, L, 2 inner), equal to
    causal_conv1d_tokens_first(cat([x, x.flip(1)], -1), weight, bias): channels [:inner] the forward
    direction, [inner:] the backward one in its flipped time axis."""
    return load_native_scan().mixer_conv_silu(x, weight, bias)


@conv_silu_both_directions.register_fake
def _(x, weight, bias):
    return x.new_empty(x.shape[:-1] + (2 * x.shape[-1],))


@torch.library.custom_op(f"{_NAMESPACE}::gate_both_directions", mutates_args=())
def gate_both_directions(y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """y (B, L, 2 inner) (the scan's output, backward direction flipped), z (B, L, inner) -> (B, L, inner),
    equal to (y[..., :inner] + y[..., inner:].flip(1)) * silu(z)."""
    return load_native_scan().mixer_gate(y, z)


@gate_both_directions.register_fake
def _(y, z):
    return z.new_empty(z.shape)
