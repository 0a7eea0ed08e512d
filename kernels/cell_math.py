"""Each cell's step math on the device: the only part of the recurrence kernels
(``kernels/recurrence.py``) and of the cell-step kernels that differs from cell to cell.

The kernels pass ``CELL`` (a ``CellSpec.name``, constexpr) and a step's gates as a tuple of
fp32 (rows, units) tiles in the cell's gate order (torch's); the branch on ``CELL`` is
resolved when the kernel is compiled, so each build holds one cell's math. ``c`` is the
LSTM's cell state; cells without one get a placeholder tile they ignore. The plain-PyTorch
twins of these functions are in ``kernels/reference.py``.

- ``lstm``: gates (i, f, g, o); ``c' = f*c + i*g``, ``h' = o*tanh(c')``.
- ``rnn_tanh``, ``rnn_relu``: one gate; ``h' = act(Gx + W_hh h)``.
"""

import triton
import triton.language as tl

from ._helpers import sigmoid, tanh


@triton.jit
def relu(x):
    """max(x, 0), with NaN passed through as torch.relu does (a maximum would return 0)."""
    return tl.where(x < 0, 0.0, x)


@triton.jit
def cell_update(pre, c, CELL: tl.constexpr):
    """(out, c') of a step from its gates' fp32 pre-activations ``pre`` and the state ``c``:
    out is h' (for an LSTMP, m' = o * tanh(c'), which the projection turns into h')."""
    if CELL == "lstm":
        c_new = sigmoid(pre[1]) * c + sigmoid(pre[0]) * tanh(pre[2])
        return sigmoid(pre[3]) * tanh(c_new), c_new
    elif CELL == "rnn_tanh":
        return tanh(pre[0]), c
    else:
        tl.static_assert(CELL == "rnn_relu", "kernels/cell_math.py has no math for this cell")
        return relu(pre[0]), c


@triton.jit
def gate_activation(pre, gate: tl.constexpr, CELL: tl.constexpr):
    """What the backward keeps of gate ``gate``'s pre-activation: the LSTM's activation (tanh
    for g, sigmoid for the others); the RNN's pre-activation itself."""
    if CELL == "lstm":
        if gate == 2:
            return tanh(pre)
        return sigmoid(pre)
    return pre


@triton.jit
def load_activations(p_g, H, mask, CELL: tl.constexpr, GATES: tl.constexpr):
    """``gate_activation`` of every gate, from the pre-activations stored at p_g, p_g + H, ...
    (a tuple). Each gate is loaded and activated in turn."""
    acts = ()
    for gate in tl.static_range(GATES):
        pre = tl.load(p_g + gate * H, mask=mask, other=0.0).to(tl.float32)
        acts = acts + (gate_activation(pre, gate, CELL),)
    return acts


@triton.jit
def cell_grads(acts, c_prev, c, dm, dc, CELL: tl.constexpr):
    """Backward of ``cell_update``: from ``load_activations``' tuple, c_{t-1} and c_t, the
    gradient ``dm`` of the step's out and ``dc`` of c_t from later steps, the gradients of the
    gates' pre-activations (a tuple) and the gradient carried to c_{t-1}. Cells without c
    carry ``dc`` through unchanged (a placeholder)."""
    if CELL == "lstm":
        gate_i, gate_f, gate_g, gate_o = acts[0], acts[1], acts[2], acts[3]
        tanh_c = tanh(c)
        dc_t = dc + dm * gate_o * (1.0 - tanh_c * tanh_c)
        d_i = dc_t * gate_g * gate_i * (1.0 - gate_i)
        d_f = dc_t * c_prev * gate_f * (1.0 - gate_f)
        d_g = dc_t * gate_i * (1.0 - gate_g * gate_g)
        d_o = dm * tanh_c * gate_o * (1.0 - gate_o)
        return (d_i, d_f, d_g, d_o), dc_t * gate_f
    elif CELL == "rnn_tanh":
        h = tanh(acts[0])
        return (dm * (1.0 - h * h),), dc
    else:
        tl.static_assert(CELL == "rnn_relu", "kernels/cell_math.py has no math for this cell")
        # torch's relu backward passes the gradient where the output is not <= 0 (NaN too)
        return (tl.where(acts[0] <= 0, 0.0, dm),), dc
