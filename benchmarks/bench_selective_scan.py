"""Selective-scan speed on CPU: our fast scan vs our reference vs transformers' Mamba fallback vs mambapy.

All columns compute the same function, the full mamba-ssm contract (delta bias + softplus, D, z gate),
one scan direction, batch 1, fp32, d_inner 384, state 16 (VideoMamba-Ti's mixer):

- fast:         modeling_videomamba.selective_scan.selective_scan_fast
- reference:    modeling_videomamba.selective_scan.selective_scan_reference (the plain recurrence)
- transformers: transformers' own `mamba_selective_scan` (models/mamba/modeling_mamba.py), the
                sequential-loop fallback MambaMixer runs without mamba-ssm, called directly
- mambapy:      the same transformers function with use_mambapy=True, i.e. mambapy's Blelloch `pscan`
                (`pip install mambapy`; the column is skipped with a note when it is missing)

Times are wall-clock medians over --repeats calls after a warm-up, plus the process's CPU time
(steadier on a shared machine; with --threads 1 it is the wall time of an idle machine). Errors are max |x - x_ref| / max |x_ref| against the reference, over y (forward) or over y and every
input gradient (forward+backward). transformers' loop has an O(L^2) backward (each step's indexing
allocates a full-size gradient), so its forward+backward runs only with --slow-backward.

    python benchmarks/bench_selective_scan.py                      # L = 1569 and 6273, 5 repeats
    python benchmarks/bench_selective_scan.py --lengths 1569 --repeats 3 --threads 1
"""

import argparse
import importlib.util
import os
import sys
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from timing import machine_description, max_relative_error, print_table, summary, time_call  # noqa: E402

from modeling_videomamba.selective_scan import selective_scan_fast, selective_scan_reference  # noqa: E402

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def transformers_scan(use_mambapy):
    from transformers.models.mamba.modeling_mamba import mamba_selective_scan

    def scan(u, delta, A, B, C, D, z, delta_bias):
        return mamba_selective_scan(
            u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=True, use_mambapy=use_mambapy
        )

    return scan


def ours(function):
    def scan(u, delta, A, B, C, D, z, delta_bias):
        return function(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=True)

    return scan


def make_inputs(length, dim, state, seed=0):
    generator = torch.Generator().manual_seed(seed)
    randn = lambda *shape: torch.randn(*shape, generator=generator)  # noqa: E731
    return {
        "u": randn(1, dim, length),
        "delta": randn(1, dim, length) * 0.5,
        "A": -torch.arange(1, state + 1, dtype=torch.float32).repeat(dim, 1),  # Mamba's initial A
        "B": randn(1, state, length),
        "C": randn(1, state, length),
        "D": torch.ones(dim),
        "z": randn(1, dim, length),
        "delta_bias": randn(dim) * 0.5 - 2.0,
    }


def forward_and_grads(scan, inputs, with_backward):
    """y, and with_backward also the input gradients of sum(y * w) for a fixed random w."""
    if not with_backward:
        with torch.no_grad():
            return [scan(**inputs)]
    leaves = {name: tensor.detach().clone().requires_grad_() for name, tensor in inputs.items()}
    y = scan(**leaves)
    weight = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad((y * weight).sum(), [leaves[name] for name in NAMES])
    return [y.detach(), *grads]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1569, 6273])
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--state", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--slow-backward", action="store_true", help="also time transformers' O(L^2) backward")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")

    columns = {"fast": ours(selective_scan_fast), "reference": ours(selective_scan_reference)}
    columns["transformers"] = transformers_scan(use_mambapy=False)
    if importlib.util.find_spec("mambapy") is not None:
        columns["mambapy"] = transformers_scan(use_mambapy=True)
    else:
        print("note: mambapy is not installed (pip install mambapy); its column is skipped")
    print(f"machine: {machine_description()}; batch 1, dim {args.dim}, state {args.state}, fp32")

    for length in args.lengths:
        inputs = make_inputs(length, args.dim, args.state)
        for with_backward in (False, True):
            mode = "forward+backward" if with_backward else "forward"
            expected = forward_and_grads(columns["reference"], inputs, with_backward)
            rows, fast_median, fast_cpu = [], None, None
            for name, scan in columns.items():
                if with_backward and name == "transformers" and not args.slow_backward:
                    rows.append([name, "-", "-", "-", "-", "-", "-", "skipped: O(L^2) backward (--slow-backward)"])
                    continue
                outputs = forward_and_grads(scan, inputs, with_backward)
                error = max(max_relative_error(a, e) for a, e in zip(outputs, expected))
                cpu_times = []
                times = time_call(lambda: forward_and_grads(scan, inputs, with_backward), args.repeats, cpu_times=cpu_times)
                median, low, high = (1e3 * t for t in summary(times))
                cpu = 1e3 * summary(cpu_times)[0]
                fast_median, fast_cpu = fast_median or median, fast_cpu or cpu
                rows.append([
                    name, f"{median:.1f}", f"{low:.1f}", f"{high:.1f}", f"{median / fast_median:.1f}x",
                    f"{cpu:.1f}", f"{cpu / fast_cpu:.1f}x", f"{error:.1e}",
                ])
            header = ["scan", "median ms", "min ms", "max ms", "vs fast", "cpu median ms", "vs fast (cpu)",
                      "max rel err vs reference"]
            print_table(f"L={length} {mode}", header, rows)


if __name__ == "__main__":
    main()
