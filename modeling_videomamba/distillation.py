"""Self-distillation (the paper's recipe for scaling up): a frozen teacher guides a larger student.

The student's final normed features of ALL tokens go through a head (RMSNorm -> Linear(D_student ->
D_teacher)); student and teacher features are L2-normalised and the loss mean(2 - 2 cos) is added to the
task loss with a weight (default 1, no schedule).

It is a `TrainerCallback`, so any `Trainer` (the stock one included) trains with it:

    trainer = Trainer(model=student, args=args, train_dataset=..., callbacks=[VideoMambaDistillationCallback(teacher, 1.0)])

The callback adds the head to the student as the submodule `distill_head` when the Trainer is built (so the
optimizer and DDP see it) and a forward hook on the student that, in training, runs the teacher on the very
`pixel_values` the student got (mixed ones included) and adds the term to the student's loss. The term is thus
part of the student's own (DDP-wrapped) forward: one forward, one backward. The teacher stays frozen in eval mode
and is never saved; the head is written into Trainer checkpoints (resuming restores it) and left out of the
student saved after training. `VideoMambaDistillationTrainer` is `VideoMambaTrainer` with this callback.
"""

import torch
import torch.distributed as dist
from torch import nn
from transformers import TrainerCallback

from .modeling_videomamba_blocks import VideoMambaRMSNorm
from .modeling_videomamba_pretraining import alignment_loss
from .training_utils import VideoMambaTrainer

HEAD_NAME = "distill_head"


def cosine_alignment_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """mean(2 - 2 cos) over every token: (..., D) features of equal shape, compared after L2 normalisation
    (masked pretraining's `alignment_loss`, without its broadcasting: a student must match its teacher's shape)."""
    if student.shape != teacher.shape:
        raise ValueError(f"Aligned features must have equal shapes; got student {tuple(student.shape)}, teacher {tuple(teacher.shape)}.")
    return alignment_loss(student, teacher)


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


def _sharded(args) -> bool:
    """DeepSpeed and FSDP keep their own flat parameter and gradient copies; the checks on `.grad` and on the
    optimizer's parameter groups do not apply there."""
    return bool(args.deepspeed or args.fsdp)


class VideoMambaDistillationCallback(TrainerCallback):
    """Self-distillation for any `Trainer`: pass it in `callbacks=[...]` when building the Trainer.

    In training forwards (the student in train mode, autograd on) the term `distillation_weight * mean(2 - 2 cos)`
    goes into the student's `loss`. With labels it is added to the task loss, normalised as that is: when the
    Trainer passes `num_items_in_batch` (the task loss is then a sum over the accumulated batch's label items),
    weighted by this micro-batch's share of those items, otherwise as a per-batch mean. Without labels (a
    Trainer computing the task loss outside the model, e.g. `VideoMambaTrainer` with soft labels) `loss` is the
    term alone, for that Trainer to add. If the term never reaches the loss (say a `compute_loss_func` that
    drops `outputs.loss`), the first optimizer step raises instead of training without it.

    `distill_loss` (the unweighted mean(2 - 2 cos), averaged over steps and processes) is added to every
    training log in `state.log_history` and to the logs seen by callbacks after this one.

    Args:
        teacher: any VideoMamba model (backbone or head model) with the student's token grid; frozen here.
        distillation_weight: weight of the distillation term (the paper uses 1).
    """

    def __init__(self, teacher: nn.Module, distillation_weight: float = 1.0):
        if teacher is None:
            raise ValueError("VideoMambaDistillationCallback needs a teacher model.")
        self.teacher = teacher.eval().requires_grad_(False)
        self.distillation_weight = float(distillation_weight)
        self.student = None
        self._hooks = []
        self._features = None
        self._saved_ignore_keys = None
        self._distill_sum, self._distill_count = 0.0, 0

    # -- installation ------------------------------------------------------------------------------

    def install(self, student: nn.Module):
        """Adds the head to `student` (as `distill_head`) and the hooks; before the optimizer and DDP exist."""
        if self.student is student:
            return
        if self.student is not None:
            raise ValueError("This VideoMambaDistillationCallback already serves another student; make one per Trainer.")
        if student is None:
            raise ValueError("VideoMambaDistillationCallback needs the Trainer's model at construction (model_init is not supported).")
        if hasattr(student, HEAD_NAME):
            raise ValueError(f"The student already has a `{HEAD_NAME}`; add one VideoMambaDistillationCallback only.")
        config = student.config
        reference = next(student.parameters())
        head = VideoMambaDistillationHead(config.hidden_size, _backbone(self.teacher).config.hidden_size, config.layer_norm_epsilon)
        student.add_module(HEAD_NAME, head.to(device=reference.device, dtype=reference.dtype))
        self.student = student
        self._saved_ignore_keys = student._keys_to_ignore_on_save
        self._keep_head_out_of_saves(True)
        self._attach_hooks()

    @property
    def head(self) -> VideoMambaDistillationHead:
        return getattr(self.student, HEAD_NAME)

    def _keep_head_out_of_saves(self, excluded: bool):
        """Checkpoints written during training carry the head (resuming loads it with the student); a student
        saved outside training does not."""
        ignored = self._saved_ignore_keys
        if excluded:
            ignored = list(ignored or []) + [f"{HEAD_NAME}.{name}" for name in self.head.state_dict()]
        self.student._keys_to_ignore_on_save = ignored

    def _attach_hooks(self):
        if not self._hooks:
            self._hooks = [
                _backbone(self.student).register_forward_hook(self._capture_features),
                self.student.register_forward_hook(self._add_distillation, with_kwargs=True),
            ]

    def _detach_hooks(self):
        for hook in self._hooks:
            hook.remove()
        self._hooks, self._features = [], None

    # -- the forward hooks --------------------------------------------------------------------------

    @staticmethod
    def _active(module: nn.Module) -> bool:
        return module.training and torch.is_grad_enabled()

    def _capture_features(self, module, args, output):
        if self._active(module):
            self._features = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]

    def _add_distillation(self, module, args, kwargs, output):
        if not self._active(module):
            return None
        features, self._features = self._features, None
        if features is None:
            raise RuntimeError("Self-distillation: the student's backbone produced no features in this forward.")
        if not isinstance(output, dict):
            raise TypeError("Self-distillation needs the student to return a ModelOutput (return_dict=True).")
        pixel_values = kwargs["pixel_values"] if "pixel_values" in kwargs else args[0]
        teacher = self.teacher
        if next(teacher.parameters()).device != pixel_values.device:
            teacher.to(pixel_values.device)
        distill = cosine_alignment_loss(self.head(features), teacher_features(teacher, pixel_values))
        term = self.distillation_weight * distill
        self._distill_sum = self._distill_sum + distill.detach()
        self._distill_count += 1
        if output.get("loss") is None:
            # No labels: the caller computes the task loss and adds this (a per-batch mean, like each sample's).
            output["loss"] = term
            return output
        labels, num_items = kwargs.get("labels"), kwargs.get("num_items_in_batch")
        share = 1.0
        if labels is not None and num_items is not None:
            # The task loss is a sum over the accumulated batch's label items divided by their count; the term
            # gets this micro-batch's share of them (counted as the Trainer counts: labels other than -100).
            share = labels.ne(-100).sum() / torch.as_tensor(num_items, device=labels.device)
        output["loss"] = output["loss"] + share * term
        return output

    # -- Trainer events -----------------------------------------------------------------------------

    def on_init_end(self, args, state, control, model=None, **kwargs):
        self.install(model)

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if self.student is None or (model is not None and model is not self.student):
            raise RuntimeError(
                "VideoMambaDistillationCallback was not installed on this Trainer's model: pass it in "
                "Trainer(callbacks=[...]) (or call its install(model)) before train()."
            )
        if optimizer is not None and not _sharded(args):
            in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
            if not all(id(p) in in_optimizer for p in self.head.parameters()):
                raise RuntimeError("The optimizer was built before the distillation head was added; let the Trainer build it.")
        self.teacher.to(args.device)
        self._keep_head_out_of_saves(False)
        self._attach_hooks()
        self._distill_sum, self._distill_count = 0.0, 0

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if not _sharded(args) and all(p.grad is None for p in self.head.parameters()):
            raise RuntimeError(
                "The self-distillation term never reached the loss: the student was called without labels and the "
                "task loss computed outside it; add the student's `outputs.loss` (the term) to it."
            )

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or "loss" not in logs:
            return
        totals = torch.stack([torch.as_tensor(self._distill_sum, dtype=torch.float64).to(args.device),
                              torch.tensor(float(self._distill_count), dtype=torch.float64, device=args.device)])
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(totals)
        self._distill_sum, self._distill_count = 0.0, 0
        if totals[1] > 0:
            logs["distill_loss"] = round((totals[0] / totals[1]).item(), 6)
            if state.log_history and state.log_history[-1].get("step") == state.global_step and "loss" in state.log_history[-1]:
                state.log_history[-1]["distill_loss"] = logs["distill_loss"]

    def on_train_end(self, args, state, control, **kwargs):
        # No activations stay referenced and no teacher runs once training is over.
        self._detach_hooks()
        self._keep_head_out_of_saves(True)


class VideoMambaDistillationTrainer(VideoMambaTrainer):
    """`VideoMambaTrainer` with a `VideoMambaDistillationCallback` (kept as `self.distillation`), placed
    first among the callbacks so reporting integrations see `distill_loss` too.

    Args:
        teacher: any VideoMamba model (backbone or head model) with the student's token grid.
        distillation_weight: weight of the distillation term (the paper uses 1).
    """

    def __init__(self, *args, teacher: nn.Module, distillation_weight: float = 1.0, callbacks=None, **kwargs):
        distillation = VideoMambaDistillationCallback(teacher, distillation_weight)
        super().__init__(*args, callbacks=[*(callbacks or []), distillation], **kwargs)
        self.distillation = distillation
        self.callback_handler.callbacks.remove(distillation)
        self.callback_handler.callbacks.insert(0, distillation)

    @property
    def teacher(self) -> nn.Module:
        return self.distillation.teacher


__all__ = [
    "VideoMambaDistillationCallback",
    "VideoMambaDistillationHead",
    "VideoMambaDistillationTrainer",
    "cosine_alignment_loss",
    "teacher_features",
]
