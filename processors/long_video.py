"""Classifying a long video window by window, decoding it once, in bounded memory.

VideoMamba sees `num_frames` frames at a time; a 20-minute video is better described by windows (say 8
frames from every 10 seconds) than by 8 frames spread over all of it. `classify_long_video` cuts the video
into windows of `window_seconds` every `stride_seconds`, samples `frames_per_window` frames of each in time
(the middle of equal spans, as the processor's segment sampling), and returns each window's top-k with its
start/end times plus a whole-video aggregate (the mean of the windows' probabilities).

Decoding streams: the frames all windows need are decoded in one forward pass through the file (seeking
forward past long gaps, never back), each frame once even where windows overlap, and turned into model
input as soon as it is decoded; a frame is kept only until the last window using it has been classified.
Memory is bounded by the windows in flight (about `window_seconds / stride_seconds` windows, plus
`batch_size` clips), not by the video's length.
"""

import ctypes
import ctypes.util

import torch

from .frame_sampling import segment_times
from .video_decoding import read_with_fallback


def _load_malloc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_MALLOC_TRIM = _load_malloc_trim()


def _return_freed_memory():
    """Give freed heap memory back to the system (glibc only; elsewhere nothing to do).

    Decoded frames (2.7 MB at 720p) are freed right away while prepared frames live for a window; glibc
    then serves the big buffers from its heap (its mmap threshold rises to the first freed frame) and the
    interleaving keeps the heap from shrinking: a long 720p pass grew by about 9 MB per second of video
    without this, and stays flat with it (called once per prepared frame: well under a millisecond).
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def window_spans(duration, window_seconds, stride_seconds=None):
    """[(start, end)] in seconds of windows of `window_seconds` every `stride_seconds` (default: the window,
    i.e. windows that follow each other), the last one ending at `duration` so that the tail is covered;
    one window of the whole video when it is shorter than a window."""
    stride_seconds = window_seconds if stride_seconds is None else stride_seconds
    for name, value in (("window_seconds", window_seconds), ("stride_seconds", stride_seconds)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive number of seconds, got {value!r}.")
    if duration <= window_seconds:
        return [(0.0, float(duration))]
    spans, start = [], 0.0
    while start + window_seconds <= duration + 1e-9:
        spans.append((start, start + window_seconds))
        start += stride_seconds
    if spans[-1][1] < duration - 1e-9:
        spans.append((duration - window_seconds, float(duration)))
    return spans


def _top_k(probs, id2label, top_k):
    scores, ids = probs.topk(min(top_k, probs.numel()))
    return [{"score": score, "label": id2label[i]} for score, i in zip(scores.tolist(), ids.tolist())]


def run_windows(model_call, video_processor, source, window_seconds=10.0, stride_seconds=None, frames_per_window=None,
                batch_size=4, keep_coded_frames=False):
    """Cut `source` into windows and run `model_call` on batches of them, decoding the video once.

    `model_call(pixel_values)` takes a batch (n, frames_per_window, 3, H, W) of prepared windows and returns n
    per-window results (a tensor with a leading axis of n, or a list). Returns `(spans, results, duration)`:
    the windows' (start, end) in seconds from the first frame and their results, in time order.
    """
    frames_per_window = frames_per_window or video_processor.num_frames

    def prepare(frame):
        """RGB (H, W, 3) -> normalised (3, h, w) with the processor's evaluation transform."""
        out = video_processor(
            frame[None], do_sample_frames=False, num_temporal_clips=1, num_spatial_crops=1, return_tensors="pt",
            input_data_format="channels_last",
        )
        return out["pixel_values"][0, 0]

    def run_all(reader):
        spans = window_spans(reader.timeline.duration, window_seconds, stride_seconds)
        windows = [
            segment_times(reader.timeline, frames_per_window, start=start, end=end)[0].tolist()
            for start, end in spans
        ]
        last_use = {index: w for w, indices in enumerate(windows) for index in indices}
        kept, results, pending, ready = {}, [], [], 0

        def run(clips):
            results.extend(model_call(torch.stack(clips)))

        for index, frame in reader.frames(sorted(last_use)):
            kept[index] = prepare(frame)
            del frame
            _return_freed_memory()  # the decoded frame, now that its prepared copy is kept
            # Windows are in time order, so each completes no later than the next one.
            while ready < len(windows) and windows[ready][-1] <= index:
                pending.append(torch.stack([kept[i] for i in windows[ready]]))
                for i in set(windows[ready]):
                    if last_use[i] == ready:
                        del kept[i]
                ready += 1
                if len(pending) == batch_size:
                    run(pending)
                    pending = []
        if pending:
            run(pending)
        return spans, results

    (spans, results), reader = read_with_fallback(source, run_all, keep_coded_frames)
    return spans, results, reader.timeline.duration


def model_device(model) -> torch.device:
    """The device of the model's first parameter (CPU for parameterless callables)."""
    parameter = next(model.parameters(), None) if hasattr(model, "parameters") else None
    return parameter.device if parameter is not None else torch.device("cpu")


@torch.no_grad()
def classify_long_video(
    model, video_processor, source, window_seconds=10.0, stride_seconds=None, frames_per_window=None, top_k=5,
    batch_size=4, keep_coded_frames=False,
):
    """Classify `source` window by window.

    Args:
        model: a video classifier (`model(pixel_values=...)` returns `.logits` (batch, num_labels)), e.g.
            `VideoMambaForVideoClassification`; its `config.id2label` names the labels.
        video_processor: a `VideoMambaVideoProcessor`; its evaluation transform (resize, centre crop,
            normalisation) prepares each frame.
        source: a path, bytes or a binary file object.
        window_seconds, stride_seconds: window length and the step between window starts (default: the
            window length; smaller overlaps, larger leaves gaps).
        frames_per_window: frames sampled per window (default: the processor's `num_frames`).
        top_k: labels returned per window and for the whole video.
        batch_size: windows per forward pass.
    Returns:
        `{"windows": [{"start": s, "end": s, "labels": [{"label", "score"}, ...]}, ...], "video": [{"label",
        "score"}, ...], "duration": seconds, "frames_per_window": int}`; window times are seconds from the
        first frame, the video's labels rank the mean of the windows' softmax probabilities.
    """
    frames_per_window = frames_per_window or video_processor.num_frames
    id2label = model.config.id2label
    device = model_device(model)

    def probabilities(pixel_values):
        return model(pixel_values=pixel_values.to(device)).logits.float().softmax(-1).cpu()

    spans, probs, duration = run_windows(
        probabilities, video_processor, source, window_seconds, stride_seconds, frames_per_window, batch_size,
        keep_coded_frames,
    )
    return {
        "windows": [
            {"start": start, "end": end, "labels": _top_k(p, id2label, top_k)} for (start, end), p in zip(spans, probs)
        ],
        "video": _top_k(torch.stack(probs).mean(0), id2label, top_k),
        "duration": duration,
        "frames_per_window": frames_per_window,
    }


__all__ = ["classify_long_video", "model_device", "run_windows", "window_spans"]
