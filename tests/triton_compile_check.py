"""Compile the Triton scan's kernels for a CUDA architecture, no GPU needed: `python tests/triton_compile_check.py [arch]`.

The interpreter the other tests use does not type-check or lower the kernels the way the compiler
does; this runs Triton's full pipeline down to a cubin (Triton ships ptxas), for each kernel with
every optional input present and with none. Run it with TRITON_INTERPRET unset or 0.
"""

import sys

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from modeling_videomamba import triton_scan

# Pointers to tensors kept in the input dtype; every other pointer is float32 (the compute dtype).
INPUT_DTYPE_POINTERS = {"u_ptr", "delta_ptr", "B_ptr", "C_ptr", "z_ptr", "y_ptr", "grad_y_ptr"}
OPTIONAL_POINTERS = {"D_ptr", "z_ptr", "bias_ptr", "grad_last_ptr", "grad_z_ptr"}
FLAGS = ("HAS_D", "HAS_Z", "HAS_BIAS", "SOFTPLUS", "HAS_GRAD_LAST")


def compile_kernel(kernel, input_dtype: str, optional: bool, arch: int):
    constexprs = dict(CHUNK=triton_scan.CHUNK, BLOCK_D=triton_scan.BLOCK_D, BLOCK_N=16, ACC=tl.float32)
    constexprs.update({flag: optional for flag in FLAGS if flag in kernel.arg_names})
    signature = {}
    for name in kernel.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in OPTIONAL_POINTERS and not optional:
            signature[name], constexprs[name] = "constexpr", None  # what a None argument becomes
        elif name.endswith("_ptr"):
            signature[name] = f"*{input_dtype}" if name in INPUT_DTYPE_POINTERS else "*fp32"
        else:
            signature[name] = "i32"
    return triton.compile(ASTSource(kernel, signature, constexprs=constexprs), target=GPUTarget("cuda", arch, 32))


def main(arch: int = 90):
    for kernel in (triton_scan._scan_forward_kernel, triton_scan._scan_backward_kernel):
        for input_dtype, optional in (("bf16", True), ("fp32", False)):
            compiled = compile_kernel(kernel, input_dtype, optional, arch)
            assert compiled.asm.get("cubin"), "no cubin produced"
            print(f"compiled {kernel.__name__} for sm_{arch}: {input_dtype} inputs, optional inputs {optional}")


if __name__ == "__main__":
    main(*(int(arg) for arg in sys.argv[1:]))
