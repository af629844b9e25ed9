"""The selective scan as Triton kernels ("triton"): a GPU path that needs no compiled extension.

Same contract as `selective_scan_tokens_first` (token-major layout, see `selective_scan`):

    u, delta, z : (batch, L, dim)      A : (dim, N)      B, C : (batch, L, groups, N)
    D, delta_bias : (dim,)             channel c uses B/C group c // (dim // groups)

One launch covers every channel of every group, so the mixer's two directions (stacked channels,
one B/C group each) run together. Each program owns one batch element and a block of channels of one
group and walks the tokens in order, keeping its (channels, N) state in registers in float32 (float64
for float64 inputs) whatever the input dtype; `y` is stored in u's dtype.

The forward saves only the state entering every CHUNK tokens. The backward walks the chunks in
reverse: it recomputes a chunk's states from its checkpoint into a per-program scratch buffer, then
runs the adjoint recurrence back through the chunk. Reductions over channels (the gradients of B and
C) and over batch and time (A, D, delta_bias) are written per program and summed afterwards, so the
result does not depend on the order programs run in (no atomics).

Triton compiles for CUDA devices. With TRITON_INTERPRET=1 set before triton is first imported (it
decorates its own library then), the same kernels run on CPU tensors through Triton's interpreter
(slow; the tests use it).
"""

import os

import torch
import triton
import triton.language as tl

# Tokens between saved states: the backward's recompute buffer holds CHUNK + 1 states per program.
CHUNK = 64
# Channels per program; state sizes are padded to a power of two.
BLOCK_D = 32


@triton.jit
def _softplus(x):
    """torch's softplus (threshold 20); log(1 + e) corrected so small e keep their relative precision."""
    e = tl.exp(x)
    w = 1.0 + e
    log1p = tl.where(w == 1.0, e, tl.log(w) * e / (w - 1.0))
    return tl.where(x > 20.0, x, log1p)


@triton.jit
def _program_coordinates(dim_per_group, blocks_per_group, state_size, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """This program's batch index, group, channel indices (BLOCK_D,), state indices (BLOCK_N,) and masks."""
    batch = tl.program_id(0).to(tl.int64)
    block = tl.program_id(1)
    group = block // blocks_per_group
    in_group = (block % blocks_per_group) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = in_group < dim_per_group
    channels = group * dim_per_group + in_group
    states = tl.arange(0, BLOCK_N)
    mask_n = states < state_size
    return batch, block, group, channels, states, mask_d, mask_n


@triton.jit
def _block_parameters(
    A_ptr, D_ptr, bias_ptr, batch, group, channels, states, mask_d, mask_n, length, dim, groups, state_size,
    HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr,
):
    """What both kernels load once per program: the (BLOCK_D, BLOCK_N) mask and state index, A, the dt bias
    and D of its channels (zeros when absent), and the offsets of its first token in u/delta and in B/C."""
    mask_dn = mask_d[:, None] & mask_n[None, :]
    state_index = channels[:, None] * state_size + states[None, :]
    A = tl.load(A_ptr + state_index, mask=mask_dn, other=0.0).to(ACC)
    bias = tl.zeros((BLOCK_D,), dtype=ACC)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + channels, mask=mask_d, other=0.0).to(ACC)
    D = tl.zeros((BLOCK_D,), dtype=ACC)
    if HAS_D:
        D = tl.load(D_ptr + channels, mask=mask_d, other=0.0).to(ACC)
    token_base = batch * length * dim + channels
    bc_base = batch * length * groups * state_size + group * state_size + states
    return mask_dn, state_index, A, bias, D, token_base, bc_base


@triton.jit
def _step_inputs(
    u_ptr, delta_ptr, B_ptr, C_ptr, bias, token_offset, bc_offset, mask_d, mask_n,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, ACC: tl.constexpr,
):
    """u_t, raw delta_t (+ bias), delta_t (after softplus) for the channels, and B_t, C_t (BLOCK_N,)."""
    u = tl.load(u_ptr + token_offset, mask=mask_d, other=0.0).to(ACC)
    raw = tl.load(delta_ptr + token_offset, mask=mask_d, other=0.0).to(ACC)
    if HAS_BIAS:
        raw += bias
    delta = raw
    if SOFTPLUS:
        delta = _softplus(raw)
    B = tl.load(B_ptr + bc_offset, mask=mask_n, other=0.0).to(ACC)
    C = tl.load(C_ptr + bc_offset, mask=mask_n, other=0.0).to(ACC)
    return u, raw, delta, B, C


@triton.jit
def _scan_forward_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, y_ptr, checkpoint_ptr, last_ptr,
    length, dim, groups, dim_per_group, blocks_per_group, state_size, num_chunks,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, ACC: tl.constexpr,
):
    batch, block, group, channels, states, mask_d, mask_n = _program_coordinates(
        dim_per_group, blocks_per_group, state_size, BLOCK_D, BLOCK_N
    )
    mask_dn, state_index, A, bias, D, token_base, bc_base = _block_parameters(
        A_ptr, D_ptr, bias_ptr, batch, group, channels, states, mask_d, mask_n, length, dim, groups, state_size,
        HAS_D, HAS_BIAS, BLOCK_D, ACC,
    )
    state = tl.zeros((BLOCK_D, BLOCK_N), dtype=ACC)
    for chunk in range(num_chunks):
        tl.store(checkpoint_ptr + (batch * num_chunks + chunk) * dim * state_size + state_index, state, mask=mask_dn)
        start = chunk * CHUNK
        stop = tl.minimum(start + CHUNK, length)
        for t in range(start, stop):
            token_offset = token_base + t * dim
            u, raw, delta, B, C = _step_inputs(
                u_ptr, delta_ptr, B_ptr, C_ptr, bias, token_offset, bc_base + t * groups * state_size,
                mask_d, mask_n, HAS_BIAS, SOFTPLUS, ACC,
            )
            state = tl.exp(delta[:, None] * A) * state + (delta * u)[:, None] * B[None, :]
            y = tl.sum(state * C[None, :], axis=1) + D * u
            if HAS_Z:
                z = tl.load(z_ptr + token_offset, mask=mask_d, other=0.0).to(ACC)
                y = y * z / (1.0 + tl.exp(-z))
            tl.store(y_ptr + token_offset, y, mask=mask_d)
    tl.store(last_ptr + batch * dim * state_size + state_index, state, mask=mask_dn)


@triton.jit
def _scan_backward_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, checkpoint_ptr, grad_y_ptr, grad_last_ptr,
    scratch_ptr, grad_u_ptr, grad_delta_ptr, grad_z_ptr, grad_B_ptr, grad_C_ptr, grad_A_ptr, grad_D_ptr,
    grad_bias_ptr,
    length, dim, groups, dim_per_group, blocks_per_group, state_size, num_chunks,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_GRAD_LAST: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, ACC: tl.constexpr,
):
    batch, block, group, channels, states, mask_d, mask_n = _program_coordinates(
        dim_per_group, blocks_per_group, state_size, BLOCK_D, BLOCK_N
    )
    mask_dn, state_index, A, bias, D, token_base, bc_base = _block_parameters(
        A_ptr, D_ptr, bias_ptr, batch, group, channels, states, mask_d, mask_n, length, dim, groups, state_size,
        HAS_D, HAS_BIAS, BLOCK_D, ACC,
    )
    # Per-channel-block partial sums of grad B / grad C: (batch, L, groups, blocks_per_group, N).
    partial_base = (batch * length * groups + group) * blocks_per_group * state_size
    partial_base += (block % blocks_per_group) * state_size + states
    # This program's scratch: CHUNK + 1 states, [0] the one entering the chunk (padding included,
    # so no masks: each program reads back exactly what it wrote).
    tile = tl.arange(0, BLOCK_D)[:, None] * BLOCK_N + states[None, :]
    scratch = scratch_ptr + (batch * tl.num_programs(1) + block) * (CHUNK + 1) * BLOCK_D * BLOCK_N + tile

    # carry = exp(delta_{t+1} A) * lambda_{t+1}, the adjoint flowing into token t from the right.
    carry = tl.zeros((BLOCK_D, BLOCK_N), dtype=ACC)
    if HAS_GRAD_LAST:
        carry = tl.load(grad_last_ptr + batch * dim * state_size + state_index, mask=mask_dn, other=0.0).to(ACC)
    grad_A = tl.zeros((BLOCK_D, BLOCK_N), dtype=ACC)
    grad_D = tl.zeros((BLOCK_D,), dtype=ACC)
    grad_bias = tl.zeros((BLOCK_D,), dtype=ACC)
    for reverse_chunk in range(num_chunks):
        chunk = num_chunks - 1 - reverse_chunk
        start = chunk * CHUNK
        stop = tl.minimum(start + CHUNK, length)
        state = tl.load(
            checkpoint_ptr + (batch * num_chunks + chunk) * dim * state_size + state_index, mask=mask_dn, other=0.0
        ).to(ACC)
        tl.store(scratch, state)
        for t in range(start, stop):
            u, raw, delta, B, C = _step_inputs(
                u_ptr, delta_ptr, B_ptr, C_ptr, bias, token_base + t * dim, bc_base + t * groups * state_size,
                mask_d, mask_n, HAS_BIAS, SOFTPLUS, ACC,
            )
            state = tl.exp(delta[:, None] * A) * state + (delta * u)[:, None] * B[None, :]
            tl.store(scratch + (t - start + 1) * BLOCK_D * BLOCK_N, state)
        # The stores above and the loads below may map an element to different threads on a GPU.
        tl.debug_barrier()
        for step in range(stop - start):
            t = stop - 1 - step
            token_offset = token_base + t * dim
            bc_offset = bc_base + t * groups * state_size
            u, raw, delta, B, C = _step_inputs(
                u_ptr, delta_ptr, B_ptr, C_ptr, bias, token_offset, bc_offset, mask_d, mask_n, HAS_BIAS, SOFTPLUS, ACC
            )
            state = tl.load(scratch + (t - start + 1) * BLOCK_D * BLOCK_N)
            previous = tl.load(scratch + (t - start) * BLOCK_D * BLOCK_N)
            decay = tl.exp(delta[:, None] * A)
            grad_y = tl.load(grad_y_ptr + token_offset, mask=mask_d, other=0.0).to(ACC)
            if HAS_Z:
                z = tl.load(z_ptr + token_offset, mask=mask_d, other=0.0).to(ACC)
                sigmoid_z = 1.0 / (1.0 + tl.exp(-z))
                y = tl.sum(state * C[None, :], axis=1) + D * u
                grad_z = grad_y * y * sigmoid_z * (1.0 + z * (1.0 - sigmoid_z))
                tl.store(grad_z_ptr + token_offset, grad_z, mask=mask_d)
                grad_y = grad_y * z * sigmoid_z
            tl.store(grad_C_ptr + partial_base + t * groups * blocks_per_group * state_size,
                     tl.sum(grad_y[:, None] * state, axis=0), mask=mask_n)
            adjoint = grad_y[:, None] * C[None, :] + carry  # dL/ds_t
            adjoint_B = tl.sum(adjoint * B[None, :], axis=1)
            tl.store(grad_B_ptr + partial_base + t * groups * blocks_per_group * state_size,
                     tl.sum(adjoint * (delta * u)[:, None], axis=0), mask=mask_n)
            # d s_t / d delta_t = A exp(delta_t A) s_{t-1} + u_t B_t
            decay_term = adjoint * decay * previous
            grad_A += decay_term * delta[:, None]
            grad_delta = tl.sum(decay_term * A, axis=1) + adjoint_B * u
            tl.store(grad_u_ptr + token_offset, adjoint_B * delta + grad_y * D, mask=mask_d)
            if SOFTPLUS:
                e = tl.exp(raw)
                grad_delta = grad_delta * tl.where(raw > 20.0, 1.0, e / (1.0 + e))
            tl.store(grad_delta_ptr + token_offset, grad_delta, mask=mask_d)
            grad_bias += grad_delta
            grad_D += grad_y * u
            carry = decay * adjoint
        tl.debug_barrier()  # the next chunk overwrites the scratch this one read
    tl.store(grad_A_ptr + batch * dim * state_size + state_index, grad_A, mask=mask_dn)
    tl.store(grad_D_ptr + batch * dim + channels, grad_D, mask=mask_d)
    tl.store(grad_bias_ptr + batch * dim + channels, grad_bias, mask=mask_d)


def _launch_shape(u, B):
    """(grid, dim_per_group, blocks_per_group, BLOCK_N, num_chunks, accumulation dtype) for the kernels."""
    batch, length, dim = u.shape
    groups, state_size = B.shape[2], B.shape[3]
    dim_per_group = dim // groups
    blocks_per_group = triton.cdiv(dim_per_group, BLOCK_D)
    grid = (batch, groups * blocks_per_group)
    block_n = triton.next_power_of_2(state_size)
    compute = torch.float64 if u.dtype == torch.float64 else torch.float32
    return grid, dim_per_group, blocks_per_group, block_n, triton.cdiv(length, CHUNK), compute


_TRITON_DTYPES = {torch.float32: tl.float32, torch.float64: tl.float64}


class _TritonScan(torch.autograd.Function):
    """The scan with D, delta_bias, softplus and the z gate fused in; see the module docstring."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        batch, length, dim = u.shape
        groups, state_size = B.shape[2], B.shape[3]
        grid, dim_per_group, blocks_per_group, block_n, num_chunks, compute = _launch_shape(u, B)
        y = torch.empty_like(u)
        checkpoints = u.new_empty((batch, num_chunks, dim, state_size), dtype=compute)
        last_state = u.new_empty((batch, dim, state_size), dtype=compute)
        _scan_forward_kernel[grid](
            u, delta, A, B, C, D, z, delta_bias, y, checkpoints, last_state,
            length, dim, groups, dim_per_group, blocks_per_group, state_size, num_chunks,
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus,
            CHUNK=CHUNK, BLOCK_D=BLOCK_D, BLOCK_N=block_n, ACC=_TRITON_DTYPES[compute],
        )
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, checkpoints)
        ctx.delta_softplus = delta_softplus
        ctx.mark_non_differentiable(checkpoints)
        return y, last_state

    @staticmethod
    def backward(ctx, grad_y, grad_last_state):
        u, delta, A, B, C, D, z, delta_bias, checkpoints = ctx.saved_tensors
        batch, length, dim = u.shape
        groups, state_size = B.shape[2], B.shape[3]
        grid, dim_per_group, blocks_per_group, block_n, num_chunks, compute = _launch_shape(u, B)
        grad_y = grad_y.contiguous()
        if grad_last_state is not None:
            grad_last_state = grad_last_state.contiguous()
        grad_u = torch.empty_like(u, dtype=compute)
        grad_delta = torch.empty_like(u, dtype=compute)
        grad_z = None if z is None else torch.empty_like(u, dtype=compute)
        partial = (batch, length, groups, blocks_per_group, state_size)
        grad_B, grad_C = u.new_empty(partial, dtype=compute), u.new_empty(partial, dtype=compute)
        grad_A = u.new_empty((batch, dim, state_size), dtype=compute)
        grad_D, grad_bias = u.new_empty((batch, dim), dtype=compute), u.new_empty((batch, dim), dtype=compute)
        scratch = u.new_empty((batch, grid[1], CHUNK + 1, BLOCK_D, block_n), dtype=compute)
        _scan_backward_kernel[grid](
            u, delta, A, B, C, D, z, delta_bias, checkpoints, grad_y, grad_last_state,
            scratch, grad_u, grad_delta, grad_z, grad_B, grad_C, grad_A, grad_D, grad_bias,
            length, dim, groups, dim_per_group, blocks_per_group, state_size, num_chunks,
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
            SOFTPLUS=ctx.delta_softplus, HAS_GRAD_LAST=grad_last_state is not None,
            CHUNK=CHUNK, BLOCK_D=BLOCK_D, BLOCK_N=block_n, ACC=_TRITON_DTYPES[compute],
        )
        return (
            grad_u.to(u.dtype),
            grad_delta.to(delta.dtype),
            grad_A.sum(0).to(A.dtype),
            grad_B.sum(3).to(B.dtype),
            grad_C.sum(3).to(C.dtype),
            None if D is None else grad_D.sum(0).to(D.dtype),
            None if z is None else grad_z.to(z.dtype),
            None if delta_bias is None else grad_bias.sum(0).to(delta_bias.dtype),
            None,
        )


def interpreting() -> bool:
    """Whether Triton runs kernels through its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "on")


def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """The selective scan by the Triton kernels, token-major (shapes in the module docstring).

    Returns y (batch, L, dim) in u's dtype and the last state (batch, dim, N) in float32 (float64 for
    float64 inputs). Inputs may be float32, bfloat16 or float16 (float64 is computed in float64).
    """
    if u.device.type != "cuda" and not interpreting():
        raise ValueError(
            f"scan_implementation='triton' needs CUDA tensors; got tensors on {u.device}. (With TRITON_INTERPRET=1 "
            "set before triton is first imported, the kernels run on CPU through Triton's slow interpreter.)"
        )
    supported = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
    if u.dtype not in supported:
        raise ValueError(f"scan_implementation='triton' supports u of dtype {supported}; got {u.dtype}.")
    batch, length, dim = u.shape
    if dim % B.shape[2]:
        raise ValueError(f"selective_scan: dim ({dim}) must be divisible by the number of B/C groups ({B.shape[2]}).")
    # The kernels index contiguous tensors; A, D and delta_bias are read in their own dtype.
    tensors = [None if t is None else t.contiguous() for t in (u, delta, A, B, C, D, z, delta_bias)]
    return _TritonScan.apply(*tensors, delta_softplus)


__all__ = ["selective_scan_triton", "interpreting"]
