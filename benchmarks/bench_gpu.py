"""GPU benchmark: VideoMamba-Ti with mamba-ssm kernels vs VideoMAE-Ti vs TimeSformer-Ti, bf16, batch 1.

Needs a CUDA device; mamba-ssm and causal-conv1d for VideoMamba's kernels (see benchmarks/README.md
for an offline build). Before timing, it checks the scans on the GPU against the plain recurrence
(`selective_scan_reference`, fp32): "cuda" (mamba-ssm), "triton" (when installed) and "fast" must
agree within 1e-4, 1e-4 and 1e-5 relative. The models and their configs are those of bench_models.py
(VideoMamba's scan from --scan: "auto" takes mamba-ssm, else Triton, else "fast"); times are medians
of CUDA-synced calls, memory is torch.cuda.max_memory_allocated beyond the weights and input.

    python benchmarks/bench_gpu.py                               # frames 8 16 32 64, forward + train
    python benchmarks/bench_gpu.py --frames 8 16 --repeats 10 --modes forward
    python benchmarks/bench_gpu.py --scan triton                 # VideoMamba on the Triton scan
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_models import MODELS, MODES, build_model  # noqa: E402
from timing import max_relative_error, print_table, summary, time_call  # noqa: E402

from modeling_videomamba.selective_scan import (  # noqa: E402
    cuda_kernels_available,
    selective_scan,
    selective_scan_reference,
    triton_available,
)


def check_scans(length=1569, dim=768, state=16):
    """Max relative error of each available GPU scan against the fp32 reference; raises if too large."""
    generator = torch.Generator().manual_seed(0)
    inputs = {
        "u": torch.randn(1, dim, length, generator=generator),
        "delta": torch.randn(1, dim, length, generator=generator) * 0.5,
        "A": -torch.arange(1, state + 1, dtype=torch.float32).repeat(dim, 1),
        "B": torch.randn(1, 2, state, length, generator=generator),
        "C": torch.randn(1, 2, state, length, generator=generator),
        "D": torch.ones(dim),
        "z": torch.randn(1, dim, length, generator=generator),
        "delta_bias": torch.randn(dim, generator=generator) * 0.5 - 2.0,
    }
    expected = selective_scan_reference(**inputs, delta_softplus=True)
    on_gpu = {name: tensor.cuda() for name, tensor in inputs.items()}
    limits = {"fast": 1e-5}
    if cuda_kernels_available():
        limits["cuda"] = 1e-4
    else:
        print("note: mamba-ssm is not installed; it is not checked")
    if triton_available():
        limits["triton"] = 1e-4
    for implementation, limit in limits.items():
        actual = selective_scan(**on_gpu, delta_softplus=True, implementation=implementation).cpu()
        error = max_relative_error(actual, expected)
        print(f"scan check {implementation:>4} vs reference (fp32, L={length}, dim={dim}): max rel err {error:.2e}")
        if not error <= limit:
            raise SystemExit(f"scan {implementation!r} differs from the reference by {error:.2e} > {limit:.0e}")


def measure(name, frames, mode, repeats, dtype, scan="auto"):
    torch.manual_seed(0)
    model = build_model(name, frames, scan).to(device="cuda", dtype=dtype)
    pixel_values = torch.randn(1, frames, 3, 224, 224, device="cuda", dtype=dtype)
    if mode == "train-ckpt":
        model.gradient_checkpointing_enable()
        model.train()

    def step():
        if mode == "forward":
            with torch.no_grad():
                model(pixel_values)
        else:
            model(pixel_values).last_hidden_state.float().mean().backward()
            model.zero_grad(set_to_none=True)

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated()
    times = time_call(step, repeats=repeats, warmup=2, sync=torch.cuda.synchronize)
    peak = (torch.cuda.max_memory_allocated() - baseline) / 2**20
    del model, pixel_values
    torch.cuda.empty_cache()
    return summary(times), peak


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--scan", default="auto", choices=["auto", "cuda", "triton", "fast"], help="VideoMamba's scan")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA device and none is visible here; on CPU run benchmarks/bench_models.py.")
    dtype = getattr(torch, args.dtype)
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, {args.dtype}, "
          f"mamba-ssm kernels: {cuda_kernels_available()}, triton: {triton_available()}, VideoMamba scan: {args.scan}")
    check_scans()
    for mode in args.modes:
        rows, base = [], {}
        for name in args.models:
            for frames in args.frames:
                try:
                    (median, low, high), peak = measure(name, frames, mode, args.repeats, dtype, args.scan)
                except torch.cuda.OutOfMemoryError:
                    torch.cuda.empty_cache()
                    rows.append([name, frames, "OOM", "-", "-", "-", "-"])
                    continue
                if name == "videomamba":
                    base[frames] = median
                ratio = f"{median / base[frames]:.2f}x" if frames in base else "-"
                rows.append([name, frames, f"{1e3 * median:.1f}", f"{1e3 * low:.1f}", f"{1e3 * high:.1f}", ratio, f"{peak:.0f}"])
        header = ["model", "frames", "median ms", "min ms", "max ms", "time vs videomamba", "peak MB"]
        print_table(f"mode: {mode} ({args.dtype}, batch 1, 224x224)", header, rows)


if __name__ == "__main__":
    main()
