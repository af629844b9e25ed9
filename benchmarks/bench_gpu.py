"""GPU benchmark: VideoMamba (Ti/S/M, each GPU scan path) vs VideoMAE vs TimeSformer, bf16, batch 1.

Run as users run these models: fp32 weights under torch.autocast (bf16 by default; VideoMamba's A, D
and step-size bias stay fp32 as in training), eval mode for "forward", train mode for the training
steps, SDPA attention in both transformers (TimeSformer's attention is swapped for an SDPA one with
the same weights: transformers' TimeSformer has no SDPA path). The paper's Figure 1 is the anchor
(A100, 64 frames: VideoMamba-Ti 6x faster and 40x less memory than TimeSformer-Ti); the table's last
two columns give each row's speed and memory against the TimeSformer of its size, mode and frames.

Needs a CUDA device; mamba-ssm and causal-conv1d for VideoMamba's "cuda" path (see benchmarks/README.md
for an offline build). Before timing, it checks every GPU scan path available here against the plain
recurrence (`selective_scan_reference`, fp32): "cuda" (mamba-ssm) and "triton" within 1e-4, "fast"
within 1e-5 relative. The models and their configs are those of bench_models.py (--sizes picks
VideoMamba's presets and the transformers of matching size); times are medians of CUDA-synced calls,
throughput is clips per second at batch 1, memory is torch.cuda.max_memory_allocated beyond the weights
and input. --deadline stops measuring after that many seconds (the rest is listed as skipped) and
--json appends every row to a file (benchmarks/gpu_check.py collects them into one table).

    python benchmarks/bench_gpu.py                               # Ti, frames 8 16 32 64, forward + train
    python benchmarks/bench_gpu.py --sizes tiny small middle --scans cuda triton --frames 8 16
    python benchmarks/bench_gpu.py --smoke --frames 2 --repeats 1 --scans fast   # CPU, tiny models: the script only
"""

import argparse
import contextlib
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_models import MODELS, MODES, SIZES, build_model  # noqa: E402
from timing import max_relative_error, print_table, summary, time_call  # noqa: E402

from modeling_videomamba.configuration_videomamba import SCAN_IMPLEMENTATIONS as IMPLEMENTATIONS  # noqa: E402
from modeling_videomamba.selective_scan import (  # noqa: E402
    cuda_kernels_available,
    cuda_kernels_problem,
    selective_scan,
    selective_scan_reference,
)

SIZE_TAGS = {"tiny": "Ti", "small": "S", "middle": "M"}
LABELS = {"videomamba": "VideoMamba", "videomae": "VideoMAE", "timesformer": "TimeSformer"}


def gpu_scan_paths():
    """{scan implementation: tolerance vs the fp32 reference} of the GPU paths usable here, and notes on
    the ones that are not."""
    paths, notes = {"fast": 1e-5}, []
    if cuda_kernels_available():
        paths["cuda"] = 1e-4
    else:
        notes.append(f"cuda (mamba-ssm): {cuda_kernels_problem() or 'unavailable'}")
    if "triton" in IMPLEMENTATIONS:  # added by the Triton path; absent in older checkouts
        try:
            from modeling_videomamba.selective_scan import triton_problem

            problem = triton_problem("cuda")  # a tiny scan compiled and run on the GPU
            if problem:
                notes.append(f"triton: {problem}")
            else:
                paths["triton"] = 1e-4
        except Exception as error:  # a missing or broken triton: report, do not stop the run
            notes.append(f"triton: {type(error).__name__}: {error}")
    else:
        notes.append("triton: not in this checkout")
    return paths, notes


def check_scans(paths, length=1569, dim=768, state=16):
    """Max relative error of each GPU scan path against the fp32 reference; raises if one is too large."""
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
    for implementation, limit in paths.items():
        actual = selective_scan(**on_gpu, delta_softplus=True, implementation=implementation).cpu()
        error = max_relative_error(actual, expected)
        print(f"scan check {implementation:>6} vs reference (fp32, L={length}, dim={dim}): max rel err {error:.2e}")
        if not error <= limit:
            raise SystemExit(f"scan {implementation!r} differs from the reference by {error:.2e} > {limit:.0e}")


def _sdpa_self_attention(self, hidden_states, output_attentions=False):
    """TimesformerSelfAttention.forward with torch's scaled_dot_product_attention (same weights and math;
    no attention probabilities to return)."""
    batch, tokens, channels = hidden_states.shape
    qkv = self.qkv(hidden_states).reshape(batch, tokens, 3, self.num_heads, channels // self.num_heads)
    query, key, value = qkv.permute(2, 0, 3, 1, 4)
    dropout = self.attn_drop.p if self.training else 0.0
    context = F.scaled_dot_product_attention(query, key, value, dropout_p=dropout, scale=self.scale)
    return (context.transpose(1, 2).reshape(batch, tokens, channels),)


def use_sdpa_attention(model):
    """Swap every TimeSformer self-attention of `model` for the SDPA one (in place); returns `model`."""
    from transformers.models.timesformer.modeling_timesformer import TimesformerSelfAttention

    for module in model.modules():
        if isinstance(module, TimesformerSelfAttention):
            module.forward = _sdpa_self_attention.__get__(module)
    return model


def measure(name, frames, mode, repeats, dtype, scan="auto", size="tiny", device="cuda", overrides=None):
    """((median, min, max) seconds, peak MB or None off CUDA) of one (model, frames, mode) on `device`."""
    device = torch.device(device)
    on_cuda = device.type == "cuda"
    torch.manual_seed(0)
    with device:  # initialising on the GPU: seconds saved per model at the larger sizes
        model = build_model(name, frames, scan, size, overrides)
    if name == "timesformer":
        use_sdpa_attention(model)
    if mode == "train-ckpt":
        model.gradient_checkpointing_enable()
    model.train(mode != "forward")  # the configs have no dropout, but train mode is what training runs
    image = model.config.image_size
    pixel_values = torch.randn(1, frames, 3, image, image, device=device)

    def autocast():
        if dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=dtype)

    def step():
        if mode == "forward":
            with torch.no_grad(), autocast():
                model(pixel_values)
        else:
            with autocast():
                output = model(pixel_values).last_hidden_state
            output.float().mean().backward()
            model.zero_grad(set_to_none=True)

    sync = torch.cuda.synchronize if on_cuda else None
    if on_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    times = time_call(step, repeats=repeats, warmup=2, sync=sync)
    peak = (torch.cuda.max_memory_allocated() - baseline) / 2**20 if on_cuda else None
    del model, pixel_values
    if on_cuda:
        torch.cuda.empty_cache()
    return summary(times), peak


def plan(args, paths):
    """The measurements in order: per size and mode, VideoMamba on each scan path, then the transformers."""
    scans = [scan for scan in args.scans if scan == "auto" or scan in paths]
    for size in args.sizes:
        for mode in args.modes:
            for frames in args.frames:
                for name in args.models:
                    for scan in scans if name == "videomamba" else [None]:
                        yield size, mode, frames, name, scan


# --smoke: the whole script on CPU with tiny models (checks the script, says nothing about speed).
SMOKE_OVERRIDES = {"image_size": 32, "num_hidden_layers": 1}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--modes", nargs="+", default=["forward", "train"], choices=MODES)
    parser.add_argument("--sizes", nargs="+", default=["tiny"], choices=list(SIZES))
    parser.add_argument("--scans", nargs="+", default=["auto"], choices=["auto", "fast", "cuda", "triton"],
                        help="VideoMamba's scan paths to time (those not usable here are left out with a note)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                        help="torch.autocast dtype (float32: no autocast); the weights stay fp32")
    parser.add_argument("--deadline", type=float, default=None, help="stop measuring after this many seconds")
    parser.add_argument("--json", default=None, help="append each row as a JSON line to this file")
    parser.add_argument("--skip-check", action="store_true", help="do not check the scans against the reference first")
    parser.add_argument("--smoke", action="store_true",
                        help=f"run on CPU with tiny models ({SMOKE_OVERRIDES}), no scan check: tests the script only")
    args = parser.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit(
            "bench_gpu.py needs a CUDA device and none is visible here; on CPU run benchmarks/bench_models.py "
            "(or --smoke to test this script)."
        )
    start = time.monotonic()
    dtype = getattr(torch, args.dtype)
    if args.smoke:
        device, overrides, paths, notes = "cpu", SMOKE_OVERRIDES, {"fast": 1e-5}, ["smoke run on CPU: fast only"]
        print(f"device: CPU (smoke run, tiny models), torch {torch.__version__}, autocast {args.dtype}")
    else:
        device, overrides = "cuda", None
        paths, notes = gpu_scan_paths()
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, autocast {args.dtype}; GPU scan "
              f"paths: {', '.join(paths)}" + "".join(f"\nnot usable: {note}" for note in notes))
        if not args.skip_check:
            check_scans(paths)
    rows = []
    for size, mode, frames, name, scan in plan(args, paths):
        label = f"{LABELS[name]}-{SIZE_TAGS[size]}" + (f" ({scan})" if scan else "")
        row = {"model": label, "name": name, "size": size, "mode": mode, "frames": frames,
               "dtype": f"autocast {args.dtype}" if dtype != torch.float32 else "float32"}
        if args.deadline is not None and time.monotonic() - start > args.deadline:
            row["status"] = "skipped (time budget)"
        else:
            try:
                (median, low, high), peak = measure(name, frames, mode, args.repeats, dtype, scan or "auto", size,
                                                    device, overrides)
                row.update(status="ok", median_ms=1e3 * median, min_ms=1e3 * low, max_ms=1e3 * high,
                           clips_per_s=1 / median, peak_mb=peak)
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                row["status"] = "OOM"
        rows.append(row)
        if args.json:
            with open(args.json, "a") as handle:
                handle.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
    where = "CPU smoke run, tiny models" if args.smoke else "224x224"
    print_table(f"autocast {args.dtype}, batch 1, {where}", *results_table(rows))
    return rows


def _ratio(numerator, denominator):
    return f"{numerator / denominator:.1f}x" if numerator and denominator else "-"


def results_table(rows):
    """(header, rows) of a printable table of measurement rows. The last two columns are TimeSformer's
    median time and peak memory over the row's (same size, mode and frames): how many times faster and
    leaner the row is (the paper's Figure 1 reads 6x and 40x for VideoMamba-Ti at 64 frames)."""
    header = ["model", "mode", "frames", "median ms", "clips/s", "peak MB", "status", "speed vs TimeSformer",
              "memory vs TimeSformer"]
    anchors = {(row.get("size"), row["mode"], row["frames"]): row for row in rows
               if row.get("name") == "timesformer" and row.get("status") == "ok"}
    table = []
    for row in rows:
        ok = row.get("status") == "ok"
        anchor = anchors.get((row.get("size"), row["mode"], row["frames"])) if ok else None
        peak = row.get("peak_mb") if ok else None
        table.append([
            row["model"], row["mode"], row["frames"],
            f"{row['median_ms']:.1f}" if ok else "-", f"{row['clips_per_s']:.1f}" if ok else "-",
            f"{peak:.0f}" if peak is not None else "-", row.get("status", "?"),
            _ratio(anchor and anchor["median_ms"], ok and row["median_ms"]),
            _ratio(anchor and anchor.get("peak_mb"), peak),
        ])
    return header, table


if __name__ == "__main__":
    main()
