"""A built-in labelled video dataset whose classes can only be told apart by temporal order.

Classes come in time-reversed pairs (moving left / right, up / down, rotating clockwise /
counter-clockwise, growing / shrinking, darkening / brightening): the second clip of a pair is the first
one played backwards, so both classes have exactly the same distribution of frames and a model that
averages frames cannot beat chance within a pair. The four motion pairs are the demo's 8 classes (the
default). `APPEARANCE_CLASSES` are the opposite control: shapes that differ by content, in any order.
Clips are real encoded mp4 files (PyAV, single-threaded, so a seed gives the same bytes), written as
class-name folders:

    OUTPUT_DIR/{train,validation}/<class name>/clip_00000.mp4

Usable from Python (`generate_dataset`) or as a CLI:

    python -m modeling_videomamba.synthetic_data --output-dir data/synthetic --train-per-class 64
"""

import argparse
import math
from pathlib import Path

import av
import numpy as np

# (forward class, its time reversal)
MOTION_PAIRS = (
    ("moving_left", "moving_right"),
    ("moving_up", "moving_down"),
    ("rotating_clockwise", "rotating_counterclockwise"),
    ("shrinking", "growing"),
)
# The whole frame fades: order-only without any motion.
BRIGHTNESS_PAIRS = (("darkening", "brightening"),)
CLASS_PAIRS = MOTION_PAIRS + BRIGHTNESS_PAIRS
# The demo's 8 classes, and what `generate_dataset` writes unless told.
DEMO_CLASSES = tuple(name for pair in MOTION_PAIRS for name in pair)
# Classes told apart by content alone: a shape drifting along a random straight path, so every order of
# the frames is as likely in each class (the control for order-only tasks).
APPEARANCE_CLASSES = ("square", "disc", "ring", "cross")
CLASS_NAMES = tuple(name for pair in CLASS_PAIRS for name in pair) + APPEARANCE_CLASSES
SPLITS = ("train", "validation")


def _canvas(size: int, frames: int, rng: np.random.Generator) -> tuple:
    """Background (frames, size, size, 3) float in [0, 1] with mild static noise, and an object colour (3,)."""
    background = rng.uniform(0.0, 0.35, size=3)
    noise = rng.normal(0.0, 0.03, size=(1, size, size, 3))
    canvas = np.broadcast_to(background + noise, (frames, size, size, 3)).copy()
    color = rng.uniform(0.6, 1.0, size=3)
    return canvas, color


def _forward_motion(kind: str, size: int, frames: int, rng: np.random.Generator) -> np.ndarray:
    """The first class of a pair, as float frames (frames, size, size, 3) in [0, 1]."""
    canvas, color = _canvas(size, frames, rng)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    progress = np.linspace(0.0, 1.0, frames)
    for t, p in enumerate(progress):
        if kind in ("moving_left", "moving_up"):
            if t == 0:
                side = rng.uniform(0.18, 0.3) * size
                along_start, along_end = size - side / 2 - rng.uniform(0, 0.1) * size, side / 2 + rng.uniform(0, 0.1) * size
                across = rng.uniform(side / 2, size - side / 2)
            along = along_start + (along_end - along_start) * p
            cx, cy = (along, across) if kind == "moving_left" else (across, along)
            mask = (np.abs(xs - cx) <= side / 2) & (np.abs(ys - cy) <= side / 2)
        elif kind == "rotating_clockwise":
            if t == 0:
                start = rng.uniform(0, 2 * math.pi)
                sweep = rng.uniform(0.6, 0.9) * math.pi
                length, width = rng.uniform(0.38, 0.48) * size, rng.uniform(0.06, 0.1) * size
                center = size / 2 + rng.uniform(-0.05, 0.05, size=2) * size
            # Image y grows downwards, so increasing the angle turns the hand clockwise on screen.
            angle = start + sweep * p
            dx, dy = xs - center[0], ys - center[1]
            along = dx * math.cos(angle) + dy * math.sin(angle)
            across = -dx * math.sin(angle) + dy * math.cos(angle)
            mask = (along >= 0) & (along <= length) & (np.abs(across) <= width / 2)
            mask |= dx**2 + dy**2 <= (width * 0.9) ** 2
        elif kind == "darkening":
            if t == 0:
                bright, dark = rng.uniform(0.85, 1.0), rng.uniform(0.15, 0.35)
                radius = rng.uniform(0.15, 0.3) * size
                center = rng.uniform(0.3, 0.7, size=2) * size
            mask = (xs - center[0]) ** 2 + (ys - center[1]) ** 2 <= radius**2
            canvas[t][mask] = color
            canvas[t] *= bright + (dark - bright) * p
            continue
        elif kind == "shrinking":
            if t == 0:
                r_big, r_small = rng.uniform(0.32, 0.45) * size, rng.uniform(0.06, 0.12) * size
                center = size / 2 + rng.uniform(-0.1, 0.1, size=2) * size
            radius = r_big + (r_small - r_big) * p
            mask = (xs - center[0]) ** 2 + (ys - center[1]) ** 2 <= radius**2
        else:
            raise ValueError(f"Unknown motion {kind!r}; expected one of {[pair[0] for pair in CLASS_PAIRS]}.")
        canvas[t][mask] = color
    return canvas


def _drifting_shape(shape: str, size: int, frames: int, rng: np.random.Generator) -> np.ndarray:
    """A shape of fixed size moving along a random straight path, as float frames (frames, size, size, 3)."""
    canvas, color = _canvas(size, frames, rng)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    radius = rng.uniform(0.15, 0.22) * size
    start, end = rng.uniform(radius, size - radius, size=(2, 2))
    for t, p in enumerate(np.linspace(0.0, 1.0, frames)):
        cx, cy = start + (end - start) * p
        dx, dy = np.abs(xs - cx), np.abs(ys - cy)
        distance = np.sqrt(dx**2 + dy**2)
        if shape == "square":
            mask = (dx <= radius * 0.85) & (dy <= radius * 0.85)
        elif shape == "disc":
            mask = distance <= radius
        elif shape == "ring":
            mask = (distance <= radius) & (distance >= radius * 0.55)
        else:  # cross
            mask = ((dx <= radius * 0.3) & (dy <= radius)) | ((dy <= radius * 0.3) & (dx <= radius))
        canvas[t][mask] = color
    return canvas


def render_clip(class_name: str, num_frames: int = 16, size: int = 64, rng: np.random.Generator = None) -> np.ndarray:
    """One clip of `class_name` as uint8 frames (num_frames, size, size, 3)."""
    rng = rng if rng is not None else np.random.default_rng()
    if class_name in APPEARANCE_CLASSES:
        return (np.clip(_drifting_shape(class_name, size, num_frames, rng), 0.0, 1.0) * 255).round().astype(np.uint8)
    for forward, backward in CLASS_PAIRS:
        if class_name in (forward, backward):
            frames = _forward_motion(forward, size, num_frames, rng)
            if class_name == backward:
                frames = frames[::-1]
            return (np.clip(frames, 0.0, 1.0) * 255).round().astype(np.uint8)
    raise ValueError(f"Unknown class {class_name!r}; expected one of {list(CLASS_NAMES)}.")


def write_video(path, frames: np.ndarray, fps: int = 8):
    """Encode uint8 frames (T, H, W, 3) (H, W even) as an H.264 mp4 (MPEG-4 part 2 where x264 is missing).

    One encoder thread: x264's (and FFmpeg's) threaded encoding depends on thread timing, so only a
    single-threaded encode makes the same frames give the same bytes (datasets reproducible from a seed).
    """
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"write_video expects uint8 frames (T, H, W, 3); got {frames.dtype} {frames.shape}.")
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = 1
        if codec == "libx264":
            stream.options = {"crf": "12", "preset": "veryfast", "threads": "1"}
        else:
            stream.bit_rate = 8_000_000  # near-lossless at these sizes
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def generate_dataset(
    output_dir,
    train_per_class: int = 64,
    validation_per_class: int = 16,
    num_frames: int = 16,
    size: int = 64,
    classes=DEMO_CLASSES,
    seed: int = 0,
    fps: int = 8,
) -> dict:
    """Write `OUTPUT_DIR/{train,validation}/<class>/clip_XXXXX.mp4`; returns {split: [(path, class name)]}."""
    if size % 2:
        raise ValueError(f"size must be even (yuv420p video), got {size}.")
    unknown = [name for name in classes if name not in CLASS_NAMES]
    if unknown:
        raise ValueError(f"Unknown classes {unknown}; expected names from {list(CLASS_NAMES)}.")
    rng = np.random.default_rng(seed)
    written = {}
    for split, count in zip(SPLITS, (train_per_class, validation_per_class)):
        written[split] = []
        for class_name in classes:
            folder = Path(output_dir) / split / class_name
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                path = folder / f"clip_{index:05d}.mp4"
                write_video(path, render_clip(class_name, num_frames, size, rng), fps=fps)
                written[split].append((path, class_name))
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--train-per-class", type=int, default=64)
    parser.add_argument("--validation-per-class", type=int, default=16)
    parser.add_argument("--num-frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--classes", nargs="+", default=list(DEMO_CLASSES), choices=CLASS_NAMES)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    written = generate_dataset(
        args.output_dir, args.train_per_class, args.validation_per_class, args.num_frames, args.size,
        args.classes, args.seed,
    )
    for split, items in written.items():
        print(f"{split}: {len(items)} clips in {Path(args.output_dir) / split}")


if __name__ == "__main__":
    main()


__all__ = ["APPEARANCE_CLASSES", "CLASS_NAMES", "CLASS_PAIRS", "DEMO_CLASSES", "MOTION_PAIRS", "render_clip", "write_video", "generate_dataset"]
