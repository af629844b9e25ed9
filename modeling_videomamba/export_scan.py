"""The selective scan in ordinary tensor ops, for `torch.export` and ONNX (`scan_implementation="export"`).

The other CPU scans are torch.library custom ops ("fast", "native"): an exported graph keeps them as
opaque nodes that onnxruntime cannot run. Here the recurrence is a `scan` higher-order op whose body
is one token's update, so `torch.export` captures it as a loop over tokens (not unrolled: the graph
stays the same size whatever the clip length) and `torch.onnx.export(..., dynamo=True)` lowers it to
ONNX's `Scan` operator, which every onnxruntime build runs. `selective_scan_tokens_first` does the
rest (step-size bias, softplus, D, the gate) in plain ops around it, as for the fast scan.

No closed form: exp(cumsum(delta A)) over the sequence (or a chunk of it) overflows float32 once the
decays of a chunk sum below about -88, which trained step sizes reach; the step-by-step recurrence
never leaves the range of its inputs. Eagerly (outside export) the same code runs as a loop over
tokens (traced once per input shape): correct, for tests and checking, but slower than "fast".
"""

import torch
from torch._higher_order_ops.scan import scan


def _token_step(state, token):
    """One token: s_t = decay_t * s_{t-1} + update_t;  y_t = <C_t, s_t> over the state axis.

    state, decay, update: (batch, groups, N, dg);  C: (batch, groups, N)  ->  (s_t, y_t (batch, groups, dg)).
    """
    decay, update, C = token
    state = decay * state + update
    return state, (state * C.unsqueeze(-1)).sum(-2)


def export_scan_forward(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor):
    """The core recurrence in `blocked_scan_forward`'s layout, as exportable ops.

    u, delta : (batch, L, groups, dg) (delta after bias and softplus)    A : (groups, N, dg)
    B, C : (batch, L, groups, N)
    Returns y (batch, L, groups, dg) and the last state (batch, groups, N, dg).
    """
    # Everything that does not depend on the previous state is computed for all tokens at once, outside
    # the loop, so the loop body is a multiply-add and a reduction. Token axis first, as scan wants.
    delta_t = delta.transpose(0, 1).unsqueeze(3)  # (L, batch, groups, 1, dg)
    decay = torch.exp(delta_t * A)
    update = (delta_t * u.transpose(0, 1).unsqueeze(3)) * B.transpose(0, 1).unsqueeze(-1)
    initial = u.new_zeros(u.shape[0], u.shape[2], A.shape[1], u.shape[3])
    last_state, y = scan(_token_step, initial, (decay, update, C.transpose(0, 1)))
    return y.transpose(0, 1), last_state
