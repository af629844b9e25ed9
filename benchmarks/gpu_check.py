"""The GPU check in one command: kernels, GPU tests, parity and the model benchmark, one report in $OUT.

Meant for a lent GPU machine without internet (one run of about 9 minutes, see benchmarks/README.md):

1. reports the machine (GPU, compute capability, torch, CUDA, nvcc, triton);
2. installs missing Python packages from --packages (a folder of wheels and sdists carried along) and,
   when mamba-ssm / causal-conv1d are not usable yet and their sdists are in that folder, builds them
   for this GPU's architecture only (skipped, saying so, when the time left is below --build-budget);
3. runs the gpu-marked tests (every GPU scan path: "cuda", "triton" when present, "fast"; fp32 and
   bf16 parity with the original's outputs among them);
4. times VideoMamba-Ti/S/M on each kernel path against VideoMAE and TimeSformer of matching size at
   8/16/32/64 frames in bf16 (forward and training step: clips/s and peak memory) until the budget
   runs out (what did not fit is listed as skipped);
5. writes $OUT/gpu_check.md (the one results table, plus the logs beside it) after every step, so a
   run cut short still leaves its results.

    python benchmarks/gpu_check.py --packages gpu_packages        # on the GPU machine
    python benchmarks/gpu_check.py --dry-run --packages gpu_packages   # anywhere: checks what it can

--dry-run needs no GPU: it checks the scripts compile, the gpu tests collect, every benchmark model
builds (on the meta device), bench_gpu.py runs end to end on CPU (--smoke), the packages folder holds
what a run would install, the sdists' build scripts accept the architecture patch and the build tools
(nvcc of torch's CUDA major, ninja) are there, and writes the plan to $OUT.
"""

import argparse
import glob
import json
import os
import platform
import py_compile
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(REPO, "benchmarks")
sys.path.insert(0, REPO)
sys.path.insert(0, BENCH)

# Imported name -> the distribution to install from the packages folder when missing.
REQUIRED = {
    "transformers": "transformers",
    "safetensors": "safetensors",
    "av": "av",
    "numpy": "numpy",
    "PIL": "pillow",
    "einops": "einops",
    "ninja": "ninja",
    "pytest": "pytest",
    # the kernel builds (--no-build-isolation: the build uses this torch, not a downloaded one)
    "setuptools": "setuptools",
    "wheel": "wheel",
    "packaging": "packaging",
}
KERNEL_SDISTS = ("causal_conv1d", "mamba_ssm")  # built in this order (the small one first)
BUILD_ENV = {
    "MAMBA_FORCE_BUILD": "TRUE",  # no download of a prebuilt wheel (there is no internet)
    "CAUSAL_CONV1D_FORCE_BUILD": "TRUE",
    # mamba-ssm after 2.3.2 builds its CUDA scan only when asked (KEEP); older ones unless told to skip,
    # and a SKIP left in the environment by a CPU-side install must not carry over.
    "MAMBA_KEEP_CUDA_BUILD": "TRUE",
    "MAMBA_SKIP_CUDA_BUILD": "FALSE",
    "CAUSAL_CONV1D_SKIP_CUDA_BUILD": "FALSE",
}


class Report:
    """The markdown report in $OUT, rewritten after every step."""

    def __init__(self, out, dry_run):
        self.out, self.dry_run, self.sections, self.start = out, dry_run, [], time.monotonic()
        os.makedirs(out, exist_ok=True)

    def elapsed(self):
        return time.monotonic() - self.start

    def add(self, title, lines):
        self.sections.append((title, lines))
        print(f"\n== {title} ({self.elapsed():.0f} s)\n" + "\n".join(lines), flush=True)
        self.write()

    def write(self):
        kind = "dry run (no GPU work)" if self.dry_run else "GPU check"
        text = [f"# VideoMamba {kind}", "", f"elapsed: {self.elapsed():.0f} s", ""]
        for title, lines in self.sections:
            text += [f"## {title}", "", *lines, ""]
        with open(os.path.join(self.out, "gpu_check.md"), "w") as handle:
            handle.write("\n".join(text))


def tool_path():
    """PATH with this interpreter's bin folder first: a venv's python run without activating the venv
    would not find the venv's ninja (torch's extension build then compiles one file at a time) nor pip's
    scripts; CUDA_HOME's bin follows, for nvcc."""
    folders = [os.path.dirname(sys.executable)]
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    folders.append(os.path.join(cuda_home, "bin"))
    return os.pathsep.join(folders + [os.environ.get("PATH", "")])


def run(command, log_path, timeout, env=None):
    """Run `command`, output to `log_path`; returns (exit code or "timeout", seconds, last lines)."""
    start = time.monotonic()
    with open(log_path, "w") as log:
        try:
            code = subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, timeout=max(timeout, 1),
                                  env={**os.environ, "PATH": tool_path(), **(env or {})}).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    with open(log_path, errors="replace") as log:
        tail = log.read().splitlines()[-15:]
    return code, time.monotonic() - start, tail


def python_env():
    """PYTHONPATH with the repository first, so this checkout's package is the one imported."""
    return {"PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}


def machine_lines():
    import torch

    lines = [f"- python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda})"]
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        lines.append(f"- GPU: {torch.cuda.get_device_name()} (sm_{major}{minor}), {torch.cuda.device_count()} visible")
    else:
        lines.append("- GPU: none visible")
    nvcc, release = nvcc_release()
    if nvcc:
        lines.append(f"- nvcc: release {release or 'unknown'} ({nvcc})")
    else:
        lines.append("- nvcc: not found (no kernel builds possible)")
    ninja = shutil.which("ninja", path=tool_path())
    lines.append(f"- ninja: {ninja or 'not found (a kernel build would compile one file at a time)'}")
    try:
        import triton

        lines.append(f"- triton {triton.__version__}")
    except ImportError:
        lines.append("- triton: not installed")
    lines.append(f"- CPUs: {os.cpu_count()}")
    return lines


def nvcc_release():
    """(path of nvcc or None, its release such as "13.0" or None)."""
    nvcc = shutil.which("nvcc", path=tool_path())
    if not nvcc:
        return None, None
    try:
        version = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return nvcc, None
    release = re.search(r"release (\d+\.\d+)", version)
    return nvcc, release.group(1) if release else None


def build_tools_problem(nvcc_version, torch_cuda, ninja):
    """Why the kernels cannot be built here ("" when they can): torch's extension build refuses an nvcc
    of another CUDA major than torch's, and without ninja it compiles serially (past any budget)."""
    if torch_cuda is None:
        return "this torch has no CUDA"
    if nvcc_version is None:
        return "nvcc not found (or its version unreadable) on PATH or in CUDA_HOME"
    if nvcc_version.split(".")[0] != torch_cuda.split(".")[0]:
        return f"nvcc is CUDA {nvcc_version} but torch was built with CUDA {torch_cuda} (the majors must match)"
    if not ninja:
        return "ninja not found: the build would compile one file at a time and overrun the budget"
    return ""


def missing_modules():
    import importlib.util

    return [name for name in REQUIRED if importlib.util.find_spec(name) is None]


def sdist_version(path):
    """A sortable version of an sdist file name (name-1.10.0.post2.tar.gz), compared as versions, not text."""
    version = re.sub(r"\.tar\.gz$", "", os.path.basename(path)).rsplit("-", 1)[-1]
    try:
        from packaging.version import InvalidVersion, Version

        try:
            return (1, Version(version), ())
        except InvalidVersion:
            pass
    except ImportError:
        pass
    return (0, None, tuple(int(part) for part in re.findall(r"\d+", version)))


def find_sdist(packages, name):
    """The newest sdist of `name` in `packages` (either spelling of the name), or None."""
    matches = set(glob.glob(os.path.join(packages, f"{name}-*.tar.gz")) + glob.glob(
        os.path.join(packages, f"{name.replace('_', '-')}-*.tar.gz")))
    return max(matches, key=sdist_version) if matches else None


ARCH_PATCH = '''
    # gpu_check.py: build for this GPU's architecture only ({arch})
    _nvcc = extra_compile_args["nvcc"]
    _gencode = {{i for i, flag in enumerate(_nvcc) if flag == "-gencode"}}
    extra_compile_args["nvcc"] = [f for i, f in enumerate(_nvcc) if i not in _gencode and i - 1 not in _gencode]
    extra_compile_args["nvcc"] += ["-gencode", "arch=compute_{arch},code=sm_{arch}"]
'''


def unpack_and_patch(sdist, arch, workdir):
    """Unpack `sdist` into `workdir` and restrict its CUDA build to `arch` (e.g. "90"); returns (dir, note)."""
    with tarfile.open(sdist) as archive:
        try:
            archive.extractall(workdir, filter="data")
        except TypeError:  # Pythons before the extraction filters
            archive.extractall(workdir)
    source = os.path.join(workdir, os.path.basename(sdist)[: -len(".tar.gz")])
    setup_py = os.path.join(source, "setup.py")
    text = open(setup_py).read()
    anchor = re.search(r"^    ext_modules\.append\(", text, re.MULTILINE)
    if anchor is None or 'extra_compile_args = {' not in text:
        return source, "could not restrict the architectures (setup.py changed): building for all"
    text = text[: anchor.start()] + ARCH_PATCH.format(arch=arch) + text[anchor.start():]
    compile(text, setup_py, "exec")  # the patched script must still be valid Python
    with open(setup_py, "w") as handle:
        handle.write(text)
    return source, f"restricted to sm_{arch}"


def kernels_problem():
    """What keeps the mamba-ssm path from running, asked in a fresh interpreter ("" when it runs)."""
    code = "from modeling_videomamba.selective_scan import cuda_kernels_problem; print(cuda_kernels_problem())"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={**os.environ, **python_env()})
    lines = result.stdout.strip().splitlines()
    return (lines[-1] if lines else "") if result.returncode == 0 else f"probe failed: {result.stderr[-300:]}"


def step_packages(args, report):
    lines = []
    missing = missing_modules()
    if missing and args.packages and os.path.isdir(args.packages):
        wanted = [REQUIRED[name] for name in missing]
        if args.dry_run:
            lines.append(f"- would install from {args.packages}: {', '.join(wanted)}")
        else:
            code, seconds, tail = run([sys.executable, "-m", "pip", "install", "--no-index", "--find-links",
                                       args.packages, *wanted], os.path.join(args.out, "pip.log"), 300)
            lines.append(f"- installed {', '.join(wanted)} from {args.packages}: exit {code} ({seconds:.0f} s)")
            missing = missing_modules()
    lines.append(f"- Python packages missing: {', '.join(missing) if missing else 'none'}")
    report.add("Packages", lines)
    return not missing


def step_kernels(args, report, arch):
    lines = []
    problem = kernels_problem() if not args.dry_run else "(not probed in a dry run)"
    if not problem:
        report.add("mamba-ssm / causal-conv1d", ["- already usable: no build needed"])
        return
    lines.append(f"- before: {problem}")
    sdists = {name: find_sdist(args.packages, name) if args.packages else None for name in KERNEL_SDISTS}
    if not all(sdists.values()):
        lines.append(f"- build skipped: sdists not found in {args.packages!r} ({sdists})")
        report.add("mamba-ssm / causal-conv1d", lines)
        return
    import torch

    _, nvcc_version = nvcc_release()
    tools = build_tools_problem(nvcc_version, torch.version.cuda, shutil.which("ninja", path=tool_path()))
    left = args.budget - report.elapsed()
    if not args.dry_run and (args.no_build or tools or left < args.build_budget + args.reserve):
        reason = "--no-build" if args.no_build else (
            tools or f"{left:.0f} s left, a build needs up to {args.build_budget} s")
        lines.append(f"- build skipped ({reason}): the cuda path is not checked or timed in this run")
        report.add("mamba-ssm / causal-conv1d", lines)
        return
    if args.dry_run and tools:
        lines.append(f"- on this machine the build would be skipped: {tools}")
    deadline = time.monotonic() + args.build_budget
    with tempfile.TemporaryDirectory() as workdir:
        for name in KERNEL_SDISTS:
            source, note = unpack_and_patch(sdists[name], arch or "90", workdir)
            lines.append(f"- {os.path.basename(sdists[name])}: {note}")
            if args.dry_run:
                continue
            env = {**BUILD_ENV, "MAX_JOBS": str(os.cpu_count() or 8), "TORCH_CUDA_ARCH_LIST": ""}
            command = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                       source]
            code, seconds, tail = run(command, os.path.join(args.out, f"build_{name}.log"),
                                      deadline - time.monotonic(), env)
            lines.append(f"  build and install: exit {code} in {seconds:.0f} s (log: build_{name}.log)")
            if code != 0:
                lines += ["  " + line for line in tail[-5:]]
                break
    if not args.dry_run:
        problem = kernels_problem()
        lines.append(f"- after: {problem or 'usable'}")
    report.add("mamba-ssm / causal-conv1d", lines)


def step_tests(args, report):
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "-m", "gpu", "-p", "no:cacheprovider", "tests"]
    if args.dry_run:
        command.append("--collect-only")
    code, seconds, tail = run(command, os.path.join(args.out, "gpu_tests.log"), args.test_budget, python_env())
    summary = [line for line in tail if re.search(r"passed|failed|skipped|error|collected|selected", line)]
    report.add("GPU tests (pytest -m gpu: scan paths, fp32 and bf16 parity)",
               [f"- exit {code} in {seconds:.0f} s (log: gpu_tests.log)"] + [f"  {line}" for line in summary[-8:]])


def benchmark_scans():
    """The scan paths to time: the kernel paths usable here, else "fast" (with a reduced plan)."""
    from bench_gpu import gpu_scan_paths

    paths, notes = gpu_scan_paths()
    kernels = [path for path in ("cuda", "triton") if path in paths]
    return kernels or ["fast"], notes


def step_benchmark(args, report):
    results = os.path.join(args.out, "bench.jsonl")
    if args.dry_run:
        import torch
        from bench_models import MODELS, SIZES, build_model

        built = []
        for size in args.sizes:
            for name in MODELS:
                with torch.device("meta"):
                    model = build_model(name, 8, "fast", size)
                built.append(f"{name}-{size} {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M")
        command = [sys.executable, os.path.join(BENCH, "bench_gpu.py"), "--smoke", "--frames", "1", "--repeats", "1",
                   "--modes", "forward", "train", "--scans", "fast"]
        code, seconds, _ = run(command, os.path.join(args.out, "bench_smoke.log"), 300, python_env())
        report.add("Benchmark plan (dry run)", [
            f"- models build: {', '.join(built)}",
            f"- frames {args.frames}, sizes {args.sizes}, forward (eval) and train (train mode), bf16 autocast",
            f"- bench_gpu.py --smoke (CPU, tiny models, every model and mode): exit {code} in {seconds:.0f} s "
            "(log: bench_smoke.log)",
        ])
        return
    scans, notes = benchmark_scans()
    sizes, frames = (args.sizes, args.frames) if scans != ["fast"] else (["tiny"], [8, 16])
    left = args.budget - report.elapsed() - 30
    command = [sys.executable, os.path.join(BENCH, "bench_gpu.py"), "--sizes", *sizes, "--frames", *map(str, frames),
               "--modes", "forward", "train", "--scans", *scans, "--repeats", str(args.repeats),
               "--deadline", str(max(left - 20, 0)), "--json", results, "--skip-check"]
    code, seconds, _ = run(command, os.path.join(args.out, "bench.log"), left, python_env())
    rows = []
    if os.path.exists(results):
        with open(results) as handle:
            rows = [json.loads(line) for line in handle if line.strip()]
    from bench_gpu import results_table

    header, table = results_table(rows)
    lines = [f"- scans timed: {', '.join(scans)}" + (" (no kernel path usable: a reduced plan)" if scans == ["fast"]
                                                     else ""), *[f"- not usable: {note}" for note in notes],
             f"- exit {code} in {seconds:.0f} s (log: bench.log); batch 1, 224x224, fp32 weights under bf16 "
             f"autocast, eval mode for forward, train mode for train; median of {args.repeats} CUDA-synced calls; "
             "peak = max allocated beyond weights and input; last two columns: TimeSformer's time and memory "
             "over the row's (paper's Fig. 1, A100, 64 frames: VideoMamba-Ti 6x and 40x)", "",
             "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in table]
    report.add("Benchmark: VideoMamba vs VideoMAE vs TimeSformer", lines)


def step_compile(report):
    scripts = [os.path.join(BENCH, name) for name in ("bench_gpu.py", "bench_models.py", "timing.py", "gpu_check.py")]
    for script in scripts:
        py_compile.compile(script, doraise=True)
    report.add("Scripts", [f"- compiled: {', '.join(os.path.basename(s) for s in scripts)}"])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="no GPU work: check what can be checked here")
    parser.add_argument("--packages", default=os.environ.get("VIDEOMAMBA_GPU_PACKAGES", "gpu_packages"),
                        help="folder of wheels and the two sdists, carried to the machine (default gpu_packages)")
    parser.add_argument("--out", default=os.environ.get("OUT") or os.path.join(REPO, "gpu_check_out"))
    parser.add_argument("--budget", type=float, default=540, help="seconds for the whole check")
    parser.add_argument("--build-budget", type=float, default=300, help="seconds allowed for the two kernel builds")
    parser.add_argument("--test-budget", type=float, default=150)
    parser.add_argument("--reserve", type=float, default=150, help="seconds kept for tests and timing after a build")
    parser.add_argument("--no-build", action="store_true")
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small", "middle"])
    parser.add_argument("--frames", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    args.packages = os.path.abspath(args.packages) if args.packages else None
    report = Report(args.out, args.dry_run)
    report.add("Machine", machine_lines())
    step_compile(report)
    if not step_packages(args, report) and not args.dry_run:
        report.add("Stopped", ["- required Python packages are missing (see Packages)"])
        raise SystemExit(1)
    import torch

    if not torch.cuda.is_available() and not args.dry_run:
        report.add("Stopped", ["- no CUDA device is visible; use --dry-run on a machine without one"])
        raise SystemExit(1)
    arch = "".join(map(str, torch.cuda.get_device_capability())) if torch.cuda.is_available() else None
    step_kernels(args, report, arch)
    step_tests(args, report)
    step_benchmark(args, report)
    print(f"\nreport: {os.path.join(args.out, 'gpu_check.md')}")


if __name__ == "__main__":
    main()
