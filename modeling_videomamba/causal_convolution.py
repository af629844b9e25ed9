"""The causal depthwise convolution (+ SiLU) that feeds each scan direction: PyTorch, or causal-conv1d's CUDA kernel."""

import torch
import torch.nn.functional as F

from .configuration_videomamba import CUDA_CONV_WIDTHS


def _conv_kernel_layout(x: torch.Tensor) -> torch.Tensor:
    """x (batch, dim, length) in a layout causal-conv1d's kernels handle: `x` itself when it has one,
    else a channel-first contiguous copy.

    The kernels read x as channel-first (stride 1 along the length) or channel-last (stride 1 along the
    channels); channel-last needs dim and the other two strides divisible by 8, and both read 16-byte
    vectors, so the data must start 16-byte aligned. The mixer's x is a channel-last view of the
    input projection (stride 2 * dim along the length), which fails those checks for some widths.
    """
    batch, dim, length = x.shape
    # (the storage itself is allocated aligned; data_ptr() would fail on torch.compile's fake tensors)
    aligned = x.storage_offset() * x.element_size() % 16 == 0
    if x.stride(1) == 1 and x.stride(2) > 1:  # what the kernel takes for channel-last
        fits = dim % 8 == 0 and x.stride(2) % 8 == 0 and x.stride(0) % 8 == 0
    else:
        fits = x.is_contiguous()
    if fits and aligned:
        return x
    # clone, not contiguous(): a length-1 x can count as contiguous yet look channel-last to the kernel.
    return x.clone(memory_format=torch.contiguous_format)


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor = None, use_kernel: bool = False):
    """SiLU(causal depthwise conv1d(x)): x (batch, dim, length), weight (dim, kernel), bias (dim,).

    Left zero-padding by kernel - 1, so output t sees inputs t - kernel + 1 .. t. With `use_kernel` the
    causal-conv1d CUDA kernel is used (CUDA tensors, package installed; kernel widths 2 to 4), on `x`
    or a copy of it in a layout the kernel accepts.
    """
    kernel = weight.shape[-1]
    if use_kernel:
        if kernel not in CUDA_CONV_WIDTHS:
            raise ValueError(f"causal-conv1d's kernel supports widths {CUDA_CONV_WIDTHS}; got a width-{kernel} weight.")
        from causal_conv1d import causal_conv1d_fn

        return causal_conv1d_fn(_conv_kernel_layout(x), weight, bias, activation="silu")
    out = F.conv1d(F.pad(x, (kernel - 1, 0)), weight.unsqueeze(1), bias, groups=x.shape[1])
    return F.silu(out)


def causal_conv1d_tokens_first(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor = None):
    """`causal_conv1d` in token-major layout: x (batch, L, dim) -> SiLU(conv) (batch, L, dim).

    The depthwise kernel is tiny (4 taps), so shifted multiply-adds along L beat transposing to
    (batch, dim, L) and back around F.conv1d. The output is in x's dtype (fp32 weights on bf16 or fp16
    x under autocast accumulate in fp32), as causal-conv1d's kernel: the scan reads the compute dtype.
    """
    kernel = weight.shape[-1]
    # Contiguous (dim,) tap vectors: broadcasting a strided column of weight made each multiply-add
    # about 3x slower (measured at (1, 1569, 768)).
    taps = weight.t().contiguous()
    out = x * taps[-1] if bias is None else torch.addcmul(bias, x, taps[-1])
    for tap in range(kernel - 1):
        shift = kernel - 1 - tap  # this tap reads x[t - shift]
        if shift < x.shape[1]:
            out[:, shift:].addcmul_(x[:, :-shift], taps[tap])
    return F.silu(out).to(x.dtype)


__all__ = ["causal_conv1d", "causal_conv1d_tokens_first"]
