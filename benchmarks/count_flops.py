"""FLOPs and parameters of VideoMamba Ti/S/M per view, next to the paper's table (arXiv 2403.06977).

Counted by `modeling_videomamba.count_flops` (FlopCounterMode on the meta device: nothing is computed,
a count takes seconds). Columns: all FLOPs we count (2 per multiply-add, the scan by its registered
formula), the scan's share, and the paper's convention: multiply-adds (1 each) of the patch
embedding, in_proj, out_proj and the head, the ops fvcore sees in the original (its conv, x_proj,
dt_proj and scan run inside mamba-ssm's fused autograd Function, which fvcore skips).

    python benchmarks/count_flops.py                    # 1 (an image), 8 and 16 frames at 224x224
    python benchmarks/count_flops.py --frames 32 64 --image-size 224
"""

import argparse

import torch

from modeling_videomamba import (
    VideoMambaConfig,
    VideoMambaForImageClassification,
    VideoMambaForVideoClassification,
    count_flops,
)

# The paper's figures: params (M) and GFLOPs per view at 224x224, by frames (1: ImageNet, Table 2;
# 8: Something-Something V2, Table 4; 16, 32: Kinetics-400, Table 3).
PAPER = {
    "tiny": (7, {1: 1.1, 8: 9, 16: 17, 32: 34}),
    "small": (26, {1: 4.3, 8: 34, 16: 68, 32: 135}),
    "middle": (74, {1: 12.7, 8: 101, 16: 202, 32: 403}),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[1, 8, 16], help="1 counts the image model")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--presets", nargs="+", default=list(PAPER))
    args = parser.parse_args()
    print("| model | input | params (M) (paper) | all FLOPs (G) | of which scan | paper convention (G) | paper (G) |")
    print("|---|---|---|---|---|---|---|")
    for preset in args.presets:
        paper_params, paper_flops = PAPER.get(preset, (None, {}))
        for frames in args.frames:
            image = frames == 1
            config = VideoMambaConfig.from_preset(
                preset, modality="image" if image else "video", num_labels=1000 if image else 400,
                num_frames=frames, image_size=args.image_size,
            )
            count = count_flops(config)
            with torch.device("meta"):
                model_class = VideoMambaForImageClassification if image else VideoMambaForVideoClassification
                params = sum(p.numel() for p in model_class(config).parameters()) / 1e6
            paper = paper_flops.get(frames, "-") if args.image_size == 224 else "-"
            print(
                f"| {preset} | {frames}x{args.image_size} | {params:.1f} ({paper_params}) | {count.gflops:.1f} "
                f"| {count.scan / 1e9:.1f} | {count.paper_macs / 1e9:.2f} | {paper} |"
            )

if __name__ == "__main__":
    main()
