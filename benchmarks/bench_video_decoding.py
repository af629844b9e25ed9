"""Decode + preprocess throughput: our PyAV reader vs transformers' `load_video` (PyAV backend).

Generates h264/mp4 clips (224p and 720p, 300 frames at 30 fps, keyframe interval 250 -- x264's default --
and 32), then times, per clip, reading 8 frames by segment sampling and turning them into `pixel_values`
(1, 8, 3, 224, 224) with the same torch transform. Both readers get the same frame indices:
- ours: `read_video` (demux to count packets, seek to the keyframe before each wanted frame, threaded decode);
- transformers: `transformers.video_utils.load_video(..., backend="pyav")` (frame count from metadata,
  sequential decode from the start up to the last wanted frame). It imports without torchvision.

    python benchmarks/bench_video_decoding.py [--repeats 7] [--threads N]

`--long` measures instead classifying a long 720p video window by window (10 s windows following each
other, 4/8/16 frames per window, model replaced by a stub so that decoding + preprocessing is timed):
- ours: `classify_long_video` (one streaming pass, each frame prepared as soon as it is decoded);
- transformers: `load_video(..., backend="pyav")` with a `sample_indices_fn` returning the same frame
  indices (all windows' frames decoded into one array first), then the same per-window preprocessing.
Each measurement runs in a fresh subprocess: CPU seconds (process time, all threads) and wall seconds per
minute of video, and peak RSS above the process's RSS when the work starts (Linux).

    python benchmarks/bench_video_decoding.py --long [--seconds 60] [--frames-per-window 4 8 16]
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace
from fractions import Fraction

import av
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from modeling_videomamba.processors.frame_sampling import FrameTimeline, segment_times  # noqa: E402
from modeling_videomamba.processors.long_video import classify_long_video, window_spans  # noqa: E402
from modeling_videomamba.processors.video_decoding import segment_indices  # noqa: E402
from modeling_videomamba.processors.video_processing_videomamba import VideoMambaVideoProcessor  # noqa: E402

NUM_FRAMES = 8


def write_clip(path, width, height, frames=300, gop=250):
    """A moving gradient with some noise (so that inter-frame coding has work to do), h264 in mp4."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    with av.open(path, "w") as container:
        stream = container.add_stream("h264", rate=Fraction(30))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = gop
        stream.options = {"preset": "veryfast", "crf": "23"}
        for t in range(frames):
            base = ((x + 3 * t) % 256).astype(np.uint8)
            noise = rng.integers(0, 24, (height, width), dtype=np.uint8)
            image = np.stack([base, ((y + t) % 256).astype(np.uint8), base // 2 + noise], axis=-1)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))


def timings(function, repeats):
    function()  # warm-up (file cache, codec init)
    results = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        results.append(time.perf_counter() - start)
    return results


WINDOW_SECONDS = 10.0


class _StubClassifier(torch.nn.Module):
    """Constant logits: the long-video benchmark times decoding and preprocessing, not a model."""

    config = SimpleNamespace(id2label={0: "a", 1: "b"})

    def forward(self, pixel_values):
        return SimpleNamespace(logits=torch.zeros(pixel_values.shape[0], 2))


def _max_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _current_rss_mb():
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def long_child(method, path, frames_per_window, fps, num_frames):
    """One measurement (in a fresh process): prints {"cpu_s", "wall_s", "rss_mb", "windows"} as JSON; rss_mb is
    the peak RSS minus the RSS when the work starts (after imports). Linux only (/proc)."""
    processor = VideoMambaVideoProcessor(num_frames=frames_per_window, size=224, crop_size=224)
    model = _StubClassifier()
    if method == "transformers":
        from transformers.video_utils import load_video
    base_rss, cpu, wall = _current_rss_mb(), time.process_time(), time.perf_counter()
    if method == "ours":
        result = classify_long_video(model, processor, path, window_seconds=WINDOW_SECONDS)
        count = len(result["windows"])
    else:
        # The same windows and frames: the file has a constant rate, so its timeline is regular.
        timeline = FrameTimeline.regular(num_frames, fps)
        spans = window_spans(timeline.duration, WINDOW_SECONDS)
        windows = [segment_times(timeline, frames_per_window, start=a, end=b)[0] for a, b in spans]
        wanted = np.unique(np.concatenate(windows))
        video, _ = load_video(path, backend="pyav", sample_indices_fn=lambda metadata, **_: wanted)
        row = {index: i for i, index in enumerate(wanted.tolist())}
        for indices in windows:
            clip = processor(video[[row[i] for i in indices.tolist()]], do_sample_frames=False)["pixel_values"]
            model(pixel_values=clip)
        count = len(windows)
    print(json.dumps({
        "cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - wall,
        "rss_mb": _max_rss_mb() - base_rss, "windows": count,
    }))


def long_video_benchmark(args):
    fps = 30
    num_frames = int(args.seconds * fps)
    with tempfile.TemporaryDirectory() as root:
        path = os.path.join(root, "long_720p.mp4")
        write_clip(path, 1280, 720, frames=num_frames, gop=250)
        rows = []
        for frames_per_window in args.frames_per_window:
            for method in ("ours", "transformers"):
                run = subprocess.run(
                    [sys.executable, os.path.abspath(__file__), "--long-child", method, path, str(frames_per_window),
                     str(fps), str(num_frames), *(["--threads", str(args.threads)] if args.threads else [])],
                    capture_output=True, text=True, check=True,
                )
                rows.append((frames_per_window, method, json.loads(run.stdout.strip().splitlines()[-1])))
    per_minute = 60.0 / args.seconds
    print(f"long video: {args.seconds:.0f} s of 1280x720 h264 at {fps} fps (keyframe every 250), windows of "
          f"{WINDOW_SECONDS:.0f} s following each other, 224x224 model input, stub model; per minute of video; "
          f"torch threads {args.threads or 'default'}, {os.cpu_count()} CPUs")
    print("| frames/window | reader | CPU s / min | wall s / min | peak RSS growth MB |")
    print("|---|---|---|---|---|")
    for frames_per_window, method, m in rows:
        reader = "ours (classify_long_video)" if method == "ours" else "transformers load_video pyav + same windows"
        print(f"| {frames_per_window} | {reader} | {m['cpu_s'] * per_minute:.1f} | {m['wall_s'] * per_minute:.1f} "
              f"| {m['rss_mb']:.0f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--long", action="store_true", help="the long-video (windows) benchmark instead")
    parser.add_argument("--seconds", type=float, default=60.0, help="--long: length of the generated clip")
    parser.add_argument("--frames-per-window", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--long-child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.long_child:
        method, path, frames_per_window, fps, num_frames = args.long_child
        return long_child(method, path, int(frames_per_window), float(fps), int(num_frames))
    if args.long:
        return long_video_benchmark(args)

    from transformers.video_utils import load_video

    processor = VideoMambaVideoProcessor(num_frames=NUM_FRAMES, size=224, crop_size=224)
    clips = [("224p", 400, 224, 250), ("224p", 400, 224, 32), ("720p", 1280, 720, 250), ("720p", 1280, 720, 32)]
    rows = []
    with tempfile.TemporaryDirectory() as root:
        for name, width, height, gop in clips:
            path = os.path.join(root, f"{name}_gop{gop}.mp4")
            write_clip(path, width, height, gop=gop)

            def ours():
                return processor(path, return_tensors="pt")["pixel_values"]

            def transformers_pyav():
                video, _ = load_video(
                    path, backend="pyav",
                    sample_indices_fn=lambda metadata, **_: segment_indices(metadata.total_num_frames, NUM_FRAMES)[0],
                )
                return processor(video, do_sample_frames=False, return_tensors="pt")["pixel_values"]

            assert torch.equal(ours(), transformers_pyav()), "the two readers disagree on the frames"
            for reader, function in (("ours (read_video)", ours), ("transformers load_video pyav", transformers_pyav)):
                seconds = timings(function, args.repeats)
                rows.append((f"{name} {width}x{height} gop {gop}", reader, seconds))

    print(f"decode + preprocess, {NUM_FRAMES} frames of a 300-frame h264 clip -> (1, 8, 3, 224, 224); "
          f"{args.repeats} runs; torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs")
    print("| clip | reader | median ms | min ms | max ms | clips/s (median) |")
    print("|---|---|---|---|---|---|")
    for clip, reader, seconds in rows:
        median = statistics.median(seconds)
        low, high = min(seconds) * 1e3, max(seconds) * 1e3
        print(f"| {clip} | {reader} | {median * 1e3:.1f} | {low:.1f} | {high:.1f} | {1 / median:.1f} |")


if __name__ == "__main__":
    main()
