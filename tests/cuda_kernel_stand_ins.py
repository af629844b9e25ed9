"""mamba-ssm's and causal-conv1d's compiled CUDA extensions, stood in for by the packages' own references.

The two packages (installed from their sdists without building, see the Makefile) hold their Python
interfaces, the autograd Functions our mixer calls, next to pure-PyTorch references
(`selective_scan_ref`, `causal_conv1d_ref`). Only the compiled modules `selective_scan_cuda` and
`causal_conv1d_cuda` are missing on a CPU machine. Here each is replaced by a module whose functions
have the compiled ones' signatures, check the argument contract the CUDA sources check (dtypes,
shapes, strides; everything but the device), record the call, and compute with the reference (the
backward by autograd through the reference). So our calls run through the packages' real Python
wrappers on CPU tensors.
"""

import importlib
import importlib.util
import sys
import types
from concurrent.futures import ThreadPoolExecutor

import torch

# What each compiled kernel received, appended per call:
# [(function name, {argument: (shape, dtype, strides, storage offset)})].
CALLS = []

_SCAN_INPUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def packages_missing() -> str:
    """Which of the two packages is not installed ("" when both are)."""
    missing = [name for name in ("mamba_ssm", "causal_conv1d", "einops") if importlib.util.find_spec(name) is None]
    return ", ".join(missing)


def _describe(**tensors):
    return {
        name: (tuple(t.shape), t.dtype, t.stride(), t.storage_offset()) for name, t in tensors.items() if t is not None
    }


def _check(condition, message):
    if not condition:
        raise RuntimeError(f"CUDA kernel contract violated: {message}")


def _check_scan_arguments(u, delta, A, B, C, D, z, delta_bias):
    """The checks of mamba-ssm's csrc/selective_scan/selective_scan.cpp (fwd and bwd), device aside."""
    batch, dim, length = u.shape
    _check(u.dtype in _SCAN_INPUT_DTYPES, f"u dtype {u.dtype}")
    _check(A.dtype == torch.float32, f"A must be float32, got {A.dtype}")
    _check(delta.dtype == u.dtype, f"delta dtype {delta.dtype} != u dtype {u.dtype}")
    _check(u.stride(-1) == 1 and delta.stride(-1) == 1, "u and delta need stride 1 along the length")
    _check(tuple(delta.shape) == (batch, dim, length), f"delta shape {tuple(delta.shape)}")
    _check(A.dim() == 2 and A.shape[0] == dim, f"A shape {tuple(A.shape)}")
    _check(A.shape[1] <= 256, f"selective_scan only supports state dimension <= 256, got {A.shape[1]}")
    for name, BC in (("B", B), ("C", C)):
        # The Python wrapper turns (batch, N, L) into (batch, 1, N, L) before calling the kernel.
        _check(BC.dim() == 4 and BC.shape[0] == batch and BC.shape[2:] == (A.shape[1], length), f"{name} shape")
        _check(dim % BC.shape[1] == 0, f"{name} groups {BC.shape[1]} must divide dim {dim}")
        _check(BC.dtype == u.dtype, f"{name} dtype {BC.dtype} != u dtype {u.dtype}")
        _check(BC.stride(-1) == 1, f"{name} needs stride 1 along the length")
    for name, vector in (("D", D), ("delta_bias", delta_bias)):
        if vector is not None:
            _check(vector.dtype == torch.float32, f"{name} must be float32, got {vector.dtype}")
            _check(tuple(vector.shape) == (dim,) and vector.stride(-1) == 1, f"{name} shape {tuple(vector.shape)}")
    if z is not None:
        _check(z.dtype == u.dtype and tuple(z.shape) == (batch, dim, length) and z.stride(-1) == 1, "z")


def _selective_scan_stand_in():
    from mamba_ssm.ops.selective_scan_interface import selective_scan_ref

    def fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        _check_scan_arguments(u, delta, A, B, C, D, z, delta_bias)
        described = _describe(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias)
        CALLS.append(("selective_scan_fwd", described))
        out, last_state = selective_scan_ref(u, delta, A, B, C, D, None, delta_bias, delta_softplus, True)
        # The kernel's chunk states: the wrapper reads the last state as x[:, :, -1, 1::2].
        x = last_state.new_zeros(*last_state.shape[:2], 1, 2 * last_state.shape[2])
        x[:, :, -1, 1::2] = last_state
        if z is None:
            return out, x
        return out, x, selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus)

    def bwd(u, delta, A, B, C, D, z, delta_bias, dout, x, out, dz, delta_softplus, recompute_out_z):
        _check_scan_arguments(u, delta, A, B, C, D, z, delta_bias)
        _check(dout.dtype == u.dtype and dout.stride(-1) == 1, f"dout dtype {dout.dtype} / strides {dout.stride()}")
        CALLS.append(("selective_scan_bwd", _describe(u=u, dout=dout)))
        inputs = [t.detach().requires_grad_() if t is not None else None for t in (u, delta, A, B, C, D, z, delta_bias)]
        with torch.enable_grad():
            y = selective_scan_ref(*inputs, delta_softplus=delta_softplus)
        leaves = [t for t in inputs if t is not None]
        grads = iter(torch.autograd.grad(y, leaves, dout))
        du, ddelta, dA, dB, dC, dD, dz_, ddelta_bias = (next(grads) if t is not None else None for t in inputs)
        # The kernel returns dB, dC, dD and ddelta_bias in float32 (autograd casts them to the input dtypes).
        result = [du, ddelta, dA, dB.float(), dC.float(), dD, ddelta_bias]
        return result + ([dz_] if z is not None else [])

    return types.SimpleNamespace(fwd=fwd, bwd=bwd)


def _vector_elements(t):
    """Elements per 16-byte vector the conv kernels load (4 in fp32, 8 in 16-bit types)."""
    return 4 if t.element_size() == 4 else 8


def _is_channel_last(x):
    return x.stride(1) == 1 and x.stride(2) > 1


def _check_conv_layout(name, t, channel_last):
    """What the kernels assume of x, out, dout and dx beyond what causal_conv1d.cpp checks: the
    channel-first kernel indexes the length with stride 1, the channel-last one the channels with
    stride 1, and both move 16-byte vectors (channel-first only when the length is a multiple of the
    vector), so every vector must start 16-byte aligned."""
    batch, dim, length = t.shape
    vector = _vector_elements(t)
    _check(t.storage_offset() % vector == 0,
           f"{name} starts {t.storage_offset()} elements into its storage, not 16-byte aligned")
    if channel_last:
        _check(t.stride(1) == 1, f"channel-last {name} needs stride 1 along the channels, got strides {t.stride()}")
        _check(t.stride(0) % 8 == 0 and t.stride(2) % 8 == 0,
               f"channel-last {name} strides {t.stride()} not multiples of 8")
    else:
        _check(t.stride(2) == 1 or length == 1,
               f"channel-first {name} needs stride 1 along the length, got {t.stride()}")
        if length % vector == 0:
            _check(t.stride(0) % vector == 0 and t.stride(1) % vector == 0,
                   f"channel-first {name} strides {t.stride()} break the kernel's 16-byte vector loads")


def _check_conv_arguments(x, weight, bias):
    """The checks of causal-conv1d's csrc/causal_conv1d.cpp, device aside."""
    batch, dim, length = x.shape
    _check(x.dtype in _SCAN_INPUT_DTYPES and weight.dtype in _SCAN_INPUT_DTYPES, "x / weight dtype")
    _check(weight.dim() == 2 and weight.shape[0] == dim, f"weight {tuple(weight.shape)}")
    _check(2 <= weight.shape[1] <= 4, f"causal_conv1d only supports width between 2 and 4, got {weight.shape[1]}")
    _check(x.stride(2) == 1 or x.stride(1) == 1, f"x strides {x.stride()}")
    if _is_channel_last(x):
        _check(dim % 8 == 0, f"causal_conv1d only supports channel dimension divisible by 8, got {dim}")
    _check_conv_layout("x", x, _is_channel_last(x))
    if bias is not None:
        _check(bias.dtype == weight.dtype and bias.stride(-1) == 1 and tuple(bias.shape) == (dim,), "bias")


def _causal_conv1d_stand_in():
    from causal_conv1d.causal_conv1d_interface import causal_conv1d_ref

    def causal_conv1d_fwd(x, weight, bias, seq_idx, initial_states, out, final_states_out, silu_activation):
        _check_conv_arguments(x, weight, bias)
        _check(out.shape == x.shape and out.dtype == x.dtype, "out")
        _check_conv_layout("out", out, _is_channel_last(x))
        CALLS.append(("causal_conv1d_fwd", _describe(x=x, weight=weight, bias=bias, out=out)))
        out.copy_(causal_conv1d_ref(x, weight, bias, initial_states, activation="silu" if silu_activation else None))

    def causal_conv1d_bwd(
        x, weight, bias, dout, seq_idx, initial_states, dfinal_states, dx, dweight, dbias, dinitial_states,
        silu_activation,
    ):
        _check_conv_arguments(x, weight, bias)
        channel_last = _is_channel_last(x)
        # causal_conv1d.cpp makes dout match x's layout before checking it
        if not channel_last and dout.stride(2) != 1:
            dout = dout.contiguous()
        if channel_last and dout.stride(1) != 1:
            dout = dout.transpose(-1, -2).contiguous().transpose(-1, -2)
        _check_conv_layout("dout", dout, channel_last)
        _check(dx.shape == x.shape and dx.dtype == x.dtype, "dx")
        _check_conv_layout("dx", dx, channel_last)
        CALLS.append(("causal_conv1d_bwd", _describe(x=x, dout=dout, dx=dx)))
        leaves = [t.detach().requires_grad_() for t in (x, weight) + ((bias,) if bias is not None else ())]

        def gradients():
            y = causal_conv1d_ref(*leaves[:2], leaves[2] if bias is not None else None,
                                  activation="silu" if silu_activation else None)
            return torch.autograd.grad(y, leaves, dout)

        # causal-conv1d wraps its kernels in torch.library custom ops, which run below the autograd
        # dispatch key: autograd records nothing in this thread, so the reference is differentiated in
        # a fresh one.
        with ThreadPoolExecutor(1) as pool:
            grads = pool.submit(gradients).result()
        dx.copy_(grads[0])
        dweight.copy_(grads[1])
        if bias is not None:
            dbias.copy_(grads[2])

    return types.SimpleNamespace(causal_conv1d_fwd=causal_conv1d_fwd, causal_conv1d_bwd=causal_conv1d_bwd)


def _mixer_view(batch, length, dim, **device):
    """x as the mixer hands it to the conv: a channel-last view (batch, dim, length) of the input projection."""
    return torch.randn(batch, length, 2 * dim, **device).transpose(1, 2).chunk(2, dim=1)[0]


def _misaligned(batch, dim, length, **device):
    """Channel-first contiguous, but starting one element into its storage (not 16-byte aligned)."""
    return torch.randn(batch * dim * length + 1, **device)[1:].view(batch, dim, length)


# Inputs of causal_conv1d(..., use_kernel=True): name -> (x factory taking device=..., whether the
# kernel may take x as it is). tests/test_cuda_path_contract.py runs them through the stand-ins,
# tests/test_selective_scan.py (gpu) through the real kernel.
CONV_LAYOUTS = {
    "mixer view, dim % 8 == 0": (lambda **device: _mixer_view(2, 9, 16, **device), True),
    "mixer view, dim % 8 != 0": (lambda **device: _mixer_view(2, 9, 12, **device), False),
    "length 1, looks channel-last": (lambda **device: _mixer_view(1, 1, 12, **device), False),
    "not 16-byte aligned": (lambda **device: _misaligned(2, 12, 8, **device), False),
    "channel-first contiguous": (lambda **device: torch.randn(2, 12, 9, **device), True),
}


def conv_output_and_grads(x, weight, bias, use_kernel):
    """[out, dx's storage, dweight, dbias] of causal_conv1d on x (its strides and offset kept: the
    gradient is taken w.r.t. x's whole storage) with loss sum(out^2)."""
    from modeling_videomamba.selective_scan import causal_conv1d

    storage = x if x._base is None else x._base
    leaves = [t.detach().clone().requires_grad_() for t in (storage, weight, bias)]
    out = causal_conv1d(leaves[0].as_strided(x.size(), x.stride(), x.storage_offset()), *leaves[1:],
                        use_kernel=use_kernel)
    out.float().square().sum().backward()
    return [out] + [leaf.grad for leaf in leaves]


def _bare_package(name):
    """The package `name` without running its __init__ (mamba-ssm's imports its Triton/TileLang models)."""
    spec = importlib.util.find_spec(name)
    package = types.ModuleType(name)
    package.__path__ = list(spec.submodule_search_locations)
    package.__spec__ = spec
    return package


def install():
    """Put the stand-ins in sys.modules and import the two interfaces; returns the names added (to remove)."""
    added = {}
    placeholder = types.ModuleType("selective_scan_cuda")  # filled below, once the reference is importable
    conv_placeholder = types.ModuleType("causal_conv1d_cuda")
    added["selective_scan_cuda"] = placeholder
    added["causal_conv1d_cuda"] = conv_placeholder
    if "mamba_ssm" not in sys.modules:
        added["mamba_ssm"] = _bare_package("mamba_ssm")
    try:
        import triton  # noqa: F401
    except ImportError:
        # selective_scan_interface imports a Triton layer norm it does not use for the scan.
        layer_norm = types.ModuleType("mamba_ssm.ops.triton.layer_norm")
        layer_norm._layer_norm_fwd = None
        added["mamba_ssm.ops.triton.layer_norm"] = layer_norm
    before = set(sys.modules)
    sys.modules.update({name: module for name, module in added.items() if name not in sys.modules})
    vars(conv_placeholder).update(vars(_causal_conv1d_stand_in()))
    vars(placeholder).update(vars(_selective_scan_stand_in()))
    importlib.import_module("causal_conv1d")
    return sorted(set(sys.modules) - before | set(added))


def uninstall(names):
    for name in names:
        sys.modules.pop(name, None)
