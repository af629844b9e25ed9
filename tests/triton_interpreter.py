"""A faster `tl.associative_scan` for Triton's CPU interpreter, for the tests.

The interpreter runs a scan with a user-defined combine function one element at a time (a Python
call per element of the tile). `vectorized_scans()` replaces that with one combine call per step
along the scan axis, on whole slices: the same combines in the same order (element i is
combine(result i - 1, input i)), so the results are identical, bit for bit; `tests/test_triton_scan.py`
checks that on a small kernel. Only the interpreter is touched; compiled kernels never see it.
"""

import contextlib

import numpy as np


def _sliced_scan(self, input):
    """ScanOps.generic_scan, one combine per index along the axis instead of per element."""
    datas = [arg.handle.data for arg in input]
    outputs = [np.empty_like(data) for data in datas]
    accumulated = None
    for index in range(datas[0].shape[self.axis]):
        current = tuple(
            self.to_tensor(np.ascontiguousarray(np.take(data, index, axis=self.axis)), arg.dtype)
            for data, arg in zip(datas, input)
        )
        if accumulated is None:
            accumulated = current
        else:
            result = self.combine_fn.fn(*accumulated, *current)
            accumulated = result if isinstance(result, tuple) else (result,)
        for output, value in zip(outputs, accumulated):
            slot = [slice(None)] * output.ndim
            slot[self.axis] = index
            output[tuple(slot)] = value.handle.data
    return [self.to_tensor(output, arg.dtype) for output, arg in zip(outputs, input)]


@contextlib.contextmanager
def vectorized_scans():
    """Within the block, the interpreter's generic scans run slice by slice (see the module docstring)."""
    from triton.runtime import interpreter

    original = interpreter.ScanOps.generic_scan
    interpreter.ScanOps.generic_scan = _sliced_scan
    try:
        yield
    finally:
        interpreter.ScanOps.generic_scan = original
