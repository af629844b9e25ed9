"""benchmarks/gpu_check.py's build patch: a kernel package's CUDA build restricted to one architecture."""

import io
import sys
import tarfile
from pathlib import Path

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


def make_sdist(path, setup_py):
    with tarfile.open(path, "w:gz") as archive:
        data = setup_py.encode()
        info = tarfile.TarInfo("kernel_pkg-1.0/setup.py")
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
