"""Autograd Function of the fused LSTM layer: the Triton recurrence plus the GEMMs around it.

One layer, one direction (the reverse direction of a bidirectional layer is ``reverse=True``).

Forward:  Gx = X W_ih^T + (b_ih + b_hh)     one GEMM over all timesteps (cuBLAS)
          recurrence                         fusedrnn.kernels.lstm.lstm_fwd
Backward: dG (gradient of the pre-activations) from fusedrnn.kernels.lstm.lstm_bwd, then
          dX = dG W_ih,  dW_ih = dG^T X,  dW_hh = sum_t dG_t^T h_prev(t),
          db_ih = db_hh = sum_{t,b} dG,  dh_0 = dG_first W_hh,  dc_0 from the kernel,
          and for a projection dW_hr = sum_t dh_t^T m_t.
``h_prev(t)`` is the output of the step before, or h0 at a row's first step; ``dG_first``
is dG at each row's first step. All reductions are GEMMs or sums: deterministic, no atomics.
"""

import torch
from torch.autograd.function import once_differentiable

from fusedrnn.kernels import lstm as lstm_kernels


def _flat(t):
    return t.reshape(-1, t.shape[-1])


def first_and_last_steps(T, B, lengths, reverse, device):
    """Per row, the time index of its first and of its last step (lengths: (B,) or None)."""
    full = torch.full((B,), T - 1, dtype=torch.long, device=device)
    ends = lengths.long() - 1 if lengths is not None else full
    zeros = torch.zeros(B, dtype=torch.long, device=device)
    return (ends, zeros) if reverse else (zeros, ends)


class LSTMFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, batch_first, reverse):
        """x: (T, B, I), or (B, T, I) if batch_first; h0: (B, P), c0: (B, H) or None;
        w_hr: (P, H) or None; lengths: (B,) int tensor on x's device, or None."""
        H, P = w_hh.shape[0] // 4, w_hh.shape[1]
        x_tm = x.transpose(0, 1) if batch_first else x
        T, B = x_tm.shape[:2]
        if b_ih is not None:
            gx = torch.addmm(b_ih + b_hh, _flat(x), w_ih.t())
        else:
            gx = _flat(x) @ w_ih.t()
        gx = gx.view(*x.shape[:2], 4 * H)  # the layout of x: batch_first costs no copy
        gates = gx.transpose(0, 1) if batch_first else gx  # time-major view
        h0_ = h0 if h0 is not None else x.new_zeros(B, P)
        c0_ = c0 if c0 is not None else x.new_zeros(B, H)
        out, c, m = lstm_kernels.lstm_fwd(gates, w_hh, h0_, c0_, w_hr=w_hr, lengths=lengths, reverse=reverse)

        ctx.save_for_backward(x, h0_, c0_, w_ih, w_hh, w_hr, lengths, gates, c, m, out)
        ctx.batch_first, ctx.reverse = batch_first, reverse
        ctx.has_bias = b_ih is not None
        rows = torch.arange(B, device=x.device)
        _, last = first_and_last_steps(T, B, lengths, reverse, x.device)
        h_n = out[last, rows]  # a gather: a fresh tensor, not a view pinning all of out
        # c is carried through inactive steps, so the last step of the loop holds every c_n.
        c_n = c[0 if reverse else T - 1].to(x.dtype, copy=True)
        return (out.transpose(0, 1) if batch_first else out), h_n, c_n

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out, d_hn, d_cn):
        x, h0, c0, w_ih, w_hh, w_hr, lengths, gates, c, m, out = ctx.saved_tensors
        need = ctx.needs_input_grad
        T, B = gates.shape[:2]
        d_out_tm = d_out.transpose(0, 1) if ctx.batch_first else d_out
        d_gates, d_c0, d_h = lstm_kernels.lstm_bwd(
            gates, c, c0, w_hh, d_out_tm, d_hn, d_cn, w_hr=w_hr, lengths=lengths, reverse=ctx.reverse
        )
        # d_gates has the layout of x, so the flat views pair the same (t, b) rows.
        d_gates_x = d_gates.transpose(0, 1) if ctx.batch_first else d_gates
        rows = torch.arange(B, device=x.device)
        first, _ = first_and_last_steps(T, B, lengths, ctx.reverse, x.device)
        dx = dh0 = dc0 = dw_ih = dw_hh = db = dw_hr = None
        if need[0]:
            dx = (_flat(d_gates_x) @ w_ih).view(x.shape)
        if need[1]:
            dh0 = d_gates[first, rows] @ w_hh
        if need[2]:
            dc0 = d_c0.to(c0.dtype)
        if need[3]:
            dw_ih = _flat(d_gates_x).t() @ _flat(x)
        if need[4]:
            dw_hh = _flat(d_gates_x).t() @ _flat(_previous_h(out, h0, first, rows, ctx))
        if ctx.has_bias and (need[5] or need[6]):
            db = _flat(d_gates_x).sum(0, dtype=torch.float32).to(w_ih.dtype)
        if w_hr is not None and need[7]:
            dw_hr = _flat(d_h).t() @ _flat(m).float()
            dw_hr = dw_hr.to(w_hr.dtype)
        db_ih = db if need[5] else None
        db_hh = (db.clone() if need[5] else db) if need[6] else None  # two tensors, never one aliased
        return dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr, None, None, None


def _previous_h(out, h0, first, rows, ctx):
    """h_prev(t) for every step, in the layout of x (an H-sized copy, so that the 4H-wide
    d_gates stays a flat view): the output one step earlier in the recurrence, and h0 at
    each row's first step (the shifted output is zero there, or out of range)."""
    out_x = out.transpose(0, 1) if ctx.batch_first else out
    time_dim = 1 if ctx.batch_first else 0
    h_prev = out_x.roll(-1 if ctx.reverse else 1, dims=time_dim)
    if ctx.batch_first:
        h_prev[rows, first] = h0
    else:
        h_prev[first, rows] = h0
    return h_prev
