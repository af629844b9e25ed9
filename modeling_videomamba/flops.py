"""FLOP counting: formulas for the selective-scan custom ops, and the count of a whole model.

`torch.utils.flop_counter.FlopCounterMode` counts matrix products and convolutions (2 FLOPs per
multiply-add) and any op with a registered formula; element-wise ops count nothing. The scan's custom
ops ("fast": blocked_scan_forward/backward, "native": native_scan_forward/backward) register the
formulas below, so the mode counts them, counting every multiply, add and exponential as one FLOP.
Per element of the state (batch x L x channels x N) and per channel (batch x L x channels):

    forward   7 per state element (delta*A, exp, times B, the multiply-add into the state, the
              multiply-add into y) + 1 per channel (delta*u)
    backward  20 per state element (5 recomputing the states from the checkpoints, 3 for the
              adjoint recurrence, 12 for the gradients of delta, A, B and C) + 4 per channel

The step-size bias, softplus, D and the gate are element-wise work per channel and, like every other
element-wise op, not counted (the native kernel fuses them; the count is the same for both ops).
mamba-ssm's authors estimate the forward at about 9 per state element; the "cuda" path (mamba-ssm's
autograd Function) and the Triton kernels are invisible to the mode, so `count_flops` always counts
the model on the "fast" path.
"""

import copy
from dataclasses import dataclass, field

import torch
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula

FORWARD_PER_STATE, FORWARD_PER_CHANNEL = 7, 1
BACKWARD_PER_STATE, BACKWARD_PER_CHANNEL = 20, 4


def scan_flops(batch: int, length: int, channels: int, state: int, backward: bool = False) -> int:
    """FLOPs of one scan (forward, or its backward) over (batch, length, channels) with `state` states per channel."""
    if backward:
        per_state, per_channel = BACKWARD_PER_STATE, BACKWARD_PER_CHANNEL
    else:
        per_state, per_channel = FORWARD_PER_STATE, FORWARD_PER_CHANNEL
    return batch * length * channels * (per_state * state + per_channel)


def _scan_shape_flops(u_shape, A_shape, backward):
    # Both ops' layout: u (batch, L, groups, dg), A (groups, N, dg).
    batch, length, groups, dg = u_shape
    return scan_flops(batch, length, groups * dg, A_shape[1], backward)


def register_scan_flops(forward_op, backward_op) -> None:
    """Register the formulas for a scan's forward and backward custom ops (torch.library.custom_op objects)."""

    def forward_formula(u_shape, delta_shape, A_shape, *args, out_shape=None, **kwargs) -> int:
        return _scan_shape_flops(u_shape, A_shape, backward=False)

    def backward_formula(u_shape, delta_shape, A_shape, *args, out_shape=None, **kwargs) -> int:
        return _scan_shape_flops(u_shape, A_shape, backward=True)

    register_flop_formula(forward_op._opoverload.overloadpacket)(forward_formula)
    register_flop_formula(backward_op._opoverload.overloadpacket)(backward_formula)


# The modules whose products the paper's FLOPs contain: the original counted with fvcore, which sees the
# patch embedding, in_proj, out_proj and the head, but nothing inside mamba-ssm's fused
# mamba_inner_fn (the conv, x_proj, dt_proj and the scan run in one autograd Function there).
PAPER_MODULES = ("patch_embeddings.projection", "in_proj", "out_proj", "classifier")


@dataclass
class FlopCount:
    """A model's FLOPs (FlopCounterMode's convention: 2 per multiply-add, scan ops by the formulas above).

    `by_operator`: FLOPs per op (aten.mm, aten.convolution, the scan ops, ...); `by_module`: FLOPs per
    module path (a module's count includes its children's); `paper_macs`: multiply-adds (1 each) of the
    modules the paper's table counts (`PAPER_MODULES`), the figure to put next to it.
    """

    total: int
    by_operator: dict = field(default_factory=dict)
    by_module: dict = field(default_factory=dict)
    paper_macs: int = 0

    @property
    def gflops(self) -> float:
        return self.total / 1e9

    @property
    def scan(self) -> int:
        """FLOPs of the scan ops alone."""
        return sum(count for name, count in self.by_operator.items() if "scan" in name)


def _model_and_input(model_or_config, num_frames, image_size, batch_size):
    """A copy of the model built on the meta device (no weights, no memory) and a meta input for it."""
    from .modeling_videomamba import VideoMambaForImageClassification, VideoMambaForVideoClassification

    if isinstance(model_or_config, torch.nn.Module):
        config, model_class = model_or_config.config, type(model_or_config)
    else:
        config = model_or_config
        video = config.modality == "video"
        model_class = VideoMambaForVideoClassification if video else VideoMambaForImageClassification
    config = copy.deepcopy(config)
    if num_frames is not None:
        config.num_frames = num_frames
    if image_size is not None:
        config.image_size = image_size
    # The fast scan's ops carry the formulas; "cuda" and "triton" are invisible to FlopCounterMode.
    config.scan_implementation = "fast"
    with torch.device("meta"):
        model = model_class(config)
        side = config.image_size
        if config.modality == "video":
            pixel_values = torch.empty(batch_size, config.num_frames, config.num_channels, side, side)
        else:
            pixel_values = torch.empty(batch_size, config.num_channels, side, side)
    return model, pixel_values


def count_flops(model_or_config, num_frames=None, image_size=None, batch_size=1, backward=False) -> FlopCount:
    """Count a VideoMamba classifier's FLOPs for one input, without running it for real.

    model_or_config: a VideoMamba model (only its class and config are used: a classifier, or the
    backbone VideoMambaModel) or a VideoMambaConfig (counted as the classifier for its modality).
    num_frames / image_size: the input (defaults: the config's). The model is rebuilt on the meta
    device and called once under FlopCounterMode: no weights, no arithmetic (VideoMamba-M at 8 frames
    counts in about 3 s on a loaded 2-core CPU, mostly the mode's dispatch). backward=True adds the
    backward pass of a loss on that output (a training step's FLOPs).
    """
    model, pixel_values = _model_and_input(model_or_config, num_frames, image_size, batch_size)
    with FlopCounterMode(display=False) as counter:
        with torch.set_grad_enabled(backward):
            # The first output: the logits of a classifier, the last hidden state of the backbone.
            output = model(pixel_values)[0]
            if backward:
                output.sum().backward()
    counts = counter.get_flop_counts()
    by_module = {name: sum(ops.values()) for name, ops in counts.items() if name != "Global"}
    top = type(model).__name__
    paper = sum(
        count
        for name, count in by_module.items()
        if any(name == f"{top}.{path}" or name.endswith("." + path) for path in PAPER_MODULES)
    )
    return FlopCount(
        total=counter.get_total_flops(),
        by_operator={str(op): count for op, count in counts.get("Global", {}).items()},
        by_module=by_module,
        # Forward products only: the paper counts an inference view.
        paper_macs=paper // 2 if not backward else 0,
    )


__all__ = ["FlopCount", "count_flops", "register_scan_flops", "scan_flops"]
