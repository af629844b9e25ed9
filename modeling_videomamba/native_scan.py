"""The optional compiled CPU selective scan ("native"): building, loading and its autograd Function.

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


class NativeScan(torch.autograd.Function):
    """The compiled recurrence in `_BlockedScan`'s layout, with the step-size bias, softplus and D fused:

        u, delta : (batch, L, groups, dg)     A : (groups, N, dg)     B, C : (batch, L, groups, N)
        D, delta_bias : (groups * dg,) or None      delta_softplus : bool
    delta_t <- softplus(delta_t + delta_bias); s_t = exp(delta_t A) s_{t-1} + delta_t u_t B_t;
    y_t = <s_t, C_t> + D u_t. Returns y (batch, L, groups, dg) and the last state (batch, groups, N, dg);
    all float32 or float64, contiguous, on CPU. The backward is the reverse-time adjoint recurrence,
    recomputing each block's states from checkpoints kept every CHECKPOINT_EVERY tokens.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, delta_softplus):
        module = load_native_scan()
        if module is None:
            raise RuntimeError("the native selective scan is not available; check native_scan_available() first")
        empty = u.new_empty(0)
        D, delta_bias = (empty if tensor is None else tensor for tensor in (D, delta_bias))
        save = any(ctx.needs_input_grad)
        y, last_state, checkpoints = module.forward(
            u, delta, A, B, C, D, delta_bias, delta_softplus, save, CHECKPOINT_EVERY
        )
        if save:
            ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, checkpoints)
            ctx.delta_softplus = delta_softplus
        return y, last_state

    @staticmethod
    def backward(ctx, grad_y, grad_last_state):
        u, delta, A, B, C, D, delta_bias, checkpoints = ctx.saved_tensors
        if grad_y is None:
            grad_y = torch.zeros_like(u)
        if grad_last_state is None:
            grad_last_state = u.new_zeros(u.shape[0], u.shape[2], A.shape[1], u.shape[3])
        grad_y = grad_y.contiguous()
        grad_u, grad_delta, grad_A, grad_B, grad_C = load_native_scan().backward(
            u, delta, A, B, C, D, delta_bias, ctx.delta_softplus, checkpoints, grad_y, grad_last_state.contiguous(),
            CHECKPOINT_EVERY,
        )
        # D and delta_bias act per channel at every (batch, token): their gradients are sums over both.
        grad_D = (grad_y * u).sum((0, 1)).flatten() if ctx.needs_input_grad[5] else None
        grad_bias = grad_delta.sum((0, 1)).flatten() if ctx.needs_input_grad[6] else None
        return grad_u, grad_delta, grad_A, grad_B, grad_C, grad_D, grad_bias, None
