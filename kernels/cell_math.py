"""Each cell's step math on the device: the only part of the recurrence kernels
(``kernels/recurrence.py``) and of the cell-step kernels that differs from cell to cell.

The kernels pass ``CELL`` (a ``CellSpec.name``, constexpr) and a step's gates as a tuple of
fp32 (rows, units) tiles in the cell's gate order (torch's); the branch on ``CELL`` is
resolved when the kernel is compiled, so each build holds one cell's math. ``c`` is the
LSTM's cell state; cells without one get a placeholder tile they ignore. The plain-PyTorch
twins of these functions are in ``kernels/reference.py``.

- ``lstm``: gates (i, f, g, o); ``c' = f*c + i*g``, ``h' = o*tanh(c')``.
- ``rnn_tanh``, ``rnn_relu``: one gate; ``h' = act(Gx + W_hh h)``.
- ``gru``: gates (r, z, n); ``n = tanh(Gx_n + r * (W_hn h + b_hn))``, ``h' = (1-z)*n + z*h``.
  Its step needs more than the summed gates (Gx_n apart, b_hn, its own units of h), so it has
  its own pair, ``gru_update`` and ``gru_grads``, which the kernels call under ``CELL == "gru"``.
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
    for g, sigmoid for the others); the GRU's r and z activations and Gx_n itself (the n slot
    holds it); the RNN's pre-activation itself."""
    if CELL == "lstm":
        if gate == 2:
            return tanh(pre)
        return sigmoid(pre)
    if CELL == "gru":  # r and z; the n slot holds Gx_n, which gru_grads combines with r
        if gate < 2:
            return sigmoid(pre)
        return pre
    return pre


@triton.jit
def activations(pre, CELL: tl.constexpr, GATES: tl.constexpr):
    """``gate_activation`` of every gate of the tuple ``pre`` (pre-activations in any dtype),
    in fp32, as a tuple."""
    acts = ()
    for gate in tl.static_range(GATES):
        acts = acts + (gate_activation(pre[gate].to(tl.float32), gate, CELL),)
    return acts


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


@triton.jit
def gru_update(pre, gx_n, b_hn, h_prev):
    """The GRU's step: ``pre`` (r, z, n) tiles holding Gx_r + W_hr h, Gx_z + W_hz h (the
    folded biases in Gx) and W_hn h; ``gx_n`` the n slot of Gx (b_in in it); b_hn (units,);
    h_prev the step's h_{t-1} on the program's units, fp32. Returns (h', hn) with
    hn = W_hn h + b_hn, which the backward needs."""
    r = sigmoid(pre[0])
    z = sigmoid(pre[1])
    hn = pre[2] + b_hn[None, :]
    n = tanh(gx_n + r * hn)
    return (1.0 - z) * n + z * h_prev, hn


@triton.jit
def gru_grads(acts, hn, h_prev, dm, carry):
    """Backward of ``gru_update``: acts = (r, z, Gx_n) (``load_activations``), hn, h_{t-1};
    dm the gradient of h' from the output and the next step's product, ``carry`` the part of
    it that reached h' through the next step's ``z * h`` (elementwise, carried in registers).
    Returns the recurrent side's gate gradients (da_r, da_z, r * da_n), for dW_hh, db_hh and
    dh_{t-1}; the input side's n slot da_n (its r and z slots are the same); and the carry
    for the step before, dh * z."""
    r, z, gx_n = acts[0], acts[1], acts[2]
    n = tanh(gx_n + r * hn)
    d_h = dm + carry
    da_n = d_h * (1.0 - z) * (1.0 - n * n)
    da_r = da_n * hn * r * (1.0 - r)
    da_z = d_h * (h_prev - n) * z * (1.0 - z)
    return (da_r, da_z, da_n * r), da_n, d_h * z
