"""The trainer scripts with `--bf16 true` on CPU (bfloat16 autocast), one process; `--fp16` on CPU refused clearly.

The two-process bf16 runs are phases of tests/torchrun_phases.py (test_training.py::test_two_process_runs).
"""

import json
import sys
from pathlib import Path

import pytest
import torch
from test_video_text_training import COMMON as RETRIEVAL_COMMON
from test_video_text_training import _check_saved, retrieval_setup  # noqa: F401 (a fixture)
from transformers import CLIPVisionConfig, CLIPVisionModel

from modeling_videomamba import VideoMambaConfig, VideoMambaForPreTraining, VideoMambaForVideoClassification

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "trainer_scripts"))
TINY = "hidden_size=32,num_hidden_layers=2,image_size=32,patch_size=8,num_frames=4"
COMMON = ["--report_to", "none", "--disable_tqdm", "true", "--per_device_train_batch_size", "2", "--seed", "0",
          "--dataloader_num_workers", "0", "--max_steps", "2", "--logging_steps", "1", "--save_strategy", "no",
          "--use_cpu", "true"]


def _losses(output: Path) -> list:
    history = json.loads((output / "trainer_state.json").read_text())["log_history"]
    return [entry for entry in history if "loss" in entry]


def _classify(output: Path, **kwargs):
    """The saved classifier reloads and runs, in fp32 and under bf16 autocast."""
    model = VideoMambaForVideoClassification.from_pretrained(output, **kwargs).eval()
    clips = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(clips).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()
    with torch.no_grad():
        assert torch.isfinite(model(clips).logits).all()
    return model


def test_classification_and_distillation_in_bf16(tmp_path, synthetic_videos):
    """--preset tiny trains in hybrid token order (the case that crashed under autocast)."""
    import run_video_classification

    plain, distilled, teacher = tmp_path / "plain", tmp_path / "distilled", tmp_path / "teacher"
    run_video_classification.main([str(a) for a in [
        "--train_dir", synthetic_videos / "train", "--preset", "tiny", "--config_overrides", TINY, "--output_dir", plain,
        "--do_train", "--bf16", "true", *COMMON]])
    assert len(_losses(plain)) == 2 and all(0 < entry["loss"] < 10 for entry in _losses(plain))
    assert _classify(plain).config.token_order == "hybrid"
    torch.manual_seed(1)
    VideoMambaForVideoClassification(VideoMambaConfig(hidden_size=24, image_size=32, patch_size=8, num_frames=4,
                                                      num_hidden_layers=1, num_labels=4)).save_pretrained(teacher)
    run_video_classification.main([str(a) for a in [
        "--train_dir", synthetic_videos / "train", "--preset", "tiny", "--config_overrides", TINY, "--output_dir", distilled,
        "--do_train", "--teacher_model_name_or_path", teacher, "--distillation_weight", "0.5", "--bf16", "true", *COMMON]])
    assert [0 < entry["distill_loss"] < 10 for entry in _losses(distilled)] == [True, True]
    _classify(distilled)


def test_pretraining_in_bf16(tmp_path, synthetic_videos):
    import run_pretraining

    teacher, output = tmp_path / "clip", tmp_path / "pretrained"
    clip = CLIPVisionConfig(hidden_size=24, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8)
    CLIPVisionModel(clip).save_pretrained(teacher)
    run_pretraining.main([str(a) for a in [
        "--train_dir", synthetic_videos / "train", "--teacher_model_name_or_path", teacher, "--preset", "tiny",
        "--config_overrides", TINY, "--mask_ratio", "0.5", "--output_dir", output, "--bf16", "true", *COMMON]])
    assert len(_losses(output)) == 2 and all(entry["loss"] > 0 for entry in _losses(output))
    with torch.no_grad():
        assert torch.isfinite(VideoMambaForPreTraining.from_pretrained(output)(torch.randn(2, 4, 3, 32, 32)).aligned_features).all()
    _classify(output, num_labels=3)


def test_video_text_training_in_bf16(retrieval_setup, tmp_path):  # noqa: F811
    import run_video_text_retrieval

    root, train, _ = retrieval_setup
    output = tmp_path / "run"
    run_video_text_retrieval.main([
        "--model_name_or_path", str(root / "model"), "--train_file", str(train), "--output_dir", str(output), "--do_train",
        "--max_steps", "2", "--logging_steps", "1", "--bf16", "true", "--use_cpu", "true", *RETRIEVAL_COMMON,
    ])
    assert len(_losses(output)) == 2 and all(entry["loss"] > 0 for entry in _losses(output))
    _check_saved(output, root)


@pytest.mark.parametrize("script, required", [
    ("run_video_classification", []), ("run_pretraining", []), ("run_video_text_retrieval", ["--model_name_or_path", "unused"]),
])
def test_fp16_on_cpu_is_refused_naming_bf16(script, required, tmp_path):
    """Refused while parsing, before any model or data is loaded."""
    module = __import__(script)
    with pytest.raises(ValueError, match="--fp16 needs a CUDA device.*--bf16 true"):
        module.main([*required, "--output_dir", str(tmp_path), "--fp16", "true", "--use_cpu", "true", "--report_to", "none"])
