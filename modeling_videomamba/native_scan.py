"""The optional compiled CPU selective scan ("native"): building, loading and its custom ops (with autograd).

The C++ source ships as package data (csrc/selective_scan_cpu.cpp) and is compiled on first use by
`torch.utils.cpp_extension.load` into the torch extensions cache (~/.cache/torch_extensions, or
$TORCH_EXTENSIONS_DIR), so later processes only load the built library. Nothing is built at import.
A build is attempted at most once per process: if it fails (no compiler, no headers, no ninja) one
warning is issued and callers fall back to the pure-PyTorch "fast" scan. VIDEOMAMBA_NATIVE_SCAN=0
disables the native scan altogether (no build is attempted).
"""

import glob
import os
import warnings
from pathlib import Path
from typing import Optional

import torch
from transformers.utils import logging

logger = logging.get_logger(__name__)

SOURCE = Path(__file__).resolve().parent / "csrc" / "selective_scan_cpu.cpp"
ENV_VAR = "VIDEOMAMBA_NATIVE_SCAN"
# Tokens between the states the forward keeps for the backward: the backward recomputes a block's
# states from them, so memory is O(L / CHECKPOINT_EVERY * dim * N) instead of O(L * dim * N).
CHECKPOINT_EVERY = 64

_module = None
_failure = None  # the reason the one build attempt of this process failed, if it did


def native_scan_enabled() -> bool:
    """False when the environment variable VIDEOMAMBA_NATIVE_SCAN is set to 0."""
    return os.environ.get(ENV_VAR, "1").strip() != "0"


def _is_cached(name: str) -> bool:
    """Whether a built library of `name` is in torch's extensions directory (so loading is quick)."""
    from torch.utils.cpp_extension import get_default_build_root

    custom_root = os.environ.get("TORCH_EXTENSIONS_DIR")
    # torch puts builds under <root>/<python>_<accelerator>/ unless TORCH_EXTENSIONS_DIR is set.
    pattern = os.path.join(custom_root, name) if custom_root else os.path.join(get_default_build_root(), "*", name)
    return bool(glob.glob(os.path.join(pattern, f"{name}*.so")))


def _build():
    """Compile (or load the cached build of) the extension; raises whatever the toolchain raises."""
    from torch.utils.cpp_extension import load

    # The kernel's 16-lane tiles fill one AVX-512 register or two AVX2 ones. The instruction set is part
    # of the name so builds for different CPUs never share a cache entry.
    capability = torch.backends.cpu.get_cpu_capability()
    vector_flags = {
        "AVX512": ["-mavx2", "-mfma", "-mavx512f", "-mavx512dq", "-mavx512vl", "-mprefer-vector-width=512"],
        "AVX2": ["-mavx2", "-mfma"],
    }.get(capability, [])
    name = "videomamba_selective_scan_cpu_" + (capability.lower() if vector_flags else "generic")
    if not _is_cached(name):
        logger.warning(
            f"Compiling the native CPU selective scan once for this machine (about a minute); later runs load "
            f"it from torch's extensions cache. Set {ENV_VAR}=0 to use the pure-PyTorch scan instead."
        )
    return load(
        name=name,
        sources=[str(SOURCE)],
        # -fno-trapping-math lets GCC turn exp's clamps into selects, which the lane loops need to vectorise.
        extra_cflags=["-O3", "-fno-trapping-math", "-fopenmp"] + vector_flags,
        extra_ldflags=["-fopenmp"],
        verbose=False,
    )


def load_native_scan():
    """The compiled extension, building it on the first call; None when disabled or the build failed."""
    global _module, _failure
    if _module is not None:
        return _module
    if not native_scan_enabled() or _failure is not None:
        return None
    try:
        if not SOURCE.is_file():
            raise FileNotFoundError(f"the kernel source {SOURCE} is missing from the installed package")
        _module = _build()
    except Exception as error:  # any toolchain failure means "fall back", never a crash
        _failure = f"{type(error).__name__}: {error}"
        warnings.warn(
            f"The native CPU selective scan could not be built ({_failure.splitlines()[0]}); using the pure-PyTorch "
            f"'fast' scan instead. Set {ENV_VAR}=0 to skip the attempt.",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    return _module


def native_scan_available() -> bool:
    """Whether the native scan can run here (building it now if this process has not tried yet)."""
    return load_native_scan() is not None


# ----------------------------------------------------------------------------------------------------
# The kernel as torch.library custom ops: torch.compile sees one opaque node per call (with a fake
# implementation for shapes) instead of breaking the graph at a Python autograd.Function.
# ----------------------------------------------------------------------------------------------------


def op_namespace(module_name: str) -> str:
    """A torch.library namespace unique to one import of a module.

    trust_remote_code imports a second copy of this package under another name; ops are registered
    once per namespace, so each copy gets its own.
    """
    return "videomamba_" + "".join(char if char.isalnum() else "_" for char in module_name)


_NAMESPACE = op_namespace(__name__)


@torch.library.custom_op(f"{_NAMESPACE}::native_scan_forward", mutates_args=())
def native_scan_forward(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor],
    delta_bias: Optional[torch.Tensor],
    delta_softplus: bool,
    checkpoint_every: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """y, last state and the checkpoints of `native_scan` (checkpoint_every=0: none are kept, shape (0,))."""
    module = load_native_scan()
    if module is None:
        raise RuntimeError("the native selective scan is not available; check native_scan_available() first")
    empty = u.new_empty(0)
    D, delta_bias = (empty if tensor is None else tensor for tensor in (D, delta_bias))
    save = checkpoint_every > 0
    y, last_state, checkpoints = module.forward(
        u, delta, A, B, C, D, delta_bias, delta_softplus, save, checkpoint_every if save else 1
    )
    return y, last_state, checkpoints


@native_scan_forward.register_fake
def _(u, delta, A, B, C, D, delta_bias, delta_softplus, checkpoint_every):
    batch, length, groups, dg = u.shape
    state_shape = (batch, groups, A.shape[1], dg)
    blocks = (length + checkpoint_every - 1) // checkpoint_every if checkpoint_every > 0 else 0
    checkpoints = u.new_empty((blocks,) + state_shape) if checkpoint_every > 0 else u.new_empty(0)
    return u.new_empty(u.shape), u.new_empty(state_shape), checkpoints


@torch.library.custom_op(f"{_NAMESPACE}::native_scan_backward", mutates_args=())
def native_scan_backward(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor],
    delta_bias: Optional[torch.Tensor],
    delta_softplus: bool,
    checkpoints: torch.Tensor,
    grad_y: torch.Tensor,
    grad_last_state: torch.Tensor,
    checkpoint_every: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """grad_u, grad_delta (with respect to the raw delta), grad_A, grad_B, grad_C of `native_scan`."""
    empty = u.new_empty(0)
    D, delta_bias = (empty if tensor is None else tensor for tensor in (D, delta_bias))
    return tuple(
        load_native_scan().backward(
            u, delta, A, B, C, D, delta_bias, delta_softplus, checkpoints, grad_y.contiguous(),
            grad_last_state.contiguous(), checkpoint_every,
        )
    )


@native_scan_backward.register_fake
def _(u, delta, A, B, C, D, delta_bias, delta_softplus, checkpoints, grad_y, grad_last_state, checkpoint_every):
    return tuple(tensor.new_empty(tensor.shape) for tensor in (u, delta, A, B, C))


def _native_setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, delta_bias, delta_softplus, checkpoint_every = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, output[2])
    ctx.delta_softplus, ctx.checkpoint_every = delta_softplus, checkpoint_every


def _native_backward(ctx, grad_y, grad_last_state, _grad_checkpoints):
    u, delta, A, B, C, D, delta_bias, checkpoints = ctx.saved_tensors
    if ctx.checkpoint_every <= 0:
        raise RuntimeError("native_scan: the forward ran without checkpoints (checkpoint_every=0); cannot backward")
    if grad_y is None:
        grad_y = torch.zeros_like(u)
    if grad_last_state is None:
        grad_last_state = u.new_zeros(u.shape[0], u.shape[2], A.shape[1], u.shape[3])
    grad_u, grad_delta, grad_A, grad_B, grad_C = native_scan_backward(
        u, delta, A, B, C, D, delta_bias, ctx.delta_softplus, checkpoints, grad_y, grad_last_state,
        ctx.checkpoint_every,
    )
    # D and delta_bias act per channel at every (batch, token): their gradients are sums over both.
    grad_D = (grad_y * u).sum((0, 1)).flatten() if D is not None and ctx.needs_input_grad[5] else None
    grad_bias = grad_delta.sum((0, 1)).flatten() if delta_bias is not None and ctx.needs_input_grad[6] else None
    return grad_u, grad_delta, grad_A, grad_B, grad_C, grad_D, grad_bias, None, None


native_scan_forward.register_autograd(_native_backward, setup_context=_native_setup_context)


def native_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False):
    """The compiled recurrence in the fast scan's token-major layout, with the step-size bias, softplus and D fused:

        u, delta : (batch, L, groups, dg)     A : (groups, N, dg)     B, C : (batch, L, groups, N)
        D, delta_bias : (groups * dg,) or None      delta_softplus : bool
    delta_t <- softplus(delta_t + delta_bias); s_t = exp(delta_t A) s_{t-1} + delta_t u_t B_t;
    y_t = <s_t, C_t> + D u_t. Returns y (batch, L, groups, dg) and the last state (batch, groups, N, dg);
    all float32 or float64, contiguous, on CPU. The backward is the reverse-time adjoint recurrence,
    recomputing each block's states from checkpoints kept every CHECKPOINT_EVERY tokens (kept only
    when a gradient is needed).
    """
    inputs = (u, delta, A, B, C, D, delta_bias)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)
    y, last_state, _ = native_scan_forward(
        *inputs, delta_softplus, CHECKPOINT_EVERY if needs_grad else 0
    )
    return y, last_state
