import math

import pytest
import torch

from modeling_videomamba import (
    VideoMambaConfig,
    VideoMambaForImageClassification,
    VideoMambaForVideoClassification,
    VideoMambaModel,
)
from modeling_videomamba.modeling_videomamba_blocks import temporal_first_order


def tiny_config(**overrides):
    values = dict(image_size=32, patch_size=8, num_frames=4, hidden_size=32, num_hidden_layers=2, num_labels=3)
    values.update(overrides)
    return VideoMambaConfig(**values)


def video(batch=2, frames=4, size=32, seed=0):
    return torch.randn(batch, frames, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_base_model_output_shapes_and_pooler():
    config = tiny_config()
    model = VideoMambaModel(config).eval()
    out = model(video(), output_hidden_states=True)
    length = 1 + 4 * 4 * 4
    assert out.last_hidden_state.shape == (2, length, 32)
    assert torch.equal(out.pooler_output, out.last_hidden_state[:, 0])
    assert len(out.hidden_states) == config.num_hidden_layers + 1
    assert all(h.shape == (2, length, 32) and h.dtype == torch.float32 for h in out.hidden_states)
    # The final norm of the last stream is the output.
    assert torch.allclose(model.norm_f(out.hidden_states[-1]), out.last_hidden_state)


def test_return_dict_false_gives_tuples():
    model = VideoMambaForVideoClassification(tiny_config()).eval()
    x, labels = video(), torch.tensor([0, 2])
    as_dict = model(x, labels=labels)
    loss, logits = model(x, labels=labels, return_dict=False)
    assert torch.equal(logits, as_dict.logits) and torch.equal(loss, as_dict.loss)
    assert logits.shape == (2, 3)


def test_samples_are_independent_of_their_batch():
    model = VideoMambaForVideoClassification(tiny_config()).eval()
    x = video(batch=3)
    together = model(x).logits
    alone = torch.cat([model(x[i : i + 1]).logits for i in range(3)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


def test_classification_losses_follow_problem_type():
    x = video()
    single = VideoMambaForVideoClassification(tiny_config())
    out = single(x, labels=torch.tensor([1, 2]))
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, torch.tensor([1, 2])))
    multi = VideoMambaForVideoClassification(tiny_config(problem_type="multi_label_classification"))
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    out = multi(x, labels=targets)
    torch.testing.assert_close(out.loss, torch.nn.functional.binary_cross_entropy_with_logits(out.logits, targets))
    regression = VideoMambaForVideoClassification(tiny_config(num_labels=1))
    out = regression(x, labels=torch.tensor([0.5, -1.0]))
    torch.testing.assert_close(out.loss, torch.nn.functional.mse_loss(out.logits.squeeze(), torch.tensor([0.5, -1.0])))


def test_soft_labels_get_soft_cross_entropy_and_leave_the_config_alone():
    model = VideoMambaForVideoClassification(tiny_config())
    assert model.config.problem_type is None
    soft = torch.tensor([[0.7, 0.2, 0.1], [0.0, 0.5, 0.5]])
    out = model(video(), labels=soft)
    # Independently: -sum p log softmax, in float64, averaged over the samples.
    logits = out.logits.double()
    log_probs = logits - logits.exp().sum(-1, keepdim=True).log()
    torch.testing.assert_close(out.loss.double(), -(soft.double() * log_probs).sum(-1).mean())
    # With the Trainer's count of label elements (batch * num_labels per micro-batch) over 2 micro-batches.
    summed = model(video(), labels=soft, num_items_in_batch=torch.tensor(2 * soft.numel())).loss
    torch.testing.assert_close(summed.double(), -(soft.double() * log_probs).sum() / 4)
    assert model.config.problem_type is None
    model(video(), labels=torch.tensor([1, 2]))
    assert model.config.problem_type is None
    # Multi-hot targets are not probabilities: say what to set instead of guessing.
    with pytest.raises(ValueError, match="multi_label_classification"):
        model(video(), labels=torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]))
    with pytest.raises(ValueError, match=r"\(batch, num_labels\)"):
        model(video(), labels=torch.rand(2, 4))


def test_explicit_single_label_problem_type_takes_soft_labels_too():
    model = VideoMambaForVideoClassification(tiny_config(problem_type="single_label_classification"))
    soft = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    out = model(video(), labels=soft)
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, torch.tensor([1, 2])))
    assert model.config.problem_type == "single_label_classification"


class _Int8Linear(torch.nn.Module):
    """Stand-in for an int8-quantized Linear (as bitsandbytes keeps them): int8 weight, per-row scale."""

    def __init__(self, linear):
        super().__init__()
        scale = linear.weight.detach().abs().amax(1, keepdim=True) / 127
        self.weight = torch.nn.Parameter((linear.weight.detach() / scale).round().to(torch.int8), requires_grad=False)
        self.register_buffer("scale", scale)
        self.bias = linear.bias

    def forward(self, x):
        return torch.nn.functional.linear(x, self.weight.to(x.dtype) * self.scale.to(x.dtype), self.bias)


@pytest.mark.parametrize("scan_implementation", ["fast", "reference"])
def test_int8_quantized_linear_layers_run(scan_implementation):
    torch.manual_seed(0)
    model = VideoMambaForVideoClassification(tiny_config(scan_implementation=scan_implementation)).eval()
    x = video()
    with torch.no_grad():
        expected = model(x).logits
        for layer in model.videomamba.layers:
            for name in ("in_proj", "x_proj", "x_proj_b", "out_proj"):
                setattr(layer.mixer, name, _Int8Linear(getattr(layer.mixer, name)))
        assert model.videomamba.layers[0].mixer.in_proj.weight.dtype == torch.int8
        quantized = model(x).logits
    assert quantized.dtype == torch.float32
    torch.testing.assert_close(quantized, expected, atol=0.05, rtol=0.05)
    assert not torch.equal(quantized, expected)


def test_image_model_takes_images_and_has_no_temporal_embedding():
    model = VideoMambaForImageClassification(tiny_config(num_labels=5)).eval()
    assert model.config.modality == "image"
    assert not hasattr(model.videomamba.embeddings, "temporal_position_embeddings")
    assert model.videomamba.embeddings.patch_embeddings.projection.weight.dim() == 4
    images = torch.randn(2, 3, 32, 32)
    assert model(images).logits.shape == (2, 5)
    with pytest.raises(ValueError, match=r"\(batch, channels, height, width\)"):
        model(video())


def test_image_model_leaves_the_callers_config_alone_and_video_model_refuses_image_configs():
    config = tiny_config()
    image_model = VideoMambaForImageClassification(config)
    assert image_model.config.modality == "image" and config.modality == "video"
    assert VideoMambaForVideoClassification(config)(video()).logits.shape == (2, 3)
    with pytest.raises(ValueError, match="modality='video', got 'image'.*VideoMambaForImageClassification"):
        VideoMambaForVideoClassification(image_model.config)


def test_size_mismatches_raise_naming_expected_and_received():
    model = VideoMambaModel(tiny_config()).eval()
    with pytest.raises(ValueError, match=r"6 frames but the model expects 4.*interpolate_pos_encoding"):
        model(video(frames=6))
    with pytest.raises(ValueError, match=r"48x48.*32x32"):
        model(video(size=48))
    with pytest.raises(ValueError, match="channels"):
        model(torch.randn(1, 4, 1, 32, 32))
    with pytest.raises(ValueError, match="not divisible by the patch size"):
        model(torch.randn(1, 4, 3, 36, 36), interpolate_pos_encoding=True)
    with pytest.raises(ValueError, match=r"\(batch, frames, channels, height, width\)"):
        model(torch.randn(4, 3, 32, 32))


def test_interpolate_pos_encoding_runs_other_sizes_and_is_identity_at_the_trained_size():
    model = VideoMambaModel(tiny_config()).eval()
    x = video()
    torch.testing.assert_close(model(x, interpolate_pos_encoding=True).last_hidden_state, model(x).last_hidden_state)
    out = model(video(frames=8, size=48), interpolate_pos_encoding=True)
    assert out.last_hidden_state.shape == (2, 1 + 8 * 6 * 6, 32)


def test_interpolation_matches_the_original_recipe():
    model = VideoMambaModel(tiny_config()).eval()
    embeddings = model.embeddings
    with torch.no_grad():
        embeddings.temporal_position_embeddings.copy_(torch.arange(4.0).view(1, 4, 1).expand(1, 4, 32))
    tokens, grid = embeddings(torch.zeros(1, 8, 3, 32, 32), interpolate_pos_encoding=True)
    assert grid == (8, 4, 4)
    zero_patch = embeddings.patch_embeddings.projection.bias  # the patch of an all-zero frame
    position = embeddings.position_embeddings[0, 1:].reshape(4, 4, 32)
    temporal = (tokens[0, 1:].reshape(8, 4, 4, 32) - zero_patch - position)[:, 0, 0, 0]
    # Linear, align_corners=False: 4 -> 8 frames samples source positions (t + 0.5) / 2 - 0.5, clamped.
    expected = torch.tensor([(t + 0.5) / 2 - 0.5 for t in range(8)]).clamp(0, 3)
    torch.testing.assert_close(temporal, expected, atol=1e-5, rtol=0)
    # cls keeps its position embedding and gets no temporal embedding.
    torch.testing.assert_close(tokens[0, 0], (embeddings.cls_token + embeddings.position_embeddings[:, 0])[0, 0])


def test_temporal_first_order_visits_each_position_through_time():
    assert temporal_first_order(2, 1, 2).tolist() == [0, 1, 3, 2, 4]
    assert sorted(temporal_first_order(3, 2, 2).tolist()) == list(range(13))


def test_token_orders_change_the_scan_but_not_the_output_layout():
    x = video()
    outputs = {}
    for order in ("spatial_first", "temporal_first", "hybrid"):
        torch.manual_seed(0)
        model = VideoMambaModel(tiny_config(token_order=order)).eval()
        outputs[order] = model(x).last_hidden_state
    assert not torch.allclose(outputs["spatial_first"], outputs["temporal_first"], atol=1e-4)
    assert not torch.allclose(outputs["hybrid"], outputs["temporal_first"], atol=1e-4)
    # With one frame, temporal-first is the same scan as spatial-first.
    one_frame = video(frames=1)
    results = []
    for order in ("spatial_first", "temporal_first"):
        torch.manual_seed(0)
        model = VideoMambaModel(tiny_config(token_order=order, num_frames=1)).eval()
        results.append(model(one_frame).last_hidden_state)
    torch.testing.assert_close(results[0], results[1])


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = VideoMambaForVideoClassification(tiny_config(scan_implementation="reference"))
    x, labels = video(), torch.tensor([0, 1])
    model.train()
    model(x, labels=labels).loss.backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.activation_checkpointing_enable()
    assert model.videomamba.layers[0].gradient_checkpointing
    model(x, labels=labels).loss.backward()
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, plain[name], atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_keeps_the_residual_stream_in_fp32(dtype):
    torch.manual_seed(0)
    model = VideoMambaForVideoClassification(tiny_config()).eval()
    reference = model(video(), output_hidden_states=True)
    model = model.to(dtype)
    out = model(video(), output_hidden_states=True)
    assert out.logits.dtype == dtype
    assert all(h.dtype == torch.float32 for h in out.hidden_states)
    torch.testing.assert_close(out.logits.float(), reference.logits, atol=0.1, rtol=0.1)


def test_from_pretrained_in_bf16_keeps_ssm_parameters_in_fp32(tmp_path):
    VideoMambaForVideoClassification(tiny_config()).save_pretrained(tmp_path)
    model = VideoMambaForVideoClassification.from_pretrained(tmp_path, dtype=torch.bfloat16)
    mixer = model.videomamba.layers[0].mixer
    assert mixer.in_proj.weight.dtype == torch.bfloat16
    assert {p.dtype for p in (mixer.A_log, mixer.A_b_log, mixer.D, mixer.D_b)} == {torch.float32}
    assert model(video().bfloat16()).logits.dtype == torch.bfloat16


def test_residual_in_fp32_false_keeps_the_compute_dtype():
    model = VideoMambaModel(tiny_config(residual_in_fp32=False)).to(torch.bfloat16).eval()
    out = model(video(), output_hidden_states=True)
    assert out.hidden_states[1].dtype == torch.bfloat16


def test_layer_norm_variant():
    model = VideoMambaModel(tiny_config(rms_norm=False)).eval()
    assert model.norm_f.bias is not None
    out = model(video()).last_hidden_state
    torch.testing.assert_close(out.mean(-1), torch.zeros(out.shape[:2]), atol=1e-5, rtol=0)


def test_original_initialisation():
    torch.manual_seed(0)
    config = tiny_config(num_hidden_layers=4, dt_init="original")
    model = VideoMambaForVideoClassification(config)
    mixer = model.videomamba.layers[1].mixer
    expected_a = torch.log(torch.arange(1, 17, dtype=torch.float32)).expand(config.intermediate_size, 16)
    torch.testing.assert_close(mixer.A_log.data, expected_a)
    torch.testing.assert_close(mixer.A_b_log.data, expected_a)
    assert torch.all(mixer.D == 1) and torch.all(mixer.D_b == 1)
    assert torch.all(mixer.dt_proj.bias == 0) and torch.all(mixer.dt_proj_b.bias == 0)
    assert abs(mixer.x_proj.weight.std().item() - 0.02) < 0.005
    # kaiming_uniform(a=sqrt 5) bound is 1/sqrt(fan_in), then / sqrt(depth).
    bound = 1 / math.sqrt(config.intermediate_size) / math.sqrt(4)
    assert mixer.out_proj.weight.abs().max() <= bound + 1e-6
    assert mixer.out_proj.weight.abs().max() > 0.8 * bound
    embeddings = model.videomamba.embeddings
    assert torch.all(embeddings.cls_token == 0) and torch.all(embeddings.temporal_position_embeddings == 0)
    assert abs(embeddings.position_embeddings.std().item() - 0.02) < 0.005
    assert torch.all(model.classifier.bias == 0)


def test_mamba_initialisation_is_the_default_and_follows_mamba():
    config = tiny_config(time_step_min=0.001, time_step_max=0.1)
    assert config.dt_init == "mamba"
    mixer = VideoMambaModel(config).layers[0].mixer
    for bias in (mixer.dt_proj.bias, mixer.dt_proj_b.bias):
        dt = torch.nn.functional.softplus(bias)
        assert dt.min() >= 0.001 - 1e-6 and dt.max() <= 0.1 + 1e-6
    # PyTorch's fan-in uniform bound 1/sqrt(fan_in), not VideoMamba's std 0.02.
    for projection in (mixer.in_proj, mixer.x_proj, mixer.x_proj_b):
        bound = 1 / math.sqrt(projection.in_features)
        assert 0.9 * bound < projection.weight.abs().max() <= bound + 1e-6
    for projection in (mixer.dt_proj, mixer.dt_proj_b):
        assert projection.weight.abs().max() <= config.time_step_rank**-0.5 + 1e-6


def test_fresh_cls_token_sees_every_frame_with_the_default_init():
    """What the head reads (the cls token, first in the scan) must depend on the whole clip from the start.

    With VideoMamba's original init every step size is softplus(0) = 0.69, so a token's state decays by at
    least half per token and, in the default spatial-first order, the cls output ignores all but the first
    few patches of the first frame: its gradient with respect to later frames vanishes (about 1e-37 of the
    first frame's for the last of 8 frames here, against about 5e-4 with Mamba's init).
    """

    def per_frame_gradient(**init):
        torch.manual_seed(0)
        config = tiny_config(num_frames=8, hidden_size=64, **init)
        model = VideoMambaModel(config).eval()
        clip = video(frames=8).requires_grad_(True)
        readout = model(clip).pooler_output @ torch.randn(config.hidden_size, generator=torch.Generator().manual_seed(1))
        (grad,) = torch.autograd.grad(readout.sum(), clip)
        return grad.abs().mean((0, 2, 3, 4))  # (frames,)

    default, original = per_frame_gradient(), per_frame_gradient(dt_init="original")
    assert default[-1] > 1e-4 * default.max()  # the last frame reaches the head
    assert original[-1] < 1e-9 * original.max()  # the original init: it does not
    # Still, the cls token favours the first frame by orders of magnitude; the mean of the patch tokens does not.
    assert default[-1] < 1e-2 * default[0]
    mean = per_frame_gradient(use_mean_pooling=True)
    assert mean.min() > 0.2 * mean.max()


def test_mean_pooling_reads_the_patch_tokens_and_survives_save_and_load(tmp_path):
    from transformers import AutoModelForVideoClassification

    model = VideoMambaForVideoClassification(tiny_config(use_mean_pooling=True)).eval()
    clip = video()
    outputs = model.videomamba(clip)
    torch.testing.assert_close(outputs.pooler_output, outputs.last_hidden_state[:, 1:].mean(1))
    logits = model(clip).logits
    torch.testing.assert_close(logits, model.classifier(outputs.pooler_output))
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForVideoClassification.from_pretrained(tmp_path).eval()
    assert reloaded.config.use_mean_pooling is True
    torch.testing.assert_close(reloaded(clip).logits, logits)


def test_mean_pooling_learns_a_label_only_the_last_frame_carries():
    """Noise clips whose last frame is brighter or darker by 0.5 std, label = which. With the mean of the patch
    tokens the head sees every frame equally and learns it in 96 steps (held-out accuracy 1.0 for seeds 0-2);
    reading the cls token it stays at chance on held-out clips (0.45-0.61, either init, either token order,
    it memorises the training clips instead), since the cls token sees the last frame only through slow channels."""

    def clips(count, seed):
        generator = torch.Generator().manual_seed(seed)
        pixels = torch.randn(count, 8, 3, 32, 32, generator=generator)
        labels = torch.randint(0, 2, (count,), generator=generator)
        pixels[:, -1] += 0.5 * (2 * labels.float() - 1).view(-1, 1, 1, 1)
        return pixels, labels

    torch.manual_seed(0)
    model = VideoMambaForVideoClassification(tiny_config(num_frames=8, num_labels=2, use_mean_pooling=True))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    pixels, labels = clips(256, seed=0)
    order = torch.randperm(256, generator=torch.Generator().manual_seed(0))
    for step in range(96):
        batch = order[(step * 8) % 256 :][:8]
        model(pixel_values=pixels[batch], labels=labels[batch]).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    held_out, held_out_labels = clips(128, seed=1)
    with torch.no_grad():
        accuracy = (model.eval()(pixel_values=held_out).logits.argmax(-1) == held_out_labels).float().mean()
    assert accuracy > 0.9


def test_drop_path_is_stochastic_in_training_only():
    model = VideoMambaModel(tiny_config(drop_path_rate=0.5))
    assert model.layers[0].drop_path.drop_prob == 0.0 and model.layers[-1].drop_path.drop_prob == 0.5
    x = video()
    model.train()
    torch.manual_seed(1)
    first = model(x).last_hidden_state
    torch.manual_seed(2)
    second = model(x).last_hidden_state
    assert not torch.allclose(first, second)
    model.eval()
    torch.testing.assert_close(model(x).last_hidden_state, model(x).last_hidden_state)
