"""The selective scan as Triton kernels ("triton"): a GPU path that needs no compiled extension.

Same contract as `selective_scan_tokens_first` (token-major layout, see `selective_scan`):

    u, delta, z : (batch, L, dim)      A : (dim, N)      B, C : (batch, L, groups, N)
    D, delta_bias : (dim,)             channel c uses B/C group c // (dim // groups)

A two-pass chunked scan, so that one clip at batch 1 still fills a GPU. The sequence is cut into
chunks of CHUNK tokens and the channels into blocks of BLOCK_D (of one group each, so the mixer's
two directions, stacked channels with one B/C group each, run in the same launches). One program
owns one (chunk, channel block, batch element): a (CHUNK, BLOCK_D) tile of u and delta, loaded
once, scanned over time in parallel (`tl.associative_scan` of the affine maps s -> a s + b), one
state index n at a time. Forward:

1. every chunk is scanned from a zero state: its final state and its total decay prod_t exp(delta_t A);
2. a short sequential pass over the chunks (per batch element and channel block) chains those into
   the state entering every chunk: h_{c+1} = decay_c * h_c + final_c;
3. every chunk is scanned again from its entering state, writing y.

The backward mirrors it in reverse time with the adjoint lambda_t = dL/ds_t: each chunk's local
adjoint is scanned backwards from zero, the chunks are chained right to left (seeded with the
last state's gradient), and each chunk then rescans its states from the saved entering state and its
adjoints from the chained one, both in registers, and forms every gradient. The entering states
(batch, chunks, dim, N) are the only thing kept for the backward, and only when an input requires
grad. Reductions over time (the gradients of A, D and delta_bias) are written per chunk and summed
afterwards; the gradients of B and C (sums over a group's channels) are accumulated with atomic
adds into float32 buffers the size of B, so their last bits may vary from run to run.

State and arithmetic are float32 (float64 for float64 inputs) whatever the input dtype; u, delta, B,
C and z are read in their own dtype, y and the gradients of u, delta and z are written in it. Under
autocast, float32 u, delta, B, C and z are first cast to the autocast dtype, as the original's fused
kernel reads and writes the compute dtype.

Triton compiles for CUDA devices. With TRITON_INTERPRET=1 set before triton is first imported (it
decorates its own library then), the same kernels run on CPU tensors through Triton's interpreter
(slow; the tests use it).
"""

import contextlib
import os

import torch
import triton
import triton.language as tl

# Tokens per chunk (a power of two): a (CHUNK, BLOCK_D) tile per program. The entering states saved
# for the backward are (batch, L / CHUNK, dim, N).
CHUNK = 64
# Channels per program (a power of two); state sizes are padded to a power of two in the chaining pass.
BLOCK_D = 16
# Warps per chunk program: at 8 the backward's gradient pass needs 171 registers a thread and the
# forward 77, without spills (ptxas for sm_90, bf16 inputs); at 4 warps they needed 255 and 144.
NUM_WARPS = 8


@triton.jit
def _softplus(x):
    """torch's softplus (threshold 20); log(1 + e) corrected so small e keep their relative precision."""
    e = tl.exp(x)
    w = 1.0 + e
    log1p = tl.where(w == 1.0, e, tl.log(w) * e / (w - 1.0))
    return tl.where(x > 20.0, x, log1p)


@triton.jit
def _affine_combine(decay_first, add_first, decay_second, add_second):
    """Compose s -> decay_first s + add_first, then s -> decay_second s + add_second (not commutative).

    In a reverse scan the first map is the one accumulated from the right, so the same combine gives
    the adjoint recurrence lambda_t = alpha_t lambda_{t+1} + beta_t.
    """
    return decay_first * decay_second, add_first * decay_second + add_second


@triton.jit
def _chunk_tile(
    u_ptr, delta_ptr, D_ptr, bias_ptr, length, dim, groups, dim_per_group, blocks_per_group, state_size,
    HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr,
):
    """What every chunk kernel loads once: this program's coordinates and its (CHUNK, BLOCK_D) tiles.

    Rows past the sequence end and padded channels get u = delta = 0, so their steps are the identity
    map (decay 1, input 0) and a scan passes the state through them unchanged.
    """
    chunk = tl.program_id(0)
    block = tl.program_id(1)
    batch = tl.program_id(2).to(tl.int64)
    group = block // blocks_per_group
    in_group = (block % blocks_per_group) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = in_group < dim_per_group
    channels = group * dim_per_group + in_group
    rows = tl.arange(0, CHUNK)
    tokens = chunk * CHUNK + rows
    valid = tokens < length
    mask = valid[:, None] & mask_d[None, :]
    offsets = (batch * length + tokens[:, None]) * dim + channels[None, :]
    u = tl.load(u_ptr + offsets, mask=mask, other=0.0).to(ACC)
    raw = tl.load(delta_ptr + offsets, mask=mask, other=0.0).to(ACC)
    if HAS_BIAS:
        raw += tl.load(bias_ptr + channels, mask=mask_d, other=0.0).to(ACC)[None, :]
    delta = raw
    if SOFTPLUS:
        delta = _softplus(raw)
    delta = tl.where(mask, delta, 0.0)
    D = tl.zeros((BLOCK_D,), dtype=ACC)
    if HAS_D:
        D = tl.load(D_ptr + channels, mask=mask_d, other=0.0).to(ACC)
    # B/C of (batch, token, group): (CHUNK,) offsets of state 0.
    bc_offsets = ((batch * length + tokens) * groups + group) * state_size
    # Per-chunk buffers (batch, chunks, dim, N): offsets of this program's channels at state 0.
    chunk_offsets = ((batch * tl.num_programs(0) + chunk) * dim + channels) * state_size
    return (chunk, batch, channels, mask_d, rows, tokens, valid, mask, offsets, u, raw, delta, D, bc_offsets,
            chunk_offsets)


@triton.jit
def _gated_grad_y(grad_y_ptr, z_ptr, offsets, mask, HAS_Z: tl.constexpr, ACC: tl.constexpr):
    """dL/dy before the gate (grad_y * silu(z)), the incoming grad_y, z and sigmoid(z), as (CHUNK, BLOCK_D) tiles."""
    grad_out = tl.load(grad_y_ptr + offsets, mask=mask, other=0.0).to(ACC)
    grad = grad_out
    z = grad_out
    sigmoid_z = grad_out
    if HAS_Z:
        z = tl.load(z_ptr + offsets, mask=mask, other=0.0).to(ACC)
        sigmoid_z = 1.0 / (1.0 + tl.exp(-z))
        grad = grad_out * z * sigmoid_z
    return grad, grad_out, z, sigmoid_z


@triton.jit
def _next_delta(delta_ptr, bias_ptr, offsets, tokens, rows, channels, mask_d, length, dim,
                HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, CHUNK: tl.constexpr, ACC: tl.constexpr):
    """delta_{t+1} for every row t (CHUNK, BLOCK_D) and where t + 1 is inside the chunk and the sequence.

    The adjoint runs lambda_t = exp(delta_{t+1} A) lambda_{t+1} + ...: its decay is the next token's,
    read shifted by one row (registers cannot be shifted).
    """
    has_next = (rows < CHUNK - 1) & (tokens + 1 < length)
    mask_next = has_next[:, None] & mask_d[None, :]
    raw = tl.load(delta_ptr + offsets + dim, mask=mask_next, other=0.0).to(ACC)
    if HAS_BIAS:
        raw += tl.load(bias_ptr + channels, mask=mask_d, other=0.0).to(ACC)[None, :]
    delta = raw
    if SOFTPLUS:
        delta = _softplus(raw)
    return delta, mask_next


@triton.jit
def _chunk_scan_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, entry_ptr, final_ptr, decay_ptr, y_ptr,
    length, dim, groups, dim_per_group, blocks_per_group, state_size,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    WRITE_Y: tl.constexpr, CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr,
):
    """Forward passes 1 (WRITE_Y False: the chunk's final state from zero and its decay, per channel and
    state) and 3 (WRITE_Y True: y from the chunk's entering state)."""
    chunk, batch, channels, mask_d, rows, tokens, valid, mask, offsets, u, raw, delta, D, bc_offsets, chunk_offsets = (
        _chunk_tile(u_ptr, delta_ptr, D_ptr, bias_ptr, length, dim, groups, dim_per_group, blocks_per_group,
                    state_size, HAS_D, HAS_BIAS, SOFTPLUS, CHUNK, BLOCK_D, ACC)
    )
    delta_u = delta * u
    y = D[None, :] * u
    # Registers cannot be indexed: a row is picked by a masked sum over the tile.
    last_row = (rows == CHUNK - 1)[:, None]
    for n in range(state_size):
        A = tl.load(A_ptr + channels * state_size + n, mask=mask_d, other=0.0).to(ACC)
        B = tl.load(B_ptr + bc_offsets + n, mask=valid, other=0.0).to(ACC)
        decay, state = tl.associative_scan((tl.exp(delta * A[None, :]), delta_u * B[:, None]), 0, _affine_combine)
        if WRITE_Y:
            entering = tl.load(entry_ptr + chunk_offsets + n, mask=mask_d, other=0.0)
            C = tl.load(C_ptr + bc_offsets + n, mask=valid, other=0.0).to(ACC)
            y += (state + decay * entering[None, :]) * C[:, None]
        else:
            # Rows past the end are identity steps, so the last row holds the chunk's totals.
            tl.store(final_ptr + chunk_offsets + n, tl.sum(tl.where(last_row, state, 0.0), axis=0), mask=mask_d)
            tl.store(decay_ptr + chunk_offsets + n, tl.sum(tl.where(last_row, decay, 0.0), axis=0), mask=mask_d)
    if WRITE_Y:
        if HAS_Z:
            z = tl.load(z_ptr + offsets, mask=mask, other=0.0).to(ACC)
            y = y * z / (1.0 + tl.exp(-z))
        tl.store(y_ptr + offsets, y, mask=mask)


@triton.jit
def _chain_chunks_kernel(
    final_ptr, decay_ptr, initial_ptr, entry_ptr, last_ptr, num_chunks, dim, state_size,
    HAS_INITIAL: tl.constexpr, REVERSE: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Pass 2: entry[c] = the state entering chunk c, carry <- decay[c] * carry + final[c], chunk after chunk
    (right to left with REVERSE, for the adjoint); `last` gets the carry leaving the last chunk visited."""
    channels = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    batch = tl.program_id(1).to(tl.int64)
    states = tl.arange(0, BLOCK_N)
    mask = (channels < dim)[:, None] & (states < state_size)[None, :]
    tile = channels[:, None] * state_size + states[None, :]
    carry = tl.zeros((BLOCK_D, BLOCK_N), dtype=entry_ptr.dtype.element_ty)
    if HAS_INITIAL:
        carry = tl.load(initial_ptr + batch * dim * state_size + tile, mask=mask, other=0.0).to(carry.dtype)
    for step in range(num_chunks):
        chunk = step
        if REVERSE:
            chunk = num_chunks - 1 - step
        offsets = (batch * num_chunks + chunk) * dim * state_size + tile
        tl.store(entry_ptr + offsets, carry, mask=mask)
        decay = tl.load(decay_ptr + offsets, mask=mask, other=0.0)
        carry = decay * carry + tl.load(final_ptr + offsets, mask=mask, other=0.0)
    tl.store(last_ptr + batch * dim * state_size + tile, carry, mask=mask)


@triton.jit
def _chunk_backward_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, grad_y_ptr, entry_ptr, adjoint_entry_ptr,
    final_ptr, decay_ptr, grad_u_ptr, grad_delta_ptr, grad_z_ptr, grad_B_ptr, grad_C_ptr, grad_A_ptr, grad_D_ptr,
    grad_bias_ptr, length, dim, groups, dim_per_group, blocks_per_group, state_size,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    GRADIENTS: tl.constexpr, CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr,
):
    """Backward passes 1 and 3, in reverse time.

    Pass 1 (GRADIENTS False): the adjoint leaving the chunk to the left, exp(delta_first A) lambda_first,
    from a zero adjoint at its right end, and the chunk's decay (the factor on the adjoint entering it).
    Pass 3 (GRADIENTS True): the chunk's states (from its entering state) and adjoints (from the adjoint
    entering it from the right), then every gradient. grad_A, grad_D and grad_bias are per-chunk partial
    sums; grad_B and grad_C (batch, L, groups, N) are accumulated over channel blocks atomically.
    """
    chunk, batch, channels, mask_d, rows, tokens, valid, mask, offsets, u, raw, delta, D, bc_offsets, chunk_offsets = (
        _chunk_tile(u_ptr, delta_ptr, D_ptr, bias_ptr, length, dim, groups, dim_per_group, blocks_per_group,
                    state_size, HAS_D, HAS_BIAS, SOFTPLUS, CHUNK, BLOCK_D, ACC)
    )
    grad, grad_out, z, sigmoid_z = _gated_grad_y(grad_y_ptr, z_ptr, offsets, mask, HAS_Z, ACC)
    delta_next, mask_next = _next_delta(delta_ptr, bias_ptr, offsets, tokens, rows, channels, mask_d, length, dim,
                                        HAS_BIAS, SOFTPLUS, CHUNK, ACC)
    delta_u = delta * u
    adjoint_B = tl.zeros((CHUNK, BLOCK_D), dtype=ACC)  # sum_n lambda_t B_t
    grad_delta = tl.zeros((CHUNK, BLOCK_D), dtype=ACC)
    y = D[None, :] * u  # before the gate, for grad_z
    # Registers cannot be indexed: a row is picked by a masked sum over the tile.
    first_row = (rows == 0)[:, None]
    delta_first = tl.sum(tl.where(first_row, delta, 0.0), axis=0)
    for n in range(state_size):
        A = tl.load(A_ptr + channels * state_size + n, mask=mask_d, other=0.0).to(ACC)
        C = tl.load(C_ptr + bc_offsets + n, mask=valid, other=0.0).to(ACC)
        alpha = tl.where(mask_next, tl.exp(delta_next * A[None, :]), 1.0)
        reach, adjoint = tl.associative_scan((alpha, grad * C[:, None]), 0, _affine_combine, reverse=True)
        if GRADIENTS:
            B = tl.load(B_ptr + bc_offsets + n, mask=valid, other=0.0).to(ACC)
            entering = tl.load(entry_ptr + chunk_offsets + n, mask=mask_d, other=0.0).to(ACC)
            adjoint_entering = tl.load(adjoint_entry_ptr + chunk_offsets + n, mask=mask_d, other=0.0).to(ACC)
            inputs = delta_u * B[:, None]
            decay, state = tl.associative_scan((tl.exp(delta * A[None, :]), inputs), 0, _affine_combine)
            state += decay * entering[None, :]
            adjoint = tl.where(mask, adjoint + reach * adjoint_entering[None, :], 0.0)
            if HAS_Z:
                y += state * C[:, None]
            tl.atomic_add(grad_C_ptr + bc_offsets + n, tl.sum(grad * state, axis=1), mask=valid)
            tl.atomic_add(grad_B_ptr + bc_offsets + n, tl.sum(adjoint * delta_u, axis=1), mask=valid)
            adjoint_B += adjoint * B[:, None]
            # d s_t / d(delta_t A) = exp(delta_t A) s_{t-1} = s_t - delta_t u_t B_t
            decay_term = adjoint * (state - inputs)
            grad_delta += decay_term * A[None, :]
            tl.store(grad_A_ptr + chunk_offsets + n, tl.sum(decay_term * delta, axis=0), mask=mask_d)
        else:
            first_decay = tl.exp(delta_first * A)
            tl.store(final_ptr + chunk_offsets + n, first_decay * tl.sum(tl.where(first_row, adjoint, 0.0), axis=0),
                     mask=mask_d)
            tl.store(decay_ptr + chunk_offsets + n, first_decay * tl.sum(tl.where(first_row, reach, 0.0), axis=0),
                     mask=mask_d)
    if GRADIENTS:
        tl.store(grad_u_ptr + offsets, adjoint_B * delta + grad * D[None, :], mask=mask)
        grad_delta += adjoint_B * u
        if SOFTPLUS:
            e = tl.exp(raw)
            grad_delta = grad_delta * tl.where(raw > 20.0, 1.0, e / (1.0 + e))
        grad_delta = tl.where(mask, grad_delta, 0.0)
        tl.store(grad_delta_ptr + offsets, grad_delta, mask=mask)
        chunk_partial = chunk_offsets // state_size  # (batch, chunks, dim) buffers
        tl.store(grad_bias_ptr + chunk_partial, tl.sum(grad_delta, axis=0), mask=mask_d)
        tl.store(grad_D_ptr + chunk_partial, tl.sum(grad * u, axis=0), mask=mask_d)
        if HAS_Z:
            grad_z = grad_out * y * sigmoid_z * (1.0 + z * (1.0 - sigmoid_z))
            tl.store(grad_z_ptr + offsets, grad_z, mask=mask)


class _Layout:
    """Launch geometry for one call: chunks, channel blocks, and the grids of the chunk and chaining kernels."""

    def __init__(self, batch, length, dim, groups, state_size):
        self.batch, self.length, self.dim, self.groups, self.state_size = batch, length, dim, groups, state_size
        self.dim_per_group = dim // groups
        self.blocks_per_group = triton.cdiv(self.dim_per_group, BLOCK_D)
        self.num_chunks = triton.cdiv(length, CHUNK)
        self.chunk_grid = (self.num_chunks, groups * self.blocks_per_group, batch)
        self.chain_grid = (triton.cdiv(dim, BLOCK_D), batch)
        self.block_n = triton.next_power_of_2(state_size)

    @property
    def chunk_shape(self):
        """Shape of the per-chunk state buffers (entering states, finals, decays, grad_A partials)."""
        return (self.batch, self.num_chunks, self.dim, self.state_size)

    def scalars(self):
        """The integer arguments every chunk kernel takes after its pointers."""
        return (self.length, self.dim, self.groups, self.dim_per_group, self.blocks_per_group, self.state_size)

    def constants(self, ACC):
        """The compile-time arguments (and the launch's warp count) of every chunk kernel."""
        return dict(CHUNK=CHUNK, BLOCK_D=BLOCK_D, ACC=ACC, num_warps=NUM_WARPS)


def launch_grid(batch, length, dim, groups, state_size=16):
    """The grid of the chunk kernels (chunks, channel blocks, batch) for these sizes."""
    return _Layout(batch, length, dim, groups, state_size).chunk_grid


def _device_guard(device: torch.device):
    """Make `device` current for a launch: Triton launches on the current CUDA device, not the tensors'."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _launch(kernel, grid, device, *args, **constants):
    with _device_guard(device):
        kernel[grid](*args, **constants)


def _chain(layout, device, final, decay, initial, reverse):
    """Pass 2 over the per-chunk buffers: (entering values per chunk, the carry leaving the last chunk)."""
    entry, last = torch.empty_like(final), final.new_empty(final.shape[0], *final.shape[2:])
    _launch(
        _chain_chunks_kernel, layout.chain_grid, device,
        final, decay, initial, entry, last, layout.num_chunks, layout.dim, layout.state_size,
        HAS_INITIAL=initial is not None, REVERSE=reverse, BLOCK_D=BLOCK_D, BLOCK_N=layout.block_n,
    )
    return entry, last


_TRITON_DTYPES = {torch.float32: tl.float32, torch.float64: tl.float64}


class _TritonScan(torch.autograd.Function):
    """The scan with D, delta_bias, softplus and the z gate fused in; see the module docstring."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        layout = _Layout(*u.shape[:2], u.shape[2], *B.shape[2:])
        compute = torch.float64 if u.dtype == torch.float64 else torch.float32
        flags = dict(HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus)
        final, decay = u.new_empty(layout.chunk_shape, dtype=compute), u.new_empty(layout.chunk_shape, dtype=compute)
        pointers = (u, delta, A, B, C, D, z, delta_bias)
        _launch(_chunk_scan_kernel, layout.chunk_grid, u.device, *pointers, None, final, decay, None,
                *layout.scalars(), **flags, WRITE_Y=False, **layout.constants(_TRITON_DTYPES[compute]))
        entry, last_state = _chain(layout, u.device, final, decay, None, reverse=False)
        del final, decay
        y = torch.empty_like(u)
        _launch(_chunk_scan_kernel, layout.chunk_grid, u.device, *pointers, entry, None, None, y,
                *layout.scalars(), **flags, WRITE_Y=True, **layout.constants(_TRITON_DTYPES[compute]))
        ctx.delta_softplus = delta_softplus
        if any(ctx.needs_input_grad):  # without gradients nothing outlives the call
            ctx.save_for_backward(*pointers, entry)
        return y, last_state

    @staticmethod
    def backward(ctx, grad_y, grad_last_state):
        u, delta, A, B, C, D, z, delta_bias, entry = ctx.saved_tensors
        layout = _Layout(*u.shape[:2], u.shape[2], *B.shape[2:])
        compute = entry.dtype
        constants = layout.constants(_TRITON_DTYPES[compute])
        flags = dict(HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=ctx.delta_softplus)
        grad_y = torch.zeros_like(u) if grad_y is None else grad_y.contiguous()
        if grad_last_state is not None:
            grad_last_state = grad_last_state.to(compute).contiguous()
        pointers = (u, delta, A, B, C, D, z, delta_bias, grad_y)
        flags["HAS_D"] = D is not None
        final, decay = torch.empty_like(entry), torch.empty_like(entry)
        _launch(_chunk_backward_kernel, layout.chunk_grid, u.device, *pointers, None, None, final, decay,
                *[None] * 8, *layout.scalars(), **flags, GRADIENTS=False, **constants)
        adjoint_entry, _ = _chain(layout, u.device, final, decay, grad_last_state, reverse=True)
        del final, decay
        grad_u, grad_delta = torch.empty_like(u), torch.empty_like(delta)
        grad_z = None if z is None else torch.empty_like(z)
        grad_B, grad_C = torch.zeros_like(B, dtype=compute), torch.zeros_like(C, dtype=compute)
        grad_A = torch.empty_like(entry)
        per_chunk = (layout.batch, layout.num_chunks, layout.dim)
        grad_D, grad_bias = u.new_empty(per_chunk, dtype=compute), u.new_empty(per_chunk, dtype=compute)
        _launch(_chunk_backward_kernel, layout.chunk_grid, u.device, *pointers, entry, adjoint_entry, None, None,
                grad_u, grad_delta, grad_z, grad_B, grad_C, grad_A, grad_D, grad_bias,
                *layout.scalars(), **flags, GRADIENTS=True, **constants)
        return (
            grad_u,
            grad_delta,
            grad_A.sum((0, 1)).to(A.dtype),
            grad_B.to(B.dtype),
            grad_C.to(C.dtype),
            None if D is None else grad_D.sum((0, 1)).to(D.dtype),
            grad_z,
            None if delta_bias is None else grad_bias.sum((0, 1)).to(delta_bias.dtype),
            None,
        )


def interpreting() -> bool:
    """Whether Triton runs kernels through its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "on")


def _autocast_inputs(u, delta, B, C, z):
    """Under autocast, float32 u, delta, B, C, z in the autocast dtype (A, D and delta_bias stay as they are)."""
    device_type = u.device.type
    if not torch.is_autocast_enabled(device_type):
        return u, delta, B, C, z
    dtype = torch.get_autocast_dtype(device_type)
    return tuple(t if t is None or t.dtype != torch.float32 else t.to(dtype) for t in (u, delta, B, C, z))


def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """The selective scan by the Triton kernels, token-major (shapes in the module docstring).

    Returns y (batch, L, dim) in u's dtype (the autocast dtype under autocast) and the last state
    (batch, dim, N) in float32 (float64 for float64 inputs). Inputs may be float32, bfloat16 or
    float16 (float64 is computed in float64).
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
    u, delta, B, C, z = _autocast_inputs(u, delta, B, C, z)
    # The kernels index contiguous tensors; A, D and delta_bias are read in their own dtype.
    tensors = [None if t is None else t.contiguous() for t in (u, delta, A, B, C, D, z, delta_bias)]
    return _TritonScan.apply(*tensors, delta_softplus)


__all__ = ["selective_scan_triton", "interpreting", "launch_grid"]
