"""ONNX export: the exportable scan against the sequential reference, and onnxruntime against eager torch."""

import functools
import importlib.util

import pytest
import torch

from modeling_videomamba import VideoMambaConfig, VideoMambaForImageClassification, VideoMambaForVideoClassification
from modeling_videomamba.export import ClassifierLogits, export_onnx, main, onnxruntime_session, relative_difference
from modeling_videomamba.selective_scan import selective_scan, selective_scan_reference
from test_selective_scan import CASES, assert_close_relative, make_inputs, run_scan

EXPORT_EXTRA = ("onnx", "onnxscript", "onnxruntime")
MISSING = [name for name in EXPORT_EXTRA if importlib.util.find_spec(name) is None]
needs_export_extra = pytest.mark.skipif(
    bool(MISSING), reason=f"needs the optional `export` extra (pip install .[export]); missing: {', '.join(MISSING)}"
)
TINY = dict(image_size=32, patch_size=8, num_frames=4, hidden_size=32, num_labels=3)
export_scan_fn = functools.partial(selective_scan, implementation="export")


@pytest.mark.parametrize("batch,dim,length,state,groups,use,softplus,last_state", CASES[::2])
def test_export_scan_matches_reference(batch, dim, length, state, groups, use, softplus, last_state):
    inputs = make_inputs(batch, dim, length, state, groups)
    with torch.no_grad():
        out = run_scan(export_scan_fn, inputs, use, softplus, last_state)
        expected = run_scan(selective_scan_reference, inputs, use, softplus, last_state)
    for actual, reference in zip(out if last_state else (out,), expected if last_state else (expected,)):
        assert_close_relative(actual, reference, 1e-5, "export scan")


def test_export_scan_stays_finite_with_strong_decay():
    # decays summing to -1e4 over the sequence: a closed form exp(cumsum) would overflow float32 here.
    inputs = make_inputs(1, 4, 64, 3, None)
    inputs["delta"] = inputs["delta"].abs() * 20 + 10
    inputs["A"] = inputs["A"] * 10
    with torch.no_grad():
        y, state = run_scan(export_scan_fn, inputs, ("D",), False, True)
        ref_y, ref_state = run_scan(selective_scan_reference, inputs, ("D",), False, True)
    assert torch.isfinite(y).all() and torch.isfinite(state).all()
    assert_close_relative(y, ref_y, 1e-5, "y")
    assert_close_relative(state, ref_state, 1e-5, "last state")


def test_model_with_export_scan_matches_reference_scan():
    torch.manual_seed(0)
    model = VideoMambaForVideoClassification(VideoMambaConfig(**TINY, token_order="hybrid")).eval()
    x = torch.randn(2, 4, 3, 32, 32)
    logits = {}
    for implementation in ("reference", "export"):
        model.config.scan_implementation = implementation
        with torch.no_grad():
            logits[implementation] = model(x).logits
    torch.testing.assert_close(logits["export"], logits["reference"], rtol=1e-5, atol=1e-6)


def _assert_plain_onnx(path):
    """The file holds ordinary ONNX ops and the scan as ONNX's Scan loop, nothing onnxruntime would need a library for."""
    import onnx

    model = onnx.load(str(path))
    local_functions = {function.domain for function in model.functions}
    domains = {node.domain for node in model.graph.node} - local_functions
    assert domains <= {"", "ai.onnx"}, f"custom op domains in the graph: {domains}"
    op_types = {node.op_type for node in model.graph.node}
    assert "Scan" in op_types, sorted(op_types)


def _assert_runtime_matches_eager(session, eager, frames, batches=(1, 3)):
    for batch in batches:
        x = torch.randn(batch, frames, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            expected = eager(x)
        (logits,) = session.run(["logits"], {"pixel_values": x.numpy()})
        assert logits.shape == (batch, 3)
        assert relative_difference(logits, expected) < 1e-4, (batch, relative_difference(logits, expected))


@needs_export_extra
def test_onnxruntime_matches_eager_hybrid_order(tmp_path):
    # Two hybrid layers: a spatial-first and a temporal-first scan in one graph (each export costs ~7 s
    # of CPU, so the pure orders are not exported separately; the command test below is spatial-first).
    torch.manual_seed(0)
    config = VideoMambaConfig(**TINY, num_hidden_layers=2, token_order="hybrid", scan_implementation="fast")
    model = VideoMambaForVideoClassification(config).eval()
    path = export_onnx(model, tmp_path / "model.onnx")
    assert model.config.scan_implementation == "fast", "the export restores the model's scan"
    _assert_plain_onnx(path)
    # One file, batch 1 and 3 (the batch is dynamic), against the model's own (fast) scan.
    _assert_runtime_matches_eager(onnxruntime_session(path, threads=1), ClassifierLogits(model), frames=4)


@needs_export_extra
def test_export_command_at_another_frame_count(tiny_model_dir, tmp_path, capsys):
    # The saved tiny classifier (spatial-first, 4 frames) exported at 6 frames, checked by the command itself.
    path = tmp_path / "six_frames.onnx"
    assert main(["--model", str(tiny_model_dir), "--onnx", str(path), "--num-frames", "6", "--check"]) == 0
    assert "max relative difference" in capsys.readouterr().out
    _assert_plain_onnx(path)
    session = onnxruntime_session(path)
    assert session.get_inputs()[0].shape[1:] == [6, 3, 32, 32]
    model = VideoMambaForVideoClassification.from_pretrained(tiny_model_dir).eval()
    _assert_runtime_matches_eager(session, ClassifierLogits(model, num_frames=6), frames=6)


def test_export_refuses_frame_counts_it_cannot_use(tmp_path):
    model = VideoMambaForVideoClassification(VideoMambaConfig(**TINY, num_hidden_layers=1))
    with pytest.raises(ValueError, match="positive number of frames; got 0"):
        export_onnx(model, tmp_path / "x.onnx", num_frames=0)
    image_model = VideoMambaForImageClassification(VideoMambaConfig(**TINY, num_hidden_layers=1))
    with pytest.raises(ValueError, match="applies to video models"):
        export_onnx(image_model, tmp_path / "x.onnx", num_frames=8)
