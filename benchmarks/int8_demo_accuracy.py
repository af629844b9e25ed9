"""int8 on the demo task: held-out accuracy of the demo's trained model in fp32 and with int8 projections.

Train the demo model first (`python -m modeling_videomamba.demo --output-dir DIR`), then

    python benchmarks/int8_demo_accuracy.py --demo-dir DIR

Evaluates DIR/model (the saved classifier and its video processor) on the clips of DIR/data/validation,
in fp32 and after `quantize_int8`: accuracy, how many predictions agree, the logits' relative difference,
and the wall time of the whole evaluation (batches of 64, fp32 and int8 alternating, median of --repeats,
one torch thread).
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo-dir", required=True, help="the demo's --output-dir (holds model/ and data/)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    from modeling_videomamba import VideoMambaForVideoClassification, VideoMambaVideoProcessor
    from modeling_videomamba.export import relative_difference
    from modeling_videomamba.quantization import quantize_int8
    from modeling_videomamba.training_utils import VideoClipDataset, collate_clips, scan_video_folder

    root = Path(args.demo_dir)
    model = VideoMambaForVideoClassification.from_pretrained(root / "model").eval()
    processor = VideoMambaVideoProcessor.from_pretrained(root / "model")
    samples, _ = scan_video_folder(root / "data" / "validation", model.config.label2id)
    dataset = VideoClipDataset(samples, processor, train=False, cache=True)
    batches = [
        collate_clips([dataset[i] for i in range(start, min(start + args.batch_size, len(dataset)))])
        for start in range(0, len(dataset), args.batch_size)
    ]
    labels = torch.cat([batch["labels"] for batch in batches])
    quantized = quantize_int8(model)
    torch.set_num_threads(1)

    def evaluate(classifier):
        return torch.cat([classifier(batch["pixel_values"]).logits for batch in batches])

    times = {"fp32": [], "int8": []}
    with torch.no_grad():
        logits = {"fp32": evaluate(model), "int8": evaluate(quantized)}
        for _ in range(args.repeats):
            for name, classifier in (("fp32", model), ("int8", quantized)):
                start = time.perf_counter()
                evaluate(classifier)
                times[name].append(time.perf_counter() - start)
    predictions = {name: values.argmax(-1) for name, values in logits.items()}
    print(f"{len(dataset)} held-out clips, {model.num_parameters()} parameters, load average {os.getloadavg()[0]:.2f}")
    for name in ("fp32", "int8"):
        accuracy = (predictions[name] == labels).float().mean().item()
        print(f"{name}: accuracy {accuracy:.3f}, evaluation {statistics.median(times[name]):.2f} s (median of {args.repeats})")
    agree = (predictions["fp32"] == predictions["int8"]).sum().item()
    print(f"predictions agreeing: {agree}/{len(dataset)}; logits relative difference {relative_difference(logits['int8'], logits['fp32']):.2e}")
    print(f"int8 / fp32 time: {statistics.median(times['int8']) / statistics.median(times['fp32']):.2f}")


if __name__ == "__main__":
    main()
