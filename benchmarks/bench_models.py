"""VideoMamba-Ti vs VideoMAE-Ti vs TimeSformer-Ti on CPU: forward time, peak memory, frames scaling.

Models (random weights, batch 1, 224x224, patch 16, so 196 patches per frame):
- videomamba:  VideoMambaConfig.from_preset("tiny"): hidden 192, 24 bidirectional Mamba blocks,
               state 16, d_inner 384, tubelet 1 (1 + 196*T tokens); scan_implementation from --scans
               (default "auto": the native CPU kernel when it builds, else "fast"); one row per scan.
- videomae:    VideoMAEConfig(hidden 192, 12 layers, 3 heads, MLP 768, tubelet 1), SDPA attention over
               all 196*T tokens (as VideoMAE-Ti would with VideoMamba's tubelet).
- timesformer: TimesformerConfig(hidden 192, 12 layers, 3 heads, MLP 768,
               attention_type="joint_space_time"): full attention over 1 + 196*T tokens (eager
               attention: transformers' TimeSformer has no SDPA path).

Each measurement runs in its own subprocess so that its peak memory is its own: after one warm-up
call, the peak RSS is reset (/proc/self/clear_refs) and the peak is its growth over the timed calls
above the RSS just before them, i.e. the activations, gradients and workspace beyond the weights and
the input (glibc is told to return large frees to the OS so that the baseline is fair). Times are
medians of --repeats calls after the warm-up call (wall time, and the process's CPU time, which is
steadier on a shared machine); ratios and per-frame growth use the wall-time medians, and a second
ratio column the CPU-time ones.

Modes: "forward" (no_grad inference), "train" (forward + backward of the mean of the output) and
"train-ckpt" (the same with model.gradient_checkpointing_enable()). With --compile every VideoMamba
scan is also measured under torch.compile(model) (inductor; the warm-up call compiles). With --plot DIR
one PNG per mode is written (scaling_<mode>.png, or scaling_<mode>_bfloat16.png with --dtype bfloat16):
CPU time and peak memory against frames, one line per model (needs matplotlib, the optional `bench`
extra).

    # quick (about a minute on 2 cores)
    python benchmarks/bench_models.py --frames 8 --repeats 1 --modes forward
    # the full run (tens of minutes on 2 cores; TimeSformer at 64 frames needs ~10 GB)
    python benchmarks/bench_models.py --frames 8 16 32 64 --repeats 3 --modes forward train train-ckpt
    # the native CPU scan kernel against the pure-PyTorch fast scan, and VideoMAE, one thread
    python benchmarks/bench_models.py --models videomamba videomae --scans native fast --modes forward --threads 1
    # profile one forward of each model (top operators, then self time by operator category side by side)
    python benchmarks/bench_models.py --profile --frames 8 --models videomamba videomae --threads 1
    # eager against torch.compile, and the scaling plots
    python benchmarks/bench_models.py --frames 8 16 32 --modes forward --compile --threads 1 --plot benchmarks
"""

import argparse
import json
import os
import re
import resource
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

MODELS = ("videomamba", "videomae", "timesformer")
MODES = ("forward", "train", "train-ckpt")
TRANSFORMER_LAYERS = 12
# Size -> (VideoMamba preset; the transformers' hidden size, heads and MLP width). The transformers are
# the ViT sizes closest to each VideoMamba preset (the paper's Ti/S/M against DeiT-Ti/S/B-sized models).
SIZES = {
    "tiny": ("tiny", (192, 3, 768)),
    "small": ("small", (384, 6, 1536)),
    "middle": ("middle", (768, 12, 3072)),
}


def build_model(name: str, frames: int, scan: str = "auto", size: str = "tiny", overrides: dict = None):
    """One of MODELS at one of SIZES with random weights, in eval mode (dropout off) for any mode; `scan`
    is VideoMamba's scan_implementation. `overrides` (e.g. image_size, num_hidden_layers: a smoke test's
    tiny models) apply to every model's config."""
    preset, (hidden, heads, mlp) = SIZES[size]
    overrides = overrides or {}
    if name == "videomamba":
        from modeling_videomamba import VideoMambaConfig, VideoMambaModel

        config = VideoMambaConfig.from_preset(
            preset, **{"num_frames": frames, "image_size": 224, "scan_implementation": scan, **overrides}
        )
        return VideoMambaModel(config).eval()
    if name == "videomae":
        from transformers import VideoMAEConfig, VideoMAEModel

        config = VideoMAEConfig(**{
            "image_size": 224, "patch_size": 16, "num_frames": frames, "tubelet_size": 1, "hidden_size": hidden,
            "num_hidden_layers": TRANSFORMER_LAYERS, "num_attention_heads": heads, "intermediate_size": mlp,
            "use_mean_pooling": True, "attn_implementation": "sdpa", **overrides,
        })
        return VideoMAEModel(config).eval()
    if name == "timesformer":
        from transformers import TimesformerConfig, TimesformerModel

        config = TimesformerConfig(**{
            "image_size": 224, "patch_size": 16, "num_frames": frames, "hidden_size": hidden,
            "num_hidden_layers": TRANSFORMER_LAYERS, "num_attention_heads": heads, "intermediate_size": mlp,
            "attention_type": "joint_space_time", **overrides,
        })
        return TimesformerModel(config).eval()
    raise ValueError(f"Unknown model {name!r}; expected one of {MODELS}.")


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        return int(re.search(rf"{field}:\s+(\d+) kB", status.read()).group(1))


def reset_peak_rss() -> int:
    """Reset the process's peak RSS (Linux >= 4.0) and return the current RSS in bytes.

    Falls back to resource.getrusage's max RSS (which cannot be reset) elsewhere.
    """
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return _status_kib("VmRSS") * 1024
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_rss() -> int:
    try:
        return _status_kib("VmHWM") * 1024
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(
    name: str, frames: int, mode: str, repeats: int, threads: int, scan: str = "auto", compiled: bool = False,
    dtype: str = "float32",
) -> dict:
    """Runs in the child process: times and peak memory of one (model, frames, mode)."""
    import torch

    from timing import summary, time_call

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    # bfloat16 casts the weights and the input; VideoMamba's scans still keep their state in fp32.
    model = build_model(name, frames, scan).to(getattr(torch, dtype))
    pixel_values = torch.randn(1, frames, 3, 224, 224, dtype=getattr(torch, dtype))
    if mode == "train-ckpt":
        model.gradient_checkpointing_enable()
        model.train()  # transformers only checkpoints in training mode; dropout rates are all 0 here
    run = torch.compile(model) if compiled else model

    def step():
        if mode == "forward":
            with torch.no_grad():
                run(pixel_values)
        else:
            run(pixel_values).last_hidden_state.mean().backward()
            model.zero_grad(set_to_none=True)

    # The warm-up call pages in the kernels' code and the allocator's pools, which are not the
    # model's memory; the peak is then measured over the timed calls only.
    step()
    before = reset_peak_rss()
    cpu_times = []
    times = time_call(step, repeats=repeats, warmup=0, cpu_times=cpu_times)
    median, low, high = summary(times)
    peak_mb = (peak_rss() - before) / 2**20
    return {"median_s": median, "min_s": low, "max_s": high, "cpu_s": summary(cpu_times)[0], "peak_mb": peak_mb}


def run_child(name, frames, mode, repeats, threads, timeout, scan="auto", compiled=False, dtype="float32"):
    command = [
        sys.executable, os.path.abspath(__file__), "--child", name, str(frames), mode, str(repeats), str(threads), scan,
        str(int(compiled)), dtype,
    ]
    try:
        # A fixed mmap threshold makes glibc hand every large freed tensor back to the OS, so the
        # RSS after the warm-up is a fair baseline (the default threshold adapts and keeps them).
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["exit code %d" % done.returncode])[-1][:80]}
    return json.loads(done.stdout.strip().splitlines()[-1])


# Operator categories of the side-by-side profile, matched against the profiler's operator names in order.
OP_CATEGORIES = (
    ("selective scan kernel", ("native_scan", "selective_scan")),
    # (before "convolutions": the fused conv's op name contains "conv")
    ("fused conv + SiLU, gate (native)", ("mixer_fused",)),
    ("attention (SDPA)", ("scaled_dot_product", "_flash_attention", "_efficient_attention", "softmax")),
    ("matmuls", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")),
    ("convolutions", ("conv", "mkldnn_convolution")),
    ("copies, flips, cat", ("aten::copy_", "aten::flip", "aten::cat", "aten::clone", "aten::contiguous")),
)
OTHER_OPS = "other element-wise (SiLU, gate, norms, adds)"


def op_category(name: str) -> str:
    for category, patterns in OP_CATEGORIES:
        if any(pattern in name for pattern in patterns):
            return category
    return OTHER_OPS


def profile_models(models, frames: int, threads: int, scan: str = "auto"):
    """One forward of each model under torch.profiler: the top operators, then a table of self time by
    operator category side by side (where the time ratio between the models comes from)."""
    import torch
    from torch.profiler import profile

    from timing import print_table

    if threads:
        torch.set_num_threads(threads)
    pixel_values = torch.randn(1, frames, 3, 224, 224)
    split = {}
    for name in models:
        model = build_model(name, frames, scan)
        with torch.no_grad():
            model(pixel_values)
            with profile() as prof:
                model(pixel_values)
        averages = prof.key_averages()
        print(f"\n{name}, {frames} frames, {torch.get_num_threads()} thread(s):")
        print(averages.table(sort_by="self_cpu_time_total", row_limit=15))
        totals = {}
        for event in averages:
            category = op_category(event.key)
            totals[category] = totals.get(category, 0.0) + event.self_cpu_time_total / 1e3
        split[name] = totals
    categories = [c for c, _ in OP_CATEGORIES] + [OTHER_OPS]
    rows = []
    for category in categories + ["total"]:
        cells = [category]
        for name in models:
            value = sum(split[name].values()) if category == "total" else split[name].get(category, 0.0)
            cells.append(f"{value:.0f} ({100 * value / sum(split[name].values()):.0f}%)")
        rows.append(cells)
    print_table(f"Self CPU ms by operator category, forward, {frames} frames, {torch.get_num_threads()} thread(s)",
                ["category"] + list(models), rows)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        name, frames, mode, repeats, threads, scan, compiled, dtype = sys.argv[2:10]
        print(json.dumps(measure(name, int(frames), mode, int(repeats), int(threads), scan, compiled == "1", dtype)))
        return
    from timing import print_table

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per measurement")
    parser.add_argument(
        "--scans", nargs="+", default=["auto"], choices=["auto", "fast", "native", "reference"],
        help="VideoMamba scan implementations to compare (one row each; the first is the ratios' base)",
    )
    parser.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16"],
        help="weights and input dtype of every model (VideoMamba's scan state stays fp32)",
    )
    parser.add_argument("--compile", action="store_true", help="also measure VideoMamba under torch.compile")
    parser.add_argument("--plot", metavar="DIR", help="write scaling_<mode>.png (time and memory vs frames) here")
    parser.add_argument("--profile", action="store_true",
                        help="profile one forward of each --models model (top operators, then self time by category) and exit")
    args = parser.parse_args()
    if args.profile:
        profile_models(args.models, args.frames[0], args.threads, args.scans[0])
        return
    if "native" in args.scans or "auto" in args.scans:
        # Build (or load) the kernel once here so no timed child pays for the compilation.
        from modeling_videomamba.native_scan import load_native_scan

        print(f"native scan: {'available' if load_native_scan() is not None else 'unavailable (fast is used)'}")
    # (model, scan, compiled): VideoMamba once per scan (and compiled too with --compile), the transformers once.
    variants = [
        (model, scan, compiled)
        for model in args.models
        for scan in (args.scans if model == "videomamba" else ["-"])
        for compiled in ((False, True) if args.compile and model == "videomamba" else (False,))
    ]
    base_variant = ("videomamba", args.scans[0], False)

    import torch

    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, threads {args.threads or torch.get_num_threads()}")
    for mode in args.modes:
        results = {
            (model, scan, compiled, frames): run_child(
                model, frames, mode, args.repeats, args.threads, args.timeout, scan, compiled, args.dtype
            )
            for model, scan, compiled in variants
            for frames in args.frames
        }
        rows = []
        for (model, scan, compiled, frames), result in results.items():
            label = variant_label(model, scan, compiled)
            if "error" in result:
                rows.append([label, frames, "-", "-", "-", "-", "-", "-", "-", result["error"]])
                continue
            base = results.get(base_variant + (frames,), {})
            first = results.get((model, scan, compiled, args.frames[0]), {})
            ratio = f"{result['median_s'] / base['median_s']:.2f}x" if "median_s" in base else "-"
            cpu_ratio = f"{result['cpu_s'] / base['cpu_s']:.2f}x" if "cpu_s" in base else "-"
            # Cost per frame relative to the smallest frame count: 1.0 = linear in frames.
            growth = (result["median_s"] / frames) / (first["median_s"] / args.frames[0]) if "median_s" in first else float("nan")
            rows.append([
                label, frames, f"{result['median_s']:.3f}", f"{result['min_s']:.3f}", f"{result['max_s']:.3f}",
                f"{result['cpu_s']:.3f}", ratio, cpu_ratio, f"{growth:.2f}", f"{result['peak_mb']:.0f}",
            ])
        header = ["model", "frames", "median s", "min s", "max s", "cpu median s", f"time vs videomamba ({args.scans[0]})",
                  "cpu time vs it", f"per-frame cost vs {args.frames[0]} frames", "peak MB"]
        print_table(f"mode: {mode} (batch 1, 224x224, {args.dtype})", header, rows)
        if args.plot:
            path = plot_scaling(results, mode, args.plot, args.threads or torch.get_num_threads(), args.dtype)
            print(f"wrote {path}")


def variant_label(model: str, scan: str, compiled: bool) -> str:
    if scan == "-":
        return model
    return f"{model} ({scan}{', compiled' if compiled else ''})"


def plot_scaling(results: dict, mode: str, directory: str, threads: int, dtype: str = "float32") -> str:
    """A PNG like the VideoMamba paper's Figure 1: CPU time and peak memory against frames, one line per variant.

    `results` maps (model, scan, compiled, frames) to a measurement; failed measurements are left out.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("--plot needs matplotlib: `pip install matplotlib` (or the `bench` extra)") from error
    lines = {}
    for (model, scan, compiled, frames), result in results.items():
        if "error" not in result:
            lines.setdefault(variant_label(model, scan, compiled), []).append((frames, result))
    figure, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for label, points in lines.items():
        frames = [frame for frame, _ in points]
        style = dict(marker="o", label=label, linestyle="--" if "compiled" in label else "-")
        time_axis.plot(frames, [result["cpu_s"] for _, result in points], **style)
        memory_axis.plot(frames, [result["peak_mb"] / 1024 for _, result in points], **style)
    for axis, ylabel in ((time_axis, "CPU time per clip (s)"), (memory_axis, "peak memory (GiB)")):
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xlabel("frames (224x224, batch 1)")
        axis.set_ylabel(ylabel)
        axis.set_xticks(sorted({frames for *_, frames in results}))
        axis.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        axis.grid(True, which="both", alpha=0.3)
    time_axis.legend(fontsize=8)
    figure.suptitle(f"{mode}: {dtype}, {threads} torch thread(s), random weights (benchmarks/bench_models.py)")
    figure.tight_layout()
    path = os.path.join(directory, f"scaling_{mode}.png" if dtype == "float32" else f"scaling_{mode}_{dtype}.png")
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


if __name__ == "__main__":
    main()
