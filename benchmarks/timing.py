"""Small timing helpers shared by the benchmark scripts (run them from the repository root)."""

import platform
import statistics
import time

import torch


def time_call(function, repeats: int, warmup: int = 1, sync=None, cpu_times=None):
    """Wall times in seconds of `repeats` calls of `function()` after `warmup` untimed ones.

    If `cpu_times` is a list, the process's CPU time of each call is appended to it: on a shared
    machine it is steadier than wall time (it leaves out time spent descheduled), and with one torch
    thread it equals the wall time of an idle machine.
    """
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        if sync:
            sync()
        start, cpu_start = time.perf_counter(), time.process_time()
        function()
        if sync:
            sync()
        times.append(time.perf_counter() - start)
        if cpu_times is not None:
            cpu_times.append(time.process_time() - cpu_start)
    return times


def summary(times):
    """(median, min, max) of a list of times."""
    return statistics.median(times), min(times), max(times)


def max_relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected|, in float64."""
    expected = expected.detach().double()
    return ((actual.detach().double() - expected).abs().max() / expected.abs().max().clamp_min(1e-30)).item()


def print_table(title: str, header, rows):
    """A plain aligned text table."""
    print(f"\n{title}")
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    for line in [header, ["-" * width for width in widths], *rows]:
        cells = [str(cell).rjust(width) if index else str(cell).ljust(width) for index, (cell, width) in enumerate(zip(line, widths))]
        print("  ".join(cells))


def cpu_model() -> str:
    """The CPU's model name and vector extensions from /proc/cpuinfo (platform's name elsewhere)."""
    try:
        with open("/proc/cpuinfo") as info:
            text = info.read()
    except OSError:
        return platform.processor() or platform.machine()
    fields = {}
    for line in text.splitlines():  # the first CPU's fields
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name") or platform.machine()
    flags = set(fields.get("flags", "").split())
    extensions = [flag for flag in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if flag in flags]
    return f"{name} (family {fields.get('cpu family', '?')}; {', '.join(extensions) or 'no AVX2'})"


def machine_description() -> str:
    import os

    threads = torch.get_num_threads()
    return f"{cpu_model()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {threads} torch threads"
