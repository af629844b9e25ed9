"""A faster `tl.associative_scan` for Triton's CPU interpreter, for the tests.

The interpreter runs a scan with a user-defined combine function one element at a time (a Python
call per element of the tile). `vectorized_scans()` replaces that with one combine call per step
along the scan axis, on whole slices (NumPy arrays when the combine function is plain arithmetic):
the same combines in the same order (element i is combine(result i - 1, input i)), so the results
are identical, bit for bit; `tests/test_triton_scan.py`
checks that on a small kernel. Only the interpreter is touched; compiled kernels never see it.
"""

import contextlib

import numpy as np


def _combine_arrays(combine, accumulated, current):
    """combine(accumulated..., current...) on NumPy arrays directly, when the combine function is plain
    arithmetic (as the scan's affine combine is); None when it is not (it uses tl functions, say)."""
    try:
        result = combine(*accumulated, *current)
    except Exception:
        return None
    result = result if isinstance(result, tuple) else (result,)
    same = all(isinstance(r, np.ndarray) and r.dtype == a.dtype and r.shape == a.shape for r, a in zip(result, current))
    return result if same and len(result) == len(current) else None


def _sliced_scan(self, input):
    """ScanOps.generic_scan, one combine per index along the axis instead of per element.

    Each combine runs on whole NumPy slices when the combine function is plain arithmetic (the
    interpreter's own tensors run the same NumPy operations, at a far higher cost per call), else
    through the interpreter's tensors.
    """
    datas = [np.moveaxis(arg.handle.data, self.axis, 0) for arg in input]
    outputs = [np.empty_like(data) for data in datas]
    arrays = True
    for index in range(datas[0].shape[0]):
        current = tuple(np.ascontiguousarray(data[index]) for data in datas)
        if index > 0:
            result = _combine_arrays(self.combine_fn.fn, accumulated, current) if arrays else None
            if result is None:
                arrays = False
                tensors = self.combine_fn.fn(
                    *(self.to_tensor(a, arg.dtype) for a, arg in zip(accumulated, input)),
                    *(self.to_tensor(c, arg.dtype) for c, arg in zip(current, input)),
                )
                tensors = tensors if isinstance(tensors, tuple) else (tensors,)
                result = tuple(t.handle.data for t in tensors)
            current = result
        accumulated = current
        for output, value in zip(outputs, accumulated):
            output[index] = value
    return [self.to_tensor(np.ascontiguousarray(np.moveaxis(output, 0, self.axis)), arg.dtype)
            for output, arg in zip(outputs, input)]


@contextlib.contextmanager
def vectorized_scans(vectorized: bool = True):
    """Within the block, the interpreter's generic scans run slice by slice (see the module docstring),
    or with `vectorized=False` element by element, the interpreter's own way."""
    from triton.runtime import interpreter

    if not hasattr(interpreter.ScanOps, "_elementwise_generic_scan"):
        interpreter.ScanOps._elementwise_generic_scan = interpreter.ScanOps.generic_scan
    previous = interpreter.ScanOps.generic_scan
    interpreter.ScanOps.generic_scan = _sliced_scan if vectorized else interpreter.ScanOps._elementwise_generic_scan
    try:
        yield
    finally:
        interpreter.ScanOps.generic_scan = previous
