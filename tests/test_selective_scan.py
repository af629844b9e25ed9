"""The fast selective scan against the plain sequential recurrence (`selective_scan_reference`)."""

import importlib
import importlib.abc
import sys
import warnings

import pytest
import torch
from cuda_kernel_stand_ins import CONV_LAYOUTS, conv_output_and_grads

from modeling_videomamba import VideoMambaConfig, VideoMambaForVideoClassification
from modeling_videomamba.selective_scan import (
    causal_conv1d,
    causal_conv1d_tokens_first,
    cuda_kernels_available,
    selective_scan,
    selective_scan_fast,
    selective_scan_reference,
)

# The package re-exports the function `selective_scan`, which shadows the submodule's attribute name.
scan_module = importlib.import_module("modeling_videomamba.selective_scan")
dispatch = importlib.import_module("modeling_videomamba.scan_dispatch")
OPTIONAL = ("D", "z", "delta_bias")


def make_inputs(batch, dim, length, state, groups, dtype=torch.float32, seed=0, device="cpu"):
    """Random scan inputs; groups=None gives ungrouped B/C (batch, state, length)."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=generator) * scale).to(device=device, dtype=dtype)

    bc_shape = (batch, state, length) if groups is None else (batch, groups, state, length)
    a_dtype = torch.float64 if dtype == torch.float64 else torch.float32  # A stays fp32, as in the mixer
    return {
        "u": randn(batch, dim, length),
        "delta": randn(batch, dim, length, scale=0.5),
        # Negative A as in Mamba (-exp(A_log)); a spread of decay speeds.
        "A": -torch.exp(torch.randn(dim, state, generator=generator)).to(device=device, dtype=a_dtype),
        "B": randn(*bc_shape),
        "C": randn(*bc_shape),
        "D": randn(dim),
        "z": randn(batch, dim, length),
        "delta_bias": randn(dim, scale=0.5),
    }


def run_scan(function, inputs, use, delta_softplus, return_last_state):
    optional = {name: inputs[name] if name in use else None for name in OPTIONAL}
    return function(
        inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"], **optional,
        delta_softplus=delta_softplus, return_last_state=return_last_state,
    )


def outputs_and_grads(function, inputs, use, delta_softplus, return_last_state, seed=1):
    """Scan outputs and the gradients of a random linear functional of them w.r.t. every used input."""
    leaves = {name: tensor.detach().clone().requires_grad_() for name, tensor in inputs.items()}
    result = run_scan(function, leaves, use, delta_softplus, return_last_state)
    outputs = result if return_last_state else (result,)
    generator = torch.Generator().manual_seed(seed)
    loss = sum((out.float() * torch.randn(out.shape, generator=generator).to(out.device)).sum() for out in outputs)
    used = [name for name in leaves if name not in OPTIONAL or name in use]
    grads = torch.autograd.grad(loss, [leaves[name] for name in used])
    return [out.detach() for out in outputs], dict(zip(used, grads))


def assert_close_relative(actual, expected, tolerance, what):
    """|actual - expected| <= tolerance * max|expected| (the scale of the whole tensor)."""
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    error = (actual.double() - expected.double()).abs().max().item()
    scale = expected.double().abs().max().item()
    assert error <= tolerance * max(scale, 1e-30), f"{what}: max error {error:.3e} vs scale {scale:.3e}"


def assert_matches_reference(function, inputs, use, delta_softplus, return_last_state, tolerance=1e-5):
    """`function`'s outputs and input gradients equal `selective_scan_reference`'s (relative `tolerance`)."""
    out, grads = outputs_and_grads(function, inputs, use, delta_softplus, return_last_state)
    ref_out, ref_grads = outputs_and_grads(selective_scan_reference, inputs, use, delta_softplus, return_last_state)
    for index, (actual, expected) in enumerate(zip(out, ref_out)):
        assert_close_relative(actual, expected, tolerance, f"output {index}")
    assert grads.keys() == ref_grads.keys()
    for name in ref_grads:
        assert_close_relative(grads[name], ref_grads[name], tolerance, f"grad {name}")


# Lengths around the block size (1, one short, exact multiple, one over, several blocks plus a tail).
BLOCK = scan_module.BLOCK_SIZE
CASES = [
    # batch, dim, length, state, groups, optional inputs used, softplus, last state
    (1, 8, 1, 4, None, OPTIONAL, True, True),
    (2, 8, BLOCK - 1, 4, 2, OPTIONAL, True, False),
    (1, 6, BLOCK, 3, None, ("D",), False, True),
    (2, 12, BLOCK + 1, 5, 3, ("z",), True, True),
    (3, 4, 2 * BLOCK + 7, 2, 1, ("delta_bias",), True, False),
    (1, 16, 3 * BLOCK + 5, 16, 2, OPTIONAL, True, True),
    (2, 6, 37, 3, 2, (), False, False),
]


@pytest.mark.parametrize("batch,dim,length,state,groups,use,softplus,last_state", CASES)
def test_fast_matches_reference_fp32(batch, dim, length, state, groups, use, softplus, last_state):
    assert_matches_reference(selective_scan_fast, make_inputs(batch, dim, length, state, groups), use, softplus, last_state)


def test_fast_float64_is_float64_and_matches_to_rounding():
    inputs = make_inputs(2, 8, BLOCK + 3, 4, 2, dtype=torch.float64)
    fast_out, fast_grads = outputs_and_grads(selective_scan_fast, inputs, OPTIONAL, True, True)
    ref_out, ref_grads = outputs_and_grads(selective_scan_reference, inputs, OPTIONAL, True, True)
    assert fast_out[0].dtype == torch.float64 and fast_out[1].dtype == torch.float64
    for actual, expected in zip(fast_out + list(fast_grads.values()), ref_out + list(ref_grads.values())):
        assert_close_relative(actual, expected, 1e-12, "float64")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fast_half_precision_accumulates_in_fp32(dtype):
    inputs = make_inputs(2, 8, BLOCK + 9, 4, 2, dtype=dtype)
    fast_out, fast_grads = outputs_and_grads(selective_scan_fast, inputs, OPTIONAL, True, True)
    ref_out, ref_grads = outputs_and_grads(selective_scan_reference, inputs, OPTIONAL, True, True)
    assert fast_out[0].dtype == dtype, "y comes back in u's dtype"
    assert fast_out[1].dtype == torch.float32, "the state is accumulated and returned in float32"
    # Both accumulate in fp32; only the final rounding to the half dtype may differ by an ulp.
    assert_close_relative(fast_out[0], ref_out[0], 1e-2, "y")
    assert_close_relative(fast_out[1], ref_out[1], 1e-5, "last state")
    for name in ref_grads:
        assert_close_relative(fast_grads[name], ref_grads[name], 2e-2, f"grad {name}")


def test_fast_gradcheck_float64_over_several_blocks(monkeypatch):
    # A block of 3 tokens makes 7 tokens span three blocks, exercising the recompute-per-block backward.
    monkeypatch.setattr(scan_module, "BLOCK_SIZE", 3)
    inputs = make_inputs(2, 4, 7, 2, 2, dtype=torch.float64, seed=3)
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]
    leaves = [inputs[name].requires_grad_() for name in names]

    def scan(*tensors):
        args = dict(zip(names, tensors))
        return selective_scan_fast(**args, delta_softplus=True, return_last_state=True)

    assert torch.autograd.gradcheck(scan, leaves, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_fast_backward_memory_is_far_below_all_states():
    """Autograd keeps the inputs and one state per block for backward, not every (L, D, N) state."""
    batch, dim, length, state = 1, 128, 1024, 64
    inputs = make_inputs(batch, dim, length, state, 2)
    leaves = {name: tensor.requires_grad_() for name, tensor in inputs.items()}
    saved_bytes = []

    def pack(tensor):
        saved_bytes.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        selective_scan_fast(**leaves, delta_softplus=True)
    all_states = batch * dim * length * state * 4  # what a plain autograd scan keeps at the least
    # Counting views at full size only overestimates.
    assert sum(saved_bytes) < all_states / 3, (sum(saved_bytes), all_states)


def test_causal_conv1d_tokens_first_matches_conv1d():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 10, 6, generator=generator)
    weight, bias = torch.randn(6, 4, generator=generator), torch.randn(6, generator=generator)
    expected = causal_conv1d(x.transpose(1, 2), weight, bias).transpose(1, 2)
    torch.testing.assert_close(causal_conv1d_tokens_first(x, weight, bias), expected, rtol=1e-5, atol=1e-6)
    # Sequences shorter than the kernel see only the zero padding beyond their start.
    short = x[:, :2]
    expected = causal_conv1d(short.transpose(1, 2), weight).transpose(1, 2)
    torch.testing.assert_close(causal_conv1d_tokens_first(short, weight, None), expected)


def set_scan(model, implementation):
    model.config.scan_implementation = implementation
    for module in model.modules():
        if hasattr(module, "config"):
            module.config.scan_implementation = implementation


def assert_model_matches_reference_scan(implementation, **config_overrides):
    """A tiny classifier's logits (1e-5) and parameter gradients (1e-4) equal those of the reference scan."""
    torch.manual_seed(0)
    config = VideoMambaConfig(
        hidden_size=32, num_hidden_layers=2, image_size=32, patch_size=8, num_frames=4, num_labels=5,
        **config_overrides,
    )
    model = VideoMambaForVideoClassification(config)
    pixel_values = torch.randn(2, 4, 3, 32, 32)
    results = {}
    for scan in ("reference", implementation):
        set_scan(model, scan)
        model.zero_grad()
        logits = model(pixel_values).logits
        logits.square().sum().backward()
        results[scan] = (logits.detach(), {name: param.grad.clone() for name, param in model.named_parameters()})
    (ref_logits, ref_grads), (logits, grads) = results["reference"], results[implementation]
    assert_close_relative(logits, ref_logits, 1e-5, "logits")
    for name, grad in ref_grads.items():
        assert_close_relative(grads[name], grad, 1e-4, f"grad {name}")


def assert_compiled_model_matches_eager(implementation):
    """torch.compile(fullgraph=True) traces a tiny classifier with no graph break (the scan is one custom
    op, not an unrolled loop) and its logits and parameter gradients equal eager mode's."""
    torch.manual_seed(0)
    config = VideoMambaConfig(
        hidden_size=32, num_hidden_layers=2, image_size=32, patch_size=8, num_frames=4, num_labels=5,
        scan_implementation=implementation,
    )
    model = VideoMambaForVideoClassification(config)
    pixel_values = torch.randn(2, 4, 3, 32, 32)
    torch._dynamo.reset()
    # aot_eager runs dynamo and AOTAutograd (fake tensors, the ops' autograd registrations) without
    # inductor's C++ compile, which would cost tens of seconds here.
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    results = []
    for run in (model, compiled):
        model.zero_grad()
        logits = run(pixel_values).logits
        logits.square().sum().backward()
        results.append((logits.detach(), {name: param.grad.clone() for name, param in model.named_parameters()}))
    (logits, grads), (compiled_logits, compiled_grads) = results
    assert_close_relative(compiled_logits, logits, 1e-6, "compiled logits")
    for name, grad in grads.items():
        assert_close_relative(compiled_grads[name], grad, 1e-6, f"compiled grad {name}")


def test_fast_scan_compiles_without_graph_breaks_and_matches_eager():
    assert_compiled_model_matches_eager("fast")


def tokens_first_core_inputs(batch=2, dim=8, length=9, state=3, groups=2, dtype=torch.float64):
    """The fast/native layout's (u, delta, A, B, C) from `make_inputs`, all requiring grad."""
    inputs = make_inputs(batch, dim, length, state, groups, dtype=dtype)
    dg = dim // groups
    u, delta = (inputs[name].transpose(1, 2).reshape(batch, length, groups, dg).contiguous() for name in ("u", "delta"))
    A = inputs["A"].reshape(groups, dg, state).transpose(1, 2).contiguous()
    B, C = (inputs[name].permute(0, 3, 1, 2).contiguous() for name in ("B", "C"))
    return [tensor.requires_grad_() for tensor in (u, delta.abs(), A, B, C)]


def test_blocked_scan_custom_op_registrations():
    # opcheck: the schema, the fake (shape) implementation and the autograd registration agree with the op.
    torch.library.opcheck(scan_module.blocked_scan_forward, (*tokens_first_core_inputs(), 4))


@pytest.mark.parametrize("token_order", ["spatial_first", "temporal_first"])
def test_model_logits_and_gradients_fast_vs_reference(token_order):
    assert_model_matches_reference_scan("fast", token_order=token_order)


def bad_shape_cases():
    good = make_inputs(2, 8, 5, 4, 2)
    yield "u and delta", dict(good, delta=good["delta"][:, :, :4])
    yield "length >= 1", dict(good, u=good["u"][:, :, :0], delta=good["delta"][:, :, :0])
    yield "A of shape", dict(good, A=good["A"][:4])
    yield "B of shape", dict(good, B=good["B"][:, :, :3])
    yield "groups dividing dim", dict(good, B=torch.randn(2, 3, 4, 5), C=torch.randn(2, 3, 4, 5))
    yield "same shape", dict(good, C=torch.randn(2, 4, 5))
    yield "D of shape", dict(good, D=torch.randn(7))
    yield "delta_bias of shape", dict(good, delta_bias=torch.randn(8, 1))
    yield "z of the shape of u", dict(good, z=torch.randn(2, 8, 4))


@pytest.mark.parametrize("expected_message,inputs", list(bad_shape_cases()), ids=[m for m, _ in bad_shape_cases()])
@pytest.mark.parametrize("implementation", ["reference", "fast"])
def test_selective_scan_rejects_bad_shapes(expected_message, inputs, implementation):
    with pytest.raises(ValueError, match=expected_message) as error:
        selective_scan(**inputs, implementation=implementation)
    assert "got" in str(error.value), "the message names what came"


def test_selective_scan_rejects_unknown_implementation():
    with pytest.raises(ValueError, match="expected one of"):
        selective_scan(**make_inputs(1, 4, 3, 2, None), implementation="flash")


@pytest.fixture
def unprobed(monkeypatch):
    """A process that has not probed the CUDA kernels nor warned yet (restored after the test)."""
    monkeypatch.setattr(dispatch, "_cuda_problem", {})
    monkeypatch.setattr(dispatch, "_cuda_warned", False)
    monkeypatch.setattr(dispatch, "_limits_warned", set())


def test_auto_on_cuda_falls_back_once_naming_what_is_missing(unprobed, monkeypatch):
    probes = []

    def probe(device):
        probes.append(device)
        return "not usable: causal-conv1d (ModuleNotFoundError: No module named 'causal_conv1d')"

    monkeypatch.setattr(dispatch, "_probe_cuda_kernels", probe)
    cuda = torch.device("cuda")
    with pytest.warns(RuntimeWarning, match="auto.*causal-conv1d.*No module named.*'fast'"):
        assert scan_module.resolve_implementation("auto", cuda) == "fast"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one warning per process, one probe
        assert scan_module.resolve_implementation("auto", cuda) == "fast"
        with pytest.raises(ImportError, match=r"scan_implementation=.cuda.: .*causal-conv1d.*pip install \.\[cuda\]"):
            scan_module.resolve_implementation("cuda", cuda)
    assert len(probes) == 1


def test_auto_on_cuda_picks_the_kernels_when_the_probe_passes(unprobed, monkeypatch):
    monkeypatch.setattr(dispatch, "_probe_cuda_kernels", lambda device: "")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert scan_module.resolve_implementation("auto", torch.device("cuda")) == "cuda"
        assert scan_module.resolve_implementation("cuda", torch.device("cuda")) == "cuda"


def test_each_gpu_is_probed_on_its_own(unprobed, monkeypatch):
    # A fake second GPU on which the kernels' build does not run (another architecture).
    probed = []

    def probe(device):
        probed.append(device)
        return "installed, but their kernels failed on cuda:1 (RuntimeError)" if device.index == 1 else ""

    monkeypatch.setattr(dispatch, "_probe_cuda_kernels", probe)
    with pytest.warns(RuntimeWarning, match="failed on cuda:1"):
        assert scan_module.resolve_implementation("auto", torch.device("cuda", 1)) == "fast"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert scan_module.resolve_implementation("auto", torch.device("cuda", 0)) == "cuda"
        # "cuda" without an index is the current device: here cuda:1, already probed.
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
        assert dispatch.cuda_kernels_problem() == dispatch.cuda_kernels_problem("cuda:1") != ""
        assert dispatch.cuda_kernels_problem("cuda:0") == ""
    assert probed == [torch.device("cuda", 1), torch.device("cuda", 0)]


def test_probe_names_an_exception_with_an_empty_message(unprobed, monkeypatch):
    class BrokenExtension(importlib.abc.MetaPathFinder):
        """Importing either package raises an exception whose message is empty."""

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("mamba_ssm", "causal_conv1d"):
                raise OSError()
            return None

    for name in list(sys.modules):
        if name.split(".")[0] in ("mamba_ssm", "causal_conv1d"):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [BrokenExtension(), *sys.meta_path])
    problem = dispatch._probe_cuda_kernels(torch.device("cpu"))
    assert problem == "not usable: mamba-ssm (OSError); causal-conv1d (OSError)"


def test_sizes_the_kernels_lack_make_auto_fall_back_and_cuda_refuse(unprobed, monkeypatch):
    monkeypatch.setattr(dispatch, "_probe_cuda_kernels", lambda device: "")
    cuda = torch.device("cuda", 0)
    expected = r"do not fit this model \(causal-conv1d supports conv widths.*'fast'"
    with pytest.warns(RuntimeWarning, match=expected) as caught:
        assert scan_module.resolve_implementation("auto", cuda, state_size=16, conv_kernel=5) == "fast"
        assert scan_module.resolve_implementation("auto", cuda, state_size=16, conv_kernel=5) == "fast"
    assert len(caught) == 1, "one warning per reason"
    with pytest.raises(ValueError, match=r"'cuda': mamba-ssm's scan supports state sizes <= 256, got state_size=300"):
        scan_module.resolve_implementation("cuda", cuda, state_size=300, conv_kernel=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert scan_module.resolve_implementation("auto", cuda, state_size=256, conv_kernel=2) == "cuda"


def test_cuda_implementation_rejects_cpu_tensors():
    with pytest.raises(ValueError, match="needs CUDA tensors; got tensors on cpu"):
        selective_scan(**make_inputs(1, 4, 3, 2, None), implementation="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(
    not cuda_kernels_available(),
    reason="needs a CUDA device with working mamba-ssm and causal-conv1d (pip install .[cuda])",
)
def test_cuda_kernel_matches_reference():
    inputs = make_inputs(2, 64, 300, 16, 2, device="cuda")
    for implementation, tolerance in (("cuda", 1e-4), ("fast", 1e-5)):
        actual = selective_scan(**inputs, delta_softplus=True, return_last_state=True, implementation=implementation)
        expected = selective_scan_reference(**inputs, delta_softplus=True, return_last_state=True)
        for index, (a, e) in enumerate(zip(actual, expected)):
            assert_close_relative(a.float(), e.float(), tolerance, f"{implementation} output {index}")


@pytest.mark.gpu
@pytest.mark.skipif(
    not cuda_kernels_available(),
    reason="needs a CUDA device with working mamba-ssm and causal-conv1d (pip install .[cuda])",
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", list(CONV_LAYOUTS))
def test_conv_kernel_matches_pytorch_conv_on_every_layout(layout, dtype):
    torch.manual_seed(0)
    x = CONV_LAYOUTS[layout][0](device="cuda", dtype=dtype)  # (made in dtype: a cast would change the layout)
    weight, bias = torch.randn(x.shape[1], 4, device="cuda"), torch.randn(x.shape[1], device="cuda")
    actual, expected = (conv_output_and_grads(x, weight, bias, use_kernel) for use_kernel in (True, False))
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    for name, a, e in zip(("out", "dx", "dweight", "dbias"), actual, expected):
        assert_close_relative(a.float(), e.float(), tolerance, f"{layout}: {name}")


def test_model_bfloat16_fast_close_to_reference():
    """In bf16 both paths accumulate the scan in fp32; only bf16 roundings (at other places) differ."""
    torch.manual_seed(0)
    config = VideoMambaConfig(hidden_size=32, num_hidden_layers=2, image_size=32, patch_size=8, num_frames=4, num_labels=5)
    model = VideoMambaForVideoClassification(config).to(torch.bfloat16)
    pixel_values = torch.randn(2, 4, 3, 32, 32)
    logits = {}
    for implementation in ("reference", "fast"):
        set_scan(model, implementation)
        with torch.no_grad():
            logits[implementation] = model(pixel_values).logits
    assert logits["fast"].dtype == torch.bfloat16
    assert_close_relative(logits["fast"].float(), logits["reference"].float(), 2e-2, "bf16 logits")
