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
