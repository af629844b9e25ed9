"""benchmarks/gpu_check.py's build patch: a kernel package's CUDA build restricted to one architecture."""

import argparse
import io
import os
import sys
import tarfile
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import gpu_check  # noqa: E402

# The shape of mamba-ssm's and causal-conv1d's setup.py around their CUDA flags.
SETUP_PY = '''
cc_flag = []
for arch in ("75", "80", "90", "100", "120"):
    cc_flag += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
if True:
    extra_compile_args = {"cxx": ["-O3"], "nvcc": ["-O3", "--use_fast_math"] + cc_flag + ["-lineinfo"]}

    ext_modules.append(dict(name="kernel", extra_compile_args=extra_compile_args))
'''


def make_sdist(path, setup_py, name="kernel_pkg-1.0"):
    with tarfile.open(path, "w:gz") as archive:
        data = setup_py.encode()
        info = tarfile.TarInfo(f"{name}/setup.py")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))


def test_build_is_restricted_to_the_device_architecture(tmp_path):
    sdist = tmp_path / "kernel_pkg-1.0.tar.gz"
    make_sdist(sdist, SETUP_PY)
    source, note = gpu_check.unpack_and_patch(str(sdist), "90", str(tmp_path / "work"))
    assert note == "restricted to sm_90"
    namespace = {"ext_modules": []}
    exec((Path(source) / "setup.py").read_text(), namespace)
    flags = namespace["ext_modules"][0]["extra_compile_args"]["nvcc"]
    assert flags == ["-O3", "--use_fast_math", "-lineinfo", "-gencode", "arch=compute_90,code=sm_90"]


def test_unknown_setup_script_is_built_unchanged_with_a_note(tmp_path):
    sdist = tmp_path / "kernel_pkg-1.0.tar.gz"
    make_sdist(sdist, "print('a different build script')\n")
    source, note = gpu_check.unpack_and_patch(str(sdist), "90", str(tmp_path / "work"))
    assert "could not restrict" in note
    assert (Path(source) / "setup.py").read_text() == "print('a different build script')\n"


def test_newest_sdist_is_found_by_version_not_by_text(tmp_path):
    for name in ("mamba_ssm-2.3.2.tar.gz", "mamba_ssm-2.10.0.tar.gz", "mamba-ssm-2.3.2.post1.tar.gz",
                 "mamba_ssm-2.3.10.tar.gz", "causal_conv1d-9.0.tar.gz"):
        (tmp_path / name).write_bytes(b"")
    assert Path(gpu_check.find_sdist(str(tmp_path), "mamba_ssm")).name == "mamba_ssm-2.10.0.tar.gz"
    (tmp_path / "mamba_ssm-2.10.0.tar.gz").unlink()
    assert Path(gpu_check.find_sdist(str(tmp_path), "mamba_ssm")).name == "mamba_ssm-2.3.10.tar.gz"
    assert gpu_check.find_sdist(str(tmp_path), "flash_attn") is None


def test_build_tools_are_checked_before_a_build():
    assert gpu_check.build_tools_problem("13.0", "13.0", "/venv/bin/ninja") == ""
    assert "CUDA 12.8 but torch was built with CUDA 13.0" in gpu_check.build_tools_problem("12.8", "13.0", "ninja")
    assert "ninja not found" in gpu_check.build_tools_problem("13.0", "13.0", None)
    assert "nvcc not found" in gpu_check.build_tools_problem(None, "13.0", "ninja")
    assert "no CUDA" in gpu_check.build_tools_problem("13.0", None, "ninja")


def test_commands_see_this_interpreters_bin_folder_first(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # a venv's python run without activating the venv
    log = tmp_path / "path.log"
    code, _, tail = gpu_check.run([sys.executable, "-c", "import os; print(os.environ['PATH'])"], str(log), 60)
    assert code == 0
    assert tail[-1].split(os.pathsep)[0] == os.path.dirname(sys.executable)
    assert tail[-1].endswith("/usr/bin:/bin")


class FakeReport:
    def __init__(self):
        self.sections = {}

    def elapsed(self):
        return 0.0

    def add(self, title, lines):
        self.sections[title] = lines


def kernel_args(tmp_path, packages):
    return argparse.Namespace(packages=str(packages), dry_run=False, no_build=False, budget=540, build_budget=300,
                              reserve=150, out=str(tmp_path))


@pytest.fixture
def build_machine(tmp_path, monkeypatch):
    """Kernels not usable yet, both sdists at hand, nvcc 13.0 and ninja found, torch built with CUDA 13.0;
    every command run is recorded instead of run."""
    packages = tmp_path / "packages"
    packages.mkdir()
    for name in ("causal_conv1d-1.7.0", "mamba_ssm-2.3.2.post1"):
        make_sdist(packages / f"{name}.tar.gz", SETUP_PY, name)
    ran = []
    monkeypatch.setattr(gpu_check, "kernels_problem", lambda: "not usable: mamba-ssm (ModuleNotFoundError)")
    monkeypatch.setattr(gpu_check, "nvcc_release", lambda: ("/usr/local/cuda/bin/nvcc", "13.0"))
    monkeypatch.setattr(gpu_check.shutil, "which", lambda name, path=None: f"/venv/bin/{name}")
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    def run(command, log, timeout, env=None):
        ran.append((command, env))
        return 0, 1.0, []

    monkeypatch.setattr(gpu_check, "run", run)
    return packages, ran


def test_kernel_build_keeps_the_cuda_build_whatever_the_environment_says(tmp_path, monkeypatch, build_machine):
    packages, ran = build_machine
    monkeypatch.setenv("MAMBA_SKIP_CUDA_BUILD", "TRUE")  # left over from a CPU-side install
    report = FakeReport()
    gpu_check.step_kernels(kernel_args(tmp_path, packages), report, "90")
    assert [command[-1].rsplit("/", 1)[-1] for command, _ in ran] == ["causal_conv1d-1.7.0", "mamba_ssm-2.3.2.post1"]
    for command, env in ran:
        assert command[1:4] == ["-m", "pip", "install"] and "--no-build-isolation" in command
        # newer mamba-ssm sdists build the CUDA scan only with KEEP; older ones skip it with SKIP=TRUE
        assert env["MAMBA_KEEP_CUDA_BUILD"] == "TRUE" and env["MAMBA_SKIP_CUDA_BUILD"] == "FALSE"
        assert env["CAUSAL_CONV1D_SKIP_CUDA_BUILD"] == "FALSE" and env["MAMBA_FORCE_BUILD"] == "TRUE"


def test_kernel_build_is_skipped_with_the_reason_when_nvcc_and_torch_differ(tmp_path, monkeypatch, build_machine):
    packages, ran = build_machine
    monkeypatch.setattr(gpu_check, "nvcc_release", lambda: ("/usr/local/cuda/bin/nvcc", "12.8"))
    report = FakeReport()
    gpu_check.step_kernels(kernel_args(tmp_path, packages), report, "90")
    assert not ran
    (skipped,) = [line for line in report.sections["mamba-ssm / causal-conv1d"] if "skipped" in line]
    assert "nvcc is CUDA 12.8 but torch was built with CUDA 13.0" in skipped
