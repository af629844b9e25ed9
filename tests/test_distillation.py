"""Self-distillation: the loss, the head, the Trainer (logging, frozen teacher, what is saved, resume)."""

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import TrainingArguments

from modeling_videomamba import VideoMambaConfig, VideoMambaForVideoClassification
from modeling_videomamba.distillation import (
    DISTILL_HEAD_FILE,
    VideoMambaDistillationHead,
    VideoMambaDistillationTrainer,
    cosine_alignment_loss,
    teacher_features,
)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "trainer_scripts"))
TINY = dict(image_size=32, patch_size=8, num_frames=4, num_hidden_layers=2, num_labels=3)


def _student():
    torch.manual_seed(0)
    return VideoMambaForVideoClassification(VideoMambaConfig(hidden_size=32, **TINY))


def _teacher():
    torch.manual_seed(1)
    return VideoMambaForVideoClassification(VideoMambaConfig(hidden_size=24, **TINY))


class _Clips(torch.utils.data.Dataset):
    def __init__(self, count=8):
        generator = torch.Generator().manual_seed(0)
        self.pixel_values = torch.randn(count, 4, 3, 32, 32, generator=generator)
        self.labels = torch.randint(0, 3, (count,), generator=generator)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return {"pixel_values": self.pixel_values[index], "labels": int(self.labels[index])}


def _args(tmp_path, **overrides):
    values = dict(
        output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=4, learning_rate=1e-3, logging_steps=1,
        report_to=[], save_strategy="no", disable_tqdm=True, use_cpu=True, seed=0,
    )
    return TrainingArguments(**{**values, **overrides})


def test_cosine_alignment_loss_is_mean_two_minus_two_cosine():
    student, teacher = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    expected = (2 - 2 * F.cosine_similarity(student, teacher, dim=-1)).mean()
    torch.testing.assert_close(cosine_alignment_loss(student, teacher), expected)
    assert cosine_alignment_loss(teacher * 3, teacher).abs() < 1e-6  # scale does not matter
    with pytest.raises(ValueError, match="equal shapes"):
        cosine_alignment_loss(student, teacher[:, :4])


def test_head_is_rmsnorm_then_linear_to_the_teacher_width():
    head = VideoMambaDistillationHead(32, 24)
    features = torch.randn(2, 65, 32)
    normed = features * torch.rsqrt(features.pow(2).mean(-1, keepdim=True) + 1e-5) * head.norm.weight
    torch.testing.assert_close(head(features), normed @ head.proj.weight.t() + head.proj.bias)
    assert head(features).shape == (2, 65, 24)


def test_distillation_adds_the_term_logs_it_and_keeps_the_teacher_frozen(tmp_path):
    student, teacher = _student(), _teacher()
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    trainer = VideoMambaDistillationTrainer(model=student, args=_args(tmp_path), train_dataset=_Clips(), teacher=teacher)

    # One loss evaluation by hand: task loss + weight * mean(2 - 2 cos) over ALL tokens.
    batch = {"pixel_values": torch.randn(2, 4, 3, 32, 32), "labels": torch.tensor([0, 2])}
    student.train()
    torch.manual_seed(0)
    loss = trainer.compute_loss(student, dict(batch))
    with torch.no_grad():
        outputs = student.videomamba(batch["pixel_values"])
        task = F.cross_entropy(student.classifier(outputs.pooler_output), batch["labels"])
        distill = cosine_alignment_loss(student.distill_head(outputs.last_hidden_state), teacher_features(teacher, batch["pixel_values"]))
    torch.testing.assert_close(loss.detach(), task + distill, atol=1e-5, rtol=1e-5)
    assert distill > 0.1

    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 4 and all(0 < entry["distill_loss"] <= 4 for entry in logged)
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())
    for name, tensor in teacher.state_dict().items():
        assert torch.equal(tensor, teacher_before[name]), name


def test_distillation_weight_scales_the_term(tmp_path):
    batch = {"pixel_values": torch.randn(2, 4, 3, 32, 32), "labels": torch.tensor([0, 2])}
    losses = []
    for weight in (0.0, 1.0, 3.0):
        student = _student().train()
        trainer = VideoMambaDistillationTrainer(model=student, args=_args(tmp_path), train_dataset=_Clips(), teacher=_teacher(), distillation_weight=weight)
        losses.append(trainer.compute_loss(student, dict(batch)).item())
    torch.testing.assert_close(losses[2] - losses[0], 3 * (losses[1] - losses[0]), atol=1e-4, rtol=1e-4)


def test_saved_student_has_neither_teacher_nor_head_and_checkpoints_resume_the_head(tmp_path):
    student = _student()
    trainer = VideoMambaDistillationTrainer(
        model=student, args=_args(tmp_path, save_strategy="steps", save_steps=2), train_dataset=_Clips(), teacher=_teacher()
    )
    trainer.train()
    trainer.save_model()
    saved = load_file(tmp_path / "model.safetensors")
    assert not [k for k in saved if "distill" in k or "teacher" in k]
    assert set(saved) == {k for k in student.state_dict() if not k.startswith("distill_head.")}
    reloaded = VideoMambaForVideoClassification.from_pretrained(tmp_path)
    torch.testing.assert_close(reloaded.classifier.weight, student.classifier.weight)

    head_at_2 = load_file(tmp_path / "checkpoint-2" / DISTILL_HEAD_FILE)
    resumed_student = _student()
    resumed = VideoMambaDistillationTrainer(model=resumed_student, args=_args(tmp_path, max_steps=2), train_dataset=_Clips(), teacher=_teacher())
    resumed._load_from_checkpoint(str(tmp_path / "checkpoint-2"))
    for name, tensor in head_at_2.items():
        torch.testing.assert_close(resumed_student.distill_head.state_dict()[name], tensor)


def test_script_self_distillation_end_to_end(tmp_path, synthetic_videos):
    import run_video_classification

    teacher_dir = tmp_path / "teacher"
    torch.manual_seed(1)
    VideoMambaForVideoClassification(VideoMambaConfig(hidden_size=24, image_size=32, patch_size=8, num_frames=4, num_hidden_layers=1, num_labels=4)).save_pretrained(teacher_dir)
    output = tmp_path / "student"
    run_video_classification.main([
        "--train_dir", str(synthetic_videos / "train"), "--preset", "tiny",
        "--config_overrides", "hidden_size=32,num_hidden_layers=2,image_size=32,patch_size=8,num_frames=4",
        "--teacher_model_name_or_path", str(teacher_dir), "--distillation_weight", "0.5", "--output_dir", str(output),
        "--do_train", "--max_steps", "2", "--logging_steps", "1", "--per_device_train_batch_size", "2",
        "--report_to", "none", "--disable_tqdm", "true", "--save_strategy", "no",
    ])
    history = json.loads((output / "trainer_state.json").read_text())["log_history"]
    assert [("distill_loss" in entry) for entry in history if "loss" in entry] == [True, True]
    assert not [k for k in load_file(output / "model.safetensors") if "distill" in k]
