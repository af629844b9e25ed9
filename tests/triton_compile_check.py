"""Compile the Triton scan's kernels for a CUDA architecture, no GPU needed: `python tests/triton_compile_check.py [arch]`.

The interpreter the other tests use does not type-check or lower the kernels the way the compiler
does; this runs Triton's full pipeline down to a cubin (Triton ships ptxas), for each kernel with
every optional input present and with none, at the module's CHUNK, BLOCK_D and NUM_WARPS, and
checks with ptxas that no kernel spills registers. Run it with TRITON_INTERPRET unset or 0.
"""

import subprocess
import sys
import tempfile
from pathlib import Path

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from modeling_videomamba import triton_scan

# Pointers to tensors kept in the input dtype; every other pointer is float32 (the compute dtype).
INPUT_DTYPE_POINTERS = {"u_ptr", "delta_ptr", "B_ptr", "C_ptr", "z_ptr", "y_ptr", "grad_y_ptr", "grad_u_ptr",
                        "grad_delta_ptr", "grad_z_ptr"}
OPTIONAL_POINTERS = {"D_ptr", "z_ptr", "bias_ptr", "grad_z_ptr", "initial_ptr"}
FLAGS = ("HAS_D", "HAS_Z", "HAS_BIAS", "SOFTPLUS", "HAS_INITIAL", "REVERSE")
# Each chunk kernel runs twice, as pass 1 (chunk summaries) and pass 3 (y, or the gradients); pointers
# the pass does not use are None.
GRADIENT_POINTERS = {"grad_u_ptr", "grad_delta_ptr", "grad_z_ptr", "grad_B_ptr", "grad_C_ptr", "grad_A_ptr",
                     "grad_D_ptr", "grad_bias_ptr"}
VARIANTS = {
    "_chunk_scan_kernel": [dict(WRITE_Y=False, unused={"entry_ptr", "y_ptr"}),
                           dict(WRITE_Y=True, unused={"final_ptr", "decay_ptr"})],
    "_chunk_backward_kernel": [
        dict(GRADIENTS=False, unused={"entry_ptr", "adjoint_entry_ptr"} | GRADIENT_POINTERS),
        dict(GRADIENTS=True, unused={"final_ptr", "decay_ptr"}),
    ],
}
KERNELS = ("_chunk_scan_kernel", "_chain_chunks_kernel", "_chunk_backward_kernel")


def compile_kernel(kernel, input_dtype: str, optional: bool, arch: int, unused=(), **passes):
    """The kernel compiled for sm_`arch`, with every optional input present (`optional`) or none."""
    constexprs = dict(CHUNK=triton_scan.CHUNK, BLOCK_D=triton_scan.BLOCK_D, BLOCK_N=16, ACC=tl.float32)
    constexprs.update(passes)
    constexprs.update({flag: optional for flag in FLAGS if flag in kernel.arg_names})
    constexprs = {name: value for name, value in constexprs.items() if name in kernel.arg_names}
    signature = {}
    for name in kernel.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in unused or (name in OPTIONAL_POINTERS and not optional):
            signature[name], constexprs[name] = "constexpr", None  # what a None argument becomes
        elif name.endswith("_ptr"):
            signature[name] = f"*{input_dtype}" if name in INPUT_DTYPE_POINTERS else "*fp32"
        else:
            signature[name] = "i32"
    options = {} if kernel is triton_scan._chain_chunks_kernel else {"num_warps": triton_scan.NUM_WARPS}
    return triton.compile(ASTSource(kernel, signature, constexprs=constexprs), target=GPUTarget("cuda", arch, 32),
                          options=options)


def register_use(compiled, arch: int) -> str:
    """ptxas's verbose line on registers and spills for the compiled kernel's PTX (Triton's bundled ptxas)."""
    from triton.backends.nvidia.compiler import get_ptxas

    with tempfile.TemporaryDirectory() as folder:
        ptx = Path(folder) / "kernel.ptx"
        ptx.write_text(compiled.asm["ptx"])
        gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
        command = [get_ptxas(arch).path, "-v", f"--gpu-name={gpu}", str(ptx), "-o", str(Path(folder) / "kernel.cubin")]
        result = subprocess.run(command, capture_output=True, text=True)
    lines = [line.split(":", 1)[-1].strip() for line in result.stderr.splitlines()
             if "registers" in line or "spill" in line]
    return "; ".join(lines)


def main(arch: int = 90):
    for name in KERNELS:
        kernel = getattr(triton_scan, name)
        for variant in VARIANTS.get(name, [{}]):
            for input_dtype, optional in (("bf16", True), ("fp32", False)):
                compiled = compile_kernel(kernel, input_dtype, optional, arch, **variant)
                assert compiled.asm.get("cubin"), "no cubin produced"
                usage = register_use(compiled, arch)
                assert " 0 bytes spill stores" in f" {usage}", f"{name} spills registers: {usage}"
                extra = "".join(f" {flag}={value}" for flag, value in variant.items() if flag != "unused")
                print(f"compiled {name}{extra} for sm_{arch}: {input_dtype} inputs, optional inputs {optional}"
                      f" ({usage})")


if __name__ == "__main__":
    main(*(int(arg) for arg in sys.argv[1:]))
