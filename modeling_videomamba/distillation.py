"""Self-distillation (the paper's recipe for scaling up): a frozen teacher guides a larger student.

The student's final normed features of ALL tokens go through a head (RMSNorm -> Linear(D_student ->
D_teacher)); student and teacher features are L2-normalised and the loss mean(2 - 2 cos) is added to the
task loss with a weight (default 1, no schedule). The teacher stays frozen in eval mode and is never
saved; the head is kept out of the student's saved weights (it is written into Trainer checkpoints so a
resumed run continues with it).

    trainer = VideoMambaDistillationTrainer(teacher=teacher_model, distillation_weight=1.0, model=student, ...)
"""

import os

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from .modeling_videomamba import VideoMambaRMSNorm
from .training_utils import VideoMambaTrainer

DISTILL_HEAD_FILE = "distill_head.safetensors"


def cosine_alignment_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """mean(2 - 2 cos) over every token: (..., D) features of equal shape, compared after L2 normalisation."""
    if student.shape != teacher.shape:
        raise ValueError(f"Aligned features must have equal shapes; got student {tuple(student.shape)}, teacher {tuple(teacher.shape)}.")
    student, teacher = F.normalize(student.float(), dim=-1), F.normalize(teacher.float(), dim=-1)
    return (2 - 2 * (student * teacher).sum(-1)).mean()


class VideoMambaDistillationHead(nn.Module):
    """RMSNorm -> Linear(student_dim -> teacher_dim): (B, L, student_dim) -> (B, L, teacher_dim)."""

    def __init__(self, student_dim: int, teacher_dim: int, eps: float = 1e-5):
        super().__init__()
        self.norm = VideoMambaRMSNorm(student_dim, eps=eps)
        self.proj = nn.Linear(student_dim, teacher_dim)
        nn.init.trunc_normal_(self.proj.weight, std=0.02)
        nn.init.zeros_(self.proj.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(features).to(self.proj.weight.dtype))


def _backbone(model: nn.Module) -> nn.Module:
    """The VideoMambaModel inside a head model (or the model itself)."""
    return getattr(model, "videomamba", model)


@torch.no_grad()
def teacher_features(teacher: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """Final normed features of all tokens of a VideoMamba teacher: (B, T, C, H, W) -> (B, L, D_teacher)."""
    backbone = _backbone(teacher)
    return backbone(pixel_values=pixel_values.to(next(backbone.parameters()).dtype), return_dict=True).last_hidden_state


class VideoMambaDistillationTrainer(VideoMambaTrainer):
    """`VideoMambaTrainer` adding the self-distillation term; logs it as `distill_loss` (and the task loss
    as `task_loss`) next to the usual `loss`.

    Args:
        teacher: any VideoMamba model (backbone or head model) with the student's token grid.
        distillation_weight: weight of the distillation term (the paper uses 1).
    """

    def __init__(self, *args, teacher: nn.Module, distillation_weight: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        if teacher is None:
            raise ValueError("VideoMambaDistillationTrainer needs a teacher model.")
        self.teacher = teacher.to(self.args.device).eval().requires_grad_(False)
        self.distillation_weight = distillation_weight
        student = self.model
        head = VideoMambaDistillationHead(student.config.hidden_size, _backbone(teacher).config.hidden_size, student.config.layer_norm_epsilon)
        # As a submodule the head trains (and synchronises under DDP) with the student, but is left out
        # of the saved student.
        student.add_module("distill_head", head.to(self.args.device))
        student._keys_to_ignore_on_save = [f"distill_head.{name}" for name in head.state_dict()]
        self._captured = None
        _backbone(student).register_forward_hook(self._capture_student_features)
        self._distill_log = {"distill_loss": 0.0, "task_loss": 0.0, "count": 0}

    def _capture_student_features(self, module, inputs, output):
        self._captured = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        task_loss, outputs = self.compute_task_loss(model, inputs, num_items_in_batch)
        if not model.training:
            return (task_loss, outputs) if return_outputs else task_loss
        student = self.accelerator.unwrap_model(model)
        target = teacher_features(self.teacher, inputs["pixel_values"])
        distill = cosine_alignment_loss(student.distill_head(self._captured), target)
        scale = self.distillation_weight
        if self.model_accepts_loss_kwargs and num_items_in_batch is not None:
            # The task loss arrives normalised over the whole accumulated batch, so the Trainer will not
            # divide by the accumulation steps; this per-micro-batch mean must be divided here.
            scale = scale / self.current_gradient_accumulation_steps
        loss = task_loss + scale * distill
        self._distill_log["distill_loss"] += distill.item()
        self._distill_log["task_loss"] += task_loss.item() if torch.is_tensor(task_loss) else float(task_loss)
        self._distill_log["count"] += 1
        self._captured = None
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict, *args, **kwargs):
        count = self._distill_log["count"]
        if count and "loss" in logs:
            logs["distill_loss"] = round(self._distill_log["distill_loss"] / count, 6)
            self._distill_log = {"distill_loss": 0.0, "task_loss": 0.0, "count": 0}
        super().log(logs, *args, **kwargs)

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
            head = self.accelerator.unwrap_model(self.model).distill_head
            save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}, os.path.join(folder, DISTILL_HEAD_FILE))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        path = os.path.join(resume_from_checkpoint, DISTILL_HEAD_FILE)
        if not os.path.isfile(path):
            raise OSError(f"Checkpoint {resume_from_checkpoint} has no {DISTILL_HEAD_FILE}; it was not written by a distillation run.")
        self.accelerator.unwrap_model(model or self.model).distill_head.load_state_dict(load_file(path))


__all__ = [
    "VideoMambaDistillationHead",
    "VideoMambaDistillationTrainer",
    "cosine_alignment_loss",
    "teacher_features",
]
