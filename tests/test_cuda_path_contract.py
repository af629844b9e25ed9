"""The "cuda" path's contract with mamba-ssm and causal-conv1d, checked on CPU.

The packages' Python interfaces run for real; only their compiled kernels are stood in for by the
packages' own pure-PyTorch references (see cuda_kernel_stand_ins.py), so the exact calls our mixer
makes (layouts, grouped B/C of the two directions, z gating, dtypes, dt bias and softplus inside the
kernel, gradients, the causal conv) are checked on every CI run. The model-level comparison is with
the "fast" path: the "reference" scan shares the mixer's (batch, channels, length) code with "cuda",
while "fast" computes the same block in its own token-major code, so a mistake in either shows.
"""

import importlib

import pytest
import torch
from cuda_kernel_stand_ins import CALLS, CONV_LAYOUTS, conv_output_and_grads, install, packages_missing, uninstall
from test_selective_scan import assert_close_relative, make_inputs, outputs_and_grads, set_scan

from modeling_videomamba import VideoMambaConfig, VideoMambaForVideoClassification
from modeling_videomamba import modeling_videomamba_blocks as blocks

# The package re-exports the function `selective_scan`, which shadows the submodule's attribute name.
scan_module = importlib.import_module("modeling_videomamba.selective_scan")
dispatch = importlib.import_module("modeling_videomamba.scan_dispatch")

pytestmark = pytest.mark.skipif(
    bool(packages_missing()),
    reason=f"needs {packages_missing()} installed without their CUDA build (`make setup` does it: see the Makefile)",
)


@pytest.fixture(scope="module")
def kernels():
    """The two packages importable on CPU, their compiled modules replaced by the references."""
    names = install()
    yield
    uninstall(names)


@pytest.fixture
def on_cuda_path(kernels, monkeypatch):
    """The mixer takes its "cuda" path on CPU tensors: the device check alone is bypassed (a "cuda"
    request is resolved as for a CUDA device whose kernel probe passed, so the size limits still apply)."""
    real = scan_module.resolve_implementation
    monkeypatch.setitem(dispatch._cuda_problem, ("cuda", 0), "")

    def resolve(implementation, device, **sizes):
        return real(implementation, torch.device("cuda") if implementation == "cuda" else device, **sizes)

    monkeypatch.setattr(blocks, "resolve_implementation", resolve)
    monkeypatch.setattr(scan_module, "resolve_implementation", resolve)
    CALLS.clear()


def tiny_model(**overrides):
    torch.manual_seed(0)
    sizes = dict(hidden_size=32, num_hidden_layers=2, image_size=32, patch_size=8, num_frames=4, num_labels=5)
    config = VideoMambaConfig(**{**sizes, **overrides})
    return VideoMambaForVideoClassification(config)


def logits_and_grads(model, implementation, pixel_values):
    set_scan(model, implementation)
    model.zero_grad()
    logits = model(pixel_values).logits
    logits.float().square().sum().backward()
    return logits.detach(), {name: param.grad.clone() for name, param in model.named_parameters()}


@pytest.mark.parametrize(
    "overrides",
    [
        {"token_order": "spatial_first"},
        {"token_order": "temporal_first"},
        # inner width 36, not a multiple of 8: the mixer's channel-last view must reach the conv as a copy
        {"hidden_size": 18},
    ],
)
def test_model_cuda_path_matches_fast_path_fp32(on_cuda_path, overrides):
    model = tiny_model(**overrides)
    pixel_values = torch.randn(2, 4, 3, 32, 32)
    ref_logits, ref_grads = logits_and_grads(model, "fast", pixel_values)
    logits, grads = logits_and_grads(model, "cuda", pixel_values)
    assert_close_relative(logits, ref_logits, 1e-5, "logits")
    for name, grad in ref_grads.items():
        assert_close_relative(grads[name], grad, 1e-4, f"grad {name}")
    called = [name for name, _ in CALLS]
    layers = model.config.num_hidden_layers
    # Per layer: one scan for both directions, one conv per direction; each forward and backward.
    assert called.count("selective_scan_fwd") == called.count("selective_scan_bwd") == layers
    assert called.count("causal_conv1d_fwd") == called.count("causal_conv1d_bwd") == 2 * layers


def test_mixer_calls_the_kernels_with_grouped_directions(on_cuda_path):
    model = tiny_model()
    set_scan(model, "cuda")
    with torch.no_grad():
        model(torch.randn(2, 4, 3, 32, 32))
    config = model.config
    inner, state, length = config.intermediate_size, config.state_size, 1 + 4 * 4 * 4
    scan = next(arguments for name, arguments in CALLS if name == "selective_scan_fwd")
    # Both directions stacked along channels, each its own B/C group; gate, D and dt bias fused in.
    assert scan["u"][0] == scan["delta"][0] == scan["z"][0] == (2, 2 * inner, length)
    assert scan["B"][0] == scan["C"][0] == (2, 2, state, length)
    assert scan["A"][0] == (2 * inner, state) and scan["A"][1] == torch.float32
    assert scan["D"][0] == scan["delta_bias"][0] == (2 * inner,)
    convs = [arguments for name, arguments in CALLS if name == "causal_conv1d_fwd"][:2]
    for conv in convs:
        assert conv["x"][0] == (2, inner, length) and conv["weight"][0] == (inner, config.conv_kernel)


def test_model_cuda_path_bfloat16_close_to_fast_path(on_cuda_path):
    # A bf16 model: activations, B, C and z in bf16, A, D and the dt bias in fp32, as the kernels require.
    model = tiny_model().to(torch.bfloat16)
    pixel_values = torch.randn(2, 4, 3, 32, 32)
    ref_logits, ref_grads = logits_and_grads(model, "fast", pixel_values)
    logits, grads = logits_and_grads(model, "cuda", pixel_values)
    assert logits.dtype == torch.bfloat16
    assert_close_relative(logits.float(), ref_logits.float(), 3e-2, "bf16 logits")
    for name in ("vit.layers.0.mixer.A_log", "vit.layers.1.mixer.dt_proj_b.bias", "vit.layers.0.mixer.in_proj.weight"):
        key = next(key for key in ref_grads if key.endswith(name.split("vit.")[-1]))
        assert grads[key].dtype == ref_grads[key].dtype
        assert_close_relative(grads[key].float(), ref_grads[key].float(), 0.1, f"bf16 grad {key}")
    scan = next(arguments for name, arguments in CALLS if name == "selective_scan_fwd")
    assert scan["u"][1] == scan["B"][1] == scan["z"][1] == torch.bfloat16
    assert scan["A"][1] == scan["D"][1] == scan["delta_bias"][1] == torch.float32


@pytest.mark.parametrize("groups", [None, 2])
def test_selective_scan_cuda_matches_reference_with_gradients(on_cuda_path, groups):
    inputs = make_inputs(2, 8, 19, 4, groups)
    use = ("D", "z", "delta_bias")

    def cuda(*args, **kwargs):
        return scan_module.selective_scan(*args, **kwargs, implementation="cuda")

    out, grads = outputs_and_grads(cuda, inputs, use, True, True)
    ref_out, ref_grads = outputs_and_grads(scan_module.selective_scan_reference, inputs, use, True, True)
    assert_close_relative(out[0], ref_out[0], 1e-5, "y")
    assert_close_relative(out[1], ref_out[1], 1e-5, "last state")
    # mamba-ssm does not backpropagate through the returned last state; the reference does, so compare
    # gradients of y alone.
    out_y, grads_y = outputs_and_grads(cuda, inputs, use, True, False)
    ref_y, ref_grads_y = outputs_and_grads(scan_module.selective_scan_reference, inputs, use, True, False)
    for name in ref_grads_y:
        assert_close_relative(grads_y[name], ref_grads_y[name], 1e-4, f"grad {name}")


def test_probe_accepts_working_kernels_and_names_what_is_missing(kernels, monkeypatch):
    # The probe's tiny calls run through the stand-ins on CPU: the packages count as working there.
    assert dispatch._probe_cuda_kernels(torch.device("cpu")) == ""
    import causal_conv1d

    monkeypatch.delattr(causal_conv1d, "causal_conv1d_fn")  # `from causal_conv1d import ...` now fails
    problem = dispatch._probe_cuda_kernels(torch.device("cpu"))
    assert "causal-conv1d" in problem and "mamba-ssm" not in problem


@pytest.mark.parametrize(
    "error, expected",
    [
        (RuntimeError("CUDA error: no kernel image is available for execution on the device\nmore"),
         "(RuntimeError: CUDA error: no kernel image is available for execution on the device)"),
        (RuntimeError(), "(RuntimeError)"),  # an empty message is named by its type alone
        (RuntimeError("\n\n  "), "(RuntimeError)"),
    ],
)
def test_probe_reports_a_failing_kernel(kernels, monkeypatch, error, expected):
    import selective_scan_cuda

    def broken(*args):
        raise error

    monkeypatch.setattr(selective_scan_cuda, "fwd", broken)
    problem = dispatch._probe_cuda_kernels(torch.device("cpu"))
    assert problem == f"installed, but their kernels failed on cpu {expected}"


@pytest.mark.parametrize("layout", list(CONV_LAYOUTS))
def test_conv_kernel_gets_a_layout_it_accepts(kernels, layout):
    make, usable_as_is = CONV_LAYOUTS[layout]
    torch.manual_seed(0)
    x = make()
    dim = x.shape[1]
    weight, bias = torch.randn(dim, 4), torch.randn(dim)
    from causal_conv1d import causal_conv1d_fn

    if not usable_as_is:  # the stand-in's contract checks are live: the raw layout is refused
        with pytest.raises(RuntimeError, match="contract violated"):
            causal_conv1d_fn(x, weight, bias, activation="silu")
    CALLS.clear()
    actual, expected = (conv_output_and_grads(x, weight, bias, use_kernel) for use_kernel in (True, False))
    for name, a, e in zip(("out", "dx", "dweight", "dbias"), actual, expected):
        assert_close_relative(a, e, 1e-5, f"conv {name}")
    assert [name for name, _ in CALLS] == ["causal_conv1d_fwd", "causal_conv1d_bwd"]
    given = CALLS[0][1]["x"]
    as_is = given[2:] == (x.stride(), x.storage_offset())
    assert as_is == usable_as_is, f"{layout}: the kernel got strides {given[2]}, offset {given[3]}"


def test_conv_kernel_refuses_widths_it_lacks(kernels):
    x = torch.randn(1, 8, 6)
    with pytest.raises(ValueError, match=r"widths \(2, 3, 4\); got a width-5 weight"):
        scan_module.causal_conv1d(x, torch.randn(8, 5), use_kernel=True)


def test_scan_kernel_state_limit_is_refused_before_the_kernel(on_cuda_path, monkeypatch):
    monkeypatch.setattr(dispatch, "_limits_warned", set())
    inputs = make_inputs(1, 4, 5, 257, None)
    with pytest.raises(ValueError, match=r"state sizes <= 256, got state_size=257"):
        scan_module.selective_scan(**inputs, implementation="cuda")
    assert not CALLS
    with pytest.warns(RuntimeWarning, match=r"do not fit this model \(mamba-ssm's scan supports state sizes"):
        assert scan_module.resolve_implementation("auto", torch.device("cuda"), state_size=257) == "fast"
