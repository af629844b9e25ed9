"""int8 inference on CPU: dynamic int8 quantization of a VideoMamba model's projections.

`quantize_int8(model)` returns a copy whose Linear layers (the mixers' in_proj, x_proj, x_proj_b,
out_proj and the classifier head) hold int8 weights (one scale per output channel) and quantize their input on the fly
(fbgemm int8 matmuls, int32 accumulation). Everything else stays fp32: the patch embedding, the
norms, the causal convolution, dt_proj (its weight enters the scan directly) and the selective scan
with its state.

Why torch's own `torch.ao.quantization.quantize_dynamic`: in torch 2.13 it is deprecated in favour of
torchao, but torchao's int8 dynamic-activation path (`Int8DynamicActivationInt8WeightConfig`) has no x86
CPU kernel: measured here 25x slower than the fp32 Linear it replaces (eager, and 22x under
torch.compile), while torch's fbgemm path is faster than fp32. So this uses torch's, silencing its
deprecation warnings, and raises a clear error if a future torch removes it.
"""

import warnings

import torch
from torch import nn

# Linear layers that must stay float: the mixer reads dt_proj's weight itself (a block-diagonal matmul
# with the dt bias added inside the scan), which a packed int8 module does not have.
FLOAT_LINEARS = ("dt_proj", "dt_proj_b")


def int8_linear_names(model: nn.Module) -> set:
    """Qualified names of the Linear layers `quantize_int8` converts (all but dt_proj / dt_proj_b)."""
    return {
        name for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] not in FLOAT_LINEARS
    }


def quantize_int8(model: nn.Module) -> nn.Module:
    """A copy of `model` (left unchanged) with its projections dynamically quantized to int8, for CPU inference."""
    try:
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
    except ImportError as error:
        raise ImportError(
            f"quantize_int8 needs torch.ao.quantization.quantize_dynamic, which this torch ({torch.__version__}) "
            "does not have."
        ) from error
    if "fbgemm" not in torch.backends.quantized.supported_engines:
        raise RuntimeError(
            f"quantize_int8 needs the fbgemm quantized engine (x86 CPUs); this build has "
            f"{torch.backends.quantized.supported_engines}."
        )
    names = int8_linear_names(model)
    with warnings.catch_warnings():
        # torch.ao.quantization and the quantized tensor types it packs weights into warn of their
        # deprecation on every call; see the module docstring for why they are used all the same.
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization is deprecated.*")
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
        return quantize_dynamic(model.eval(), dict.fromkeys(names, per_channel_dynamic_qconfig), dtype=torch.qint8)
