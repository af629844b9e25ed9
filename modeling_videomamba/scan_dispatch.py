"""Which selective scan runs where: "auto", the probes of the CUDA kernels and of Triton, and the fallbacks.

"auto" picks "cuda" on CUDA devices when both mamba-ssm and causal-conv1d import, their extensions load and a
tiny call of each runs there (probed once per device) and the model's sizes fit the kernels; otherwise, after
one warning naming why, "triton" when Triton is usable there, else "fast". On CPU it picks "native" when the
kernel is built or builds now (once per process; VIDEOMAMBA_NATIVE_SCAN=0 turns this off), else "fast".
An explicit "triton" that cannot run falls back to "fast" with one warning; an explicit "cuda" that cannot
run raises, saying why.
"""

import importlib.util
import os
import warnings

import torch

from .configuration_videomamba import SCAN_IMPLEMENTATIONS as IMPLEMENTATIONS
from .configuration_videomamba import cuda_kernel_limits_problem
from .native_scan import native_scan_available

_cuda_problem = {}  # (device type, index) -> what keeps the CUDA kernels from working ("" when they work)
_cuda_warned = False
_limits_warned = set()  # the kernel-limit fallbacks already warned about


def _first_line(error: BaseException) -> str:
    """ "TypeName: first non-empty line of the message", or "TypeName" for an empty message."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def _probe_cuda_kernels(device: torch.device) -> str:
    """What keeps mamba-ssm's and causal-conv1d's kernels from running on `device`; "" when they run.

    Both packages must import (which loads their compiled extensions: a build for another torch or CUDA
    fails here with an undefined symbol) and a tiny call of each must run on the device (a build
    without this GPU's architecture fails only then, with "no kernel image").
    """
    if device.type == "cuda" and not torch.cuda.is_available():
        return "no CUDA device is available"
    missing = []
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception as error:  # ImportError, or an OSError/RuntimeError from a broken extension
        missing.append(f"mamba-ssm ({_first_line(error)})")
    try:
        from causal_conv1d import causal_conv1d_fn
    except Exception as error:
        missing.append(f"causal-conv1d ({_first_line(error)})")
    if missing:
        return "not usable: " + "; ".join(missing)
    try:
        x = torch.randn(1, 8, 4, device=device)
        selective_scan_fn(x, x, -torch.ones(8, 2, device=device), x[:, :2], x[:, :2], delta_softplus=True)
        causal_conv1d_fn(x, torch.ones(8, 4, device=device), activation="silu")
    except Exception as error:
        return f"installed, but their kernels failed on {device} ({_first_line(error)})"
    return ""


def _device_key(device: torch.device) -> tuple:
    """(type, index) of `device`, "cuda" meaning the current CUDA device: each GPU is probed on its own
    (two GPUs of different architectures may differ in whether the kernels' build runs on them)."""
    index = device.index
    if index is None and device.type == "cuda":
        index = torch.cuda.current_device() if torch.cuda.is_available() else 0
    return device.type, index


def cuda_kernels_problem(device=None) -> str:
    """Why scan_implementation="cuda" cannot run on `device` (default: the current CUDA device); "" when
    it can. Probed once per device."""
    device = torch.device("cuda" if device is None else device)
    key = _device_key(device)
    if key not in _cuda_problem:
        _cuda_problem[key] = _probe_cuda_kernels(torch.device(*key) if key[1] is not None else device)
    return _cuda_problem[key]


def cuda_kernels_available(device=None) -> bool:
    """Whether mamba-ssm's and causal-conv1d's kernels run here: both import, their extensions load and
    a tiny call of each runs on the CUDA device (probed once per process and device)."""
    return torch.cuda.is_available() and not cuda_kernels_problem(device)


_triton_problem = {}  # (device, TRITON_INTERPRET) -> what keeps the Triton scan from running ("" when it runs)
_triton_warned = set()


def _triton_smoke_test(device: torch.device):
    """A tiny Triton scan on `device`, forward and backward: compiles and launches every kernel once."""
    from .triton_scan import selective_scan_triton

    x = torch.randn(1, 3, 2, device=device, requires_grad=True)
    bc = torch.randn(1, 3, 1, 2, device=device)
    y, _ = selective_scan_triton(x, x, -torch.ones(2, 2, device=device), bc, bc, delta_softplus=True)
    y.sum().backward()


def _probe_triton(device: torch.device) -> str:
    """What keeps the Triton scan from running on `device`; "" when it runs.

    Triton must be installed and import, and (for CUDA) a tiny scan must compile and run on the device:
    a machine without a working compiler toolchain or driver fails only then.
    """
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (`pip install .[triton]`)"
    try:
        from .triton_scan import interpreting
    except Exception as error:  # ImportError, or a broken install failing inside triton's own imports
        first_line = str(error).splitlines()[0] if str(error) else ""
        return f"triton is installed but does not import ({type(error).__name__}: {first_line})"
    if device.type != "cuda":
        if interpreting():
            return ""
        return (
            f"its kernels need CUDA tensors, got tensors on {device} (TRITON_INTERPRET=1, set before triton is first "
            "imported, runs them on CPU through Triton's slow interpreter)"
        )
    if not torch.cuda.is_available():
        return "no CUDA device is available"
    try:
        _triton_smoke_test(device)
    except Exception as error:
        message = str(error).strip().splitlines()
        return f"its kernels failed on {device} ({type(error).__name__}: {message[0] if message else ''})"
    return ""


def triton_problem(device=None) -> str:
    """Why scan_implementation="triton" cannot run on `device` (default: CUDA); "" when it can. Probed once."""
    device = torch.device("cuda" if device is None else device)
    key = (str(device), os.environ.get("TRITON_INTERPRET"))
    if key not in _triton_problem:
        _triton_problem[key] = _probe_triton(device)
    return _triton_problem[key]


def triton_available(device=None) -> bool:
    """Whether the Triton scan runs on `device` (default: CUDA): Triton imports and, on CUDA, a tiny scan
    compiles and runs there (probed once per device)."""
    return not triton_problem(device)


def _triton_or_fast(device: torch.device) -> str:
    """An explicit "triton": kept where Triton runs, else "fast" after one warning saying why."""
    problem = triton_problem(device)
    if not problem:
        return "triton"
    if problem not in _triton_warned:
        _triton_warned.add(problem)
        warnings.warn(
            f"scan_implementation='triton' cannot run on {device}: {problem}; using the 'fast' (PyTorch) scan instead.",
            RuntimeWarning,
            stacklevel=4,
        )
    return "fast"


def _fallback_on_cuda(device: torch.device) -> str:
    """What "auto" uses on CUDA tensors on `device` when the mamba-ssm kernels cannot serve."""
    return "triton" if triton_available(device) else "fast"


def _auto_on_cuda(device: torch.device, state_size=None, conv_kernel=None) -> str:
    """"auto" for CUDA tensors: the mamba-ssm kernels when they run on `device` and support the model's
    sizes, else (after one warning saying why) the Triton scan when Triton is usable, else "fast"."""
    global _cuda_warned
    limits = cuda_kernel_limits_problem(state_size, conv_kernel)
    if limits and limits not in _limits_warned:
        _limits_warned.add(limits)
        warnings.warn(
            f"scan_implementation='auto': the mamba-ssm / causal-conv1d CUDA kernels do not fit this model "
            f"({limits}); using the {_fallback_on_cuda(device)!r} scan instead.",
            RuntimeWarning,
            stacklevel=3,
        )
    if limits:
        return _fallback_on_cuda(device)
    problem = cuda_kernels_problem(device)
    if not problem:
        return "cuda"
    fallback = _fallback_on_cuda(device)
    if not _cuda_warned:
        _cuda_warned = True
        warnings.warn(
            f"scan_implementation='auto': the mamba-ssm / causal-conv1d CUDA kernels are {problem}; using the "
            f"{fallback!r} scan instead (install both with `pip install .[cuda]` for the fused kernels).",
            RuntimeWarning,
            stacklevel=3,
        )
    return fallback


# Under torch.compile the choice is made once while tracing (it may build or probe the kernels,
# which dynamo cannot trace) and baked into the graph as a constant.
@torch.compiler.assume_constant_result
def resolve_implementation(implementation: str, device: torch.device, state_size=None, conv_kernel=None) -> str:
    """Map "auto" to a concrete implementation for tensors on `device`; check that "cuda" can run there.

    `state_size` and `conv_kernel` (the model's, when known) are checked against what the CUDA kernels
    support: "auto" then falls back (one warning) and "cuda" raises a ValueError.
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"Unknown selective-scan implementation {implementation!r}; expected one of {IMPLEMENTATIONS}.")
    if implementation == "auto":
        if device.type == "cuda":
            return _auto_on_cuda(device, state_size, conv_kernel)
        return "native" if device.type == "cpu" and native_scan_available() else "fast"
    if implementation == "cuda":
        if device.type != "cuda":
            raise ValueError(f"scan_implementation='cuda' needs CUDA tensors; got tensors on {device}.")
        limits = cuda_kernel_limits_problem(state_size, conv_kernel)
        if limits:
            raise ValueError(
                f"scan_implementation='cuda': {limits}. Use scan_implementation='auto' (falls back to "
                "'triton' or 'fast') or sizes the kernels support."
            )
        problem = cuda_kernels_problem(device)
        if problem:
            raise ImportError(
                f"scan_implementation='cuda': the mamba-ssm / causal-conv1d kernels are {problem}. Install both "
                "with `pip install .[cuda]`, or use scan_implementation='auto' to fall back."
            )
    if implementation == "triton":
        return _triton_or_fast(device)
    if implementation == "native" and device.type == "cpu" and not native_scan_available():
        return "fast"  # native_scan_available() has warned once
    return implementation


__all__ = [
    "cuda_kernels_available",
    "cuda_kernels_problem",
    "resolve_implementation",
    "triton_available",
    "triton_problem",
]
