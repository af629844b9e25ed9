"""The mixer's fused inference ops (csrc/mixer_cpu.cpp) against the PyTorch expressions they replace."""


import pytest
import torch
import torch.nn.functional as F
from test_selective_scan import assert_close_relative

from modeling_videomamba import VideoMambaConfig, VideoMambaModel, mixer_fused
from modeling_videomamba import modeling_videomamba_blocks as blocks
from modeling_videomamba.causal_convolution import causal_conv1d_tokens_first

TOLERANCE = {torch.float32: 1e-6, torch.float64: 1e-12}


def projection_halves(batch, length, inner, dtype, seed):
    """x, z (batch, length, inner): the strided halves of an in_proj-like (batch, length, 2 inner) output."""
    generator = torch.Generator().manual_seed(seed)
    projected = torch.randn(batch, length, 2 * inner, generator=generator, dtype=dtype) * 2
    return projected.chunk(2, dim=-1)


# Odd lengths around the kernel width, inner widths with and without a partial pack (4, 8 or 16 lanes).
SHAPES = [(1, 19), (2, 19), (3, 8), (5, 37), (17, 19), (61, 64)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("width", [2, 3, 4])
@pytest.mark.parametrize("length, inner", SHAPES)
def test_native_fused_conv_matches_pytorch(built, dtype, width, length, inner):
    x, _ = projection_halves(2, length, inner, dtype, seed=length * 10 + width)
    generator = torch.Generator().manual_seed(width)
    weight = torch.randn(2 * inner, width, generator=generator, dtype=dtype)
    bias = torch.randn(2 * inner, generator=generator, dtype=dtype)
    expected = causal_conv1d_tokens_first(torch.cat([x, x.flip(1)], dim=-1), weight, bias)
    assert not x.is_contiguous()
    for view in (x, x.contiguous(), x.transpose(0, 1).contiguous().transpose(0, 1)):
        actual = mixer_fused.conv_silu_both_directions(view, weight, bias)
        assert actual.is_contiguous()
        assert_close_relative(actual, expected, TOLERANCE[dtype], f"conv L={length} K={width}")
    # Channels not adjacent (stride 1): the op copies them first.
    transposed = x.transpose(1, 2).contiguous().transpose(1, 2)
    assert_close_relative(mixer_fused.conv_silu_both_directions(transposed, weight, bias), expected,
                          TOLERANCE[dtype], "conv, channel-strided x")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("length, inner", SHAPES)
def test_native_fused_gate_matches_pytorch(built, dtype, length, inner):
    _, z = projection_halves(2, length, inner, dtype, seed=length)
    y = torch.randn(2, length, 2 * inner, generator=torch.Generator().manual_seed(inner), dtype=dtype)
    y_forward, y_backward = y.split(inner, dim=-1)
    expected = (y_forward + y_backward.flip(1)) * F.silu(z)
    for view in (z, z.contiguous(), z.transpose(1, 2).contiguous().transpose(1, 2)):
        actual = mixer_fused.gate_both_directions(y, view)
        assert actual.is_contiguous()
        assert_close_relative(actual, expected, TOLERANCE[dtype], f"gate L={length}")


def test_native_fused_only_without_autograd(built, monkeypatch):
    x = torch.randn(1, 3, 4)
    weight = torch.randn(8, 4, requires_grad=True)
    assert mixer_fused.fusable("native", x, weight.detach())
    assert not mixer_fused.fusable("native", x, weight)  # a gradient is needed
    with torch.no_grad():
        assert mixer_fused.fusable("native", x, weight)
        assert not mixer_fused.fusable("fast", x, weight)
        assert not mixer_fused.fusable("native", x.bfloat16(), weight.bfloat16())
        assert not mixer_fused.fusable("native", x, weight.double())
        monkeypatch.setattr(mixer_fused, "ENABLED", False)
        assert not mixer_fused.fusable("native", x, weight)


@pytest.mark.parametrize("order", ["spatial_first", "temporal_first", "hybrid"])
def test_native_fused_model_output_matches_grad_path_in_every_order(built, monkeypatch, order):
    # The same model with and without autograd: the no-grad forward runs the fused ops (counted), the
    # grad-enabled one the PyTorch expressions.
    calls = []
    for name in ("conv_silu_both_directions", "gate_both_directions"):
        op = getattr(blocks, name)
        monkeypatch.setattr(blocks, name, lambda *args, op=op, name=name: calls.append(name) or op(*args))
    torch.manual_seed(0)
    config = VideoMambaConfig(image_size=32, patch_size=8, num_frames=4, hidden_size=32, num_hidden_layers=2,
                              token_order=order, scan_implementation="native")
    model = VideoMambaModel(config).eval()
    pixel_values = torch.randn(2, 4, 3, 32, 32)
    expected = model(pixel_values).last_hidden_state
    assert calls == []
    with torch.no_grad():
        actual = model(pixel_values).last_hidden_state
    assert calls.count("conv_silu_both_directions") == calls.count("gate_both_directions") == 2
    assert_close_relative(actual, expected.detach(), 1e-5, f"no-grad output ({order})")


def test_native_fused_ops_compile_without_graph_breaks(built):
    # Under no_grad the fused ops are custom ops with fake implementations: torch.compile traces them.
    torch.manual_seed(0)
    config = VideoMambaConfig(image_size=32, patch_size=8, num_frames=2, hidden_size=32, num_hidden_layers=1,
                              scan_implementation="native")
    model = VideoMambaModel(config).eval()
    pixel_values = torch.randn(1, 2, 3, 32, 32)
    torch._dynamo.reset()
    with torch.no_grad():
        expected = model(pixel_values).last_hidden_state
        actual = torch.compile(model, backend="aot_eager", fullgraph=True)(pixel_values).last_hidden_state
    assert_close_relative(actual, expected, 1e-6, "compiled no-grad output")
