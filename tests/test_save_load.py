"""Every model class survives save_pretrained -> from_pretrained (concrete and Auto classes, fp32 and bf16)
and computes what the saved model computed; models built in half precision keep the SSM parameters in fp32."""

import copy

import pytest
import torch
from transformers import AutoModel, AutoModelForImageClassification, AutoModelForPreTraining, AutoModelForVideoClassification

from modeling_videomamba import (
    VideoMambaConfig,
    VideoMambaForImageClassification,
    VideoMambaForPreTraining,
    VideoMambaForVideoClassification,
    VideoMambaModel,
)
from modeling_videomamba.masking import generate_mask

# The pure-PyTorch scan: loading does not depend on the scan path, and the native one may need compiling first.
TINY = dict(
    image_size=32, patch_size=8, num_frames=4, hidden_size=32, num_hidden_layers=3, num_labels=3, teacher_hidden_size=24,
    scan_implementation="fast",
)
GRID = (4, 4, 4)
SSM_PARAMETERS = ("A_log", "A_b_log", "D", "D_b")
MODELS = {
    "base": (VideoMambaModel, AutoModel),
    "video": (VideoMambaForVideoClassification, AutoModelForVideoClassification),
    "image": (VideoMambaForImageClassification, AutoModelForImageClassification),
    "pretraining": (VideoMambaForPreTraining, AutoModelForPreTraining),
}


def _perturbed(model):
    """Random non-default values in every parameter, so a weight that is not loaded (or re-initialised) shows."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


def _inputs(kind):
    generator = torch.Generator().manual_seed(1)
    if kind == "image":
        return {"pixel_values": torch.randn(2, 3, 32, 32, generator=generator), "labels": torch.tensor([0, 2])}
    inputs = {"pixel_values": torch.randn(2, 4, 3, 32, 32, generator=generator)}
    if kind == "video":
        inputs["labels"] = torch.tensor([1, 2])
    if kind == "pretraining":
        mask = generate_mask("tube", 2, GRID, 0.5, generator=torch.Generator().manual_seed(2))
        inputs["bool_masked_pos"] = mask
        inputs["teacher_features"] = torch.randn(2, 1 + 64, 24, generator=generator)
    return inputs


def _outputs(model, kind):
    """Every tensor the model returns for `kind`'s inputs, with hidden states, by name."""
    inputs = _inputs(kind)
    for name in ("pixel_values", "teacher_features"):
        if name in inputs:
            inputs[name] = inputs[name].to(model.dtype)
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    tensors = {name: value for name, value in out.items() if torch.is_tensor(value)}
    tensors.update({f"hidden_states.{i}": h for i, h in enumerate(out.hidden_states)})
    expected = {
        "base": {"last_hidden_state", "pooler_output"},
        "video": {"loss", "logits"},
        "image": {"loss", "logits"},
        "pretraining": {"loss", "aligned_features", "bool_masked_pos"},
    }[kind]
    assert expected <= tensors.keys() and len(out.hidden_states) == TINY["num_hidden_layers"] + 1
    return tensors


def _cast_like_the_loader(model, dtype):
    """What from_pretrained(dtype=) should give: `model` in `dtype`, except the SSM parameters (their fp32
    values) and the buffers (not saved; built in their own dtype)."""
    cast = copy.deepcopy(model).to(dtype)
    originals = dict(model.named_parameters())
    with torch.no_grad():
        for name, parameter in cast.named_parameters():
            if name.rsplit(".", 1)[-1] in SSM_PARAMETERS:
                parameter.data = originals[name].detach().clone()
        for name, buffer in model.named_buffers():
            module_name, _, buffer_name = name.rpartition(".")
            setattr(cast.get_submodule(module_name), buffer_name, buffer.clone())
    return cast


def _assert_all_finite(model, outputs):
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        assert torch.isfinite(tensor).all(), f"reloaded {name} is not finite"
    for name, tensor in outputs.items():
        assert not tensor.is_floating_point() or torch.isfinite(tensor).all(), f"output {name} is not finite"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """{kind: (the saved model, its directory)}."""
    result = {}
    for kind, (model_class, _) in MODELS.items():
        torch.manual_seed(0)
        config = VideoMambaConfig(**TINY, modality="image" if kind == "image" else "video")
        model = _perturbed(model_class(config))
        directory = tmp_path_factory.mktemp(kind)
        model.save_pretrained(directory)
        result[kind] = (model, directory)
    return result


@pytest.mark.parametrize("through_auto", [False, True], ids=["class", "auto"])
@pytest.mark.parametrize("kind", list(MODELS))
def test_reload_in_fp32_computes_the_same_outputs(saved, kind, through_auto):
    model, directory = saved[kind]
    loader = MODELS[kind][1] if through_auto else MODELS[kind][0]
    reloaded = loader.from_pretrained(directory).eval()
    assert type(reloaded) is MODELS[kind][0]
    expected, actual = _outputs(model, kind), _outputs(reloaded, kind)
    _assert_all_finite(reloaded, actual)
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=0, msg=name)
    for name, buffer in model.named_buffers():
        torch.testing.assert_close(reloaded.get_buffer(name), buffer, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("through_auto", [False, True], ids=["class", "auto"])
@pytest.mark.parametrize("kind", list(MODELS))
def test_reload_in_bf16_keeps_ssm_parameters_in_fp32_and_matches_the_cast_model(saved, kind, through_auto):
    model, directory = saved[kind]
    loader = MODELS[kind][1] if through_auto else MODELS[kind][0]
    reloaded = loader.from_pretrained(directory, dtype=torch.bfloat16).eval()
    for name, parameter in reloaded.named_parameters():
        wanted = torch.float32 if name.rsplit(".", 1)[-1] in SSM_PARAMETERS else torch.bfloat16
        assert parameter.dtype == wanted, f"{name} is {parameter.dtype}, expected {wanted}"
    actual = _outputs(reloaded, kind)
    _assert_all_finite(reloaded, actual)
    # The same computation as the saved model cast the way the loader casts: equal to the last bit.
    expected = _outputs(_cast_like_the_loader(model, torch.bfloat16), kind)
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=0, msg=name)
    # And close to the fp32 model, within bf16 rounding.
    full = _outputs(model, kind)
    for name in ("logits", "last_hidden_state", "aligned_features", "loss"):
        if name in full:
            torch.testing.assert_close(actual[name].float(), full[name], rtol=0.05, atol=0.05, msg=name)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_models_built_in_half_precision_hold_ssm_parameters_in_fp32(dtype):
    config = VideoMambaConfig(**TINY, dtype=dtype)
    for model in (
        AutoModel.from_config(config),
        VideoMambaForVideoClassification._from_config(VideoMambaConfig(**TINY), dtype=dtype),
        AutoModelForPreTraining.from_config(config),
    ):
        mixer = model.videomamba.layers[0].mixer if hasattr(model, "videomamba") else model.layers[0].mixer
        assert mixer.in_proj.weight.dtype == dtype
        assert {getattr(mixer, name).dtype for name in SSM_PARAMETERS} == {torch.float32}
        # The fresh initialisation holds exactly in fp32: A_log[:, n] = log(n + 1).
        expected = torch.log(torch.arange(1, config.state_size + 1, dtype=torch.float32)).expand_as(mixer.A_log)
        torch.testing.assert_close(mixer.A_log, expected, rtol=0, atol=0)
        outputs = model.eval()(torch.randn(1, 4, 3, 32, 32, dtype=dtype))
        assert all(torch.isfinite(v).all() for v in outputs.values() if torch.is_tensor(v) and v.is_floating_point())
