"""The compiled CPU selective scan ("native") against the plain sequential recurrence, and its fallback."""

import fcntl
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from test_selective_scan import (
    BLOCK,
    CASES,
    OPTIONAL,
    assert_close_relative,
    assert_compiled_model_matches_eager,
    assert_matches_reference,
    assert_model_matches_reference_scan,
    make_inputs,
    outputs_and_grads,
    tokens_first_core_inputs,
)

from modeling_videomamba import native_scan
from modeling_videomamba.selective_scan import (
    resolve_implementation,
    selective_scan,
    selective_scan_fast,
    selective_scan_reference,
    selective_scan_tokens_first,
)

scan_module = importlib.import_module("modeling_videomamba.selective_scan")
REPO_ROOT = Path(__file__).resolve().parent.parent


def native(*args, **kwargs):
    return selective_scan_fast(*args, **kwargs, implementation="native")


@pytest.fixture
def fresh_state(monkeypatch):
    """A process that has not tried to build yet (restored after the test)."""
    monkeypatch.setattr(native_scan, "_module", None)
    monkeypatch.setattr(native_scan, "_failure", None)
    monkeypatch.delenv(native_scan.ENV_VAR, raising=False)


# Checkpoints every 5 tokens make the short CASES span several backward blocks with ragged tails.
@pytest.mark.parametrize("checkpoint_every", [5, native_scan.CHECKPOINT_EVERY])
@pytest.mark.parametrize("batch,dim,length,state,groups,use,softplus,last_state", CASES)
def test_native_matches_reference_fp32(
    built, monkeypatch, checkpoint_every, batch, dim, length, state, groups, use, softplus, last_state
):
    monkeypatch.setattr(native_scan, "CHECKPOINT_EVERY", checkpoint_every)
    inputs = make_inputs(batch, dim, length, state, groups)
    assert_matches_reference(native, inputs, use, softplus, last_state)


def test_native_wide_channels_several_tiles(built):
    # dim 2 x 37 channels: each group is two full 16-lane tiles plus a ragged 5-lane one; 150 tokens
    # span three default checkpoint blocks.
    inputs = make_inputs(2, 74, 150, 16, 2, seed=5)
    assert_matches_reference(native, inputs, OPTIONAL, True, True)


@pytest.mark.parametrize("dim", [74, 8], ids=["more-tiles-than-threads", "fewer-tiles-than-threads"])
def test_native_backward_partial_sums_over_threads(built, dim):
    # grad_B/grad_C are summed from per-thread slices (3 tiles per group, 2 threads) or per-tile ones
    # (1 tile, 2 threads); either way every channel's contribution is counted once.
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        inputs = make_inputs(3, dim, 40, 16, 2, seed=6)
        assert_matches_reference(native, inputs, OPTIONAL, True, True)
    finally:
        torch.set_num_threads(threads)


def test_native_float64_gradcheck(built, monkeypatch):
    monkeypatch.setattr(native_scan, "CHECKPOINT_EVERY", 3)
    inputs = make_inputs(2, 4, 7, 2, 2, dtype=torch.float64, seed=3)
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]
    leaves = [inputs[name].requires_grad_() for name in names]

    def scan(*tensors):
        return native(**dict(zip(names, tensors)), delta_softplus=True, return_last_state=True)

    y, last = scan(*leaves)
    assert y.dtype == torch.float64 and last.dtype == torch.float64
    assert torch.autograd.gradcheck(scan, leaves, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_native_half_inputs_upcast(built):
    inputs = make_inputs(2, 8, BLOCK + 9, 4, 2, dtype=torch.bfloat16)
    out, _ = outputs_and_grads(native, inputs, OPTIONAL, True, True)
    ref_out, _ = outputs_and_grads(selective_scan_reference, inputs, OPTIONAL, True, True)
    assert out[0].dtype == torch.bfloat16 and out[1].dtype == torch.float32
    assert_close_relative(out[0], ref_out[0], 1e-2, "y")
    assert_close_relative(out[1], ref_out[1], 1e-5, "last state")


def test_native_forward_without_grad_keeps_no_checkpoints(built):
    inputs = make_inputs(1, 8, 20, 4, 1)
    u, delta = (inputs[name].transpose(1, 2).reshape(1, 20, 1, 8).contiguous() for name in ("u", "delta"))
    A = inputs["A"].t().reshape(1, 4, 8).contiguous()
    B, C = (inputs[name].permute(0, 3, 1, 2).contiguous() for name in ("B", "C"))
    none = (torch.empty(0), torch.empty(0))  # no D, no delta_bias
    y, last, checkpoints = built.forward(u, delta, A, B, C, *none, False, False, 5)
    assert checkpoints.numel() == 0
    y_saved, last_saved, checkpoints = built.forward(u, delta, A, B, C, *none, False, True, 5)
    assert checkpoints.shape == (4, 1, 1, 4, 8)
    assert torch.equal(y, y_saved) and torch.equal(last, last_saved)


def test_native_model_matches_reference(built):
    assert_model_matches_reference_scan("native")


def test_native_compiles_without_graph_breaks_and_matches_eager(built):
    assert_compiled_model_matches_eager("native")


@pytest.mark.parametrize("softplus", [False, True])
def test_native_custom_op_registrations(built, softplus):
    # opcheck: the schema, the fake (shape) implementation and the autograd registration agree with the op.
    u, delta, A, B, C = tokens_first_core_inputs()
    D, bias = (torch.randn(8, dtype=torch.float64, requires_grad=True) for _ in range(2))
    torch.library.opcheck(native_scan.native_scan_forward, (u, delta, A, B, C, D, bias, softplus, 4))
    # Without a gradient to compute no checkpoints are kept (checkpoint_every=0).
    detached = [tensor.detach() for tensor in (u, delta, A, B, C)]
    torch.library.opcheck(native_scan.native_scan_forward, (*detached, None, None, softplus, 0))


def test_auto_picks_native_on_cpu_when_built(built):
    assert resolve_implementation("auto", torch.device("cpu")) == "native"
    assert resolve_implementation("native", torch.device("cpu")) == "native"


def test_native_rejects_non_cpu_tensors():
    inputs = make_inputs(1, 4, 3, 2, 1, device="meta")
    tokens_first = [inputs[name].transpose(1, 2) for name in ("u", "delta")]
    B, C = (inputs[name].permute(0, 3, 1, 2) for name in ("B", "C"))
    with pytest.raises(ValueError, match="CPU kernel; got tensors on meta"):
        selective_scan_tokens_first(*tokens_first, inputs["A"], B, C, implementation="native")


def test_failed_build_warns_once_and_falls_back(fresh_state, monkeypatch):
    calls = []

    def failing_build():
        calls.append(1)
        raise OSError("no C++ compiler found (simulated)")

    monkeypatch.setattr(native_scan, "_build", failing_build)
    inputs = make_inputs(2, 8, 11, 4, 2)
    with pytest.warns(RuntimeWarning, match="could not be built.*no C.. compiler found.*'fast'"):
        y = selective_scan(**inputs, delta_softplus=True, implementation="native")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning and no second build attempt
        y_again = selective_scan(**inputs, delta_softplus=True, implementation="native")
        assert resolve_implementation("auto", torch.device("cpu")) == "fast"
    assert len(calls) == 1
    expected = selective_scan_reference(**inputs, delta_softplus=True)
    assert_close_relative(y, expected, 1e-5, "fallback output")
    assert torch.equal(y, y_again)


def test_env_var_disables_native_without_building(fresh_state, monkeypatch):
    monkeypatch.setenv(native_scan.ENV_VAR, "0")
    monkeypatch.setattr(native_scan, "_build", lambda: pytest.fail("must not build when disabled"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not native_scan.native_scan_available()
        assert resolve_implementation("auto", torch.device("cpu")) == "fast"


def test_missing_source_falls_back(fresh_state, monkeypatch, tmp_path):
    monkeypatch.setattr(native_scan, "SOURCE", tmp_path / "absent.cpp")
    with pytest.warns(RuntimeWarning, match="absent.cpp"):
        assert native_scan.load_native_scan() is None


def test_importing_does_not_build():
    # A fresh interpreter: importing the package (model, config, scan) must leave the build untried.
    code = (
        "import modeling_videomamba\n"
        "from modeling_videomamba import native_scan\n"
        "assert native_scan._module is None and native_scan._failure is None, 'built or tried at import'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_native_fused_softplus_over_a_wide_range(built):
    # The kernel's own softplus (series log1p) against torch's, from deep in the tail to past its
    # linear threshold: raw step sizes spread over [-30, 30].
    inputs = make_inputs(1, 16, 40, 4, None, seed=7)
    inputs["delta"] = torch.linspace(-30, 30, 16 * 40).reshape(1, 16, 40)
    assert_matches_reference(native, inputs, OPTIONAL, True, True)


def test_native_exp_is_within_an_ulp_over_its_range(built):
    # The kernel's own fp32 exp, seen through one scan step: with N = 1, B = C = 1, A = -1, token 0
    # (u = delta = 1) sets the state to 1 and token 1 (u = 0, delta = -x) makes it exp(x), so
    # y[1] = exp(x) for every channel's x. x covers exp's whole clamped range and, densely, the
    # decays a model sees.
    generator = torch.Generator().manual_seed(11)
    x = torch.cat([torch.linspace(-87.3, 88.3, 1024), torch.rand(1024, generator=generator) * -20.0 + 1.0])
    dim = x.numel()

    def y_of(x):
        u = torch.stack([torch.ones(dim), torch.zeros(dim)]).reshape(1, 2, 1, dim)
        delta = torch.stack([torch.ones(dim), -x]).reshape(1, 2, 1, dim)
        A, B = -torch.ones(1, 1, dim), torch.ones(1, 2, 1, 1)
        with torch.no_grad():
            y, _ = native_scan.native_scan(u, delta, A, B, B.clone())
        return y[0, 1, 0]

    y = y_of(x)
    exact = x.double().exp()
    ulp = torch.ldexp(torch.ones_like(exact), torch.frexp(exact).exponent - 24)
    assert ((y.double() - exact).abs() / ulp).max().item() <= 1.0
    # A tile with a step outside the range takes the clamped path, others skip the clamp: the same
    # lanes give the same bits either way. x far below the range gives exp(-87.3); NaN stays NaN.
    outside = x.clone()
    outside[15::32] = -200.0  # in every other 16-lane tile
    outside[7::16] = float("nan")  # in tiles with and without a -200 lane
    y_outside = y_of(outside)
    inside = outside > -100.0
    assert torch.equal(y_outside[inside], y[inside])
    assert torch.isnan(y_outside[7::16]).all()
    floor = torch.tensor(-87.3).double().exp().item()
    below = y_outside[outside == -200.0].double()
    assert ((below - floor).abs() <= 1.2e-7 * floor).all()


def test_cached_only_when_build_completed(tmp_path):
    # A library without the completion marker (a build killed after linking) is not taken as cached.
    directory = tmp_path / "videomamba_selective_scan_cpu_test"
    directory.mkdir()
    (directory / f"{directory.name}.so").write_bytes(b"")
    assert not native_scan._is_cached(directory)
    (directory / native_scan.DONE_MARKER).write_text("done")
    assert native_scan._is_cached(directory)


def test_build_name_keys_source_torch_python_and_cpu(monkeypatch, tmp_path):
    source = b"// kernel v1"
    name = native_scan.build_name(source)
    assert name == native_scan.build_name(source)  # deterministic: processes agree on the name
    capability = torch.backends.cpu.get_cpu_capability().lower()
    assert name.startswith("videomamba_selective_scan_cpu_") and name.isidentifier()
    assert capability in name or "generic" in name
    others = {native_scan.build_name(b"// kernel v2")}
    monkeypatch.setattr(torch, "__version__", "0.0.1+other")
    others.add(native_scan.build_name(source))
    monkeypatch.undo()
    monkeypatch.setattr(sys.implementation, "cache_tag", "cpython-399")
    others.add(native_scan.build_name(source))
    monkeypatch.undo()
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "NO AVX")
    others.add(native_scan.build_name(source))
    assert len(others) == 4 and name not in others
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert native_scan.build_directory(name) == tmp_path / name


@pytest.fixture
def fake_toolchain(fresh_state, monkeypatch, tmp_path):
    """Builds into tmp_path with compiling and importing replaced by records (no compiler runs)."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setattr(native_scan, "_check_compiler", lambda: None)
    monkeypatch.setattr(native_scan, "_ninja_folder", lambda: "")
    compiled, imported = [], []

    def compile_(directory, source, ninja_folder, locked):
        compiled.append(directory)
        time.sleep(0.5)  # long enough for a concurrent caller to reach the lock
        (directory / f"{directory.name}.so").write_bytes(b"")
        (directory / native_scan.DONE_MARKER).write_text("done")
        return "compiled"

    monkeypatch.setattr(native_scan, "_compile", compile_)
    monkeypatch.setattr(native_scan, "_import_library", lambda directory: imported.append(directory) or "imported")
    return compiled, imported


def test_concurrent_builds_compile_once(fake_toolchain):
    # Two callers at once (as DDP ranks): one compiles under the lock, the other waits and imports it.
    compiled, imported = fake_toolchain
    with ThreadPoolExecutor(2) as pool:
        results = sorted(pool.map(lambda _: native_scan._build(), range(2)))
    assert results == ["compiled", "imported"]
    assert len(compiled) == 1 and imported == compiled
    assert native_scan._build() == "imported" and len(compiled) == 1  # later processes only import


def test_wait_for_another_build_is_bounded(fake_toolchain, monkeypatch):
    # A live build holding the lock (a flock on another open file of the lock path, as another process
    # would hold it) makes a second process give up after VIDEOMAMBA_NATIVE_SCAN_WAIT and fall back.
    monkeypatch.setenv(native_scan.WAIT_ENV_VAR, "1")
    directory = native_scan.build_directory(native_scan.build_name())
    lock_path = directory.with_name(directory.name + ".lock")
    directory.mkdir(parents=True)
    with open(lock_path, "a") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        start = time.monotonic()
        with pytest.warns(RuntimeWarning, match="another process has been building.*over 1 s"):
            assert native_scan.load_native_scan() is None
        assert time.monotonic() - start < 10
    assert resolve_implementation("native", torch.device("cpu")) == "fast"


def _load_in_fresh_process(extensions_dir, timeout=240, **env):
    """Run load_native_scan() in a new interpreter; returns (module name or None, its warnings)."""
    code = (
        "import json, warnings\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    from modeling_videomamba import native_scan\n"
        "    from modeling_videomamba.selective_scan import resolve_implementation\n"
        "    module = native_scan.load_native_scan()\n"
        "    auto = resolve_implementation('auto', __import__('torch').device('cpu'))\n"
        "print(json.dumps({'module': module and module.__name__, 'auto': auto,\n"
        "                  'warnings': [f'{w.category.__name__}: {w.message}' for w in caught]}))\n"
    )
    environment = {**os.environ, "TORCH_EXTENSIONS_DIR": str(extensions_dir), "PYTHONPATH": str(REPO_ROOT), **env}
    environment.pop(native_scan.ENV_VAR, None)
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_missing_compiler_one_warning_and_fast_path(tmp_path):
    result = _load_in_fresh_process(tmp_path, CXX=str(tmp_path / "no-such-compiler"))
    assert result["module"] is None and result["auto"] == "fast"
    # Exactly one warning about the build (other libraries' import-time warnings are not ours to count).
    about_build = [w for w in result["warnings"] if re.search("native|compil|ninja|build", w, re.IGNORECASE)]
    assert len(about_build) == 1, result["warnings"]
    assert re.search(r"RuntimeWarning: .*could not be built .*no C\+\+ compiler found.*no-such-compiler.*'fast'",
                     about_build[0])
    assert not any(tmp_path.iterdir())  # nothing half-built left behind


def test_stale_torch_lock_is_removed_not_waited_on(tmp_path):
    # A build killed half-way leaves torch's lock file in the build directory; torch alone would wait on
    # it forever. `false` as the compiler makes the build fail fast once the lock is out of the way.
    directory = tmp_path / native_scan.build_name()
    directory.mkdir()
    (directory / "lock").write_text("")
    result = _load_in_fresh_process(tmp_path, timeout=180, CXX=shutil.which("false") or "/bin/false")
    assert result["module"] is None and result["auto"] == "fast"
    assert any("stale build lock" in message for message in result["warnings"]), result["warnings"]
    assert any("could not be built" in message for message in result["warnings"]), result["warnings"]
    assert not (directory / "lock").exists()


def test_ninja_found_beside_the_interpreter(monkeypatch, tmp_path):
    # A venv's bin folder is off PATH when Python is run by its full path: ninja is looked up there too.
    monkeypatch.setenv("PATH", str(tmp_path))
    folder = native_scan._ninja_folder()
    assert shutil.which("ninja", path=folder), f"no ninja in {folder!r}"
    with native_scan._on_path(folder):
        assert shutil.which("ninja") is not None
    assert os.environ["PATH"] == str(tmp_path)


def test_damaged_cached_library_is_rebuilt(fake_toolchain, monkeypatch):
    compiled, imported = fake_toolchain
    directory = native_scan.build_directory(native_scan.build_name())
    directory.mkdir(parents=True)
    (directory / f"{directory.name}.so").write_bytes(b"not a library")
    (directory / native_scan.DONE_MARKER).write_text("done")

    def damaged(directory):
        raise ImportError("invalid ELF header")

    monkeypatch.setattr(native_scan, "_import_library", damaged)
    assert native_scan._build() == "compiled" and compiled == [directory]
