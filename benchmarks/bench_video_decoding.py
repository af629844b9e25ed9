"""Decode + preprocess throughput: our PyAV reader vs transformers' `load_video` (PyAV backend).

Generates h264/mp4 clips (224p and 720p, 300 frames at 30 fps, keyframe interval 250 -- x264's default --
and 32), then times, per clip, reading 8 frames by segment sampling and turning them into `pixel_values`
(1, 8, 3, 224, 224) with the same torch transform. Both readers get the same frame indices:
- ours: `read_video` (demux to count packets, seek to the keyframe before each wanted frame, threaded decode);
- transformers: `transformers.video_utils.load_video(..., backend="pyav")` (frame count from metadata,
  sequential decode from the start up to the last wanted frame). It imports without torchvision.

    python benchmarks/bench_video_decoding.py [--repeats 7] [--threads N]
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from fractions import Fraction

import av
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

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
