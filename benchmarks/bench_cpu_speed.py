"""VideoMamba-Ti vs VideoMAE-Ti on CPU as users run it: wall clock, side by side in one process.

Prints one table with the goals of the CPU-speed issue, at 1 thread and at torch's default thread
count (or --threads), naming the CPU model: forward at 8 and 64 frames, per-frame cost growth from 8
to 64 frames, a training step (forward + backward of the mean output) at 16 frames (and 64 with
--train-64), the 1 -> N thread speed-up of the 8-frame forward (and scaling up to every core count
given by --scaling), the native scan kernel alone, and bf16 autocast against fp32.

Both models are built once per frame count (fp32, batch 1, 224 px, random weights, tubelet 1, VideoMAE
with SDPA attention); their calls alternate (the order swapped every repeat) so that load from other
processes falls on both, and medians of wall-clock times are compared. Peak memory needs one process
per measurement: the memory row runs bench_models.py's child (peak RSS growth of one forward) at 8 and
64 frames for both models at the default thread count (`--no-memory` skips it).

    python benchmarks/bench_cpu_speed.py                 # the table (a few minutes on 2 quiet cores)
    python benchmarks/bench_cpu_speed.py --repeats 5 --train-64 --scaling 1 2 4 8
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from bench_models import build_model, run_child  # noqa: E402
from timing import cpu_model, print_table  # noqa: E402


def forward_call(model, pixel_values, autocast=False):
    def call():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            model(pixel_values)

    return call


def train_call(model, pixel_values):
    def call():
        model(pixel_values).last_hidden_state.mean().backward()
        model.zero_grad(set_to_none=True)

    return call


def alternate(calls: dict, repeats: int, warmup: int = 1) -> dict:
    """Median wall seconds of each named call, calling them in turn (order reversed every repeat)."""
    names = list(calls)
    for _ in range(warmup):
        for name in names:
            calls[name]()
    times = {name: [] for name in names}
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else reversed(names):
            start = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def pair(frames: int, mode: str, repeats: int, warmup: int) -> dict:
    """Median wall seconds of VideoMamba-Ti and VideoMAE-Ti, one mode at one frame count."""
    torch.manual_seed(0)
    pixel_values = torch.randn(1, frames, 3, 224, 224)
    make = forward_call if mode == "forward" else train_call
    calls = {name: make(build_model(name, frames), pixel_values) for name in ("videomamba", "videomae")}
    medians = alternate(calls, repeats, warmup)
    # Progress as it goes: on a loaded machine a full run is long, and partial figures are still figures.
    print(f"  {torch.get_num_threads()} thread(s), {mode} {frames} frames: VideoMamba {medians['videomamba']:.3f} s, "
          f"VideoMAE {medians['videomae']:.3f} s (load {os.getloadavg()[0]:.1f})", flush=True)
    return medians


def scan_kernel_ms(repeats: int) -> float:
    """Median wall ms of one native scan forward at VideoMamba-Ti's 8-frame shape (L=1569, 384 channels, N=16)."""
    from modeling_videomamba.native_scan import load_native_scan

    module = load_native_scan()
    if module is None:
        return float("nan")
    torch.manual_seed(0)
    length, channels, state = 1569, 384, 16
    u, delta = torch.randn(1, length, 1, channels), torch.randn(1, length, 1, channels)
    A = -torch.rand(1, state, channels) * 4
    B, C = torch.randn(1, length, 1, state), torch.randn(1, length, 1, state)
    D, bias = torch.ones(channels), torch.zeros(channels)

    def call():
        module.forward(u, delta, A, B, C, D, bias, True, False, 1)

    return 1e3 * alternate({"scan": call}, 5 * repeats)["scan"]


def peak_memory(threads: int) -> str:
    """Peak-memory-per-frame growth from 8 to 64 frames of one forward, VideoMamba (and VideoMAE), one
    subprocess per measurement (bench_models.py's child: peak RSS growth over the timed call)."""
    peaks = {}
    for name in ("videomamba", "videomae"):
        for frames in (8, 64):
            result = run_child(name, frames, "forward", 1, threads, timeout=1800)
            if "error" in result:
                return f"- ({name}, {frames} frames: {result['error']})"
            peaks[name, frames] = result["peak_mb"]
    growth = {name: peaks[name, 64] / 64 / (peaks[name, 8] / 8) for name in ("videomamba", "videomae")}
    return (f"{growth['videomamba']:.2f} ({peaks['videomamba', 8]:.0f} -> {peaks['videomamba', 64]:.0f} MB; VideoMAE "
            f"{growth['videomae']:.2f}, {peaks['videomae', 8]:.0f} -> {peaks['videomae', 64]:.0f} MB)")


def measure(threads: int, args) -> dict:
    """Every figure of the table at one thread count."""
    torch.set_num_threads(threads)
    results = {}
    results["fwd8"] = pair(8, "forward", args.repeats, 1)
    results["fwd64"] = pair(64, "forward", args.long_repeats, 0)
    results["train16"] = pair(16, "train", args.repeats, 1)
    if args.train_64:
        results["train64"] = pair(64, "train", 1, 0)
    results["scan_ms"] = scan_kernel_ms(args.repeats)
    torch.manual_seed(0)
    pixel_values = torch.randn(1, 8, 3, 224, 224)
    model = build_model("videomamba", 8)
    results["bf16"] = alternate(
        {"fp32": forward_call(model, pixel_values), "bf16": forward_call(model, pixel_values, autocast=True)},
        args.repeats,
    )
    return results


def scaling(counts, repeats: int) -> dict:
    """VideoMamba-Ti 8-frame forward wall seconds at each thread count (alternating counts)."""
    torch.manual_seed(0)
    pixel_values = torch.randn(1, 8, 3, 224, 224)
    model = build_model("videomamba", 8)
    call = forward_call(model, pixel_values)

    def at(count):
        def run():
            torch.set_num_threads(count)
            call()

        return run

    return alternate({count: at(count) for count in counts}, repeats)


def ratio(results, key):
    value = results.get(key)
    return "-" if value is None else f"{value['videomamba'] / value['videomae']:.2f}"


def seconds(results, key):
    value = results.get(key)
    return "" if value is None else f" ({value['videomamba']:.2f} s vs {value['videomae']:.2f} s)"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=0, help="the multi-thread column (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per model at 8 and 16 frames")
    parser.add_argument("--long-repeats", type=int, default=1, help="timed calls per model at 64 frames")
    parser.add_argument("--train-64", action="store_true", help="also the 64-frame training step (minutes)")
    parser.add_argument("--scaling", type=int, nargs="*", help="thread counts for the scaling line (default 1..cores)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory row (one subprocess per model and length)")
    args = parser.parse_args()
    default_threads = args.threads or torch.get_num_threads()
    counts = sorted({1, default_threads})
    print(f"CPU: {cpu_model()}; {os.cpu_count()} logical CPUs; torch {torch.__version__}, "
          f"ATen capability {torch.backends.cpu.get_cpu_capability()}; load {os.getloadavg()[0]:.1f}")
    from modeling_videomamba.native_scan import load_native_scan

    print(f"native scan: {'built' if load_native_scan() is not None else 'unavailable (the fast scan is used)'}")
    started = time.perf_counter()
    results = {count: measure(count, args) for count in counts}
    memory = None if args.no_memory else peak_memory(default_threads)
    thread_counts = args.scaling or sorted({1, 2, default_threads} | {c for c in (4, 8, 16) if c <= default_threads})
    thread_counts = [count for count in thread_counts if count >= 1]
    scaled = scaling(thread_counts, args.repeats)

    def row(name, goal, cell):
        return [name, goal] + [cell(results[count]) for count in counts]

    def growth(result):
        mamba = result["fwd64"]["videomamba"] / 64 / (result["fwd8"]["videomamba"] / 8)
        mae = result["fwd64"]["videomae"] / 64 / (result["fwd8"]["videomae"] / 8)
        return f"{mamba:.2f} (VideoMAE {mae:.2f})"

    def autocast_cell(result):
        bf16, fp32 = result["bf16"]["bf16"], result["bf16"]["fp32"]
        return f"{bf16 / fp32:.2f} ({bf16:.2f} s vs {fp32:.2f} s)"

    from modeling_videomamba.modeling_videomamba_blocks import cpu_has_half_matmuls

    bf16_goal = "< 1.0 (bf16 CPU)" if cpu_has_half_matmuls(torch.bfloat16) else "<= 1.1 (no bf16 instructions here)"
    rows = [
        row("forward, 8 frames (time ratio)", "<= 1.0", lambda r: ratio(r, "fwd8") + seconds(r, "fwd8")),
        row("forward, 64 frames", "<= 0.35", lambda r: ratio(r, "fwd64") + seconds(r, "fwd64")),
        row("forward cost per frame, 64 vs 8 frames", "<= 1.1", growth),
        row("training step, 16 frames", "<= 0.8", lambda r: ratio(r, "train16") + seconds(r, "train16")),
        row("training step, 64 frames", "<= 0.4", lambda r: ratio(r, "train64") + seconds(r, "train64")),
        row("native scan, L=1569, d=384, N=16, fwd", "-", lambda r: f"{r['scan_ms']:.1f} ms"),
        row("bf16 autocast vs fp32, VideoMamba fwd 8 frames", bf16_goal, autocast_cell),
    ]
    if memory is not None:
        rows.append([f"peak memory per frame, 64 vs 8 frames, fwd ({default_threads} threads)", "flat (~1.0)", "", memory])
    if len(counts) > 1:
        one, many = results[counts[0]], results[counts[-1]]
        speedup = one["fwd8"]["videomamba"] / many["fwd8"]["videomamba"]
        mae_speedup = one["fwd8"]["videomae"] / many["fwd8"]["videomae"]
        rows.append([f"own speed-up, {counts[-1]} threads vs 1, 8 frames", ">= 1.8", "",
                     f"{speedup:.2f} (VideoMAE {mae_speedup:.2f})"])
    header = ["VideoMamba-Ti vs VideoMAE-Ti", "goal"] + [f"{count} thread{'s' * (count > 1)}" for count in counts]
    print_table("wall clock, fp32 unless said, batch 1, 224 px, random weights, medians of alternated calls",
                header, rows)
    base = scaled[thread_counts[0]]
    print("\nVideoMamba-Ti forward, 8 frames, by threads: " + ", ".join(
        f"{count}: {scaled[count]:.2f} s ({base / scaled[count]:.2f}x)" for count in thread_counts))
    print(f"took {time.perf_counter() - started:.0f} s; load now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
