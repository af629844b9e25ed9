"""The selective scan (Mamba's S6 recurrence) and the causal depthwise convolution, in one place.

Contract (the same as mamba-ssm's `selective_scan_fn`):

    u, delta, z : (batch, dim, length)
    A           : (dim, state)                      real, usually -exp(A_log)
    B, C        : (batch, state, length) or (batch, groups, state, length); channel c uses group
                  c // (dim // groups)
    D, delta_bias : (dim,)

    delta <- softplus(delta + delta_bias)              (each step optional)
    s_0 = 0;  s_t = exp(delta_t A) * s_{t-1} + delta_t u_t B_t     s_t: (batch, dim, state)
    y_t = <s_t, C_t> + D u_t;   y <- y * silu(z)

The state is accumulated in float32 (float64 for float64 inputs) whatever the input dtype; `y` comes
back in the dtype of `u`. Implementations:

- "reference": the plain sequential recurrence above, one step at a time. The specification.
- "fast": an exact blocked pure-PyTorch scan with its own backward (CPU and GPU).
- "cuda": mamba-ssm's fused kernel, imported lazily (optional extra `pip install .[cuda]`).
"""

import importlib.util

import torch
import torch.nn.functional as F

IMPLEMENTATIONS = ("auto", "reference", "fast", "cuda")


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _per_channel(BC: torch.Tensor, dim: int) -> torch.Tensor:
    """(batch, state, L) or (batch, groups, state, L) -> (batch, dim, state, L) (a broadcast view)."""
    if BC.dim() == 3:
        return BC.unsqueeze(1).expand(-1, dim, -1, -1)
    batch, groups, state, length = BC.shape
    if dim % groups:
        raise ValueError(f"selective_scan: dim ({dim}) must be divisible by the number of B/C groups ({groups}).")
    return BC.repeat_interleave(dim // groups, dim=1)


def selective_scan_reference(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False
):
    """The selective scan as the plain sequential recurrence (see the module docstring for shapes)."""
    out_dtype = u.dtype
    dtype = _compute_dtype(u.dtype)
    u, delta, A = u.to(dtype), delta.to(dtype), A.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    dim = u.shape[1]
    B = _per_channel(B.to(dtype), dim)
    C = _per_channel(C.to(dtype), dim)

    state = u.new_zeros(u.shape[0], dim, A.shape[1])
    outputs = []
    # unbind (not indexing) keeps autograd's backward linear in the length.
    for u_t, delta_t, B_t, C_t in zip(u.unbind(-1), delta.unbind(-1), B.unbind(-1), C.unbind(-1)):
        state = torch.exp(delta_t[..., None] * A) * state + (delta_t * u_t)[..., None] * B_t
        outputs.append((state * C_t).sum(-1))
    y = torch.stack(outputs, dim=-1)
    if D is not None:
        y = y + u * D.to(dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(dtype))
    y = y.to(out_dtype)
    return (y, state) if return_last_state else y


def selective_scan_fast(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False):
    """Exact blocked scan with its own backward. TODO(fast-scan): until it lands, the reference."""
    return selective_scan_reference(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)


def cuda_kernels_available() -> bool:
    """Whether mamba-ssm's selective-scan kernel can be used here (installed and a CUDA device present)."""
    return torch.cuda.is_available() and importlib.util.find_spec("mamba_ssm") is not None


def _selective_scan_cuda(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except ImportError as error:
        raise ImportError(
            "scan_implementation='cuda' needs mamba-ssm; install it with `pip install .[cuda]` on a CUDA machine."
        ) from error
    if not u.is_cuda:
        raise ValueError("scan_implementation='cuda' needs CUDA tensors; got tensors on " f"{u.device}.")
    return selective_scan_fn(
        u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
        return_last_state=return_last_state,
    )


def resolve_implementation(implementation: str, device: torch.device) -> str:
    """Map "auto" to a concrete implementation for tensors on `device`."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"Unknown selective-scan implementation {implementation!r}; expected one of {IMPLEMENTATIONS}.")
    if implementation == "auto":
        return "cuda" if device.type == "cuda" and cuda_kernels_available() else "fast"
    return implementation


def selective_scan(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False,
    implementation="auto",
):
    """The selective scan, a drop-in for mamba-ssm's `selective_scan_fn` (shapes in the module docstring).

    Returns `y` (batch, dim, length) in the dtype of `u`, and with `return_last_state=True` also the
    final state (batch, dim, state) in float32 (float64 for float64 inputs).
    """
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(
            f"selective_scan expects u and delta of shape (batch, dim, length); got {tuple(u.shape)} and "
            f"{tuple(delta.shape)}."
        )
    if A.dim() != 2 or A.shape[0] != u.shape[1]:
        raise ValueError(f"selective_scan expects A of shape ({u.shape[1]}, state); got {tuple(A.shape)}.")
    implementation = resolve_implementation(implementation, u.device)
    args = (u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if implementation == "cuda":
        return _selective_scan_cuda(*args)
    if implementation == "fast":
        return selective_scan_fast(*args)
    return selective_scan_reference(*args)


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor = None, use_kernel: bool = False):
    """SiLU(causal depthwise conv1d(x)): x (batch, dim, length), weight (dim, kernel), bias (dim,).

    Left zero-padding by kernel - 1, so output t sees inputs t - kernel + 1 .. t. With `use_kernel` the
    causal-conv1d CUDA kernel is used (CUDA tensors, package installed).
    """
    if use_kernel:
        from causal_conv1d import causal_conv1d_fn

        return causal_conv1d_fn(x, weight, bias, activation="silu")
    kernel = weight.shape[-1]
    out = F.conv1d(F.pad(x, (kernel - 1, 0)), weight.unsqueeze(1), bias, groups=x.shape[1])
    return F.silu(out)


__all__ = ["selective_scan", "selective_scan_reference", "causal_conv1d", "cuda_kernels_available"]
