"""Export a saved VideoMamba classifier to ONNX, runnable by onnxruntime with no custom library.

    python -m modeling_videomamba.export --model DIR --onnx out.onnx [--num-frames 16] [--check]

The graph takes `pixel_values` (batch, frames, 3, H, W) (image models: (batch, 3, H, W)) with a dynamic
batch and returns `logits` (batch, num_labels). The frame count and resolution are fixed per file: the
model's own, or `--num-frames` (the position embeddings interpolated as `interpolate_pos_encoding=True`
does). Every token order exports: the scan order is a fixed permutation for a fixed frame count.

The model's own scan (often a custom op: "native", "fast") cannot go into an ONNX file, so the export
runs with `scan_implementation="export"` (`export_scan`: a `scan` loop that becomes ONNX's `Scan`
operator), restored afterwards. Needs the optional extra `pip install .[export]` (onnx, onnxscript;
onnxruntime for `--check`).
"""

import argparse
import contextlib
import importlib.util
import os
import sys

import torch
from torch import nn

from .configuration_videomamba import VideoMambaConfig
from .modeling_videomamba import VideoMambaForImageClassification, VideoMambaForVideoClassification


class ClassifierLogits(nn.Module):
    """pixel_values -> logits of a VideoMamba classifier, the one tensor ONNX exports as output.

    With `num_frames` other than the model's, the position embeddings are interpolated to it.
    """

    def __init__(self, model: nn.Module, num_frames: int = None):
        super().__init__()
        self.model = model
        self.interpolate = num_frames is not None and num_frames != model.config.num_frames

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(batch, frames, 3, H, W), or (batch, 3, H, W) for image models -> (batch, num_labels)."""
        return self.model(pixel_values, interpolate_pos_encoding=self.interpolate, return_dict=True).logits


@contextlib.contextmanager
def export_scan(model: nn.Module):
    """Within the block, the model's mixers use the exportable scan ("export"); restored on exit."""
    previous = model.config.scan_implementation
    model.config.scan_implementation = "export"
    try:
        yield model
    finally:
        model.config.scan_implementation = previous


def load_classifier(path: str) -> nn.Module:
    """The saved classifier in `path` (video or image model, by its config's modality), in eval mode."""
    config = VideoMambaConfig.from_pretrained(path)
    model_class = VideoMambaForImageClassification if config.modality == "image" else VideoMambaForVideoClassification
    return model_class.from_pretrained(path).eval()


def example_input(config: VideoMambaConfig, num_frames: int = None, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """A random `pixel_values` batch of the model's input shape (num_frames frames, when given)."""
    size = config.image_size
    shape = (batch, 3, size, size)
    if config.modality == "video":
        shape = (batch, num_frames or config.num_frames) + shape[1:]
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def export_onnx(
    model: nn.Module, path: str, num_frames: int = None, opset_version: int = None, optimize: bool = False
) -> str:
    """Write `model` (a VideoMamba classifier) to the ONNX file `path` (weights inside it); returns path.

    Batch is dynamic; frames (`num_frames`, default the model's) and resolution are fixed. `optimize`
    runs onnxscript's graph optimizer over the file: off by default, as it took more than 5 minutes of
    CPU for VideoMamba-Ti (24 blocks) and onnxruntime optimizes the graph itself when it loads it.
    """
    missing = [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(
            f"ONNX export needs {' and '.join(missing)}: pip install .[export] (onnx, onnxscript, onnxruntime)."
        )
    if model.config.modality == "image" and num_frames is not None:
        raise ValueError(f"num_frames applies to video models; this is an image model (got num_frames={num_frames}).")
    if num_frames is not None and num_frames < 1:
        raise ValueError(f"num_frames must be a positive number of frames; got {num_frames}.")
    # An example batch of 2: torch.export specialises dimensions of size 1, which would fix the batch.
    pixel_values = example_input(model.config, num_frames, batch=2)
    wrapper = ClassifierLogits(model, num_frames).eval()
    with export_scan(model), torch.no_grad():
        program = torch.onnx.export(
            wrapper,
            (pixel_values,),
            dynamo=True,
            input_names=["pixel_values"],
            output_names=["logits"],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            opset_version=opset_version,
            optimize=optimize,
            verbose=False,
        )
    program.save(os.fspath(path), external_data=False)
    return path


def onnxruntime_session(path: str, threads: int = None):
    """An onnxruntime CPU session for the file (`threads` intra-op threads; None: onnxruntime's default)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])


def relative_difference(actual, expected) -> float:
    """max |actual - expected| / max |expected| (0 for two zero tensors)."""
    actual, expected = torch.as_tensor(actual).double(), torch.as_tensor(expected).double()
    scale = expected.abs().max().clamp_min(torch.finfo(torch.float64).tiny)
    return ((actual - expected).abs().max() / scale).item()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="folder of a saved VideoMamba classifier (save_pretrained)")
    parser.add_argument("--onnx", required=True, help="the ONNX file to write")
    parser.add_argument("--num-frames", type=int, default=None, help="frames per clip (default: the model's)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: torch.onnx's)")
    parser.add_argument("--optimize", action="store_true", help="run onnxscript's graph optimizer (slow)")
    parser.add_argument(
        "--check", action="store_true", help="compare onnxruntime's logits with eager torch's on a random batch of 3"
    )
    args = parser.parse_args(argv)
    model = load_classifier(args.model)
    export_onnx(model, args.onnx, num_frames=args.num_frames, opset_version=args.opset, optimize=args.optimize)
    print(f"wrote {args.onnx} ({os.path.getsize(args.onnx) / 2**20:.1f} MiB)")
    if args.check:
        pixel_values = example_input(model.config, args.num_frames, batch=3, seed=1)
        with torch.no_grad():
            expected = ClassifierLogits(model, args.num_frames)(pixel_values)
        (logits,) = onnxruntime_session(args.onnx).run(["logits"], {"pixel_values": pixel_values.numpy()})
        difference = relative_difference(logits, expected)
        print(f"onnxruntime vs eager torch, batch of 3: max relative difference {difference:.2e}")
        if difference > 1e-4:
            print("error: the difference exceeds 1e-4", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
