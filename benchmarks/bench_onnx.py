"""VideoMamba-Ti on CPU: onnxruntime (the ONNX export) against eager torch, and int8 dynamic quantization.

Random weights, VideoMambaForVideoClassification.from_preset("tiny"), 224x224, batch 1, fp32. For each
frame count the classifier is exported once (`modeling_videomamba.export`, timed), then in ONE process,
alternating round by round so that load from other jobs hits every variant alike:
  - torch eager, scan "auto" (the native CPU kernel when it builds, else "fast")
  - onnxruntime CPU on the exported file
  - with --int8: torch eager with the projections int8 (`modeling_videomamba.quantization`)
each with 1 intra-op thread and with the default thread count (torch: all cores; onnxruntime: its own
default). Wall-clock medians over --repeats rounds after one warm-up call; the logits' relative
difference to eager fp32 is printed too. The CPU model and the load average (before and after) are
printed: on a shared machine compare the ratios, not the absolute times.

    python benchmarks/bench_onnx.py --frames 8 16 --repeats 3 --int8
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from timing import cpu_model, print_table  # noqa: E402


def load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--int8", action="store_true", help="also time the int8-quantized eager model")
    args = parser.parse_args()

    from modeling_videomamba import VideoMambaConfig, VideoMambaForVideoClassification
    from modeling_videomamba.export import export_onnx, onnxruntime_session, relative_difference

    default_threads = torch.get_num_threads()
    print(f"CPU: {cpu_model()}, {os.cpu_count()} logical CPUs; torch {torch.__version__}, default torch threads {default_threads}")
    import onnxruntime

    print(f"onnxruntime {onnxruntime.__version__}; load average before: {load()}")
    rows = []
    for frames in args.frames:
        torch.manual_seed(0)
        config = VideoMambaConfig.from_preset("tiny", num_frames=frames, image_size=224, num_labels=400)
        model = VideoMambaForVideoClassification(config).eval()
        pixel_values = torch.randn(1, frames, 3, 224, 224)
        with tempfile.TemporaryDirectory() as directory:
            path = os.path.join(directory, "model.onnx")
            start = time.perf_counter()
            export_onnx(model, path)
            export_seconds = time.perf_counter() - start
            sessions = {threads: onnxruntime_session(path, threads) for threads in (1, None)}
        feed = {"pixel_values": pixel_values.numpy()}
        variants = {}
        for threads in (1, default_threads):
            variants[f"torch eager, {threads} thread(s)"] = (threads, lambda: model(pixel_values).logits)
        variants["onnxruntime, 1 thread"] = (1, lambda: torch.from_numpy(sessions[1].run(["logits"], feed)[0]))
        variants["onnxruntime, default threads"] = (
            default_threads, lambda: torch.from_numpy(sessions[None].run(["logits"], feed)[0])
        )
        if args.int8:
            from modeling_videomamba.quantization import quantize_int8

            quantized = quantize_int8(model)  # a quantized copy; `model` stays fp32
            for threads in (1, default_threads):
                variants[f"torch int8, {threads} thread(s)"] = (threads, lambda: quantized(pixel_values).logits)
        times = {name: [] for name in variants}
        with torch.no_grad():
            expected = model(pixel_values).logits
            differences = {}
            for name, (threads, call) in variants.items():  # warm-up
                torch.set_num_threads(threads)
                differences[name] = relative_difference(call(), expected)
            for _ in range(args.repeats):
                for name, (threads, call) in variants.items():
                    torch.set_num_threads(threads)
                    start = time.perf_counter()
                    call()
                    times[name].append(time.perf_counter() - start)
        torch.set_num_threads(default_threads)
        baseline = {1: statistics.median(times["torch eager, 1 thread(s)"])}
        baseline[default_threads] = statistics.median(times[f"torch eager, {default_threads} thread(s)"])
        for name, (threads, _) in variants.items():
            median = statistics.median(times[name])
            rows.append([
                frames, name, f"{median:.3f} s", f"{min(times[name]):.3f} s", f"{median / baseline[threads]:.2f}x",
                f"{differences[name]:.1e}",
            ])
        print(f"{frames} frames: export took {export_seconds:.0f} s; load average now {load()}")
        print_table(  # after each frame count, so that a long run shows results early
            "VideoMamba-Ti classifier, batch 1, 224x224, fp32 (wall clock; ratio to torch eager at the same threads)",
            ["frames", "variant", "median", "min", "ratio", "logits rel. diff."],
            rows,
        )
    print(f"\nload average after: {load()}")


if __name__ == "__main__":
    main()
