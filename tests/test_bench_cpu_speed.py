"""The CPU benchmarks' helpers: alternated timing (bench_cpu_speed.py) and the CPU's name (timing.py) (the benchmark itself is a script)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import bench_cpu_speed  # noqa: E402
import timing  # noqa: E402


def test_alternate_swaps_the_order_every_repeat_and_returns_medians():
    order = []
    calls = {name: (lambda name=name: order.append(name)) for name in ("a", "b", "c")}
    medians = bench_cpu_speed.alternate(calls, repeats=3, warmup=1)
    assert order == list("abc") + list("abc") + list("cba") + list("abc")
    assert set(medians) == {"a", "b", "c"} and all(value >= 0 for value in medians.values())


def test_cpu_model_names_the_cpu_and_its_vector_extensions(monkeypatch, tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nmodel name\t: Test CPU 9000\ncpu family\t: 25\nflags\t\t: fpu avx2 avx512f\n\n"
        "processor\t: 1\nmodel name\t: other\n"
    )
    real_open = open

    def fake_open(path, *args, **kwargs):
        return real_open(info if path == "/proc/cpuinfo" else path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", fake_open)
    assert timing.cpu_model() == "Test CPU 9000 (family 25; avx2, avx512f)"


def test_peak_memory_row_is_the_per_frame_growth_from_8_to_64_frames(monkeypatch):
    # VideoMamba linear in frames (10 MB a frame), VideoMAE twice as much per frame at 64
    peaks = {("videomamba", 8): 80.0, ("videomamba", 64): 640.0, ("videomae", 8): 100.0, ("videomae", 64): 1600.0}
    seen = []

    def child(name, frames, mode, repeats, threads, timeout):
        seen.append((name, frames, mode, threads))
        return {"peak_mb": peaks[name, frames]}

    monkeypatch.setattr(bench_cpu_speed, "run_child", child)
    assert bench_cpu_speed.peak_memory(2) == "1.00 (80 -> 640 MB; VideoMAE 2.00, 100 -> 1600 MB)"
    assert {mode for *_, mode, _ in seen} == {"forward"} and {threads for *_, threads in seen} == {2} and len(seen) == 4
    monkeypatch.setattr(bench_cpu_speed, "run_child", lambda *args, **kwargs: {"error": "timed out after 1800 s"})
    assert bench_cpu_speed.peak_memory(2).startswith("- (videomamba, 8 frames: timed out")
