"""benchmarks/bench_models.py's scaling plot (the benchmarks themselves are scripts, not tests)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import bench_models  # noqa: E402


def test_plot_scaling_writes_a_png_and_skips_failed_measurements(tmp_path):
    pytest.importorskip("matplotlib", reason="the plots need matplotlib (the optional `bench` extra)")
    measurement = {"median_s": 1.0, "min_s": 1.0, "max_s": 1.0, "cpu_s": 1.0, "peak_mb": 10.0}
    results = {
        ("videomamba", "native", False, 8): measurement,
        ("videomamba", "native", False, 16): dict(measurement, cpu_s=2.0, peak_mb=20.0),
        ("videomamba", "native", True, 8): measurement,
        ("videomae", "-", False, 8): measurement,
        ("timesformer", "-", False, 8): {"error": "timed out after 1 s"},
    }
    path = Path(bench_models.plot_scaling(results, "forward", str(tmp_path), threads=1))
    assert path == tmp_path / "scaling_forward.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_variant_labels_name_scan_and_compilation():
    assert bench_models.variant_label("videomae", "-", False) == "videomae"
    assert bench_models.variant_label("videomamba", "native", True) == "videomamba (native, compiled)"


def test_profile_categories_name_the_ops_the_models_run():
    from modeling_videomamba import mixer_fused, native_scan

    scan_op = f"{native_scan.op_namespace(native_scan.__name__)}::native_scan_forward"
    fused_conv = f"{mixer_fused.op_namespace(mixer_fused.__name__)}::conv_silu_both_directions"
    expected = {
        scan_op: "selective scan kernel",
        # the fused conv's name contains "conv": it must not count as a convolution
        fused_conv: "fused conv + SiLU, gate (native)",
        "aten::_scaled_dot_product_flash_attention_for_cpu": "attention (SDPA)",
        "aten::mm": "matmuls",
        "aten::mkldnn_convolution": "convolutions",
        "aten::flip": "copies, flips, cat",
        "aten::silu": bench_models.OTHER_OPS,
    }
    assert {name: bench_models.op_category(name) for name in expected} == expected
