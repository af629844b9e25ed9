"""The Triton selective scan ("triton") against the plain sequential recurrence, and the model on it.

On a CUDA machine the kernels run compiled; elsewhere through Triton's CPU interpreter, which must be
switched on before triton is first imported: tests/conftest.py sets TRITON_INTERPRET=1 when there is
no CUDA device. Shapes are tiny and chunks short (4 tokens), so every case crosses chunk borders: the
interpreter runs every program in Python, its scans slice by slice (tests/triton_interpreter.py).
"""

import contextlib
import importlib
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from original_fixture import original  # noqa: F401
from test_parity import load_model
from triton_interpreter import vectorized_scans
from test_selective_scan import (
    OPTIONAL,
    assert_close_relative,
    assert_matches_reference,
    assert_model_matches_reference_scan,
    make_inputs,
    outputs_and_grads,
    set_scan,
)

from modeling_videomamba import VideoMambaConfig, VideoMambaForVideoClassification
from modeling_videomamba.selective_scan import (
    resolve_implementation,
    selective_scan,
    selective_scan_reference,
    triton_available,
    triton_problem,
)

triton = pytest.importorskip("triton", reason="triton is not installed (pip install .[triton])")
tl = importlib.import_module("triton.language")
_affine_combine = importlib.import_module("modeling_videomamba.triton_scan")._affine_combine

scan_module = importlib.import_module("modeling_videomamba.selective_scan")
dispatch = importlib.import_module("modeling_videomamba.scan_dispatch")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def kernels():
    """The triton_scan module, its kernels runnable on DEVICE (through the interpreter on CPU)."""
    from triton.runtime.interpreter import InterpretedFunction

    module = importlib.import_module("modeling_videomamba.triton_scan")
    if DEVICE == "cpu" and not isinstance(module._chunk_scan_kernel, InterpretedFunction):
        pytest.fail("Triton was imported before TRITON_INTERPRET=1 was set; tests/conftest.py sets it without CUDA.")
    return module


@pytest.fixture(autouse=True)
def fast_interpreter_scans():
    """On CPU, the interpreter's scans run slice by slice (identical results; see triton_interpreter)."""
    with vectorized_scans() if DEVICE == "cpu" else contextlib.nullcontext():
        yield


@pytest.fixture
def small_blocks(kernels, monkeypatch):
    """Chunks of 4 tokens and blocks of 4 channels, so tiny shapes cross chunk and channel-block borders."""
    monkeypatch.setattr(kernels, "CHUNK", 4)
    monkeypatch.setattr(kernels, "BLOCK_D", 4)
    return kernels


@pytest.fixture
def whole_groups(kernels, monkeypatch):
    """On CPU, one channel block per group and chunks of 32 tokens (65-token clips fill 3 of them with
    little padding): the interpreter's cost grows with the number of programs and of padded rows."""
    if DEVICE == "cpu":
        monkeypatch.setattr(kernels, "BLOCK_D", 256)
        monkeypatch.setattr(kernels, "CHUNK", 32)
    return kernels


def triton_scan(*args, **kwargs):
    return selective_scan(*args, **kwargs, implementation="triton")


CASES = [
    # batch, dim, length, state, groups, optional inputs used, softplus, last state
    (1, 8, 1, 4, None, OPTIONAL, True, True),  # one token
    (2, 8, 9, 4, 2, OPTIONAL, True, True),  # two groups (the mixer's two directions), a ragged last chunk
    (1, 8, 19, 3, 2, OPTIONAL, True, True),  # five chunks chained, the last one ragged
    (1, 6, 4, 3, None, ("D",), False, True),  # exactly one chunk; state and channel blocks padded
    (2, 12, 8, 5, 3, ("z",), True, False),  # two full chunks; three groups of 4 channels
    (1, 16, 6, 2, 1, ("delta_bias",), True, False),  # one group spread over four channel blocks
    (2, 6, 5, 3, 2, (), False, False),
]


@pytest.mark.parametrize("batch,dim,length,state,groups,use,softplus,last_state", CASES)
def test_triton_matches_reference_fp32(small_blocks, batch, dim, length, state, groups, use, softplus, last_state):
    inputs = make_inputs(batch, dim, length, state, groups, device=DEVICE)
    assert_matches_reference(triton_scan, inputs, use, softplus, last_state)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_triton_half_precision_inputs_keep_an_fp32_state(small_blocks, dtype):
    inputs = make_inputs(2, 8, 9, 4, 2, dtype=dtype, device=DEVICE)
    out, grads = outputs_and_grads(triton_scan, inputs, OPTIONAL, True, True)
    ref_out, ref_grads = outputs_and_grads(selective_scan_reference, inputs, OPTIONAL, True, True)
    assert out[0].dtype == dtype, "y comes back in u's dtype"
    assert out[1].dtype == torch.float32, "the state is accumulated and returned in float32"
    # Both accumulate in fp32; only the final roundings to the half dtype may differ by an ulp.
    assert_close_relative(out[0], ref_out[0], 1e-2, "y")
    assert_close_relative(out[1], ref_out[1], 1e-5, "last state")
    for name in ref_grads:
        assert grads[name].dtype == inputs[name].dtype, f"grad {name} in its input's dtype"
        assert_close_relative(grads[name], ref_grads[name], 2e-2, f"grad {name}")


def test_triton_float64_is_computed_in_float64(small_blocks):
    inputs = make_inputs(2, 8, 9, 4, 2, dtype=torch.float64, device=DEVICE)
    out, grads = outputs_and_grads(triton_scan, inputs, OPTIONAL, True, True)
    ref_out, ref_grads = outputs_and_grads(selective_scan_reference, inputs, OPTIONAL, True, True)
    assert out[0].dtype == out[1].dtype == torch.float64
    for actual, expected in zip(out + list(grads.values()), ref_out + list(ref_grads.values())):
        assert_close_relative(actual, expected, 1e-10, "float64")


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE != "cuda", reason="needs a CUDA device (the kernels compiled, at a model's sizes)")
@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-4), (torch.bfloat16, 2e-2)])
def test_triton_on_cuda_matches_reference_at_model_size(kernels, dtype, tolerance):
    # VideoMamba-Ti at 8 frames: 1569 tokens, both directions' 384 channels stacked, state 16.
    inputs = make_inputs(2, 768, 1569, 16, 2, dtype=dtype, device="cuda")
    out, grads = outputs_and_grads(triton_scan, inputs, OPTIONAL, True, True)
    ref_out, ref_grads = outputs_and_grads(selective_scan_reference, inputs, OPTIONAL, True, True)
    for index, (actual, expected) in enumerate(zip(out, ref_out)):
        assert_close_relative(actual, expected, tolerance, f"output {index}")
    for name in ref_grads:
        assert_close_relative(grads[name], ref_grads[name], tolerance, f"grad {name}")


def test_model_logits_and_gradients_triton_vs_reference(whole_groups):
    if DEVICE == "cpu":
        assert_model_matches_reference_scan("triton")
    else:
        pytest.skip("the model-level comparison runs on CPU tensors (the interpreter); the GPU check covers CUDA")


def test_fp32_parity_with_the_original_on_triton(whole_groups, original):
    model = load_model(original, scan_implementation="triton").to(DEVICE)
    pixel_values = original["pixel_values"].permute(0, 2, 1, 3, 4).to(DEVICE)  # (B, C, T, H, W) -> (B, T, C, H, W)
    with torch.no_grad():
        out = model(pixel_values, output_hidden_states=True)
    torch.testing.assert_close(out.logits.cpu(), original["logits"], atol=1e-5, rtol=1e-5)
    for index, residual in enumerate(original["block_residuals"]):
        torch.testing.assert_close(out.hidden_states[index].cpu(), residual, atol=1e-5, rtol=1e-5, msg=f"block {index}")


def test_model_bfloat16_triton_close_to_reference(whole_groups):
    torch.manual_seed(0)
    config = VideoMambaConfig(
        hidden_size=32, num_hidden_layers=2, image_size=32, patch_size=8, num_frames=4, num_labels=5
    )
    model = VideoMambaForVideoClassification(config).to(device=DEVICE, dtype=torch.bfloat16)
    pixel_values = torch.randn(2, 4, 3, 32, 32).to(DEVICE)
    logits = {}
    for implementation in ("reference", "triton"):
        set_scan(model, implementation)
        with torch.no_grad():
            logits[implementation] = model(pixel_values).logits
    assert logits["triton"].dtype == torch.bfloat16
    assert_close_relative(logits["triton"].float(), logits["reference"].float(), 2e-2, "bf16 logits")


def test_triton_on_cpu_tensors_without_the_interpreter_says_how(kernels, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(dispatch, "_triton_warned", set())
    inputs = make_inputs(1, 4, 3, 2, None)
    with pytest.raises(ValueError, match="needs CUDA tensors; got tensors on cpu"):
        kernels.selective_scan_triton(inputs["u"].mT, inputs["delta"].mT, inputs["A"], inputs["B"].mT[:, :, None],
                                      inputs["C"].mT[:, :, None])
    expected = "'triton' cannot run on cpu: its kernels need CUDA tensors.*using the 'fast'"
    with pytest.warns(RuntimeWarning, match=expected):
        y = triton_scan(inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"])
    torch.testing.assert_close(y, selective_scan_reference(inputs["u"], inputs["delta"], inputs["A"], inputs["B"],
                                                           inputs["C"]), atol=1e-6, rtol=1e-5)


def test_triton_rejects_integer_inputs(kernels):
    inputs = make_inputs(1, 4, 3, 2, None, device=DEVICE)
    with pytest.raises(ValueError, match="supports u of dtype"):
        triton_scan(**dict(inputs, u=inputs["u"].int(), delta=inputs["delta"].int()))


def test_auto_uses_triton_on_cuda_only_without_mamba_ssm(monkeypatch):
    monkeypatch.setattr(dispatch, "triton_available", lambda device=None: True)
    monkeypatch.setattr(dispatch, "_cuda_warned", False)
    monkeypatch.setattr(dispatch, "cuda_kernels_problem", lambda device=None: "not usable: mamba-ssm (ImportError)")
    with pytest.warns(RuntimeWarning, match="using the 'triton' scan"):
        assert resolve_implementation("auto", torch.device("cuda")) == "triton"
    monkeypatch.setattr(dispatch, "triton_available", lambda device=None: False)
    assert resolve_implementation("auto", torch.device("cuda")) == "fast", "no Triton either: the PyTorch scan"
    monkeypatch.setattr(dispatch, "cuda_kernels_problem", lambda device=None: "")
    assert resolve_implementation("auto", torch.device("cuda")) == "cuda"


@pytest.fixture
def fresh_probe(monkeypatch):
    """Triton's availability probed anew, its warnings not yet given."""
    monkeypatch.setattr(dispatch, "_triton_problem", {})
    monkeypatch.setattr(dispatch, "_triton_warned", set())


def test_explicit_triton_falls_back_when_its_kernels_fail_on_the_gpu(fresh_probe, monkeypatch):
    # Triton installed and a CUDA device present, but launching fails (no working driver or ptxas, say).
    monkeypatch.setattr(scan_module.torch.cuda, "is_available", lambda: True)
    calls = []

    def failing_smoke_test(device):
        calls.append(device)
        raise RuntimeError("0 active drivers ([]). There should only be one.\n(details)")

    monkeypatch.setattr(dispatch, "_triton_smoke_test", failing_smoke_test)
    expected = r"cannot run on cuda: its kernels failed on cuda \(RuntimeError: 0 active drivers.*using the 'fast'"
    with pytest.warns(RuntimeWarning, match=expected):
        assert resolve_implementation("triton", torch.device("cuda")) == "fast"
    assert not triton_available()
    assert resolve_implementation("triton", torch.device("cuda")) == "fast"
    assert calls == [torch.device("cuda")], "probed once per device"


def test_explicit_triton_falls_back_when_triton_does_not_import(fresh_probe, monkeypatch):
    monkeypatch.setitem(sys.modules, "modeling_videomamba.triton_scan", None)  # makes its import raise ImportError
    assert re.match(r"triton is installed but does not import \((ModuleNotFound|Import)Error", triton_problem("cpu"))
    with pytest.warns(RuntimeWarning, match="'triton' cannot run on cpu: triton is installed but does not import"):
        assert resolve_implementation("triton", torch.device("cpu")) == "fast"


@pytest.mark.skipif(DEVICE == "cuda", reason="checks the probe for CPU tensors under the interpreter")
def test_explicit_triton_is_kept_under_the_interpreter(fresh_probe):
    assert triton_problem("cpu") == ""
    assert resolve_implementation("triton", torch.device("cpu")) == "triton"


def test_triton_available_on_this_machine_matches_a_real_run(fresh_probe):
    """The probe's verdict for CUDA is what actually happens: a CUDA scan runs or there is no device."""
    if DEVICE == "cuda":
        assert triton_problem() == ""
    else:
        assert triton_problem() == "no CUDA device is available"


def test_launches_enter_the_tensors_cuda_device(kernels, monkeypatch):
    """Triton launches on the current CUDA device: each launch makes the tensors' device current first."""
    current = []

    @contextlib.contextmanager
    def recording_device(device):
        current.append(device)
        yield
        current.pop()

    monkeypatch.setattr(kernels.torch.cuda, "device", recording_device)
    launched = []

    class Kernel:
        def __getitem__(self, grid):
            return lambda *args, **constants: launched.append((grid, args, constants, list(current)))

    kernels._launch(Kernel(), (3, 2, 1), torch.device("cuda", 1), "x", ACC="acc")
    assert launched == [((3, 2, 1), ("x",), {"ACC": "acc"}, [torch.device("cuda", 1)])]
    assert current == [], "the previous device is current again after the launch"


def test_every_launch_goes_through_the_device_guard_with_the_pinned_grids(small_blocks, monkeypatch):
    launches = []
    original = small_blocks._launch

    def recording_launch(kernel, grid, device, *args, **constants):
        launches.append((getattr(kernel, "__name__", None) or kernel.fn.__name__, grid, device))
        original(kernel, grid, device, *args, **constants)

    monkeypatch.setattr(small_blocks, "_launch", recording_launch)
    batch, dim, length, state, groups = 2, 8, 9, 4, 2
    outputs_and_grads(triton_scan, make_inputs(batch, dim, length, state, groups, device=DEVICE), OPTIONAL, True, True)
    chunk_grid = small_blocks.launch_grid(batch, length, dim, groups, state)
    assert chunk_grid == (3, 2, 2), "9 tokens in chunks of 4, 2 groups of 4 channels (a block each), batch 2"
    chain_grid = (2, 2)  # 8 channels in blocks of 4, batch 2
    device = torch.device(DEVICE) if DEVICE == "cpu" else torch.device("cuda", torch.cuda.current_device())
    assert launches == [
        ("_chunk_scan_kernel", chunk_grid, device),  # pass 1: chunk summaries
        ("_chain_chunks_kernel", chain_grid, device),  # pass 2: entering states
        ("_chunk_scan_kernel", chunk_grid, device),  # pass 3: y
        ("_chunk_backward_kernel", chunk_grid, device),  # the chunks' local adjoints
        ("_chain_chunks_kernel", chain_grid, device),  # the adjoints entering every chunk
        ("_chunk_backward_kernel", chunk_grid, device),  # the gradients
    ]


def test_launch_grid_fills_a_gpu_at_batch_one(kernels):
    # VideoMamba-Ti at 8 frames, batch 1: 1569 tokens, both directions' 384 channels stacked (2 groups), state 16.
    assert (kernels.CHUNK, kernels.BLOCK_D) == (64, 16)
    grid = kernels.launch_grid(1, 1569, 768, 2, 16)
    assert grid == (25, 48, 1), "25 chunks of 64 tokens x 48 blocks of 16 channels"
    assert math.prod(grid) == 1200, "an H200 has 132 SMs: about 9 programs each"


def test_only_the_entering_states_are_kept_and_only_for_gradients(small_blocks, monkeypatch):
    saved = []
    original = torch.autograd.function.FunctionCtx.save_for_backward
    monkeypatch.setattr(torch.autograd.function.FunctionCtx, "save_for_backward",
                        lambda ctx, *tensors: (saved.append(tensors), original(ctx, *tensors))[1])
    inputs = make_inputs(2, 8, 9, 4, 2, device=DEVICE)
    with torch.no_grad():
        triton_scan(**inputs, delta_softplus=True)
    triton_scan(**inputs, delta_softplus=True)  # grad mode, but no input requires grad
    assert saved == [], "nothing is saved when no gradient is needed"
    leaves = {name: tensor.clone().requires_grad_(name == "A") for name, tensor in inputs.items()}
    triton_scan(**leaves, delta_softplus=True)
    (tensors,) = saved
    *kept_inputs, entering = tensors
    assert entering.shape == (2, 3, 8, 4), "(batch, chunks, dim, state): one state per chunk of 4 tokens"
    assert all(t is None or t.numel() <= max(x.numel() for x in inputs.values()) for t in kept_inputs)


def test_autocast_reads_and_writes_the_autocast_dtype(small_blocks):
    inputs = make_inputs(2, 8, 9, 4, 2, device=DEVICE)
    dtype = torch.bfloat16
    inputs["z"] = inputs["z"].to(dtype)  # inputs already in a half dtype are read as they are
    with torch.autocast(DEVICE, dtype=dtype):
        y, last_state = triton_scan(**inputs, delta_softplus=True, return_last_state=True)
    assert y.dtype == dtype, "y in the autocast dtype, as the original's fused kernel writes it"
    assert last_state.dtype == torch.float32
    # The same computation on the inputs rounded to bf16 (A, D and delta_bias stay float32).
    rounded = {name: t.to(dtype) if name in ("u", "delta", "B", "C", "z") else t for name, t in inputs.items()}
    ref_y, ref_state = selective_scan_reference(**rounded, delta_softplus=True, return_last_state=True)
    assert_close_relative(y, ref_y, 1e-2, "y")
    assert_close_relative(last_state, ref_state, 1e-5, "last state")


@triton.jit
def _scan_both_ways(a_ptr, b_ptr, out_ptr, ROWS: tl.constexpr, COLS: tl.constexpr):
    """out[0] = the forward scan of the affine maps (a, b) down the rows, out[1] the reverse scan."""
    tile = tl.arange(0, ROWS)[:, None] * COLS + tl.arange(0, COLS)[None, :]
    a, b = tl.load(a_ptr + tile), tl.load(b_ptr + tile)
    _, forward = tl.associative_scan((a, b), 0, _affine_combine)
    _, backward = tl.associative_scan((a, b), 0, _affine_combine, reverse=True)
    tl.store(out_ptr + tile, forward)
    tl.store(out_ptr + ROWS * COLS + tile, backward)


@pytest.mark.skipif(DEVICE == "cuda", reason="checks the interpreter's scan, which compiled kernels do not use")
def test_sliced_interpreter_scan_is_the_interpreters_own_scan(kernels):
    kernel = _scan_both_ways
    a, b = torch.rand(8, 4) + 0.5, torch.randn(8, 4)
    results = []
    for vectorized in (False, True):
        out = torch.empty(2, 8, 4)
        with vectorized_scans(vectorized):
            kernel[(1,)](a, b, out, ROWS=8, COLS=4)
        results.append(out)
    assert torch.equal(results[0], results[1]), "identical results, bit for bit"
    forward, state = [], torch.zeros(4)
    for t in range(8):
        state = a[t] * state + b[t]
        forward.append(state)
    backward, state = [], torch.zeros(4)
    for t in reversed(range(8)):
        state = a[t] * state + b[t]
        backward.insert(0, state)
    torch.testing.assert_close(results[1][0], torch.stack(forward))
    torch.testing.assert_close(results[1][1], torch.stack(backward))


def test_kernels_compile_for_hopper_without_a_gpu(tmp_path):
    """Triton's compiler (not its interpreter) lowers every kernel to sm_90 machine code without register
    spills, in a fresh process."""
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_CACHE_DIR=str(tmp_path))
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, str(root / "tests" / "triton_compile_check.py"), "90"],
        cwd=root, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("compiled ") == 10, result.stdout
    assert result.stdout.count(" 0 bytes spill stores") == 10, result.stdout  # also asserted in the script
