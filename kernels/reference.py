"""The LSTM, the RNN and the GRU in plain PyTorch ops: the reference path of ``fusedrnn.LSTM``,
``LSTMCell``, ``RNN`` and ``GRU``, and the tests' oracle.

Differentiable by autograd (twice, too), any device and dtype. It follows the kernels'
numerics: the input projection is one GEMM in the input dtype; the recurrent product, the
gates and the cell state are computed in at least fp32; ``h_t`` is rounded to the input
dtype every step, as the kernels store it. For float32 and float64 inputs this is the
textbook LSTM.

Hand-derived backward (BPTT), no autograd
-----------------------------------------
``lstm_reference_backward`` (one layer) and ``lstm_layers_reference_backward`` (a stack, as
``torch.nn.LSTM``) are the tests' third oracle beside autograd and cuDNN: the gradients
written out from the equations below, in float64, under ``torch.no_grad`` (the textbook LSTM:
for 16-bit inputs it does not round h_t each step as ``lstm_reference`` does). They are a generic
driver over time (``bptt_forward``, ``bptt_backward``) plus one equations class per cell
(``LSTMEquations``). Rows are batch elements; x_t (B, I); gate order i, f, g, o.

Forward, one step::

    zx_t = x_t W_ih^T + b_ih                      the input projection (driver)
    z    = zx_t + h_{t-1} W_hh^T + b_hh           (B, 4H) = [z_i, z_f, z_g, z_o]
    i = sig(z_i)   f = sig(z_f)   g = tanh(z_g)   o = sig(z_o)
    c_t = f * c_{t-1} + i * g
    m_t = o * tanh(c_t)
    h_t = m_t W_hr^T                              LSTMP; without a projection h_t = m_t
    y_t = h_t                                     the output at step t

Backward, one step. (dh, dc) is the gradient of (h_t, c_t) handed back by the step after
it (by the loss for the last step: dL/dh_n, dL/dc_n); dy_t = dL/dy_t::

    dh   = dy_t + dh                              h_t is both output and next state
    dW_hr += dh^T m_t ;  dm = dh W_hr             without a projection dm = dh
    do   = dm * tanh(c_t)
    dc   = dc + dm * o * (1 - tanh(c_t)^2)        c_t feeds c_{t+1} and m_t
    di = dc * g    df = dc * c_{t-1}    dg = dc * i
    dz_i = di * i (1 - i)    dz_f = df * f (1 - f)       sig' = sig (1 - sig)
    dz_g = dg * (1 - g^2)    dz_o = do * o (1 - o)       tanh' = 1 - tanh^2
    dz = [dz_i, dz_f, dz_g, dz_o]                 (B, 4H)
    dW_hh += dz^T h_{t-1} ;  db_hh += sum over rows of dz
    dW_ih += dz^T x_t     ;  db_ih += sum over rows of dz   (db_ih = db_hh)
    dx_t = dz W_ih
    dh_{t-1} = dz W_hh ;  dc_{t-1} = dc * f       handed to the step before

The gradient handed back by the first step is (dh0, dc0).

Order: the backward visits the steps in reverse of the forward's order: t = T-1, ..., 0,
or t = 0, ..., T-1 for ``reverse=True`` (whose forward runs t = T-1, ..., 0).

Lengths: row b is active at step t iff t < lengths[b]. Where it is not, its state passes
through unchanged and its output is the constant 0, so dy_t is dropped, (dh, dc) pass to
the step before unchanged, and the row adds nothing to dz, dx_t or any parameter gradient.

Stacks: layer l's output is layer l+1's input, the two directions concatenated, so a
layer's dx (summed over its directions) is the dy of the layer below; dL/dh_n and dL/dc_n
enter each layer and direction at its own last step.

The RNN (``torch.nn.RNN``, tanh or relu) is ``RNNEquations`` on the same driver
(``rnn_layers_reference_backward``), the GRU ``GRUEquations`` (``gru_layers_reference_backward``);
their equations are in their docstrings.

Adding a cell: the driver owns time, ``reverse``, ``lengths`` and the input
projection ``zx_t = x_t W_ih^T + b_ih`` with its gradients (dx, dW_ih, db_ih); a cell owns
the rest. Write a class like ``LSTMEquations`` with ``output_size``, ``state_shapes(B)``,
``forward_step(zx_t, state) -> (state_t, y_t, cache)`` and ``backward_step(d_state, dy_t,
cache) -> (d_state_prev, dzx_t, {parameter name: this step's gradient})``, write its
equations into its docstring, and a wrapper like ``rnn_layers_reference_backward`` that
builds it and calls ``_stack_reference_backward`` (or, for one layer, ``bptt_forward`` then
``bptt_backward``).
"""

from dataclasses import dataclass, field

import torch


def valid_steps(T, lengths, device):
    """(T, B) bool: whether step t of row b lies within its length (t < lengths[b])."""
    return torch.arange(T, device=device)[:, None] < lengths.to(device)[None, :]


def lstm_cell_update(gates, c):
    """The cell update from the pre-activation gates (B, 4H), order (i, f, g, o), and c (B, H).
    Returns ``(o * tanh(c_new), c_new)``: the unprojected hidden state and the new cell."""
    i, f, g, o = gates.chunk(4, dim=-1)
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    c = f * c + i * g
    return o * torch.tanh(c), c


def lstm_cell_reference(x, h, c, w_ih, w_hh, b_ih=None, b_hh=None):
    """One step, as ``torch.nn.LSTMCell``: x (B, I), h and c (B, H). Returns (h', c') in x's dtype."""
    acc_dtype = torch.promote_types(x.dtype, torch.float32)
    gates = (x @ w_ih.t()).to(acc_dtype) + h.to(acc_dtype) @ w_hh.to(acc_dtype).t()
    if b_ih is not None:
        gates = gates + (b_ih + b_hh).to(acc_dtype)
    h, c = lstm_cell_update(gates, c.to(acc_dtype))
    return h.to(x.dtype), c.to(x.dtype)


def lstm_reference(x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, w_hr=None, *, reverse=False, lengths=None):
    """One layer, one direction, time-major.

    x: (T, B, I); h0: (B, P) and c0: (B, H), or None for zeros; w_ih: (4H, I);
    w_hh: (4H, P); b_ih, b_hh: (4H,) or None; w_hr: (P, H) projection (LSTMP,
    ``h_t = W_hr (o_t * tanh(c_t))``) or None, in which case P = H.
    reverse: run t = T-1, ..., 0 (the backward direction of a bidirectional layer).
    lengths: (B,) int tensor or None. Row b takes part in steps t < lengths[b] only: its
        state passes unchanged through the others and its output there is zero. So h_n is
        the state after its own last step, in either direction.
    Returns ``output (T, B, P), (h_n (B, P), c_n (B, H))``.
    """
    T, B, _ = x.shape
    H = w_hh.shape[0] // 4
    P = w_hh.shape[1]
    acc_dtype = torch.promote_types(x.dtype, torch.float32)
    if lengths is not None:
        # The padding takes no part: zeros in its place, so that whatever it holds (NaN, inf)
        # meets no weight in the input projection, whose gradient would be 0 * NaN there.
        x = x.masked_fill(~valid_steps(T, lengths, x.device)[..., None], 0)
    gx = x @ w_ih.t()
    if b_ih is not None:
        gx = gx + (b_ih + b_hh)
    # One tensor per step, by one unbind: indexing gx[t] at every step would give each step's
    # backward a (T, B, 4H) buffer of zeros to scatter into, a backward quadratic in T.
    gx = gx.unbind(0)
    h = h0 if h0 is not None else x.new_zeros(B, P)
    c = c0.to(acc_dtype) if c0 is not None else x.new_zeros(B, H, dtype=acc_dtype)
    w_hh_t = w_hh.to(acc_dtype).t()
    w_hr_t = w_hr.to(acc_dtype).t() if w_hr is not None else None
    active = None
    outputs = [None] * T
    for t in reversed(range(T)) if reverse else range(T):
        gates = gx[t].to(acc_dtype) + h.to(acc_dtype) @ w_hh_t
        h_new, c_new = lstm_cell_update(gates, c)
        if w_hr_t is not None:
            h_new = h_new @ w_hr_t
        h_new = h_new.to(x.dtype)
        if lengths is not None:
            active = (t < lengths).to(x.device)[:, None]
            h_new = torch.where(active, h_new, h)
            c = torch.where(active, c_new, c)
            outputs[t] = torch.where(active, h_new, torch.zeros_like(h_new))
        else:
            c = c_new
            outputs[t] = h_new
        h = h_new
    return torch.stack(outputs), (h, c.to(x.dtype))


RNN_NONLINEARITIES = {"tanh": torch.tanh, "relu": torch.relu}


def rnn_reference(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, *, nonlinearity="tanh", reverse=False, lengths=None):
    """One layer, one direction of ``torch.nn.RNN``, time-major, in the numerics of
    ``lstm_reference`` (fp32 or wider accumulation, h_t rounded to the input dtype each step):
    ``h_t = act(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)``, act tanh or relu.

    x: (T, B, I); h0: (B, H) or None for zeros; w_ih: (H, I); w_hh: (H, H); b_ih, b_hh: (H,)
    or None. reverse and lengths as for ``lstm_reference``. Returns ``output (T, B, H), h_n``.
    """
    T, B, _ = x.shape
    H = w_hh.shape[0]
    act = RNN_NONLINEARITIES[nonlinearity]
    acc_dtype = torch.promote_types(x.dtype, torch.float32)
    if lengths is not None:
        x = x.masked_fill(~valid_steps(T, lengths, x.device)[..., None], 0)  # as lstm_reference
    gx = x @ w_ih.t()
    if b_ih is not None:
        gx = gx + (b_ih + b_hh)
    w_hh_t = w_hh.to(acc_dtype).t()

    def step(gx_t, h):
        return act(gx_t + h @ w_hh_t)

    return _h_only_steps(x, gx, h0, H, step, reverse, lengths)


def _h_only_steps(x, gx, h0, H, step, reverse, lengths):
    """The time loop of a cell whose one state is h (the RNN's, the GRU's): ``step(gx_t, h)``
    from this step's input projection and h_{t-1}, both in at least fp32, returns h_t, which
    is rounded to x's dtype as the kernels store it; lengths as ``lstm_reference``'s."""
    T, B, _ = x.shape
    acc_dtype = torch.promote_types(x.dtype, torch.float32)
    gx = gx.unbind(0)  # one tensor per step (see lstm_reference)
    h = h0 if h0 is not None else x.new_zeros(B, H)
    outputs = [None] * T
    for t in reversed(range(T)) if reverse else range(T):
        h_new = step(gx[t].to(acc_dtype), h.to(acc_dtype)).to(x.dtype)
        if lengths is not None:
            active = (t < lengths).to(x.device)[:, None]
            h_new = torch.where(active, h_new, h)
            outputs[t] = torch.where(active, h_new, torch.zeros_like(h_new))
        else:
            outputs[t] = h_new
        h = h_new
    return torch.stack(outputs), h


def gru_bias_split(b_ih, b_hh):
    """The GRU's biases as the kernels add them: ``folded`` (3H,) = b_ih + (b_hr, b_hz, 0),
    added into the input projection, and ``b_hn`` (H,), added to ``W_hn h`` inside the step
    (the reset gate multiplies it, so it cannot fold). (None, None) without biases."""
    if b_ih is None:
        return None, None
    H = b_hh.shape[0] // 3
    return b_ih + torch.cat([b_hh[: 2 * H], torch.zeros_like(b_hh[2 * H :])]), b_hh[2 * H :]


def gru_step(gx, rec, h, b_hn):
    """One GRU step in torch's gate order (r, z, n) from ``gx`` (B, 3H): the input projection
    with the folded biases; ``rec`` (B, 3H): ``h W_hh^T``; h (B, H); b_hn (H,) or None::

        r = sig(gx_r + rec_r)    z = sig(gx_z + rec_z)    hn = rec_n + b_hn
        n = tanh(gx_n + r * hn)  h' = (1 - z) * n + z * h
    """
    gx_r, gx_z, gx_n = gx.chunk(3, dim=-1)
    rec_r, rec_z, hn = rec.chunk(3, dim=-1)
    if b_hn is not None:
        hn = hn + b_hn
    r, z = torch.sigmoid(gx_r + rec_r), torch.sigmoid(gx_z + rec_z)
    n = torch.tanh(gx_n + r * hn)
    return (1 - z) * n + z * h


def gru_reference(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, *, reverse=False, lengths=None):
    """One layer, one direction of ``torch.nn.GRU``, time-major, in the numerics of
    ``lstm_reference`` (the input projection with the folded biases in the input dtype, the
    recurrent product and the gates in at least fp32, h_t rounded to the input dtype each
    step); the step is ``gru_step``.

    x: (T, B, I); h0: (B, H) or None for zeros; w_ih: (3H, I); w_hh: (3H, H); b_ih, b_hh:
    (3H,) or None. reverse and lengths as for ``lstm_reference``. Returns ``output (T, B, H), h_n``.
    """
    T, B, _ = x.shape
    H = w_hh.shape[0] // 3
    acc_dtype = torch.promote_types(x.dtype, torch.float32)
    if lengths is not None:
        x = x.masked_fill(~valid_steps(T, lengths, x.device)[..., None], 0)  # as lstm_reference
    folded, b_hn = gru_bias_split(b_ih, b_hh)
    gx = x @ w_ih.t()
    if folded is not None:
        gx = gx + folded
        b_hn = b_hn.to(acc_dtype)
    w_hh_t = w_hh.to(acc_dtype).t()

    def step(gx_t, h):
        return gru_step(gx_t, h @ w_hh_t, h, b_hn)

    return _h_only_steps(x, gx, h0, H, step, reverse, lengths)


# ----------------------------------------------------------------------------------------
# Hand-derived backward (BPTT): the equations of the module docstring, no autograd.


class LSTMEquations:
    """One LSTM (LSTMP) step for the BPTT driver: the forward and backward equations of the
    module docstring. w_hh (4H, P); b_hh (4H,) or None; w_hr (P, H) or None (P = H)."""

    def __init__(self, w_hh, b_hh=None, w_hr=None):
        self.w_hh, self.b_hh, self.w_hr = w_hh, b_hh, w_hr
        self.hidden_size = w_hh.shape[0] // 4
        self.output_size = w_hh.shape[1]  # P: the size of h_t and y_t

    def state_shapes(self, batch_size):
        """The shapes of the state (h, c)."""
        return (batch_size, self.output_size), (batch_size, self.hidden_size)

    def forward_step(self, zx, state):
        """``zx`` (B, 4H): this step's input projection; ``state`` (h_{t-1}, c_{t-1}).
        Returns ``(h_t, c_t), y_t, cache``."""
        h_prev, c_prev = state
        z = zx + h_prev @ self.w_hh.t()
        if self.b_hh is not None:
            z = z + self.b_hh
        z_i, z_f, z_g, z_o = z.chunk(4, dim=-1)
        i, f, g, o = torch.sigmoid(z_i), torch.sigmoid(z_f), torch.tanh(z_g), torch.sigmoid(z_o)
        c = f * c_prev + i * g
        tanh_c = torch.tanh(c)
        m = o * tanh_c
        h = m @ self.w_hr.t() if self.w_hr is not None else m
        return (h, c), h, (h_prev, c_prev, i, f, g, o, tanh_c, m)

    def backward_step(self, d_state, d_output, cache):
        """``d_state`` (dh, dc): the gradient of (h_t, c_t) from the step after; ``d_output``:
        dy_t. Returns ``(dh_{t-1}, dc_{t-1}), dz, {name: this step's parameter gradient}``;
        ``dz`` is also the gradient of ``zx``, since z = zx + ..."""
        h_prev, c_prev, i, f, g, o, tanh_c, m = cache
        d_h, d_c = d_state
        d_h = d_h + d_output
        step_grads = {}
        if self.w_hr is not None:
            step_grads["weight_hr"] = d_h.t() @ m
            d_m = d_h @ self.w_hr
        else:
            d_m = d_h
        d_o = d_m * tanh_c
        d_c = d_c + d_m * o * (1 - tanh_c * tanh_c)
        d_i, d_f, d_g = d_c * g, d_c * c_prev, d_c * i
        d_z = torch.cat([d_i * i * (1 - i), d_f * f * (1 - f), d_g * (1 - g * g), d_o * o * (1 - o)], dim=-1)
        step_grads["weight_hh"] = d_z.t() @ h_prev
        if self.b_hh is not None:
            step_grads["bias_hh"] = d_z.sum(0)
        return (d_z @ self.w_hh, d_c * f), d_z, step_grads


@dataclass
class BPTTTape:
    """What ``bptt_forward`` keeps for ``bptt_backward``."""

    cell: object
    x: torch.Tensor  # (T, B, I)
    w_ih: torch.Tensor
    has_bias_ih: bool
    state0_given: tuple  # per state tensor: was it given (else zeros, and no gradient)
    order: list  # the steps t in the forward's order
    caches: dict = field(default_factory=dict)  # t -> the cell's cache
    active: dict = field(default_factory=dict)  # t -> (B, 1) bool mask, or None without lengths


@torch.no_grad()
def bptt_forward(cell, x, state0, w_ih, b_ih=None, *, reverse=False, lengths=None):
    """Run ``cell`` over x (T, B, I) from ``state0`` (a tuple, None entries for zeros).
    Returns ``output (T, B, cell.output_size), state_n, tape``."""
    T, B, _ = x.shape
    state = tuple(
        s if s is not None else x.new_zeros(shape) for s, shape in zip(state0, cell.state_shapes(B))
    )
    zx = x @ w_ih.t()
    if b_ih is not None:
        zx = zx + b_ih
    order = list(reversed(range(T))) if reverse else list(range(T))
    tape = BPTTTape(cell, x, w_ih, b_ih is not None, tuple(s is not None for s in state0), order)
    lengths = torch.as_tensor(lengths, device=x.device) if lengths is not None else None
    output = x.new_zeros(T, B, cell.output_size)
    for t in order:
        new_state, y, tape.caches[t] = cell.forward_step(zx[t], state)
        active = (t < lengths)[:, None] if lengths is not None else None
        if active is not None:  # an inactive row keeps its state and outputs 0
            new_state = tuple(torch.where(active, n, s) for n, s in zip(new_state, state))
            y = torch.where(active, y, torch.zeros_like(y))
        tape.active[t] = active
        output[t] = y
        state = new_state
    return output, state, tape


@torch.no_grad()
def bptt_backward(tape, grad_output=None, grad_state_n=None):
    """The backward of ``bptt_forward``'s run: ``grad_output`` (T, B, P) or None for zeros,
    ``grad_state_n`` a tuple like the state (None entries for zeros). Returns
    ``{"x", "state0" (a tuple, None where state0 was not given), "weight_ih", "bias_ih"
    (None without b_ih), and the cell's parameter names}``."""
    x, cell = tape.x, tape.cell
    B = x.shape[1]
    shapes = cell.state_shapes(B)
    grad_state_n = grad_state_n if grad_state_n is not None else (None,) * len(shapes)
    d_state = tuple(d if d is not None else x.new_zeros(s) for d, s in zip(grad_state_n, shapes))
    grads = {"x": torch.zeros_like(x), "weight_ih": torch.zeros_like(tape.w_ih)}
    grads["bias_ih"] = x.new_zeros(tape.w_ih.shape[0]) if tape.has_bias_ih else None
    for t in reversed(tape.order):
        d_output = grad_output[t] if grad_output is not None else x.new_zeros(B, cell.output_size)
        active = tape.active[t]
        d_in = d_state
        if active is not None:  # an inactive row: no dy (its output is constant), no step
            d_output = torch.where(active, d_output, torch.zeros_like(d_output))
            d_in = tuple(torch.where(active, d, torch.zeros_like(d)) for d in d_state)
        d_prev, d_zx, step_grads = cell.backward_step(d_in, d_output, tape.caches[t])
        if active is not None:  # ... and its state gradient passes straight through
            d_prev = tuple(torch.where(active, p, d) for p, d in zip(d_prev, d_state))
        d_state = d_prev
        for name, g in step_grads.items():
            grads[name] = grads[name] + g if name in grads else g
        grads["x"][t] = d_zx @ tape.w_ih
        grads["weight_ih"] += d_zx.t() @ x[t]
        if tape.has_bias_ih:
            grads["bias_ih"] += d_zx.sum(0)
    grads["state0"] = tuple(d if given else None for d, given in zip(d_state, tape.state0_given))
    return grads


def _exact(t):
    """A float64 copy outside autograd, or None: the oracle computes in float64."""
    return t.detach().to(torch.float64) if t is not None else None


def lstm_reference_backward(
    x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, w_hr=None,
    grad_output=None, grad_h_n=None, grad_c_n=None, *, reverse=False, lengths=None,
):  # fmt: skip
    """The gradients of ``lstm_reference`` (same arguments) by hand-derived BPTT (module
    docstring), without autograd, in float64 whatever the inputs' dtype.

    grad_output (T, B, P), grad_h_n (B, P), grad_c_n (B, H): the cotangents of the three
    outputs, each None for zeros. Returns ``{"x", "h0", "c0", "weight_ih", "weight_hh",
    "bias_ih", "bias_hh", "weight_hr"}`` as float64 tensors on x's device; None for an input
    that was None (h0 or c0 of zeros, no bias, no projection).
    """
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr = map(_exact, (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr))
    cell = LSTMEquations(w_hh, b_hh, w_hr)
    _, _, tape = bptt_forward(cell, x, (h0, c0), w_ih, b_ih, reverse=reverse, lengths=lengths)
    grads = bptt_backward(tape, _exact(grad_output), (_exact(grad_h_n), _exact(grad_c_n)))
    return {
        "x": grads["x"],
        "h0": grads["state0"][0],
        "c0": grads["state0"][1],
        "weight_ih": grads["weight_ih"],
        "weight_hh": grads["weight_hh"],
        "bias_ih": grads["bias_ih"],
        "bias_hh": grads.get("bias_hh"),
        "weight_hr": grads.get("weight_hr"),
    }


def lstm_layers_reference_backward(
    x, hx, weights, grad_output=None, grad_h_n=None, grad_c_n=None,
    *, num_layers=1, bidirectional=False, lengths=None,
):  # fmt: skip
    """The gradients of a stack of LSTM layers, as ``torch.nn.LSTM`` (without dropout) or
    ``fusedrnn.functional.lstm_layers`` compute it, by hand-derived BPTT, in float64.

    x (T, B, I) time-major; hx ``(h0 (L*D, B, P), c0 (L*D, B, H))`` or None; ``weights`` per
    layer and direction (the reverse one second): w_ih, w_hh, then b_ih, b_hh if there are
    biases, then w_hr for a projection (the order of ``torch.nn.LSTM._flat_weights``).
    grad_output (T, B, D*P), grad_h_n (L*D, B, P), grad_c_n (L*D, B, H): cotangents, each
    None for zeros. Returns ``{"input", "h0", "c0" (None without hx), "weights" (a list in the
    order of ``weights``)}``.
    """
    directions = 2 if bidirectional else 1
    per_layer = len(weights) // (num_layers * directions)
    has_bias, has_proj = per_layer in (4, 5), per_layer in (3, 5)
    names = ["weight_ih", "weight_hh"] + ["bias_ih", "bias_hh"] * has_bias + ["weight_hr"] * has_proj

    def make_cell(w):
        return LSTMEquations(w[1], w[3] if has_bias else None, w[-1] if has_proj else None)

    grads = _stack_reference_backward(
        make_cell, names, x, hx, weights, grad_output, (grad_h_n, grad_c_n), num_layers=num_layers,
        directions=directions, lengths=lengths,
    )  # fmt: skip
    h0, c0 = grads["states0"] if hx is not None else (None, None)
    return {"input": grads["input"], "h0": h0, "c0": c0, "weights": grads["weights"]}


def _stack_reference_backward(make_cell, names, x, hx, weights, grad_output, grad_states_n, *, num_layers,
                              directions, lengths):  # fmt: skip
    """The BPTT of a stack of layers of any cell: ``make_cell(layer weights)`` builds a
    layer's equations (its w_ih and b_ih are the weights named "weight_ih", "bias_ih" in
    ``names``, the layer's weight names in order); ``hx`` a tuple of the cell's states
    ``(L*D, B, *)`` or None; ``grad_states_n`` a tuple like it (None entries for zeros).
    Returns ``{"input", "states0" (a tuple of stacked gradients, or None), "weights"}``."""
    per_layer = len(names)
    weights = [_exact(w) for w in weights]
    states0 = tuple(_exact(s) for s in hx) if hx is not None else None
    tapes = []
    layer_input = _exact(x)
    for layer in range(num_layers):
        outputs = []
        for direction in range(directions):
            index = layer * directions + direction
            w = dict(zip(names, weights[index * per_layer : (index + 1) * per_layer]))
            cell = make_cell(list(w.values()))
            n_states = len(cell.state_shapes(1))
            state0 = tuple(s[index] for s in states0) if states0 is not None else (None,) * n_states
            output, _, tape = bptt_forward(
                cell, layer_input, state0, w["weight_ih"], w.get("bias_ih"), reverse=direction == 1, lengths=lengths
            )
            outputs.append(output)
            tapes.append(tape)
        layer_input = torch.cat(outputs, dim=-1)

    grad_states_n = tuple(_exact(g) for g in grad_states_n)
    d_layer_output = _exact(grad_output)
    weight_grads = [None] * len(weights)
    d_states0 = [None] * len(tapes)
    for layer in reversed(range(num_layers)):
        d_layer_input = None
        for direction in range(directions):
            index = layer * directions + direction
            tape = tapes[index]
            P = tape.cell.output_size
            d_output = d_layer_output[..., direction * P : (direction + 1) * P] if d_layer_output is not None else None
            d_state_n = tuple(g[index] if g is not None else None for g in grad_states_n)
            grads = bptt_backward(tape, d_output, d_state_n)
            d_layer_input = grads["x"] if d_layer_input is None else d_layer_input + grads["x"]
            d_states0[index] = grads["state0"]
            weight_grads[index * per_layer : (index + 1) * per_layer] = [grads[n] for n in names]
        d_layer_output = d_layer_input  # this layer's dx is the dy of the layer below
    stacked = tuple(torch.stack(column) for column in zip(*d_states0)) if hx is not None else None
    return {"input": d_layer_output, "states0": stacked, "weights": weight_grads}


# ----------------------------------------------------------------------------------------
# The RNN's hand-derived BPTT (torch.nn.RNN, tanh or relu), on the same driver.


class RNNEquations:
    """One Elman RNN step for the BPTT driver, act tanh or relu. w_hh (H, H); b_hh (H,) or None.

    Forward:  z = zx_t + h_{t-1} W_hh^T + b_hh;  h_t = act(z);  y_t = h_t.
    Backward: dh = dy_t + dh;  dz = dh * act'(z), act' = 1 - h_t^2 (tanh) or [h_t > 0] (relu);
              dW_hh += dz^T h_{t-1};  db_hh += sum over rows of dz;  dh_{t-1} = dz W_hh.
    """

    def __init__(self, w_hh, b_hh=None, nonlinearity="tanh"):
        self.w_hh, self.b_hh, self.nonlinearity = w_hh, b_hh, nonlinearity
        self.output_size = w_hh.shape[0]

    def state_shapes(self, batch_size):
        """The shape of the one state, h."""
        return ((batch_size, self.output_size),)

    def forward_step(self, zx, state):
        (h_prev,) = state
        z = zx + h_prev @ self.w_hh.t()
        if self.b_hh is not None:
            z = z + self.b_hh
        h = RNN_NONLINEARITIES[self.nonlinearity](z)
        return (h,), h, (h_prev, h)

    def backward_step(self, d_state, d_output, cache):
        h_prev, h = cache
        d_h = d_state[0] + d_output
        # relu: torch's backward passes the gradient where the output is not <= 0 (NaN too)
        d_z = d_h * (1 - h * h) if self.nonlinearity == "tanh" else torch.where(h <= 0, torch.zeros_like(d_h), d_h)
        step_grads = {"weight_hh": d_z.t() @ h_prev}
        if self.b_hh is not None:
            step_grads["bias_hh"] = d_z.sum(0)
        return (d_z @ self.w_hh,), d_z, step_grads


def rnn_layers_reference_backward(
    x, h0, weights, grad_output=None, grad_h_n=None, *, nonlinearity="tanh", num_layers=1, bidirectional=False,
    lengths=None,
):  # fmt: skip
    """The gradients of a stack of RNN layers, as ``torch.nn.RNN`` (without dropout) or
    ``fusedrnn.functional.rnn_layers`` compute it, by hand-derived BPTT (``RNNEquations``),
    in float64. x (T, B, I) time-major; h0 (L*D, B, H) or None; ``weights`` in
    ``torch.nn.RNN._flat_weights`` order; grad_output (T, B, D*H), grad_h_n (L*D, B, H), each
    None for zeros. Returns ``{"input", "h0" (None without h0), "weights"}``."""
    return _h_only_stack_backward(lambda w_hh, b_hh: RNNEquations(w_hh, b_hh, nonlinearity), x, h0, weights,
                                  grad_output, grad_h_n, num_layers, bidirectional, lengths)  # fmt: skip


def _h_only_stack_backward(equations, x, h0, weights, grad_output, grad_h_n, num_layers, bidirectional, lengths):
    """``_stack_reference_backward`` for a cell whose one state is h: ``equations(w_hh, b_hh)``
    builds a layer's cell; weights in torch's ``_flat_weights`` order (w_ih, w_hh[, b_ih, b_hh])."""
    directions = 2 if bidirectional else 1
    has_bias = len(weights) // (num_layers * directions) == 4
    names = ["weight_ih", "weight_hh"] + ["bias_ih", "bias_hh"] * has_bias

    def make_cell(w):
        return equations(w[1], w[3] if has_bias else None)

    grads = _stack_reference_backward(
        make_cell, names, x, (h0,) if h0 is not None else None, weights, grad_output, (grad_h_n,),
        num_layers=num_layers, directions=directions, lengths=lengths,
    )  # fmt: skip
    return {"input": grads["input"], "h0": grads["states0"][0] if h0 is not None else None,
            "weights": grads["weights"]}  # fmt: skip


# ----------------------------------------------------------------------------------------
# The GRU's hand-derived BPTT (torch.nn.GRU), on the same driver.


class GRUEquations:
    """One GRU step for the BPTT driver, torch's gate order (r, z, n). w_hh (3H, H); b_hh
    (3H,) or None. zx_t = x_t W_ih^T + b_ih comes from the driver.

    Forward::

        zh = h_{t-1} W_hh^T + b_hh                   (B, 3H) = [zh_r, zh_z, zh_n]
        r = sig(zx_r + zh_r)   z = sig(zx_z + zh_z)   n = tanh(zx_n + r * zh_n)
        h_t = (1 - z) * n + z * h_{t-1} ;  y_t = h_t

    Backward. The input side and the recurrent side of the gate gradients differ in the n
    slot (the reset gate multiplies zh_n, not zx_n)::

        dh  = dy_t + dh
        dn  = dh * (1 - z) ;  dz = dh * (h_{t-1} - n)
        da_n = dn * (1 - n^2) ;  dr = da_n * zh_n
        da_r = dr * r (1 - r) ;  da_z = dz * z (1 - z)
        dzx = [da_r, da_z, da_n]                     for dx_t, dW_ih, db_ih (the driver)
        dzh = [da_r, da_z, da_n * r]                 for dW_hh, db_hh and dh_{t-1}
        dW_hh += dzh^T h_{t-1} ;  db_hh += sum over rows of dzh
        dh_{t-1} = dzh W_hh + dh * z
    """

    def __init__(self, w_hh, b_hh=None):
        self.w_hh, self.b_hh = w_hh, b_hh
        self.output_size = w_hh.shape[1]

    def state_shapes(self, batch_size):
        """The shape of the one state, h."""
        return ((batch_size, self.output_size),)

    def forward_step(self, zx, state):
        (h_prev,) = state
        zh = h_prev @ self.w_hh.t()
        if self.b_hh is not None:
            zh = zh + self.b_hh
        zx_r, zx_z, zx_n = zx.chunk(3, dim=-1)
        zh_r, zh_z, zh_n = zh.chunk(3, dim=-1)
        r, z = torch.sigmoid(zx_r + zh_r), torch.sigmoid(zx_z + zh_z)
        n = torch.tanh(zx_n + r * zh_n)
        h = (1 - z) * n + z * h_prev
        return (h,), h, (h_prev, r, z, n, zh_n)

    def backward_step(self, d_state, d_output, cache):
        h_prev, r, z, n, zh_n = cache
        d_h = d_state[0] + d_output
        d_n, d_z = d_h * (1 - z), d_h * (h_prev - n)
        da_n = d_n * (1 - n * n)
        da_r, da_z = da_n * zh_n * r * (1 - r), d_z * z * (1 - z)
        d_zx = torch.cat([da_r, da_z, da_n], dim=-1)
        d_zh = torch.cat([da_r, da_z, da_n * r], dim=-1)
        step_grads = {"weight_hh": d_zh.t() @ h_prev}
        if self.b_hh is not None:
            step_grads["bias_hh"] = d_zh.sum(0)
        return (d_zh @ self.w_hh + d_h * z,), d_zx, step_grads


def gru_layers_reference_backward(
    x, h0, weights, grad_output=None, grad_h_n=None, *, num_layers=1, bidirectional=False, lengths=None,
):  # fmt: skip
    """The gradients of a stack of GRU layers, as ``torch.nn.GRU`` (without dropout) or
    ``fusedrnn.functional.gru_layers`` compute it, by hand-derived BPTT (``GRUEquations``), in
    float64; arguments and result as ``rnn_layers_reference_backward``'s."""
    return _h_only_stack_backward(GRUEquations, x, h0, weights, grad_output, grad_h_n, num_layers, bidirectional,
                                  lengths)  # fmt: skip
