"""The selective scan in ordinary tensor ops, for `torch.export` and ONNX (`scan_implementation="export"`).

The other CPU scans are torch.library custom ops ("fast", "native"): an exported graph keeps them as
opaque nodes that onnxruntime cannot run. Here the recurrence is a `scan` higher-order op whose body
is one token's update, so `torch.export` captures it as a loop over tokens (not unrolled: the graph
stays the same size whatever the clip length) and `torch.onnx.export(..., dynamo=True)` lowers it to
ONNX's `Scan` operator, which every onnxruntime build runs.

No closed form: exp(cumsum(delta A)) over the sequence (or a chunk of it) overflows float32 once the
decays of a chunk sum below about -88, which trained step sizes reach; the step-by-step recurrence
never leaves the range of its inputs. Eagerly (outside export) the same code runs as a Python loop over
tokens: correct, for tests and checking, but slower than "fast".
"""

import torch
import torch.nn.functional as F
from torch._higher_order_ops.scan import scan

from .selective_scan import _compute_dtype


def _token_step(state, token):
    """One token: s_t = decay_t * s_{t-1} + input_t;  y_t = <s_t, C_t> over the state axis.

    state, decay, input: (batch, groups, dg, N);  C: (batch, groups, N)  ->  (s_t, y_t (batch, groups, dg)).
    """
    decay, update, C = token
    state = decay * state + update
    return state, (state * C.unsqueeze(-2)).sum(-1)


def selective_scan_export(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """The selective scan in token-major layout, as exportable tensor ops (same contract as the fast scan).

    u, delta, z : (batch, L, dim)      A : (dim, N)      B, C : (batch, L, groups, N), channel c in
    group c // (dim // groups)         D, delta_bias : (dim,)
    Returns (y (batch, L, dim) in u's dtype, last state (batch, dim, N) in float32, float64 for float64).
    """
    out_dtype = u.dtype
    dtype = _compute_dtype(u.dtype)
    batch, length, dim = u.shape
    groups, state_size = B.shape[2], B.shape[3]
    if dim % groups:
        raise ValueError(f"selective_scan: dim ({dim}) must be divisible by the number of B/C groups ({groups}).")
    dg = dim // groups
    u, delta = u.to(dtype), delta.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)
    if delta_softplus:
        delta = F.softplus(delta)
    # Everything that does not depend on the previous state is computed for all tokens at once, outside
    # the loop: the loop body is then two multiply-adds and a reduction. Token axis first, as scan wants.
    u_t = u.transpose(0, 1).reshape(length, batch, groups, dg)
    delta_t = delta.transpose(0, 1).reshape(length, batch, groups, dg)
    decay = torch.exp(delta_t.unsqueeze(-1) * A.to(dtype).reshape(groups, dg, state_size))
    update = (delta_t * u_t).unsqueeze(-1) * B.to(dtype).transpose(0, 1).unsqueeze(-2)
    initial = u.new_zeros(batch, groups, dg, state_size)
    last_state, y = scan(_token_step, initial, (decay, update, C.to(dtype).transpose(0, 1)))
    y = y.reshape(length, batch, dim).transpose(0, 1)
    if D is not None:
        y = torch.addcmul(y, u, D.to(dtype))
    if z is not None:
        y = y * F.silu(z.to(dtype))
    return y.to(out_dtype), last_state.reshape(batch, dim, state_size)
