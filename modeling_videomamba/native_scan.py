"""The optional compiled CPU selective scan ("native"): building, loading and its custom ops (with autograd).

The C++ sources ship as package data (csrc/selective_scan_cpu.cpp, the scan; csrc/mixer_cpu.cpp, the
mixer's fused inference ops; csrc/packs.h, shared by both) and are compiled into one library on first use by
`torch.utils.cpp_extension.load` into the torch extensions cache (~/.cache/torch_extensions, or
$TORCH_EXTENSIONS_DIR), so later processes only load the built library. Nothing is built at import.

The cache entry's name carries a hash of the sources, torch's version, the Python ABI, the compiler
flags and the CPU's vector capability, so checkouts, venvs and machines never rebuild over each other.
A build runs under a lock of our own (an OS file lock, released by the kernel if the process dies) and
is marked complete only once its library loads; later processes import a completed library directly,
without ninja, a compiler or any lock. Under our lock, a lock file torch left in the build directory
can only be a crashed build's, so it is removed (torch itself would wait on it forever). A process
waits at most VIDEOMAMBA_NATIVE_SCAN_WAIT seconds (default 600) for another process's build.

A build is attempted at most once per process: if it fails (no compiler, no ninja, a timeout) one
warning is issued and callers fall back to the pure-PyTorch "fast" scan. VIDEOMAMBA_NATIVE_SCAN=0
disables the native scan altogether (no build is attempted).
"""

import contextlib
import hashlib
import importlib.util
import os
import shlex
import shutil
import sys
import sysconfig
import time
import warnings
from pathlib import Path
from typing import Optional

import torch
from transformers.utils import logging

from .flops import register_scan_flops

logger = logging.get_logger(__name__)

SOURCE = Path(__file__).resolve().parent / "csrc" / "selective_scan_cpu.cpp"
# Compiled into the same library as SOURCE (the header is included by both .cpp files).
EXTRA_SOURCES = ("mixer_cpu.cpp", "packs.h")
ENV_VAR = "VIDEOMAMBA_NATIVE_SCAN"
WAIT_ENV_VAR = "VIDEOMAMBA_NATIVE_SCAN_WAIT"
# How long a process waits for another one's build of the same library before giving up (seconds).
DEFAULT_WAIT = 600.0
# Written into the build directory once the library built and loaded: its presence means "complete".
DONE_MARKER = "built.ok"
# Tokens between the states the forward keeps for the backward: the backward recomputes a block's
# states from them, so memory is O(L / CHECKPOINT_EVERY * dim * N) instead of O(L * dim * N).
CHECKPOINT_EVERY = 64

_module = None
_failure = None  # the reason the one build attempt of this process failed, if it did


class NativeBuildError(RuntimeError):
    """The native scan cannot be built here; the message says what is missing."""


def native_scan_enabled() -> bool:
    """False when the environment variable VIDEOMAMBA_NATIVE_SCAN is set to 0."""
    return os.environ.get(ENV_VAR, "1").strip() != "0"


def _build_options():
    """(cflags, ldflags, capability tag) for this CPU.

    The kernel's 16-lane tiles fill one AVX-512 register or two AVX2 ones.
    """
    capability = torch.backends.cpu.get_cpu_capability()
    vector_flags = {
        "AVX512": ["-mavx2", "-mfma", "-mavx512f", "-mavx512dq", "-mavx512vl", "-mprefer-vector-width=512"],
        "AVX2": ["-mavx2", "-mfma"],
    }.get(capability, [])
    # -fno-trapping-math lets GCC turn exp's clamps into selects, which the lane loops need to vectorise.
    cflags = ["-O3", "-fno-trapping-math", "-fopenmp"] + vector_flags
    return cflags, ["-fopenmp"], capability.lower() if vector_flags else "generic"


def build_name(source: bytes = None) -> str:
    """The cache entry's name: videomamba_selective_scan_cpu_<capability>_<hash>.

    The hash covers everything the library depends on: the C++ sources (`source`: their bytes, default
    the files' as `_read_sources` joins them), torch's version (its headers and ABI), the Python ABI
    (the module is a CPython extension) and the compiler flags.
    """
    cflags, ldflags, capability = _build_options()
    if source is None:
        source = _joined(_read_sources())
    digest = hashlib.sha256(source)
    for part in (torch.__version__, sys.implementation.cache_tag, sysconfig.get_config_var("SOABI") or "",
                 " ".join(cflags + ldflags)):
        digest.update(b"\0" + str(part).encode())
    return f"videomamba_selective_scan_cpu_{capability}_{digest.hexdigest()[:12]}"


def _source_paths() -> list:
    """The files the library is built from: SOURCE first, then EXTRA_SOURCES beside it."""
    return [SOURCE] + [SOURCE.with_name(name) for name in EXTRA_SOURCES]


def _read_sources() -> dict:
    """{file name: bytes} of the library's sources."""
    return {path.name: path.read_bytes() for path in _source_paths()}


def _joined(sources: dict) -> bytes:
    """One byte string naming and holding every source (what the build name hashes)."""
    return b"".join(name.encode() + b"\0" + content + b"\0" for name, content in sources.items())


def build_directory(name: str) -> Path:
    """Where `name` is built: $TORCH_EXTENSIONS_DIR/<name>, else torch's default root/<name>.

    The name already separates Python and torch versions, so no per-interpreter subfolder is needed.
    """
    from torch.utils.cpp_extension import get_default_build_root

    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()) / name


def _is_cached(directory: Path) -> bool:
    """Whether `directory` holds a completed build (so loading is quick and needs no toolchain)."""
    return (directory / DONE_MARKER).is_file() and (directory / f"{directory.name}.so").is_file()


def _import_library(directory: Path):
    """Import the built extension module <directory>/<name>.so."""
    name = directory.name
    spec = importlib.util.spec_from_file_location(name, directory / f"{name}.so")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _ninja_folder():
    """The folder holding a `ninja` executable: "" when it is already on PATH.

    torch runs `ninja` through PATH, but a venv's bin folder (where the `ninja` dependency installs it)
    is not on PATH when Python is started by its full path.
    """
    if shutil.which("ninja") is not None:
        return ""
    candidates = [os.path.dirname(sys.executable)]
    with contextlib.suppress(ImportError):
        import ninja

        candidates.insert(0, getattr(ninja, "BIN_DIR", ""))
    found = next((folder for folder in candidates if folder and shutil.which("ninja", path=folder)), None)
    if found is None:
        raise NativeBuildError("the `ninja` build tool was not found (pip install ninja)")
    return found


@contextlib.contextmanager
def _on_path(folder: str):
    """Prepend `folder` to PATH for the duration (nothing when it is "")."""
    if not folder:
        yield
        return
    previous = os.environ.get("PATH")
    os.environ["PATH"] = folder + os.pathsep + (previous or "")
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("PATH", None)
        else:
            os.environ["PATH"] = previous


def _check_compiler():
    """Raise NativeBuildError naming the compiler when torch's C++ compiler ($CXX, else c++) is absent."""
    command = os.environ.get("CXX", "c++")
    program = shlex.split(command)[0] if command.strip() else ""
    if not program or shutil.which(program) is None:
        raise NativeBuildError(
            f"no C++ compiler found (CXX={command!r} is not an executable)"
            if "CXX" in os.environ
            else "no C++ compiler found (`c++` is not on PATH; install g++ or clang, or set CXX)"
        )


@contextlib.contextmanager
def _exclusive(lock_path: Path, timeout: float):
    """Hold an exclusive OS lock on `lock_path`, waiting at most `timeout` seconds for it; yields whether
    an OS lock is held (False where flock does not exist).

    flock locks belong to the open file: the kernel drops them when their process exits, however it
    exits, so a killed build never leaves this lock behind (unlike torch's lock file).
    """
    try:
        import fcntl
    except ImportError:  # no flock (Windows): rely on torch's own lock file
        yield False
        return
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise NativeBuildError(
                        f"another process has been building the native scan for over {timeout:.0f} s (lock "
                        f"{lock_path}); set {WAIT_ENV_VAR} to wait longer"
                    ) from None
                time.sleep(0.2)
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _wait_seconds() -> float:
    value = os.environ.get(WAIT_ENV_VAR, "")
    try:
        return float(value) if value.strip() else DEFAULT_WAIT
    except ValueError:
        raise NativeBuildError(f"{WAIT_ENV_VAR} must be a number of seconds; got {value!r}") from None


def _compile(directory: Path, sources: dict, ninja_folder: str, locked: bool = True):
    """Build the library from `sources` ({file name: bytes}) into `directory` with torch and import it;
    `locked`: we hold our OS lock."""
    from torch.utils.cpp_extension import load

    stale = directory / "lock"
    if locked and stale.exists():
        # We hold the only lock under which this library is ever built: torch's lock file is a crashed
        # or killed build's leftover, and torch would wait on it forever.
        warnings.warn(
            f"Removing a stale build lock {stale} left by an interrupted build of the native CPU scan.",
            RuntimeWarning,
            stacklevel=4,
        )
        stale.unlink()
    # The sources are copied into the build directory so the build commands name the same files whatever
    # checkout or venv builds them: ninja then sees nothing to redo across them.
    for name, content in sources.items():
        copy = directory / name
        if not copy.is_file() or copy.read_bytes() != content:
            copy.write_bytes(content)
    cflags, ldflags, _ = _build_options()
    with _on_path(ninja_folder):
        module = load(
            name=directory.name,
            sources=[str(directory / name) for name in sources if name.endswith(".cpp")],
            extra_cflags=cflags,
            extra_ldflags=ldflags,
            build_directory=str(directory),
            verbose=False,
        )
    (directory / DONE_MARKER).write_text(f"torch {torch.__version__}, python {sys.version.split()[0]}\n")
    return module


def _build():
    """Load the completed build of this source, or build it now; raises when the toolchain fails."""
    sources = _read_sources()
    directory = build_directory(build_name(_joined(sources)))
    if _is_cached(directory):
        try:
            return _import_library(directory)
        except (ImportError, OSError) as error:  # a damaged library: build it again below
            logger.warning(f"The cached native CPU scan {directory} does not load ({error}); rebuilding it.")
            (directory / DONE_MARKER).unlink(missing_ok=True)
    # Checked before anything is written or announced, so a missing tool gives one clear warning.
    _check_compiler()
    ninja_folder = _ninja_folder()
    logger.warning(
        f"Compiling the native CPU selective scan once for this machine (about a minute); later runs load "
        f"it from torch's extensions cache. Set {ENV_VAR}=0 to use the pure-PyTorch scan instead."
    )
    directory.mkdir(parents=True, exist_ok=True)
    with _exclusive(directory.with_name(directory.name + ".lock"), _wait_seconds()) as locked:
        if _is_cached(directory):  # another process finished the build while we waited
            return _import_library(directory)
        return _compile(directory, sources, ninja_folder, locked)


def load_native_scan():
    """The compiled extension, building it on the first call; None when disabled or the build failed."""
    global _module, _failure
    if _module is not None:
        return _module
    if not native_scan_enabled() or _failure is not None:
        return None
    try:
        missing = [str(path) for path in _source_paths() if not path.is_file()]
        if missing:
            raise FileNotFoundError(f"the kernel sources {missing} are missing from the installed package")
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
# FlopCounterMode counts the ops by these formulas (see flops.py).
register_scan_flops(native_scan_forward, native_scan_backward)


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
