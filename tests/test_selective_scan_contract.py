"""`selective_scan` as mamba-ssm's `selective_scan_fn`: mamba-ssm's own test grid, against its own reference.

mamba-ssm's tests/ops/test_selective_scan.py checks its CUDA kernel against `selective_scan_ref`, its
pure-PyTorch reference. Here the same grid runs on our CPU implementations, against that same function
(imported from the installed mamba-ssm sdist without its compiled module, see cuda_kernel_stand_ins):

- B and C constant (dim, dstate) or variable (batch, dstate, L), or variable in 2 groups (both variable);
- with and without D, z, delta_bias, delta_softplus and return_last_state;
- u, delta, z and variable B/C in fp32, fp16 or bf16; A, D, delta_bias and constant B/C in fp32;
- batch 2, dim 4, dstate 8 and mamba-ssm's input distributions (A = -0.5 rand, delta = 0.5 rand,
  delta_bias = 0.5 rand, the rest standard normal), seed 0;
- the output, the last state and every input gradient (of y alone, as mamba-ssm's test takes them) at
  mamba-ssm's tolerances for each input dtype.

That is 5 B/C layouts x 32 flag combinations x 3 dtypes = 480 cases. mamba-ssm runs them at lengths
128..4096; its reference (a Python loop per token) takes ~4 s at 4096 here, so the whole grid runs at a
short length with the scans' block sizes shrunk to match (several blocks and a ragged tail), on the
"fast" and "native" paths; our own "reference" runs a subset (every layout and dtype, all flags on and
all off); Triton (in its CPU interpreter without CUDA) two cases; and mamba-ssm's own lengths run with its default
flags (everything on) on "fast" and "native", 128 in CI, 256 to 4096 with VIDEOMAMBA_LONG_TESTS=1.
"""

import functools
import importlib
import itertools
import os
import warnings

import pytest
import torch
from cuda_kernel_stand_ins import install, packages_missing, uninstall

from modeling_videomamba import native_scan
from modeling_videomamba.selective_scan import selective_scan

scan_module = importlib.import_module("modeling_videomamba.selective_scan")

pytestmark = pytest.mark.skipif(
    bool(packages_missing()),
    reason=f"needs {packages_missing()} installed without their CUDA build (`make setup` does it: see the Makefile)",
)

# (variable B, variable C, groups): groups > 1 only with both variable, as in mamba-ssm's grid.
LAYOUTS = [(False, False, 1), (False, True, 1), (True, False, 1), (True, True, 1), (True, True, 2)]
FLAGS = ("has_D", "has_z", "has_delta_bias", "delta_softplus", "return_last_state")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# mamba-ssm's (rtol, atol) per input dtype, and for the weights' gradients.
TOLERANCES = {torch.float32: (6e-4, 2e-3), torch.float16: (3e-3, 5e-3), torch.bfloat16: (3e-2, 5e-2)}
WEIGHT_TOLERANCE = (1e-3, 1e-3)
BATCH, DIM, DSTATE = 2, 4, 8
# The grid's length, and block sizes that make it span several blocks of both scans with a ragged tail.
SHORT_LENGTH, SHORT_BLOCK = 17, 8


def layout_id(layout):
    var_B, var_C, groups = layout
    return f"B{'var' if var_B else 'const'}-C{'var' if var_C else 'const'}-g{groups}"


def flags_id(flags):
    return "-".join(name.split("_", 1)[1] if value else "no" + name.split("_", 1)[1] for name, value in flags.items())


FLAG_GRID = [dict(zip(FLAGS, values)) for values in itertools.product((False, True), repeat=len(FLAGS))]
ALL_ON, ALL_OFF = dict.fromkeys(FLAGS, True), dict.fromkeys(FLAGS, False)


@pytest.fixture(scope="module")
def mamba_reference():
    """mamba-ssm's `selective_scan_ref` (imported without its CUDA module), given z in float32.

    The reference applies silu to z in z's own dtype, while mamba-ssm's CUDA kernel (like our scans)
    computes it in float32. At half precision and L >= 1024 that rounding alone moves dA past the
    tolerance (e.g. fp16, L = 1024: 0.9 absolute against the reference as is, 1e-3 once it gets the
    same z in float32, on |dA| ~ 4000), so the reference is handed z upcast: the same values, the
    kernel's arithmetic. The gradient of z still comes back in z's dtype (through the cast).
    """
    names = install()
    from mamba_ssm.ops.selective_scan_interface import selective_scan_ref

    def reference(u, delta, A, B, C, D=None, z=None, **kwargs):
        return selective_scan_ref(u, delta, A, B, C, D, z=None if z is None else z.float(), **kwargs)

    yield reference
    uninstall(names)


def make_case(layout, itype, length, seed=0):
    """mamba-ssm's test inputs for one case: {name: leaf tensor} (D, z, delta_bias always made)."""
    var_B, var_C, groups = layout
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape, dtype=torch.float32):
        return torch.rand(*shape, generator=generator).to(dtype)

    def randn(*shape, dtype=torch.float32):
        return torch.randn(*shape, generator=generator).to(dtype)

    def bc(variable):
        if not variable:
            return randn(DIM, DSTATE)
        shape = (BATCH, DSTATE, length) if groups == 1 else (BATCH, groups, DSTATE, length)
        return randn(*shape, dtype=itype)

    return {
        "A": -0.5 * rand(DIM, DSTATE),
        "B": bc(var_B),
        "C": bc(var_C),
        "D": randn(DIM),
        "z": randn(BATCH, DIM, length, dtype=itype),
        "delta_bias": 0.5 * rand(DIM),
        "u": randn(BATCH, DIM, length, dtype=itype),
        "delta": 0.5 * rand(BATCH, DIM, length, dtype=itype),
    }


def run(function, case, flags, **kwargs):
    """Outputs (y and, when asked, the last state) and the gradients of <y, g> for a fixed random g."""
    leaves = {name: tensor.clone().requires_grad_() for name, tensor in case.items()}
    optional = {
        "D": leaves["D"] if flags["has_D"] else None,
        "z": leaves["z"] if flags["has_z"] else None,
        "delta_bias": leaves["delta_bias"] if flags["has_delta_bias"] else None,
    }
    result = function(
        leaves["u"], leaves["delta"], leaves["A"], leaves["B"], leaves["C"], **optional,
        delta_softplus=flags["delta_softplus"], return_last_state=flags["return_last_state"], **kwargs,
    )
    outputs = result if flags["return_last_state"] else (result,)
    g = torch.randn(outputs[0].shape, generator=torch.Generator().manual_seed(1)).to(outputs[0].dtype)
    used = [name for name in leaves if optional.get(name, True) is not None]
    grads = torch.autograd.grad(outputs[0], [leaves[name] for name in used], g)
    return [out.detach() for out in outputs], dict(zip(used, grads))


def gradient_tolerances(itype, has_z, var_B, var_C):
    """mamba-ssm's per-gradient (rtol, atol): looser for u and delta, the weights' with z looser still."""
    rtol, atol = TOLERANCES[itype]
    rtolw, atolw = WEIGHT_TOLERANCE
    if has_z:
        rtolw, atolw = max(rtolw, rtol), max(atolw, atol)
    weights = (rtolw, atolw)
    return {
        "u": (2 * rtol, 2 * atol),
        "delta": (5 * rtol, 10 * atol),
        "A": (rtolw, 5 * atolw),
        "B": (rtol, atol) if var_B else weights,
        "C": (rtol, atol) if var_C else weights,
        "D": weights,
        "z": weights,
        "delta_bias": weights,
    }


@functools.lru_cache(maxsize=None)
def _expected(reference, layout, itype, length, flags_key):
    return run(reference, make_case(layout, itype, length), dict(flags_key))


def assert_matches_mamba_reference(reference, implementation, layout, itype, length, flags):
    """Our `selective_scan` with `implementation` equals mamba-ssm's reference within its tolerances."""
    case = make_case(layout, itype, length)
    expected_out, expected_grads = _expected(reference, layout, itype, length, tuple(flags.items()))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no silent fallback to another implementation
        out, grads = run(selective_scan, case, flags, implementation=implementation)
    rtol, atol = TOLERANCES[itype]
    assert out[0].dtype == itype, "y comes back in u's dtype"
    torch.testing.assert_close(out[0], expected_out[0], rtol=rtol, atol=atol, msg=lambda m: f"y: {m}")
    if flags["return_last_state"]:
        assert out[1].shape == (BATCH, DIM, DSTATE)
        torch.testing.assert_close(out[1], expected_out[1], rtol=rtol, atol=atol, msg=lambda m: f"last state: {m}")
    tolerances = gradient_tolerances(itype, flags["has_z"], layout[0], layout[1])
    assert grads.keys() == expected_grads.keys()
    for name, grad in grads.items():
        assert grad.dtype == case[name].dtype, f"grad {name} in its input's dtype"
        rtol, atol = tolerances[name]
        torch.testing.assert_close(
            grad, expected_grads[name], rtol=rtol, atol=atol, msg=lambda m, name=name: f"grad {name}: {m}"
        )


@pytest.fixture
def short_blocks(monkeypatch):
    """Blocks of SHORT_BLOCK tokens in the fast scan and the native scan's backward checkpoints."""
    monkeypatch.setattr(scan_module, "BLOCK_SIZE", SHORT_BLOCK)
    monkeypatch.setattr(native_scan, "CHECKPOINT_EVERY", SHORT_BLOCK)


@pytest.fixture
def native_built():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if native_scan.load_native_scan() is None:
            pytest.skip(f"the native scan could not be built here: {native_scan._failure or 'disabled by env'}")


def assert_flag_grid_matches(reference, implementation, layout, itype, flag_grid, length=SHORT_LENGTH):
    """`assert_matches_mamba_reference` over every flag combination; the failure lists each failing one."""
    failures = []
    for flags in flag_grid:
        try:
            assert_matches_mamba_reference(reference, implementation, layout, itype, length, flags)
        except AssertionError as error:
            failures.append(f"{flags_id(flags)}: {str(error).splitlines()[0]}")
    assert not failures, f"{len(failures)} of {len(flag_grid)} flag combinations fail:\n" + "\n".join(failures)


# One test per implementation, layout and dtype, each over the 32 flag combinations (one pytest item per
# case would cost more in pytest's overhead than in the scans).
@pytest.mark.parametrize("itype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("layout", LAYOUTS, ids=layout_id)
@pytest.mark.parametrize("implementation", ["fast", "native"])
def test_mamba_grid(mamba_reference, short_blocks, request, implementation, layout, itype):
    if implementation == "native":
        request.getfixturevalue("native_built")
    assert_flag_grid_matches(mamba_reference, implementation, layout, itype, FLAG_GRID)


@pytest.mark.parametrize("itype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("layout", LAYOUTS, ids=layout_id)
def test_mamba_grid_on_our_reference(mamba_reference, layout, itype):
    assert_flag_grid_matches(mamba_reference, "reference", layout, itype, [ALL_ON, ALL_OFF])


# mamba-ssm's own lengths with its default flags (all on). Past 128 its reference takes a large part of
# a second and more (about 4 s a case at 4096; the whole long run 7-14 minutes), so those run only
# when asked for.
LONG_LENGTHS = (256, 512, 1024, 2048, 4096)


@pytest.mark.parametrize("itype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("layout", LAYOUTS, ids=layout_id)
def test_mamba_length_128_fast_and_native(mamba_reference, native_built, layout, itype):
    for implementation in ("fast", "native"):
        assert_matches_mamba_reference(mamba_reference, implementation, layout, itype, 128, ALL_ON)


@pytest.mark.skipif(
    os.environ.get("VIDEOMAMBA_LONG_TESTS", "0") == "0",
    reason=f"mamba-ssm's lengths {LONG_LENGTHS} take 7-14 minutes; set VIDEOMAMBA_LONG_TESTS=1",
)
def test_mamba_long_lengths_fast_and_native(mamba_reference, native_built):
    failures = []
    for length, layout, itype, implementation in itertools.product(
        LONG_LENGTHS, LAYOUTS, DTYPES.values(), ("fast", "native")
    ):
        try:
            assert_matches_mamba_reference(mamba_reference, implementation, layout, itype, length, ALL_ON)
        except AssertionError as error:
            failures.append(f"L={length} {layout_id(layout)} {itype} {implementation}: {str(error).splitlines()[0]}")
    assert not failures, "\n".join(failures)


def test_constant_B_C_are_expanded_to_one_group_per_channel():
    # A constant B differs per channel: it must not be read as one group shared by all channels.
    case = make_case((False, False, 1), torch.float32, 6)
    B_per_channel = case["B"][None, :, :, None].expand(BATCH, -1, -1, 6)
    C_per_channel = case["C"][None, :, :, None].expand(BATCH, -1, -1, 6)
    args = (case["u"], case["delta"], case["A"])
    for implementation in ("reference", "fast"):
        constant = selective_scan(*args, case["B"], case["C"], implementation=implementation)
        grouped = selective_scan(*args, B_per_channel, C_per_channel, implementation=implementation)
        torch.testing.assert_close(constant, grouped, rtol=0, atol=0)


def test_constant_B_of_the_wrong_shape_is_refused_naming_the_layouts():
    case = make_case((False, True, 1), torch.float32, 5)
    with pytest.raises(ValueError, match=r"input-independent \(4, 8\); got \(5, 8\)"):
        selective_scan(case["u"], case["delta"], case["A"], torch.randn(5, DSTATE), case["C"], implementation="fast")


@pytest.mark.parametrize("implementation", ["reference", "fast", "native", "triton", "auto"])
def test_complex_A_is_refused_saying_A_must_be_real(implementation):
    case = make_case((True, True, 1), torch.float32, 5)
    A = torch.complex(case["A"], torch.ones_like(case["A"]))
    with pytest.raises(ValueError, match=r"real A .*got A of dtype torch.complex64.*A must be real"):
        selective_scan(case["u"], case["delta"], A, case["B"], case["C"], implementation=implementation)


def test_complex_B_is_refused():
    case = make_case((False, True, 1), torch.float32, 5)
    B = torch.complex(case["B"], case["B"])
    with pytest.raises(ValueError, match="expects a real B; got torch.complex64"):
        selective_scan(case["u"], case["delta"], case["A"], B, case["C"], implementation="fast")


def test_lower_level_functions_refuse_complex_A_too():
    case = make_case((True, True, 1), torch.float32, 5)
    A = torch.complex(case["A"], case["A"])
    args = (case["u"], case["delta"], A, case["B"], case["C"])
    with pytest.raises(ValueError, match="selective_scan_reference expects a real A"):
        scan_module.selective_scan_reference(*args)
    tokens_first = (case["u"].transpose(1, 2), case["delta"].transpose(1, 2), A,
                    case["B"].permute(0, 2, 1).unsqueeze(2), case["C"].permute(0, 2, 1).unsqueeze(2))
    with pytest.raises(ValueError, match="selective_scan_tokens_first expects a real A"):
        scan_module.selective_scan_tokens_first(*tokens_first)


@pytest.mark.parametrize(
    "layout,itype", [((False, True, 1), torch.float32), ((True, True, 2), torch.bfloat16)],
    ids=["Bconst-Cvar-fp32", "Bvar-Cvar-g2-bf16"],
)
def test_mamba_cases_on_triton(mamba_reference, layout, itype):
    """Two cases on the Triton kernels, all flags on. Without CUDA they run in Triton's CPU interpreter,
    a Python loop per program and token (about 10 s a case here), hence few and short; the kernels
    themselves are tested in test_triton_scan.py. A constant B makes one B/C group per channel there."""
    pytest.importorskip("triton", reason="triton is not installed (pip install .[triton])")
    assert_flag_grid_matches(mamba_reference, "triton", layout, itype, [ALL_ON], length=6)
