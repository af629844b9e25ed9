"""Model cards for converted checkpoints: README.md with the Hub's metadata (license, task, datasets, model-index).

The results are the ones the original release reports for each released file (its MODEL_ZOO pages: Kinetics-400,
Something-Something V2, Breakfast, COIN, ImageNet-1K top-1, MSR-VTT zero-shot retrieval); a checkpoint whose
name is not among them gets a card without results. Nothing here was re-measured: the card says so.
"""

import re
from pathlib import Path
from typing import Optional, Union

from huggingface_hub import EvalResult, ModelCardData

PAPER = "https://arxiv.org/abs/2403.06977"
ORIGINAL = "https://github.com/OpenGVLab/VideoMamba"

# dataset key -> (Hub dataset type, name, the release's test views: frames x crops x clips, '{frames}' filled in)
DATASETS = {
    "k400": ("kinetics-400", "Kinetics-400", "{frames}x3x4"),
    "ssv2": ("something-something-v2", "Something-Something V2", "{frames}x3x4"),
    "breakfast": ("breakfast", "Breakfast", "{frames}x3x4"),
    "coin": ("coin", "COIN", "{frames}x3x10"),
    "in1k": ("imagenet-1k", "ImageNet-1K", None),
}

# Released file stem -> top-1 (%) as the release reports it. Two rows of the release's tables (Kinetics-400 and
# SSv2, masked-pretrained M at 16 frames) link the non-masked file; the K400 one is given to its mask_ft file,
# which the release ships; the SSv2 one (71.0) is left out, no file of that name being released.
TOP1 = {
    "videomamba_t16_k400_f8_res224": 76.9, "videomamba_t16_k400_f16_res224": 78.1,
    "videomamba_t16_k400_f32_res224": 78.8, "videomamba_t16_k400_f64_res224": 79.6,
    "videomamba_t16_k400_f64_res224to384": 80.3,
    "videomamba_s16_k400_f8_res224": 79.3, "videomamba_s16_k400_f16_res224": 80.8,
    "videomamba_s16_k400_f32_res224": 81.5, "videomamba_s16_k400_f64_res224": 81.8,
    "videomamba_s16_k400_f64_res224to384": 82.7,
    "videomamba_m16_k400_f8_res224": 80.6, "videomamba_m16_k400_f16_res224": 81.9,
    "videomamba_m16_k400_f32_res224": 82.4, "videomamba_m16_k400_f64_res224": 82.8,
    "videomamba_m16_k400_f64_res224to384": 83.3,
    "videomamba_m16_k400_mask_ft_f8_res224": 82.0, "videomamba_m16_k400_mask_ft_f16_res224": 83.4,
    "videomamba_m16_k400_mask_ft_f32_res224": 83.9, "videomamba_m16_k400_mask_ft_f64_res224": 84.3,
    "videomamba_m16_k400_mask_ft_f64_res224to384": 85.0,
    "videomamba_t16_ssv2_f8_res224": 65.1, "videomamba_t16_ssv2_f16_res224": 66.0,
    "videomamba_t16_ssv2_f16_res224to288": 66.2,
    "videomamba_s16_ssv2_f8_res224": 66.6, "videomamba_s16_ssv2_f16_res224": 67.7,
    "videomamba_s16_ssv2_f16_res224to288": 68.1,
    "videomamba_m16_ssv2_f8_res224": 67.3, "videomamba_m16_ssv2_f16_res224": 68.3,
    "videomamba_m16_ssv2_f16_res224to288": 68.4,
    "videomamba_m16_ssv2_mask_ft_f8_res224": 70.2, "videomamba_m16_ssv2_mask_ft_f16_res224to288": 71.4,
    "videomamba_t16_breakfast_f32_res224": 94.3, "videomamba_t16_breakfast_f64_res224": 94.3,
    "videomamba_s16_breakfast_f32_res224": 95.3, "videomamba_s16_breakfast_f64_res224": 97.4,
    "videomamba_m16_breakfast_f32_res224": 94.8, "videomamba_m16_breakfast_f64_res224": 95.8,
    "videomamba_m16_breakfast_mask_ft_f32_res224": 97.9, "videomamba_m16_breakfast_mask_ft_f64_res224": 96.9,
    "videomamba_t16_coin_f32_res224": 86.2, "videomamba_t16_coin_f64_res224": 87.0,
    "videomamba_s16_coin_f32_res224": 88.4, "videomamba_s16_coin_f64_res224": 88.7,
    "videomamba_m16_coin_f32_res224": 88.3, "videomamba_m16_coin_f64_res224": 89.5,
    "videomamba_m16_coin_mask_ft_f32_res224": 89.6, "videomamba_m16_coin_mask_ft_f64_res224": 90.4,
    "videomamba_t16_in1k_res224": 76.9, "videomamba_s16_in1k_res224": 81.2, "videomamba_m16_in1k_res224": 82.8,
    "videomamba_t16_in1k_res224to448": 79.3, "videomamba_s16_in1k_res224to448": 83.2,
    "videomamba_m16_in1k_res224to448": 83.8,
    "videomamba_t16_in1k_res224to448to576": 79.6, "videomamba_s16_in1k_res224to448to576": 83.5,
    "videomamba_m16_in1k_res224to448to576": 84.0,
}
# Multimodal files -> MSR-VTT zero-shot text-to-video recall@1 (%), as the release reports it.
MSRVTT_T2V_R1 = {"videomamba_m16_5M_f8_res224": 32.0, "videomamba_m16_17M_f8_res224": 34.7,
                 "videomamba_m16_25M_f8_res224": 35.6}

_STEM = re.compile(r"videomamba_[tsmb]16_(?P<dataset>[a-z0-9]+)(?:_mask_(?:ft|pt))?(?:_f(?P<frames>\d+))?_res")
# Where the model-index numbers come from (the Hub shows it beside each result).
SOURCE = {"source_name": "The original release (OpenGVLab/VideoMamba model zoo)", "source_url": ORIGINAL}
PIPELINE_TAGS = {
    "VideoMambaForVideoClassification": "video-classification",
    "VideoMambaForImageClassification": "image-classification",
}


def released_results(checkpoint_name: Optional[str]) -> list:
    """The release's reported results for a released file name (with or without `.pth`), as `EvalResult`s."""
    if not checkpoint_name:
        return []
    stem = Path(checkpoint_name).name.removesuffix(".pth")
    if stem in MSRVTT_T2V_R1:
        return [EvalResult(
            task_type="text-to-video", task_name="Zero-shot text-to-video retrieval", dataset_type="msr-vtt",
            dataset_name="MSR-VTT", metric_type="recall@1", metric_value=MSRVTT_T2V_R1[stem],
            metric_name="R@1 (zero-shot)", **SOURCE,
        )]
    match = _STEM.match(stem)
    if stem not in TOP1 or match is None:
        return []
    dataset_type, dataset_name, views = DATASETS[match["dataset"]]
    task = "image-classification" if match["dataset"] == "in1k" else "video-classification"
    label = "Top-1" + (f" ({views.format(frames=match['frames'])} views)" if views else "")
    return [EvalResult(
        task_type=task, dataset_type=dataset_type, dataset_name=dataset_name, metric_type="accuracy",
        metric_value=TOP1[stem], metric_name=label, **SOURCE,
    )]


def model_card_text(model, checkpoint_name: Optional[str] = None) -> str:
    """README.md for a converted model: YAML metadata, what it is, how to load it, where its numbers come from."""
    name = Path(checkpoint_name).name.removesuffix(".pth") if checkpoint_name else type(model).__name__
    results = released_results(checkpoint_name)
    kind = type(model).__name__
    datasets = sorted({result.dataset_type for result in results})
    metadata = ModelCardData(
        license="apache-2.0",
        library_name="transformers",
        pipeline_tag=PIPELINE_TAGS.get(kind, "feature-extraction"),
        tags=["videomamba", "mamba", "state-space-model", "video", "custom_code"],
        datasets=datasets or None,
        model_name=name,
        eval_results=results or None,
    )
    vision = getattr(model.config, "vision_config", model.config)
    summary = (f"hidden size {vision.hidden_size}, {vision.num_hidden_layers} blocks, {vision.image_size} px, "
               f"patch {vision.patch_size}" + (f", {vision.num_frames} frames" if vision.modality == "video" else ""))
    if results:
        result = results[0]
        reported = (f"The original release reports {result.metric_name} **{result.metric_value}** on "
                    f"{result.dataset_name} for `{name}.pth`. It was not re-measured here; the conversion itself is "
                    "checked for numerical parity with the original code.")
    else:
        reported = "The original release states no result for this file."
    loading = "AutoModel"
    if kind in PIPELINE_TAGS:
        loading = "AutoModelForVideoClassification" if "Video" in kind else "AutoModelForImageClassification"
    body = f"""
# {name}

VideoMamba ([paper]({PAPER}), [original code and weights]({ORIGINAL})) converted to a 🤗 transformers
`{kind}` ({summary}) from the original checkpoint `{name}.pth`.

{reported}

## Usage

```python
from transformers import {loading}

model = {loading}.from_pretrained("path/or/repo", trust_remote_code=True)
```

With the `videomamba-transformers` package installed, `trust_remote_code` is not needed. The processor
saved beside the weights prepares videos as the original's evaluation did.

## Citation

```bibtex
@inproceedings{{li2024videomamba,
  title={{VideoMamba: State Space Model for Efficient Video Understanding}},
  author={{Li, Kunchang and Li, Xinhao and Wang, Yi and He, Yinan and Wang, Yali and Wang, Limin and Qiao, Yu}},
  booktitle={{ECCV}},
  year={{2024}}
}}
```
"""
    return f"---\n{metadata.to_yaml()}\n---\n{body}"


def write_model_card(model, output_dir: Union[str, Path], checkpoint_name: Optional[str] = None) -> Path:
    """Writes `output_dir/README.md` (see `model_card_text`); returns its path."""
    path = Path(output_dir) / "README.md"
    path.write_text(model_card_text(model, checkpoint_name), encoding="utf-8")
    return path


def push_converted(output_dir: Union[str, Path], repo_id: str, private: bool = False, token=None):
    """Uploads a converted directory (weights, config, processor config, modeling code, model card) to the Hub."""
    from huggingface_hub import HfApi

    folder = Path(output_dir)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{str(folder)!r} holds no config.json: convert the checkpoint into it first.")
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    return api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message=f"Upload {folder.name}")


__all__ = ["model_card_text", "push_converted", "released_results", "write_model_card"]
