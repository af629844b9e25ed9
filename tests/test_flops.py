"""FLOP counting: the scan ops' formulas under FlopCounterMode, `count_flops` against an analytic count,
and against the paper's table."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from modeling_videomamba import (
    VideoMambaConfig,
    VideoMambaForVideoClassification,
    VideoMambaModel,
    count_flops,
    native_scan,
)
from modeling_videomamba.flops import scan_flops
from modeling_videomamba.selective_scan import selective_scan

TINY = dict(hidden_size=32, num_hidden_layers=2, image_size=32, patch_size=8, num_frames=4, num_labels=5)


def analytic_flops(config, batch=1):
    """What FlopCounterMode should count for one forward of a classifier, by hand (2 FLOPs per multiply-add).

    Per layer: in_proj, both directions' x_proj, dt_proj (the mixer runs both directions' as one matmul
    with a block-diagonal weight, so twice the useful products), out_proj, and the scan over both
    directions' channels. The depthwise causal conv runs as element-wise multiply-adds and is not counted.
    """
    d, i, r, n = config.hidden_size, config.intermediate_size, config.time_step_rank, config.state_size
    patches = (config.num_frames // config.tubelet_size) * (config.image_size // config.patch_size) ** 2
    length = 1 + patches
    patch_embedding = 2 * batch * patches * d * config.num_channels * config.tubelet_size * config.patch_size**2
    per_layer = {
        "in_proj": 2 * batch * length * d * 2 * i,
        "x_proj": 2 * (2 * batch * length * i * (r + 2 * n)),
        "dt_proj": 2 * batch * length * (2 * r) * (2 * i),
        "out_proj": 2 * batch * length * i * d,
    }
    layers = config.num_hidden_layers
    return {
        "aten.convolution": patch_embedding,
        "aten.mm": layers * sum(per_layer.values()),
        "aten.addmm": 2 * batch * d * config.num_labels,
        "scan": layers * scan_flops(batch, length, 2 * i, n),
        "paper_macs": (patch_embedding + layers * (per_layer["in_proj"] + per_layer["out_proj"])) // 2
        + batch * d * config.num_labels,
    }


@pytest.mark.parametrize("batch", [1, 2])
def test_count_flops_matches_the_analytic_count(batch):
    config = VideoMambaConfig(**TINY)
    expected = analytic_flops(config, batch)
    count = count_flops(config, batch_size=batch)
    by_operator = {("scan" if "scan" in name else name): flops for name, flops in count.by_operator.items()}
    assert by_operator == {name: flops for name, flops in expected.items() if name != "paper_macs"}
    assert count.total == sum(by_operator.values())
    assert count.scan == expected["scan"]
    assert count.paper_macs == expected["paper_macs"]


def test_count_flops_follows_the_input_and_accepts_a_model():
    config = VideoMambaConfig(**TINY)
    model = VideoMambaForVideoClassification(config)
    # A real model is only read for its class and config: it is not run, its weights stay untouched.
    assert count_flops(model).total == count_flops(config).total
    bigger = VideoMambaConfig(**dict(TINY, num_frames=8, image_size=48))
    assert count_flops(model, num_frames=8, image_size=48).total == sum(
        flops for name, flops in analytic_flops(bigger).items() if name != "paper_macs"
    )
    assert next(model.parameters()).device.type == "cpu"
    # The backbone alone: everything but the head.
    backbone = count_flops(VideoMambaModel(config))
    assert backbone.total == count_flops(config).total - analytic_flops(config)["aten.addmm"]


def test_count_flops_with_backward_counts_the_scan_backward():
    config = VideoMambaConfig(**TINY)
    forward = count_flops(config)
    training = count_flops(config, backward=True)
    length = 1 + 4 * 4 * 4
    scan_backward = sum(flops for name, flops in training.by_operator.items() if "scan_backward" in name)
    channels = 2 * config.intermediate_size
    assert scan_backward == config.num_hidden_layers * scan_flops(1, length, channels, 16, backward=True)
    # Each forward product has two of the same size in the backward (input and weight gradients; every
    # layer's input needs one, since the embeddings have parameters), the head's addmm included as mm.
    mm, addmm = forward.by_operator["aten.mm"], forward.by_operator["aten.addmm"]
    assert training.by_operator["aten.mm"] == 3 * mm + 2 * addmm


@pytest.mark.parametrize("implementation", ["fast", "native"])
def test_scan_custom_ops_are_counted_by_flop_counter_mode(implementation):
    if implementation == "native" and native_scan.load_native_scan() is None:
        pytest.skip(f"the native scan could not be built here: {native_scan._failure or 'disabled by env'}")
    batch, dim, length, state = 2, 6, 11, 4
    generator = torch.Generator().manual_seed(0)
    u, delta, z = (torch.randn(batch, dim, length, generator=generator).requires_grad_() for _ in range(3))
    A = -torch.rand(dim, state, generator=generator)
    B, C = (torch.randn(batch, 2, state, length, generator=generator) for _ in range(2))
    with FlopCounterMode(display=False) as counter:
        y = selective_scan(
            u, delta.abs(), A, B, C, D=torch.ones(dim), z=z, delta_softplus=True, implementation=implementation
        )
    assert counter.get_total_flops() == scan_flops(batch, length, dim, state)
    with FlopCounterMode(display=False) as counter:
        y.sum().backward()
    assert counter.get_total_flops() == scan_flops(batch, length, dim, state, backward=True)


def test_flops_are_linear_in_depth():
    # The paper check below counts 1- and 2-layer models and extrapolates, which this licenses.
    counts = [count_flops(VideoMambaConfig(**dict(TINY, num_hidden_layers=depth))) for depth in (1, 2, 5)]
    assert counts[2].total == counts[0].total + 4 * (counts[1].total - counts[0].total)
    assert counts[2].paper_macs == counts[0].paper_macs + 4 * (counts[1].paper_macs - counts[0].paper_macs)


# The paper's Tables 3 and 4 (Kinetics-400 and Something-Something V2): params in M, FLOPs per view in G.
PAPER = {"tiny": (7, {8: 9, 16: 17}), "small": (26, {8: 34, 16: 68}), "middle": (74, {8: 101, 16: 202})}


@pytest.mark.parametrize("preset", PAPER)
def test_counts_match_the_papers_table(preset):
    params, paper_gflops = PAPER[preset]
    depth = VideoMambaConfig.from_preset(preset).num_hidden_layers
    with torch.device("meta"):
        model = VideoMambaForVideoClassification(VideoMambaConfig.from_preset(preset, num_labels=400))
    assert round(sum(p.numel() for p in model.parameters()) / 1e6) == params
    for frames, paper in paper_gflops.items():
        one, two = (
            count_flops(VideoMambaConfig.from_preset(preset, num_hidden_layers=layers, num_labels=400),
                        num_frames=frames, image_size=224).paper_macs
            for layers in (1, 2)
        )
        ours = (one + (depth - 1) * (two - one)) / 1e9
        # The paper gives whole GFLOPs (fvcore's convention: one per multiply-add).
        message = f"{preset} {frames}x224: {ours:.2f} G vs the paper's {paper} G"
        assert abs(ours - paper) <= max(0.5, 0.005 * paper), message
