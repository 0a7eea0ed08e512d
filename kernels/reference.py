"""The LSTM in plain PyTorch ops: the CPU path of ``fusedrnn.LSTM``/``LSTMCell`` and the
tests' oracle.

Differentiable by autograd (twice, too), any device and dtype. It follows the kernels'
numerics: the input projection is one GEMM in the input dtype; the recurrent product, the
gates and the cell state are computed in at least fp32; ``h_t`` is rounded to the input
dtype every step, as the kernels store it. For float32 and float64 inputs this is the
textbook LSTM.
"""

import torch


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
    gx = x @ w_ih.t()
    if b_ih is not None:
        gx = gx + (b_ih + b_hh)
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
