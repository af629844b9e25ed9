"""VideoMambaForPreTraining against an independent statement of the original's conventions, the
teacher targets, the pretraining Trainer with every mask type, and run_pretraining.py end to end."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPVisionConfig, CLIPVisionModel, TrainerCallback, TrainingArguments

from modeling_videomamba import VideoMambaConfig, VideoMambaForPreTraining, VideoMambaForVideoClassification
from modeling_videomamba.masking import MASK_TYPES, generate_mask
from modeling_videomamba.pretraining import VideoMambaPreTrainingTrainer, parameters_outside_the_loss, teacher_targets

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "trainer_scripts"))

TINY = dict(image_size=32, patch_size=8, num_frames=4, hidden_size=32, num_hidden_layers=3, teacher_hidden_size=24)
GRID = (4, 4, 4)


def _perturbed(model):
    """Random non-default weights everywhere (norms, decoders, embeddings), so convention errors show."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


def _sinusoid_reference(rows, dim):
    table = [[row / 10000 ** (2 * (col // 2) / dim) for col in range(dim)] for row in range(rows)]
    table = [[math.sin(v) if col % 2 == 0 else math.cos(v) for col, v in enumerate(r)] for r in table]
    return torch.tensor(table, dtype=torch.float64).float()


def _reference_aligned(model, pixel_values, mask, source):
    """The documented conventions, stated independently: visible tokens by index, ret layers, records,
    sinusoid + decoder + L2 norm. Blocks and embeddings are the modules already pinned to the original."""
    config, backbone = model.config, model.videomamba
    depth, interval, k = config.num_hidden_layers, config.aligned_layer_interval, config.num_aligned_layers
    tokens, _ = backbone.embeddings(pixel_values)
    table = _sinusoid_reference(tokens.shape[1], config.hidden_size)
    outputs = []
    for b in range(pixel_values.shape[0]):
        keep = [0] + [1 + i for i in range(mask.shape[1]) if not mask[b, i]]
        stream = tokens[b : b + 1, keep].float()
        ret = {depth - 1 - i * interval for i in range(k)}
        records = []
        for i, layer in enumerate(backbone.layers):
            if i - 1 in ret:
                records.append(backbone.norm_f(stream))
            if i == depth - 1:
                entering_last = stream
            stream = layer(stream)
        if depth - 1 in ret:
            records.append(entering_last if source == "original" else backbone.norm_f(stream))
        decoded = []
        for record, decoder in zip(records, model.clip_decoder):
            x = record + table[keep]
            x = F.layer_norm(x @ decoder.head.weight.t() + decoder.head.bias, (config.teacher_hidden_size,), decoder.norm.weight, decoder.norm.bias, 1e-5)
            decoded.append(x / x.norm(dim=-1, keepdim=True))
        outputs.append(torch.stack(decoded))
    return torch.cat(outputs, dim=1)


@pytest.mark.parametrize("num_aligned_layers,source", [(1, "original"), (2, "original"), (2, "final_norm")])
def test_aligned_features_follow_the_reference_conventions(num_aligned_layers, source):
    torch.manual_seed(0)
    config = VideoMambaConfig(**TINY, num_aligned_layers=num_aligned_layers, aligned_feature_source=source)
    model = _perturbed(VideoMambaForPreTraining(config))
    pixel_values = torch.randn(2, 4, 3, 32, 32)
    mask = generate_mask("random", 2, GRID, 0.5, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(pixel_values, bool_masked_pos=mask)
        expected = _reference_aligned(model, pixel_values, mask, source)
    assert out.aligned_features.shape == (num_aligned_layers, 2, 1 + 32, 24)
    torch.testing.assert_close(out.aligned_features, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("source", ["original", "final_norm"])
def test_hidden_states_are_the_visible_tokens_stream_and_change_nothing_else(source):
    torch.manual_seed(0)
    model = _perturbed(VideoMambaForPreTraining(VideoMambaConfig(**TINY, num_aligned_layers=2, aligned_feature_source=source)))
    pixel_values = torch.randn(2, 4, 3, 32, 32)
    mask = generate_mask("random", 2, GRID, 0.5, generator=torch.Generator().manual_seed(1))
    teacher = torch.randn(2, 1 + 64, 24)
    with torch.no_grad():
        plain = model(pixel_values, mask, teacher_features=teacher)
        out = model(pixel_values, mask, teacher_features=teacher, output_hidden_states=True)
        as_tuple = model(pixel_values, mask, teacher_features=teacher, output_hidden_states=True, return_dict=False)
        # Independently: the visible tokens picked by index, then each block applied in turn.
        tokens, _ = model.videomamba.embeddings(pixel_values)
        keep = [[0] + [1 + i for i in range(64) if not mask[b, i]] for b in range(2)]
        expected = [torch.stack([tokens[b, keep[b]] for b in range(2)])]
        for layer in model.videomamba.layers:
            expected.append(layer(expected[-1]))
    assert plain.hidden_states is None
    torch.testing.assert_close(out.aligned_features, plain.aligned_features, rtol=0, atol=0)
    torch.testing.assert_close(out.loss, plain.loss, rtol=0, atol=0)
    assert len(out.hidden_states) == TINY["num_hidden_layers"] + 1
    for actual, wanted in zip(out.hidden_states, expected):
        assert actual.shape == (2, 1 + 32, 32)
        torch.testing.assert_close(actual, wanted, atol=1e-6, rtol=1e-6)
    assert len(as_tuple) == 4 and all(torch.equal(a, b) for a, b in zip(as_tuple[3], out.hidden_states))


def test_hidden_states_without_a_mask_are_the_backbones():
    torch.manual_seed(0)
    model = _perturbed(VideoMambaForPreTraining(VideoMambaConfig(**TINY)))
    pixel_values = torch.randn(1, 4, 3, 32, 32)
    with torch.no_grad():
        ours = model(pixel_values, output_hidden_states=True).hidden_states
        backbone = model.videomamba(pixel_values, output_hidden_states=True).hidden_states
    for actual, wanted in zip(ours, backbone, strict=True):
        torch.testing.assert_close(actual, wanted, rtol=0, atol=0)


def test_one_aligned_layer_reads_the_stream_entering_the_last_block_in_original_mode():
    torch.manual_seed(0)
    pixel_values = torch.randn(1, 4, 3, 32, 32)
    for source, should_change in (("original", False), ("final_norm", True)):
        model = _perturbed(VideoMambaForPreTraining(VideoMambaConfig(**TINY, aligned_feature_source=source)))
        with torch.no_grad():
            before = model(pixel_values).aligned_features
            model.videomamba.layers[-1].mixer.out_proj.weight.mul_(3.0)
            model.videomamba.norm_f.weight.mul_(2.0)
            after = model(pixel_values).aligned_features
        assert (not torch.allclose(before, after, atol=1e-4)) == should_change, source


@pytest.mark.parametrize("num_aligned_layers,source", [(1, "original"), (2, "original"), (1, "final_norm"), (2, "final_norm")])
def test_parameters_outside_the_loss_are_exactly_those_without_a_gradient(tmp_path, num_aligned_layers, source):
    torch.manual_seed(0)
    model = VideoMambaForPreTraining(VideoMambaConfig(**TINY, num_aligned_layers=num_aligned_layers, aligned_feature_source=source))
    mask = generate_mask("random", 2, GRID, 0.5, generator=torch.Generator().manual_seed(1))
    model(torch.randn(2, 4, 3, 32, 32), mask, teacher_features=torch.randn(2, 1 + 64, 24)).loss.backward()
    without_gradient = {name for name, p in model.named_parameters() if p.grad is None}
    outside = {id(p) for p in parameters_outside_the_loss(model)}
    assert without_gradient == {name for name, p in model.named_parameters() if id(p) in outside}
    assert bool(without_gradient) == (source == "original")
    # The pretraining Trainer freezes them (DDP under activation checkpointing needs every trainable one used).
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, disable_tqdm=True)
    VideoMambaPreTrainingTrainer(model=model, args=args, teacher=_clip_teacher())
    assert {name for name, p in model.named_parameters() if not p.requires_grad} == without_gradient


def test_loss_is_mean_two_minus_two_cosine_with_full_or_visible_targets():
    torch.manual_seed(0)
    model = _perturbed(VideoMambaForPreTraining(VideoMambaConfig(**TINY)))
    pixel_values = torch.randn(2, 4, 3, 32, 32)
    mask = generate_mask("tube", 2, GRID, 0.75, generator=torch.Generator().manual_seed(2))
    teacher_all = torch.randn(2, 1 + 64, 24)
    visible = torch.cat([torch.ones(2, 1, dtype=torch.bool), ~mask], dim=1)
    teacher_visible = teacher_all[visible].reshape(2, -1, 24)
    with torch.no_grad():
        out_all = model(pixel_values, mask, teacher_features=teacher_all)
        out_visible = model(pixel_values, mask, teacher_features=teacher_visible)
    cosine = F.cosine_similarity(out_all.aligned_features[0], teacher_visible, dim=-1)
    torch.testing.assert_close(out_all.loss, (2 - 2 * cosine).mean())
    torch.testing.assert_close(out_visible.loss, out_all.loss)


def test_bad_masks_and_targets_raise():
    model = VideoMambaForPreTraining(VideoMambaConfig(**TINY))
    pixel_values = torch.randn(2, 4, 3, 32, 32)
    uneven = torch.zeros(2, 64, dtype=torch.bool)
    uneven[0, :3] = True
    with pytest.raises(ValueError, match="same number"):
        model(pixel_values, uneven)
    with pytest.raises(ValueError, match=r"\(batch, T\*h\*w\)"):
        model(pixel_values, torch.zeros(2, 65, dtype=torch.bool))
    with pytest.raises(ValueError, match="teacher_features"):
        model(pixel_values, teacher_features=torch.randn(2, 65, 7))


def _clip_teacher(eager=True):
    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=24, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8)
    return CLIPVisionModel._from_config(config, attn_implementation="eager" if eager else "sdpa").eval()


def test_clip_teacher_targets_are_per_frame_tokens_with_an_averaged_cls():
    teacher = _clip_teacher()
    pixel_values = torch.randn(2, 4, 3, 32, 32)
    features, attention = teacher_targets(teacher, pixel_values, need_attention=True)
    assert features.shape == (2, 1 + 64, 24) and attention.shape == (2, 4, 16)
    with torch.no_grad():
        for b in range(2):
            per_frame = [teacher(pixel_values=pixel_values[b, t : t + 1], output_attentions=True) for t in range(4)]
            cls = torch.stack([o.last_hidden_state[0, 0] for o in per_frame]).mean(0)
            torch.testing.assert_close(features[b, 0], cls)
            for t, o in enumerate(per_frame):
                torch.testing.assert_close(features[b, 1 + 16 * t : 1 + 16 * (t + 1)], o.last_hidden_state[0, 1:])
                torch.testing.assert_close(attention[b, t], o.attentions[-1][0, :, 0, 1:].mean(0))


class _TensorClips(torch.utils.data.Dataset):
    def __init__(self, count, frames=4, size=32):
        generator = torch.Generator().manual_seed(0)
        self.clips = torch.randn(count, frames, 3, size, size, generator=generator)

    def __len__(self):
        return len(self.clips)

    def __getitem__(self, index):
        return {"pixel_values": self.clips[index]}


class _RecordMaskTypes(TrainerCallback):
    def __init__(self, trainer_ref):
        self.trainer_ref, self.seen = trainer_ref, []

    def on_step_begin(self, args, state, control, **kwargs):
        self.seen.append(self.trainer_ref[0].masking.mask_type)


def test_every_mask_type_trains_a_step_through_the_trainer(tmp_path):
    torch.manual_seed(0)
    model = VideoMambaForPreTraining(VideoMambaConfig(**TINY))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    schedule = [(i / len(MASK_TYPES), mask_type, 0.5) for i, mask_type in enumerate(MASK_TYPES)]
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=len(MASK_TYPES), per_device_train_batch_size=2, learning_rate=1e-3,
        logging_steps=1, report_to=[], save_strategy="no", disable_tqdm=True, use_cpu=True,
    )
    holder = []
    recorder = _RecordMaskTypes(holder)
    trainer = VideoMambaPreTrainingTrainer(
        model=model, args=args, train_dataset=_TensorClips(2 * len(MASK_TYPES)), teacher=_clip_teacher(),
        mask_schedule=schedule, callbacks=[],
    )
    holder.append(trainer)
    trainer.add_callback(recorder)  # after the MaskingCallback, so it sees the updated spec
    trainer.train()
    assert recorder.seen == list(MASK_TYPES)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == len(MASK_TYPES) and all(0 < loss < 4 for loss in losses)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("clip_decoder") for k in changed) and any(k.startswith("videomamba.layers") for k in changed)
    assert all(not p.requires_grad for p in trainer.teacher.parameters())


def test_run_pretraining_output_loads_for_fine_tuning(tmp_path, synthetic_videos):
    import run_pretraining

    teacher_dir = tmp_path / "teacher"
    _clip_teacher().save_pretrained(teacher_dir)
    output = tmp_path / "pretrained"
    run_pretraining.main([
        "--train_dir", str(synthetic_videos / "train"), "--teacher_model_name_or_path", str(teacher_dir),
        "--preset", "tiny", "--config_overrides", "hidden_size=32,num_hidden_layers=2,image_size=32,patch_size=8,num_frames=4",
        "--mask_type", "attention", "--mask_ratio", "0.5", "--output_dir", str(output), "--max_steps", "2",
        "--per_device_train_batch_size", "2", "--report_to", "none", "--disable_tqdm", "true", "--save_strategy", "no",
    ])
    assert json.loads((output / "train_results.json").read_text())["train_loss"] > 0
    pretrained = VideoMambaForPreTraining.from_pretrained(output)
    assert pretrained.config.teacher_hidden_size == 24
    classifier = VideoMambaForVideoClassification.from_pretrained(output, num_labels=3)
    for name, tensor in pretrained.videomamba.state_dict().items():
        assert torch.equal(classifier.videomamba.state_dict()[name], tensor), name
    assert (output / "video_preprocessor_config.json").is_file()
