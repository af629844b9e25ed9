"""The Triton selective scan ("triton") against the plain sequential recurrence, and the model on it.

On a CUDA machine the kernels run compiled; elsewhere through Triton's CPU interpreter, which must be
switched on before triton is first imported: tests/conftest.py sets TRITON_INTERPRET=1 when there is
no CUDA device. Shapes are tiny: the interpreter runs every program's loop in Python.
"""

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from original_fixture import original  # noqa: F401
from test_parity import load_model
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
from modeling_videomamba.selective_scan import resolve_implementation, selective_scan, selective_scan_reference

pytest.importorskip("triton", reason="triton is not installed (pip install .[triton])")

scan_module = importlib.import_module("modeling_videomamba.selective_scan")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def kernels():
    """The triton_scan module, its kernels runnable on DEVICE (through the interpreter on CPU)."""
    from triton.runtime.interpreter import InterpretedFunction

    module = importlib.import_module("modeling_videomamba.triton_scan")
    if DEVICE == "cpu" and not isinstance(module._scan_forward_kernel, InterpretedFunction):
        pytest.fail("Triton was imported before TRITON_INTERPRET=1 was set; tests/conftest.py sets it without CUDA.")
    return module


@pytest.fixture
def small_blocks(kernels, monkeypatch):
    """Chunks of 4 tokens and blocks of 4 channels, so tiny shapes cross chunk and channel-block borders."""
    monkeypatch.setattr(kernels, "CHUNK", 4)
    monkeypatch.setattr(kernels, "BLOCK_D", 4)
    return kernels


@pytest.fixture
def whole_groups(kernels, monkeypatch):
    """On CPU, one program per (batch, group): the interpreter's cost grows with the number of programs."""
    if DEVICE == "cpu":
        monkeypatch.setattr(kernels, "BLOCK_D", 256)
    return kernels


def triton_scan(*args, **kwargs):
    return selective_scan(*args, **kwargs, implementation="triton")


CASES = [
    # batch, dim, length, state, groups, optional inputs used, softplus, last state
    (1, 8, 1, 4, None, OPTIONAL, True, True),  # one token
    (2, 8, 9, 4, 2, OPTIONAL, True, True),  # two groups (the mixer's two directions), a ragged last chunk
    (1, 6, 4, 3, None, ("D",), False, True),  # exactly one chunk; state and channel blocks padded
    (2, 12, 7, 5, 3, ("z",), True, False),  # three groups of 4 channels
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


@pytest.mark.skipif(DEVICE == "cuda", reason="checks the error for CPU tensors outside the interpreter")
def test_triton_on_cpu_tensors_without_the_interpreter_says_how(kernels, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(ValueError, match="needs CUDA tensors; got tensors on cpu"):
        triton_scan(**make_inputs(1, 4, 3, 2, None))


def test_triton_rejects_integer_inputs(kernels):
    inputs = make_inputs(1, 4, 3, 2, None, device=DEVICE)
    with pytest.raises(ValueError, match="supports u of dtype"):
        triton_scan(**dict(inputs, u=inputs["u"].int(), delta=inputs["delta"].int()))


def test_auto_uses_triton_on_cuda_only_without_mamba_ssm(monkeypatch):
    monkeypatch.setattr(scan_module, "triton_available", lambda: True)
    monkeypatch.setattr(scan_module, "_cuda_warned", False)
    monkeypatch.setattr(scan_module, "cuda_kernels_problem", lambda device=None: "not usable: mamba-ssm (ImportError)")
    with pytest.warns(RuntimeWarning, match="using the 'triton' scan"):
        assert resolve_implementation("auto", torch.device("cuda")) == "triton"
    monkeypatch.setattr(scan_module, "triton_available", lambda: False)
    assert resolve_implementation("auto", torch.device("cuda")) == "fast", "no Triton either: the PyTorch scan"
    monkeypatch.setattr(scan_module, "cuda_kernels_problem", lambda device=None: "")
    assert resolve_implementation("auto", torch.device("cuda")) == "cuda"
    assert resolve_implementation("triton", torch.device("cpu")) == "triton", "explicit choices are kept"


def test_kernels_compile_for_hopper_without_a_gpu(tmp_path):
    """Triton's compiler (not its interpreter) lowers both kernels to sm_90 machine code, in a fresh process."""
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_CACHE_DIR=str(tmp_path))
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, str(root / "tests" / "triton_compile_check.py"), "90"],
        cwd=root, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("compiled ") == 4, result.stdout
