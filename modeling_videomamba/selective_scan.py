"""The selective scan (Mamba's S6 recurrence), in one place: its contract, reference and implementations.

Contract (the same as mamba-ssm's `selective_scan_fn`):

    u, delta, z : (batch, dim, length)
    A           : (dim, state)                      real, usually -exp(A_log); complex A (mamba-ssm's
                                                    complex mode) is refused with a ValueError
    B, C        : (batch, state, length) or (batch, groups, state, length), channel c using group
                  c // (dim // groups); or input-independent (dim, state). Either may be constant while
                  the other varies; two variable ones have the same shape
    D, delta_bias : (dim,)

    delta <- softplus(delta + delta_bias)              (each step optional)
    s_0 = 0;  s_t = exp(delta_t A) * s_{t-1} + delta_t u_t B_t     s_t: (batch, dim, state)
    y_t = <s_t, C_t> + D u_t;   y <- y * silu(z)

The state is accumulated in float32 (float64 for float64 inputs) whatever the input dtype; `y` comes
back in the dtype of `u`. Implementations:

- "reference": the plain sequential recurrence above, one step at a time. The specification.
- "fast": an exact blocked pure-PyTorch scan with its own memory-light backward (CPU and GPU): a
  sequential fused multiply-add per token on a (state, dim) state, with the discretisation and the
  C-contraction vectorised per block of tokens. `selective_scan_tokens_first` is the same scan in
  the (batch, length, dim) layout the mixer's projections produce.
- "native": the "fast" layout computed by a compiled C++ CPU kernel (the recurrence with the step-size
  bias, softplus and D fused in, threads over batch x channels, its own adjoint backward), built on
  first use; see `native_scan`. When it cannot be built, one warning is issued and "fast" is used instead.
- "cuda": mamba-ssm's fused kernel (and causal-conv1d's in the mixer), imported lazily (optional extra
  `pip install .[cuda]`).
- "triton": the "fast" layout computed by Triton kernels (CUDA tensors; no compiled extension to
  build), imported lazily (optional extra `pip install .[triton]`); see `triton_scan`. Where it cannot
  run (not installed, or a tiny scan fails to compile or launch on the device: probed once per
  device), one warning says why and "fast" is used instead.
- "export": the "fast" layout as ordinary tensor ops around a `scan` loop over tokens, which
  torch.export captures and ONNX runs as its `Scan` operator (`modeling_videomamba.export` sets it);
  see `export_scan`.

"fast" and "native" are torch.library custom ops (forward and backward), so torch.compile keeps each
scan as one graph node (no graph break, no unrolled token loop) and fuses the element-wise ops around it.

"auto" and the fallbacks are decided in `scan_dispatch` (which implementation runs where, and why not).
The causal depthwise convolution before the scan is in `causal_convolution`.
"""

import math

import torch
import torch.nn.functional as F

from .causal_convolution import causal_conv1d, causal_conv1d_tokens_first
from .configuration_videomamba import cuda_kernel_limits_problem
from .flops import register_scan_flops
from .native_scan import native_scan, native_scan_available, op_namespace
from .scan_dispatch import (
    cuda_kernels_available,
    cuda_kernels_problem,
    resolve_implementation,
    triton_available,
    triton_problem,
)

_NAMESPACE = op_namespace(__name__)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _real_A(A: torch.Tensor, where: str = "selective_scan") -> None:
    """Raise a ValueError unless A is real: the scans implement real state spaces only."""
    if A.is_complex():
        raise ValueError(
            f"{where} expects a real A (float32 or float64, e.g. -exp(A_log)); got A of dtype {A.dtype}. "
            "mamba-ssm's complex mode (complex A, B and C of length 2*L) is not supported: A must be real."
        )


def variable_B_C(B: torch.Tensor, C: torch.Tensor, batch: int, length: int):
    """B and C in the variable layout every implementation takes.

    Input-independent B or C of shape (dim, state) become (batch, dim, state, L) with one group per
    channel (an expanded view: autograd sums the gradient back over batch and time); the other one,
    if variable, is then spread to the same dim groups. Nothing changes when both are variable.
    """
    if B.dim() != 2 and C.dim() != 2:
        return B, C
    dim = B.shape[0] if B.dim() == 2 else C.shape[0]

    def per_channel(BC):
        if BC.dim() == 2:
            return BC[None, :, :, None].expand(batch, -1, -1, length)
        return _per_channel(BC, dim)

    return per_channel(B), per_channel(C)


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
    _real_A(A, "selective_scan_reference")
    B, C = variable_B_C(B, C, u.shape[0], u.shape[-1])
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


# The implementations with the token-major layout (`selective_scan_tokens_first`).
TOKENS_FIRST_IMPLEMENTATIONS = ("fast", "native", "triton", "export")

# Tokens per block of the fast scan: long enough to amortise the per-block Python overhead, short
# enough that the block buffers (block * batch * dim * state floats) stay near the cache (32 measured
# best among 4-128 on a 2-core CPU at dim 768, state 16).
BLOCK_SIZE = 32


def _block_starts(length: int, block_size: int):
    return [(start, min(start + block_size, length)) for start in range(0, length, block_size)]


def _sequential_fma(outputs, factors, previous):
    """outputs[i] += factors[i] * previous[i], in order, where previous[i] is usually outputs[i - 1].

    `map` drives the loop from C: at a few microseconds per token, Python's own loop overhead would
    cost as much as the multiply-adds. Each call sees the result of the one before, as `map` is lazy.
    """
    for _ in map(torch.Tensor.addcmul_, outputs, factors, previous):
        pass


# The blocked scan's core recurrence, token-major: s_t = exp(delta_t A) * s_{t-1} + delta_t u_t B_t,
# y_t = <s_t, C_t>. Layout (dg contiguous so each token's update is one fused multiply-add over an
# (N, dg) state):
#     u, delta : (batch, L, groups, dg)     A : (groups, N, dg)     B, C : (batch, L, groups, N)
# The forward keeps only the state entering each block of `block_size` tokens (the checkpoints); the
# backward recomputes a block's states from it, so memory stays O(L * dim + (L / block_size) * dim * N)
# rather than O(L * dim * N). Both are torch.library custom ops, so torch.compile keeps each as one
# node instead of unrolling the token loop.


def _fill_block(u, delta, A_log2, B, start, stop, decay, states):
    """decay[:, t] = exp(delta_t A) and states[:, t] = delta_t u_t B_t for the block's tokens.

    A_log2 = A * log2(e): exp2 is markedly cheaper than exp on CPU and the scan is exp-bound.
    """
    size = stop - start
    torch.mul(delta[:, start:stop].unsqueeze(3), A_log2, out=decay[:, :size]).exp2_()
    delta_u = delta[:, start:stop] * u[:, start:stop]
    torch.mul(delta_u.unsqueeze(3), B[:, start:stop].unsqueeze(-1), out=states[:, :size])
    return delta_u


@torch.library.custom_op(f"{_NAMESPACE}::blocked_scan_forward", mutates_args=())
def blocked_scan_forward(
    u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, block_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """y (batch, L, groups, dg), the last state (batch, groups, N, dg) and the checkpoints (blocks, batch, groups, N, dg)."""
    batch, length, groups, dg = u.shape
    block = min(block_size, length)
    shape = (batch, block, groups, A.shape[1], dg)
    decay, states = u.new_empty(shape), u.new_empty(shape)
    decay_views, state_views = decay.unbind(1), states.unbind(1)
    A_log2 = A * math.log2(math.e)
    blocks = _block_starts(length, block_size)
    checkpoints = u.new_zeros((len(blocks), batch, groups, A.shape[1], dg))
    y = u.new_empty(batch, length, groups, dg)
    for index, (start, stop) in enumerate(blocks):
        size = stop - start
        _fill_block(u, delta, A_log2, B, start, stop, decay, states)
        state_views[0].addcmul_(decay_views[0], checkpoints[index])
        _sequential_fma(state_views[1:size], decay_views[1:size], state_views[: size - 1])
        previous = state_views[size - 1]
        if index + 1 < len(blocks):
            checkpoints[index + 1].copy_(previous)
        # y_t = C_t (1 x N) @ s_t (N x dg), batched over (batch, token, group).
        torch.matmul(C[:, start:stop].unsqueeze(-2), states[:, :size], out=y[:, start:stop].unsqueeze(-2))
    return y, previous.clone(), checkpoints


@blocked_scan_forward.register_fake
def _(u, delta, A, B, C, block_size):
    batch, length, groups, dg = u.shape
    state_shape = (batch, groups, A.shape[1], dg)
    blocks = (length + block_size - 1) // block_size
    return u.new_empty(u.shape), u.new_empty(state_shape), u.new_empty((blocks,) + state_shape)


@torch.library.custom_op(f"{_NAMESPACE}::blocked_scan_backward", mutates_args=())
def blocked_scan_backward(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    checkpoints: torch.Tensor,
    grad_y: torch.Tensor,
    grad_last_state: torch.Tensor,
    block_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """grad_u, grad_delta, grad_A, grad_B, grad_C of `blocked_scan_forward` (the reverse-time adjoint)."""
    batch, length, groups, dg = u.shape
    block = min(block_size, length)
    shape = (batch, block, groups, A.shape[1], dg)
    grad_y = grad_y.contiguous()
    # states_full[:, 0] holds the state entering the block, so states_full[:, :-1] are s_{t-1}.
    states_full = u.new_empty((batch, block + 1) + shape[2:])
    decay, adjoint, work = u.new_empty(shape), u.new_empty(shape), u.new_empty(shape)
    decay_views, adjoint_views, state_views = decay.unbind(1), adjoint.unbind(1), states_full.unbind(1)
    grad_u, grad_delta = torch.empty_like(u), torch.empty_like(delta)
    grad_B, grad_C = torch.empty_like(B), torch.empty_like(C)
    grad_A = torch.zeros_like(A)
    A_log2 = A * math.log2(math.e)
    # carry = exp(delta_{t+1} A) * lambda_{t+1}: the adjoint flowing into a block's last token.
    carry = grad_last_state
    blocks = _block_starts(length, block_size)
    for index in reversed(range(len(blocks))):
        start, stop = blocks[index]
        size = stop - start
        states, previous_states = states_full[:, 1 : size + 1], states_full[:, :size]
        states_full[:, 0].copy_(checkpoints[index])
        delta_u = _fill_block(u, delta, A_log2, B, start, stop, decay, states_full[:, 1:])
        _sequential_fma(state_views[1 : size + 1], decay_views[:size], state_views[:size])
        # Adjoint: lambda_t = C_t (x) dy_t + exp(delta_{t+1} A) * lambda_{t+1}, backwards in time.
        lambdas = adjoint[:, :size]
        torch.mul(C[:, start:stop].unsqueeze(-1), grad_y[:, start:stop].unsqueeze(3), out=lambdas)
        adjoint_views[size - 1].add_(carry)
        if size > 1:  # (a one-token block has no step inside; slicing [-1::-1] would mean all)
            reverse = slice(size - 1, 0, -1)
            _sequential_fma(adjoint_views[size - 2 :: -1], decay_views[reverse], adjoint_views[reverse])
        carry = decay_views[0] * adjoint_views[0]
        # w = dL/d(delta_t A), elementwise: lambda_t * exp(delta_t A) * s_{t-1}. The decay buffer is
        # free from here on and takes the products (reductions over dg run faster as mul + sum
        # than as matrix-vector products).
        w, product = work[:, :size], decay[:, :size]
        torch.mul(lambdas, product, out=w).mul_(previous_states)
        torch.sum(torch.mul(w, A, out=product), 3, out=grad_delta[:, start:stop])
        grad_A += w.mul_(delta[:, start:stop].unsqueeze(3)).sum((0, 1))
        lambda_B = torch.matmul(B[:, start:stop].unsqueeze(-2), lambdas).squeeze(-2)  # (b, T, g, dg)
        torch.mul(lambda_B, delta[:, start:stop], out=grad_u[:, start:stop])
        grad_delta[:, start:stop].addcmul_(lambda_B, u[:, start:stop])
        torch.sum(torch.mul(lambdas, delta_u.unsqueeze(3), out=product), -1, out=grad_B[:, start:stop])
        torch.sum(torch.mul(states, grad_y[:, start:stop].unsqueeze(3), out=product), -1, out=grad_C[:, start:stop])
    return grad_u, grad_delta, grad_A, grad_B, grad_C


@blocked_scan_backward.register_fake
def _(u, delta, A, B, C, checkpoints, grad_y, grad_last_state, block_size):
    return tuple(tensor.new_empty(tensor.shape) for tensor in (u, delta, A, B, C))


def _blocked_setup_context(ctx, inputs, output):
    *tensors, ctx.block_size = inputs
    ctx.save_for_backward(*tensors, output[2])


def _blocked_backward(ctx, grad_y, grad_last_state, _grad_checkpoints):
    u, delta, A, B, C, checkpoints = ctx.saved_tensors
    if grad_y is None:
        grad_y = torch.zeros_like(u)
    if grad_last_state is None:
        grad_last_state = u.new_zeros(u.shape[0], u.shape[2], A.shape[1], u.shape[3])
    grads = blocked_scan_backward(u, delta, A, B, C, checkpoints, grad_y, grad_last_state, ctx.block_size)
    return (*grads, None)


blocked_scan_forward.register_autograd(_blocked_backward, setup_context=_blocked_setup_context)
# FlopCounterMode counts the ops by these formulas (see flops.py).
register_scan_flops(blocked_scan_forward, blocked_scan_backward)


def selective_scan_tokens_first(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, implementation="fast"
):
    """The fast scan in token-major layout, as the mixer's projections produce it (no transposes).

    u, delta, z : (batch, L, dim)      A : (dim, N)      B, C : (batch, L, groups, N)
    D, delta_bias : (dim,). Returns (y (batch, L, dim) in u's dtype, last state (batch, dim, N)).
    `implementation` is "fast" (pure PyTorch), "native" (the compiled CPU kernel; "fast" with one
    warning when it cannot be built), "triton" (the Triton kernels, CUDA tensors; see `triton_scan`) or
    "export" (ordinary ops for torch.export / ONNX; see `export_scan`).
    """
    if implementation not in TOKENS_FIRST_IMPLEMENTATIONS:
        raise ValueError(f"selective_scan_tokens_first supports {TOKENS_FIRST_IMPLEMENTATIONS}; got {implementation!r}.")
    _real_A(A, "selective_scan_tokens_first")
    if implementation == "triton":
        from .triton_scan import selective_scan_triton

        return selective_scan_triton(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    if implementation == "native" and u.device.type != "cpu":
        raise ValueError(f"scan_implementation='native' is a CPU kernel; got tensors on {u.device}.")
    out_dtype = u.dtype
    dtype = _compute_dtype(u.dtype)
    batch, length, dim = u.shape
    groups, state_size = B.shape[2], B.shape[3]
    if dim % groups:
        raise ValueError(f"selective_scan: dim ({dim}) must be divisible by the number of B/C groups ({groups}).")
    dg = dim // groups
    u, delta = u.to(dtype), delta.to(dtype)
    # The native kernel applies delta_bias, softplus and D itself (as separate ops they cost more
    # than its scan); the fast scan leaves them to PyTorch.
    native = implementation == "native" and native_scan_available()
    if not native:
        if delta_bias is not None:
            delta = delta + delta_bias.to(dtype)
        if delta_softplus:
            delta = F.softplus(delta)
    core_args = (
        u.reshape(batch, length, groups, dg).contiguous(),
        delta.reshape(batch, length, groups, dg).contiguous(),
        A.to(dtype).reshape(groups, dg, state_size).transpose(1, 2).contiguous(),
        B.to(dtype).contiguous(),
        C.to(dtype).contiguous(),
    )
    if native:
        D, delta_bias = (None if v is None else v.to(dtype).contiguous() for v in (D, delta_bias))
        y, last_state = native_scan(*core_args, D, delta_bias, delta_softplus)
        y = y.reshape(batch, length, dim)
    else:
        if implementation == "export":
            from .export_scan import export_scan_forward

            y, last_state = export_scan_forward(*core_args)
        else:
            y, last_state, _ = blocked_scan_forward(*core_args, BLOCK_SIZE)
        y = y.reshape(batch, length, dim)
        if D is not None:
            y = torch.addcmul(y, u, D.to(dtype))
    if z is not None:
        y = y * F.silu(z.to(dtype))
    return y.to(out_dtype), last_state.transpose(2, 3).reshape(batch, dim, state_size)


def selective_scan_fast(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False,
    implementation="fast",
):
    """The selective scan as an exact blocked sequential scan with its own memory-light backward.

    Same contract and results as `selective_scan_reference` (shapes in the module docstring): a
    layout change around `selective_scan_tokens_first`, whose `implementation` ("fast", "native" or
    "triton") it passes on.
    """
    B, C = variable_B_C(B, C, u.shape[0], u.shape[-1])
    if B.dim() == 3:
        B = B.unsqueeze(1)
    if C.dim() == 3:
        C = C.unsqueeze(1)
    y, last_state = selective_scan_tokens_first(
        u.transpose(1, 2),
        delta.transpose(1, 2),
        A,
        B.permute(0, 3, 1, 2),
        C.permute(0, 3, 1, 2),
        D=D,
        z=None if z is None else z.transpose(1, 2),
        delta_bias=delta_bias,
        delta_softplus=delta_softplus,
        implementation=implementation,
    )
    y = y.transpose(1, 2)
    return (y, last_state) if return_last_state else y


def _selective_scan_cuda(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    return selective_scan_fn(
        u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
        return_last_state=return_last_state,
    )


def _check_optional_shapes(u, A, B, C, D, z, delta_bias):
    """Raise a ValueError naming the expected shape when B, C, D, z or delta_bias do not fit u and A."""
    batch, dim, length = u.shape
    state = A.shape[1]
    for name, BC in (("B", B), ("C", C)):
        if BC.is_complex():
            raise ValueError(
                f"selective_scan expects a real {name}; got {BC.dtype}. mamba-ssm's complex mode (complex A, B "
                "and C) is not supported: A, B and C must be real."
            )
        grouped = BC.dim() == 4
        constant = BC.dim() == 2 and tuple(BC.shape) == (dim, state)
        variable = BC.dim() in (3, 4) and (BC.shape[0], BC.shape[-2], BC.shape[-1]) == (batch, state, length)
        if not (constant or variable) or (grouped and (BC.shape[1] == 0 or dim % BC.shape[1])):
            raise ValueError(
                f"selective_scan expects {name} of shape ({batch}, {state}, {length}) or ({batch}, groups, {state}, "
                f"{length}) with groups dividing dim={dim}, or input-independent ({dim}, {state}); got "
                f"{tuple(BC.shape)}."
            )
    if B.dim() != 2 and C.dim() != 2 and B.shape != C.shape:
        raise ValueError(
            f"selective_scan expects variable B and C of the same shape; got {tuple(B.shape)} and {tuple(C.shape)}."
        )
    for name, vector in (("D", D), ("delta_bias", delta_bias)):
        if vector is not None and tuple(vector.shape) != (dim,):
            raise ValueError(f"selective_scan expects {name} of shape ({dim},); got {tuple(vector.shape)}.")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"selective_scan expects z of the shape of u {tuple(u.shape)}; got {tuple(z.shape)}.")


def selective_scan(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False,
    implementation="auto",
):
    """The selective scan, a drop-in for mamba-ssm's `selective_scan_fn` (shapes in the module docstring).

    Its whole contract on every implementation: variable, grouped or input-independent (dim, state)
    B and C, fp32/fp16/bf16 inputs; A must be real (complex A raises a ValueError). Returns `y` (batch, dim, length) in the dtype of `u`, and with `return_last_state=True` also the
    final state (batch, dim, state) in float32 (float64 for float64 inputs).
    """
    if u.dim() != 3 or delta.shape != u.shape or u.shape[-1] == 0:
        raise ValueError(
            f"selective_scan expects u and delta of shape (batch, dim, length), length >= 1; got {tuple(u.shape)} and "
            f"{tuple(delta.shape)}."
        )
    if A.dim() != 2 or A.shape[0] != u.shape[1]:
        raise ValueError(f"selective_scan expects A of shape ({u.shape[1]}, state); got {tuple(A.shape)}.")
    _real_A(A)
    _check_optional_shapes(u, A, B, C, D, z, delta_bias)
    implementation = resolve_implementation(implementation, u.device, state_size=A.shape[1])
    args = (u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if implementation == "cuda":
        return _selective_scan_cuda(*args)
    if implementation in TOKENS_FIRST_IMPLEMENTATIONS:
        return selective_scan_fast(*args, implementation=implementation)
    return selective_scan_reference(*args)


__all__ = [
    "selective_scan",
    "selective_scan_reference",
    "selective_scan_fast",
    "selective_scan_tokens_first",
    "causal_conv1d",
    "causal_conv1d_tokens_first",
    "cuda_kernel_limits_problem",
    "cuda_kernels_available",
    "cuda_kernels_problem",
    "native_scan_available",
    "triton_available",
    "triton_problem",
]
