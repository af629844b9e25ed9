"""benchmarks/bench_gpu.py run as on a GPU, on CPU with tiny models (--smoke): autocast, train mode, the table."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import bench_gpu  # noqa: E402


def test_smoke_run_times_each_model_under_autocast_in_the_right_mode(monkeypatch, capsys):
    seen = []  # per model call: (model, mode asked, training, autocast on, autocast dtype, parameter dtypes)
    real_build = bench_gpu.build_model

    def build(name, frames, scan, size, overrides):
        model = real_build(name, frames, scan, size, overrides)

        def record(module, args):
            seen.append((name, module.training, torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"),
                         {p.dtype for p in module.parameters()}))

        model.register_forward_pre_hook(record)
        return model

    monkeypatch.setattr(bench_gpu, "build_model", build)
    rows = bench_gpu.main(["--smoke", "--frames", "1", "--repeats", "1", "--modes", "forward", "train",
                           "--scans", "fast"])
    assert [(row["name"], row["mode"], row["status"]) for row in rows] == [
        (name, mode, "ok") for mode in ("forward", "train") for name in ("videomamba", "videomae", "timesformer")
    ]
    # 3 calls per measurement (2 warm-up, 1 timed), in the plan's order.
    assert [(name, training) for name, training, *_ in seen] == [
        (name, mode == "train") for mode in ("forward", "train")
        for name in ("videomamba", "videomae", "timesformer") for _ in range(3)
    ]
    for name, _, autocast, dtype, parameter_dtypes in seen:
        assert autocast and dtype == torch.bfloat16, f"{name} not run under bf16 autocast"
        assert parameter_dtypes == {torch.float32}, f"{name}'s weights were cast: {parameter_dtypes}"
    printed = capsys.readouterr().out
    header = next(line for line in printed.splitlines() if line.startswith("model "))
    for column in ("mode", "frames", "median ms", "clips/s", "peak MB", "status", "speed vs TimeSformer",
                   "memory vs TimeSformer"):
        assert column in header
    assert "VideoMamba-Ti (fast)" in printed and "TimeSformer-Ti" in printed


def test_float32_runs_without_autocast(monkeypatch):
    enabled = []
    real_build = bench_gpu.build_model

    def build(*args):
        model = real_build(*args)
        model.register_forward_pre_hook(lambda module, inputs: enabled.append(torch.is_autocast_enabled("cpu")))
        return model

    monkeypatch.setattr(bench_gpu, "build_model", build)
    bench_gpu.main(["--smoke", "--frames", "1", "--repeats", "1", "--modes", "forward", "--models", "videomae",
                    "--dtype", "float32"])
    assert enabled == [False] * 3


def test_timesformer_sdpa_attention_matches_eager():
    torch.manual_seed(0)
    model = bench_gpu.build_model("timesformer", 2, size="tiny", overrides=bench_gpu.SMOKE_OVERRIDES)
    pixel_values = torch.randn(1, 2, 3, 32, 32)
    with torch.no_grad():
        eager = model(pixel_values).last_hidden_state
        sdpa = bench_gpu.use_sdpa_attention(model)(pixel_values).last_hidden_state
    torch.testing.assert_close(sdpa, eager, rtol=1e-5, atol=1e-5)


def test_table_compares_each_row_with_the_timesformer_of_its_size_mode_and_frames():
    def row(name, size, frames, median_ms, peak_mb):
        return {"model": name, "name": name, "size": size, "mode": "train", "frames": frames, "status": "ok",
                "median_ms": median_ms, "clips_per_s": 1e3 / median_ms, "peak_mb": peak_mb}

    rows = [row("videomamba", "tiny", 64, 10.0, 5.0), row("timesformer", "tiny", 64, 60.0, 200.0),
            row("timesformer", "tiny", 8, 1.0, 1.0), row("videomamba", "small", 64, 10.0, 5.0),
            {"model": "videomae", "mode": "train", "frames": 64, "status": "OOM"}]
    header, table = bench_gpu.results_table(rows)
    columns = [header.index("speed vs TimeSformer"), header.index("memory vs TimeSformer")]
    assert [[line[i] for i in columns] for line in table] == [
        ["6.0x", "40.0x"], ["1.0x", "1.0x"], ["1.0x", "1.0x"], ["-", "-"], ["-", "-"],
    ]
