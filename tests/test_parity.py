"""Our model against the ORIGINAL implementation's outputs (../shared/fixtures/original)."""

import pytest
import torch
from original_fixture import fixture_config, original, renamed_state_dict  # noqa: F401

from modeling_videomamba import VideoMambaForVideoClassification


def load_model(fixture, **overrides):
    model = VideoMambaForVideoClassification(fixture_config(fixture, **overrides)).eval()
    model.load_state_dict(renamed_state_dict(fixture["state_dict"]), strict=True)
    return model


@pytest.mark.parametrize("scan", ["auto", "reference", "fast"])
def test_fp32_parity_with_the_original(original, scan):
    model = load_model(original, scan_implementation=scan)
    pixel_values = original["pixel_values"].permute(0, 2, 1, 3, 4)  # (B, C, T, H, W) -> (B, T, C, H, W)
    with torch.no_grad():
        out = model(pixel_values, output_hidden_states=True)
        base = model.videomamba(pixel_values)
        tokens, _ = model.videomamba.embeddings(pixel_values)
    close = dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.logits, original["logits"], **close)
    torch.testing.assert_close(base.last_hidden_state, original["last_hidden_state"], **close)
    torch.testing.assert_close(base.pooler_output, original["features"], **close)
    torch.testing.assert_close(tokens, original["embeddings"], **close)
    for index, residual in enumerate(original["block_residuals"]):
        torch.testing.assert_close(out.hidden_states[index], residual, **close, msg=f"stream entering block {index}")
    streams = list(out.hidden_states)
    for index, mixer_output in enumerate(original["block_mixer_outputs"]):
        torch.testing.assert_close(streams[index + 1] - streams[index], mixer_output, **close, msg=f"mixer {index}")


def test_float64_parity_with_the_original(original):
    model = load_model(original).double()
    pixel_values = original["pixel_values"].permute(0, 2, 1, 3, 4).double()
    with torch.no_grad():
        out = model(pixel_values)
        features = model.videomamba(pixel_values).pooler_output
    torch.testing.assert_close(out.logits, original["logits_float64"], atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(features, original["features_float64"], atol=1e-8, rtol=1e-8)


def gpu_paths():
    """The scan implementations that can run on CUDA in this checkout (usable or not here)."""
    from modeling_videomamba.configuration_videomamba import SCAN_IMPLEMENTATIONS as IMPLEMENTATIONS

    return [name for name in ("cuda", "triton", "fast") if name in IMPLEMENTATIONS]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("scan", gpu_paths())
def test_gpu_parity_with_the_original(original, scan, dtype, monkeypatch):
    from modeling_videomamba.selective_scan import resolve_implementation

    try:
        resolved = resolve_implementation(scan, torch.device("cuda"))
    except Exception as error:  # the path's packages are missing or broken here
        pytest.skip(f"scan {scan!r} cannot run on this machine: {error}")
    if resolved != scan:  # an unusable "triton" falls back to "fast" (after a warning saying why)
        pytest.skip(f"scan {scan!r} cannot run on this machine: {scan!r} resolves to {resolved!r}")
    # TF32 convolutions (the patch embedding) would round to ~1e-3 and hide what the fp32 check is for.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    model = load_model(original, scan_implementation=scan).to("cuda", dtype)
    pixel_values = original["pixel_values"].permute(0, 2, 1, 3, 4).to("cuda", dtype)
    with torch.no_grad():
        logits = model(pixel_values).logits.float().cpu()
        features = model.videomamba(pixel_values).pooler_output.float().cpu()
    assert torch.isfinite(logits).all() and torch.isfinite(features).all()
    if dtype == torch.float32:
        torch.testing.assert_close(logits, original["logits"], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(features, original["features"], atol=1e-4, rtol=1e-4)
    else:
        # bf16 keeps ~3 significant digits per operation and the residual blocks compound that, so the bound is
        # relative to the output's scale (the scan itself accumulates in fp32 on every path).
        for name, actual in (("logits", logits), ("features", features)):
            expected = original[name]
            error = (actual - expected).abs().max() / expected.abs().max()
            assert error < 5e-2, f"bf16 {name}: max error {error:.3e} of the scale"
