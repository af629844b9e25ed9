"""int8: `quantize_int8` converts the projections, leaves dt_proj, the scan and the original model alone."""

import pytest
import torch
from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

from modeling_videomamba import VideoMambaConfig, VideoMambaForVideoClassification
from modeling_videomamba.quantization import int8_linear_names, quantize_int8

TINY = dict(image_size=32, patch_size=8, num_frames=4, hidden_size=32, num_hidden_layers=2, num_labels=3)


@pytest.mark.parametrize("scan_implementation", ["fast", "reference"])
def test_int8_model_runs_and_stays_close(scan_implementation):
    torch.manual_seed(0)
    model = VideoMambaForVideoClassification(VideoMambaConfig(**TINY, scan_implementation=scan_implementation)).eval()
    x = torch.randn(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x, output_hidden_states=True)
    quantized = quantize_int8(model)
    mixer = quantized.videomamba.layers[0].mixer
    for name in ("in_proj", "x_proj", "x_proj_b", "out_proj"):
        assert isinstance(getattr(mixer, name), DynamicQuantizedLinear), name
    assert isinstance(quantized.classifier, DynamicQuantizedLinear)
    assert type(mixer.dt_proj) is torch.nn.Linear and type(mixer.dt_proj_b) is torch.nn.Linear
    assert mixer.A_log.dtype == torch.float32, "the scan's parameters stay fp32"
    assert type(model.videomamba.layers[0].mixer.in_proj) is torch.nn.Linear, "the original model is not changed"
    with torch.no_grad():
        out = quantized(x, output_hidden_states=True)
    assert out.logits.dtype == torch.float32 and out.logits.shape == (2, 3)
    assert not torch.equal(out.logits, expected.logits), "the int8 matmuls round differently from fp32"
    # The residual stream after the blocks (before the final norm and the head): int8 rounding of the
    # projections moves it by 0.5% here (measured); a broken conversion (wrong scale, a lost bias) far more.
    stream, reference = out.hidden_states[-1], expected.hidden_states[-1]
    error = ((stream - reference).norm() / reference.norm()).item()
    assert error < 0.02, f"int8 residual stream {error:.3f} (relative) from fp32"


def test_int8_linear_names_skip_only_the_step_size_projections():
    model = VideoMambaForVideoClassification(VideoMambaConfig(**TINY))
    names = int8_linear_names(model)
    linears = {name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    assert linears - names == {f"videomamba.layers.{i}.mixer.{p}" for i in range(2) for p in ("dt_proj", "dt_proj_b")}
    assert "classifier" in names
