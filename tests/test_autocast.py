"""Mixed precision: every head x token order x scan implementation under autocast, and models held in bf16.

Dtype convention checked here (the original's fused path): parameters stay fp32; matmuls run in the
autocast dtype, so logits, last_hidden_state and aligned features come out in it; the scan state and
its exponentials are fp32 inside the scan; the residual stream (`hidden_states`) is fp32 with
`residual_in_fp32`; losses and the video-text similarity are fp32.

Tolerance: each block rounds its activations to the autocast dtype at about 8 stages in series (norm
output, in_proj, conv, x_proj, delta, scan output, gate, out_proj). Independent rounding errors of
relative size eps (the dtype's machine epsilon) add in quadrature, so an output after `depth` blocks
and the head is expected within eps * sqrt(8 * depth + 2) relative (Frobenius) error of the fp32 run;
the test allows 2x that (bf16: eps = 2^-7, bound 0.066 at depth 2). A wrong token order gives O(1)
errors; the bf16 logits measured here are about 0.01 from fp32.

On a CPU without bf16/fp16 matmul instructions (this CI's) the blocks and the patch embedding compute
in fp32 under CPU autocast (`autocast_is_emulated`): the tests of the half-precision path turn that
fallback off (VIDEOMAMBA_CPU_HALF_FALLBACK=0), so they check what a CPU with AVX512-BF16/AMX or a GPU runs;
the fallback has tests of its own at the end.
"""

import math

import pytest
import torch
from transformers import BertConfig

from modeling_videomamba import (
    VideoMambaConfig,
    VideoMambaForImageClassification,
    VideoMambaForPreTraining,
    VideoMambaForVideoClassification,
    VideoMambaModel,
    VideoMambaVideoTextConfig,
    VideoMambaVideoTextModel,
)

blocks = pytest.importorskip("modeling_videomamba.modeling_videomamba_blocks")

ORDERS = ["spatial_first", "temporal_first", "hybrid"]
TINY = dict(image_size=16, patch_size=8, num_frames=2, hidden_size=16, num_hidden_layers=2, dt_init="mamba")
# The Triton interpreter runs each kernel program in Python: the smallest model keeps it to seconds.
TRITON_TINY = dict(TINY, hidden_size=8)


@pytest.fixture(autouse=True)
def half_precision_compute(request, monkeypatch):
    """Half-precision matmuls under CPU autocast whatever this CPU has, unless a test asks for the fallback."""
    if "fallback" not in request.node.name:
        monkeypatch.setenv(blocks.HALF_FALLBACK_ENV_VAR, "0")


def _devices():
    cases = [pytest.param("cpu", torch.bfloat16, id="cpu-bf16")]
    cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
    cases += [pytest.param("cuda", dtype, marks=cuda, id=f"cuda-{dtype}") for dtype in (torch.bfloat16, torch.float16)]
    return cases


def _build(head, order, implementation):
    """(model, inputs, {output name: expected dtype under autocast}) for a tiny model of `head`."""
    sizes = TINY
    config = VideoMambaConfig(**sizes, token_order=order, scan_implementation=implementation, num_labels=3)
    video = torch.randn(2, 2, 3, 16, 16)
    if head == "backbone":
        return VideoMambaModel(config), dict(pixel_values=video), {"last_hidden_state": None, "pooler_output": None}
    if head == "video":
        inputs = dict(pixel_values=video, labels=torch.tensor([0, 2]))
        return VideoMambaForVideoClassification(config), inputs, {"logits": None, "loss": torch.float32}
    if head == "image":
        inputs = dict(pixel_values=torch.randn(2, 3, 16, 16), labels=torch.tensor([0, 2]))
        return VideoMambaForImageClassification(config), inputs, {"logits": None, "loss": torch.float32}
    if head == "pretraining":
        config.teacher_hidden_size = 12
        teacher = torch.nn.functional.normalize(torch.randn(2, 1 + 8, 12), dim=-1)
        inputs = dict(pixel_values=video, teacher_features=teacher)
        return VideoMambaForPreTraining(config), inputs, {"aligned_features": None, "loss": torch.float32}
    text = BertConfig(vocab_size=30, hidden_size=sizes["hidden_size"], num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=32, max_position_embeddings=16)
    model = VideoMambaVideoTextModel(VideoMambaVideoTextConfig(vision_config=config, text_config=text, fusion_layer=1, projection_dim=8))
    inputs = dict(pixel_values=video, input_ids=torch.randint(1, 30, (2, 5)), return_loss=True)
    # The similarity (the retrieval score) is computed in fp32, as the original's evaluation.
    return model, inputs, {"logits_per_video": torch.float32, "video_embeds": None, "loss": torch.float32}


def _cases() -> list:
    # The Triton scan runs on CPU only through its interpreter, about a minute per small model on 2 busy
    # cores: it is checked under autocast by test_scan_reads_and_writes_the_compute_dtype_under_autocast.
    cases = []
    for implementation in ("reference", "fast", "native"):
        for head in ("backbone", "video", "image", "pretraining", "video_text"):
            # Image models have one token order; masked pretraining scans spatial-first only (it says so).
            orders = ORDERS if head in ("backbone", "video", "video_text") else ["spatial_first"]
            for order in orders:
                cases.append(pytest.param(head, order, implementation, id=f"{head}-{order}-{implementation}"))
    return cases


def _tolerance(dtype, depth):
    return 2 * torch.finfo(dtype).eps * math.sqrt(8 * depth + 2)


def _relative_error(value, reference):
    return ((value.float() - reference.float()).norm() / reference.float().norm()).item()


def _run(model, inputs, device, dtype=None):
    """Forward (under autocast when `dtype` is given) and backward of the loss or the outputs' sum."""
    model.zero_grad()
    inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in inputs.items()}
    with torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
        out = model(**inputs, **({"output_hidden_states": True} if "labels" in inputs else {}))
    loss = out.loss if out.get("loss") is not None else out.last_hidden_state.float().square().mean()
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return out, grads


@pytest.mark.parametrize("device, dtype", _devices())
@pytest.mark.parametrize("head, order, implementation", _cases())
def test_autocast_forward_backward_close_to_fp32(head, order, implementation, device, dtype):
    if implementation == "native" and device != "cpu":
        pytest.skip("the native scan is a CPU kernel")
    torch.manual_seed(0)
    model, inputs, expected = _build(head, order, implementation)
    model.to(device).eval()  # no dropout: both runs see the same network
    reference, reference_grads = _run(model, inputs, device)
    out, grads = _run(model, inputs, device, dtype)
    vision = model.config.vision_config if head == "video_text" else model.config
    tolerance = _tolerance(dtype, vision.num_hidden_layers)
    for name, expected_dtype in expected.items():
        value = out[name]
        assert value.dtype == (expected_dtype or dtype), (name, value.dtype)
        assert torch.isfinite(value).all(), name
        if name != "loss":
            assert _relative_error(value, reference[name]) < tolerance, (name, _relative_error(value, reference[name]))
    if out.get("loss") is not None:
        # A loss near its floor has a large relative error; its absolute error scales with the logits'.
        assert abs(out.loss.item() - reference.loss.item()) < tolerance * max(1.0, abs(reference.loss.item()))
    if out.get("hidden_states") is not None:
        assert vision.residual_in_fp32 and all(h.dtype == torch.float32 for h in out.hidden_states)
    assert set(grads) == set(reference_grads) and grads
    for name, parameter in model.named_parameters():
        assert parameter.dtype == torch.float32, name
    flat = torch.cat([grads[n].flatten() for n in sorted(grads)])
    flat_reference = torch.cat([reference_grads[n].flatten() for n in sorted(grads)])
    assert all(g.dtype == torch.float32 for g in grads.values()) and torch.isfinite(flat).all()
    # Gradients pass through twice as many rounded stages (forward and backward): checked with 2x the room.
    assert _relative_error(flat, flat_reference) < 2 * tolerance


@pytest.mark.parametrize("load", ["from_pretrained", "to"])
@pytest.mark.parametrize("order", ORDERS)
def test_model_held_in_bf16_runs_forward_and_backward(order, load, tmp_path):
    """A model loaded with `from_pretrained(..., dtype=torch.bfloat16)` or cast with `.to(torch.bfloat16)`."""
    torch.manual_seed(0)
    model = VideoMambaForVideoClassification(VideoMambaConfig(**TINY, token_order=order, num_labels=3, scan_implementation="fast"))
    video, labels = torch.randn(2, 2, 3, 16, 16), torch.tensor([0, 2])
    with torch.no_grad():
        reference = model(video).logits
    if load == "to":
        model = model.to(torch.bfloat16)
    else:
        model.save_pretrained(tmp_path)
        model = VideoMambaForVideoClassification.from_pretrained(tmp_path, dtype=torch.bfloat16)
        # The SSM parameters stay fp32 when loading in half precision (_keep_in_fp32_modules_strict).
        assert model.videomamba.layers[0].mixer.A_log.dtype == torch.float32
    assert model.classifier.weight.dtype == torch.bfloat16
    out = model(video.to(torch.bfloat16), labels=labels, output_hidden_states=True)
    assert out.logits.dtype == torch.bfloat16 and all(h.dtype == torch.float32 for h in out.hidden_states)
    out.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    # The weights themselves are rounded to bf16 here, unlike autocast: about twice the rounding.
    assert _relative_error(out.logits, reference) < 2 * _tolerance(torch.bfloat16, TINY["num_hidden_layers"])


@pytest.mark.parametrize("implementation", ["fast", "native", "triton"])
def test_scan_reads_and_writes_the_compute_dtype_under_autocast(implementation, monkeypatch):
    """As the original's fused kernel: u, delta, B, C and y in bf16 at the scan's call, the state fp32 inside."""
    seen = []

    def recording(u, delta, A, B, C, **kwargs):
        y, state = scan(u, delta, A, B, C, **kwargs)
        seen.append((u.dtype, delta.dtype, B.dtype, C.dtype, A.dtype, y.dtype, state.dtype))
        return y, state

    scan = blocks.selective_scan_tokens_first
    monkeypatch.setattr(blocks, "selective_scan_tokens_first", recording)
    sizes = dict(TRITON_TINY, num_hidden_layers=1) if implementation == "triton" else TINY
    model = VideoMambaModel(VideoMambaConfig(**sizes, scan_implementation=implementation))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.randn(1, 2, 3, 16, 16)).last_hidden_state.float().sum().backward()
    bf16, fp32 = torch.bfloat16, torch.float32
    assert seen and all(dtypes == (bf16, bf16, bf16, bf16, fp32, bf16, fp32) for dtypes in seen), seen


def _matmul_input_dtypes(model):
    """Records the output dtype (the dtype it computed in) of every in_proj and of the patch embedding's conv."""
    seen = []
    for name, module in model.named_modules():
        if name.endswith("in_proj") or name.endswith("patch_embeddings.projection"):
            kind = "conv" if "patch" in name else "in_proj"
            module.register_forward_hook(lambda m, args, out, kind=kind: seen.append((kind, out.dtype)))
    return seen


@pytest.mark.parametrize("has_instructions", [False, True], ids=["without", "with"])
def test_cpu_fallback_computes_in_fp32_where_half_matmuls_are_emulated(has_instructions, monkeypatch):
    """CPU autocast on a CPU without bf16 matmuls (AVX2-only x86): blocks and patch embedding in fp32, outputs
    still in autocast's dtype, gradients fp32; with the instructions, the half-precision path as before."""
    monkeypatch.setattr(blocks, "cpu_has_half_matmuls", lambda dtype: has_instructions)
    torch.manual_seed(0)
    model = VideoMambaForVideoClassification(VideoMambaConfig(**TINY, token_order="hybrid", num_labels=3)).eval()
    video, labels = torch.randn(2, 2, 3, 16, 16), torch.tensor([0, 2])
    reference = model(video).logits
    seen = _matmul_input_dtypes(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(video, labels=labels, output_hidden_states=True)
    out.loss.backward()
    compute = torch.bfloat16 if has_instructions else torch.float32
    assert {kind for kind, _ in seen} == {"conv", "in_proj"} and all(dtype == compute for _, dtype in seen), seen
    assert out.logits.dtype == torch.bfloat16 and all(h.dtype == torch.float32 for h in out.hidden_states)
    assert all(p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in model.parameters())
    error = _relative_error(out.logits, reference)
    if has_instructions:
        assert error < _tolerance(torch.bfloat16, TINY["num_hidden_layers"])
    else:
        # Only the final norm's output and the head are rounded to bf16: a few eps, not eps * sqrt(8 * depth).
        assert error < 3 * torch.finfo(torch.bfloat16).eps, error


def test_cpu_fallback_off_by_environment_and_off_outside_cpu_autocast(monkeypatch):
    probe = blocks.cpu_has_half_matmuls
    assert isinstance(probe(torch.bfloat16), bool) and isinstance(probe(torch.float16), bool) and probe(torch.float32)
    monkeypatch.setattr(blocks, "cpu_has_half_matmuls", lambda dtype: False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert blocks.autocast_is_emulated(torch.device("cpu"))
        assert not blocks.autocast_is_emulated(torch.device("meta"))
        monkeypatch.setenv(blocks.HALF_FALLBACK_ENV_VAR, "0")
        assert not blocks.autocast_is_emulated(torch.device("cpu"))
    monkeypatch.delenv(blocks.HALF_FALLBACK_ENV_VAR)
    assert not blocks.autocast_is_emulated(torch.device("cpu"))  # no autocast
