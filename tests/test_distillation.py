"""Self-distillation: the loss, the head, the callback on a stock Trainer and through `VideoMambaDistillationTrainer`
(the term, its normalisation under gradient accumulation, mixed clips, logging, frozen teacher, what is saved,
resume, hooks gone after training). Two-process runs are in test_training.py (test_two_process_runs)."""

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import Trainer, TrainingArguments

from modeling_videomamba import VideoMambaConfig, VideoMambaForVideoClassification
from modeling_videomamba.distillation import (
    VideoMambaDistillationCallback,
    VideoMambaDistillationHead,
    VideoMambaDistillationTrainer,
    cosine_alignment_loss,
)
from modeling_videomamba.training_utils import MixupCutmix, VideoMambaTrainer

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


def _independent_distillation(student, teacher, pixel_values):
    """mean(2 - 2 cos) of the head on the student's final normed tokens vs the teacher's, from first principles."""
    with torch.no_grad():
        student_tokens = student.videomamba(pixel_values).last_hidden_state
        teacher_tokens = teacher.videomamba(pixel_values).last_hidden_state
        return (2 - 2 * F.cosine_similarity(student.distill_head(student_tokens), teacher_tokens, dim=-1)).mean()


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


@pytest.mark.parametrize("weight", [1.0, 0.3])
def test_callback_on_a_stock_trainer_adds_the_weighted_term_to_the_task_loss(tmp_path, weight):
    student, teacher = _student(), _teacher()
    trainer = Trainer(model=student, args=_args(tmp_path), train_dataset=_Clips(),
                      callbacks=[VideoMambaDistillationCallback(teacher, weight)])
    assert isinstance(student.distill_head, VideoMambaDistillationHead)
    batch = {"pixel_values": torch.randn(2, 4, 3, 32, 32), "labels": torch.tensor([0, 2])}
    student.train()
    loss = trainer.compute_loss(student, dict(batch))
    with torch.no_grad():
        task = F.cross_entropy(student(batch["pixel_values"]).logits, batch["labels"])
    distill = _independent_distillation(student, teacher, batch["pixel_values"])
    assert distill > 0.1
    torch.testing.assert_close(loss.detach(), task + weight * distill, atol=1e-5, rtol=1e-5)
    # With `num_items_in_batch` (a sum over the accumulated batch's 6 labels), this micro-batch holds 2 of them.
    loss = trainer.compute_loss(student, dict(batch), num_items_in_batch=torch.tensor(6))
    with torch.no_grad():
        task_sum = F.cross_entropy(student(batch["pixel_values"]).logits, batch["labels"], reduction="sum")
    torch.testing.assert_close(loss.detach(), task_sum / 6 + 2 / 6 * weight * distill, atol=1e-5, rtol=1e-5)
    # Without labels the term alone is the loss (for a Trainer that computes the task loss itself).
    torch.testing.assert_close(student(batch["pixel_values"]).loss.detach(), weight * distill, atol=1e-5, rtol=1e-5)
    # Evaluation forwards carry no term.
    student.eval()
    with torch.no_grad():
        assert student(batch["pixel_values"]).loss is None


def _one_update(tmp_path, trainer_class, batch_size, accumulation, **trainer_kwargs):
    student, teacher = _student(), _teacher()
    args = _args(
        tmp_path / f"{trainer_class.__name__}{batch_size}", per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation, max_steps=1, learning_rate=0.5, optim="sgd", lr_scheduler_type="constant",
        max_grad_norm=0,
    )
    trainer_class(model=student, args=args, train_dataset=_Clips(), callbacks=[VideoMambaDistillationCallback(teacher, 0.7)], **trainer_kwargs).train()
    return torch.cat([p.detach().flatten() for p in student.parameters()])


@pytest.mark.parametrize("trainer_class,kwargs", [
    (Trainer, {}),  # hard labels: the model's loss, normalised by num_items_in_batch
    (VideoMambaTrainer, {"batch_mixer": MixupCutmix(num_labels=3, label_smoothing=0.2)}),  # soft labels: loss outside the model
])
def test_gradient_accumulation_gives_the_whole_batch_update(tmp_path, trainer_class, kwargs):
    whole = _one_update(tmp_path, trainer_class, 4, 1, **kwargs)
    accumulated = _one_update(tmp_path, trainer_class, 2, 2, **kwargs)
    torch.testing.assert_close(accumulated, whole, atol=1e-5, rtol=1e-4)


def test_the_teacher_sees_the_mixed_clips_the_student_sees(tmp_path):
    student, teacher = _student(), _teacher()
    seen = {"student": [], "teacher": []}
    student.register_forward_pre_hook(lambda m, a, k: seen["student"].append(k["pixel_values"].clone()) if m.training else None, with_kwargs=True)
    teacher.videomamba.register_forward_pre_hook(lambda m, a, k: seen["teacher"].append(k["pixel_values"].clone()), with_kwargs=True)
    dataset = _Clips(4)
    trainer = VideoMambaDistillationTrainer(
        model=student, args=_args(tmp_path, max_steps=2), train_dataset=dataset, teacher=teacher,
        batch_mixer=MixupCutmix(num_labels=3, mixup_alpha=1.0),
    )
    trainer.train()
    assert len(seen["student"]) == len(seen["teacher"]) == 2
    for student_clips, teacher_clips in zip(seen["student"], seen["teacher"]):
        torch.testing.assert_close(teacher_clips, student_clips)
        # ...and they are mixed: no clip of the dataset is among them unchanged.
        assert not any(torch.allclose(clip, original) for clip in student_clips for original in dataset.pixel_values)


def test_a_term_that_never_reaches_the_loss_is_an_error(tmp_path):
    student = _student()
    trainer = Trainer(
        model=student, args=_args(tmp_path), train_dataset=_Clips(), callbacks=[VideoMambaDistillationCallback(_teacher())],
        compute_loss_func=lambda outputs, labels, num_items_in_batch=None: F.cross_entropy(outputs.logits, labels),
    )
    with pytest.raises(RuntimeError, match="never reached the loss"):
        trainer.train()


def test_training_logs_saves_the_student_alone_and_resumes_the_head(tmp_path):
    student, teacher = _student(), _teacher()
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    callback = VideoMambaDistillationCallback(teacher)
    trainer = Trainer(model=student, args=_args(tmp_path, save_strategy="steps", save_steps=2), train_dataset=_Clips(), callbacks=[callback])
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 4 and all(0 < entry["distill_loss"] <= 4 for entry in logged)
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())
    for name, tensor in teacher.state_dict().items():
        assert torch.equal(tensor, teacher_before[name]), name
    # After training no hook is left to run the teacher or keep activations.
    assert not student._forward_hooks and not student.videomamba._forward_hooks
    student.train()
    assert student(torch.randn(1, 4, 3, 32, 32)).loss is None

    trainer.save_model()
    saved = load_file(tmp_path / "model.safetensors")
    assert set(saved) == {k for k in student.state_dict() if not k.startswith("distill_head.")}
    reloaded = VideoMambaForVideoClassification.from_pretrained(tmp_path)
    assert torch.isfinite(reloaded(torch.randn(1, 4, 3, 32, 32)).logits).all()
    torch.testing.assert_close(reloaded.classifier.weight, student.classifier.weight)

    # A checkpoint carries the head; resuming from it continues with it.
    head_at_2 = {k[len("distill_head."):]: v for k, v in load_file(tmp_path / "checkpoint-2" / "model.safetensors").items() if k.startswith("distill_head.")}
    assert set(head_at_2) == set(student.distill_head.state_dict())
    resumed_student = _student()
    resumed = Trainer(model=resumed_student, args=_args(tmp_path / "resumed", max_steps=2), train_dataset=_Clips(),
                      callbacks=[VideoMambaDistillationCallback(_teacher())])
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
