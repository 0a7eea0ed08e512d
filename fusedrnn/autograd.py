"""Autograd Function of the fused LSTM: the Triton recurrence plus the GEMMs around it.

Forward:  Gx = X W_ih^T + (b_ih + b_hh)     one GEMM over all timesteps (cuBLAS)
          recurrence                         fusedrnn.kernels.lstm.lstm_fwd
Backward: dG (gradient of the pre-activations) from fusedrnn.kernels.lstm.lstm_bwd, then
          dX = dG W_ih,  dW_ih = dG^T X,  dW_hh = sum_t dG_t^T h_{t-1},
          db_ih = db_hh = sum_{t,b} dG,  dh_0 = dG_0 W_hh,  dc_0 from the kernel.
All reductions are GEMMs or sums: deterministic, no atomics.
"""

import torch
from torch.autograd.function import once_differentiable

from fusedrnn.kernels import lstm as lstm_kernels


def _flat(t):
    return t.reshape(-1, t.shape[-1])


class LSTMFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh, batch_first):
        """x: (T, B, I), or (B, T, I) if batch_first; h0, c0: (B, H) or None."""
        H = w_hh.shape[1]
        x_tm = x.transpose(0, 1) if batch_first else x
        T, B = x_tm.shape[:2]
        if b_ih is not None:
            gx = torch.addmm(b_ih + b_hh, _flat(x), w_ih.t())
        else:
            gx = _flat(x) @ w_ih.t()
        gx = gx.view(*x.shape[:2], 4 * H)  # the layout of x: batch_first costs no copy
        gates = gx.transpose(0, 1) if batch_first else gx  # time-major view
        h0_ = h0 if h0 is not None else x.new_zeros(B, H)
        c0_ = c0 if c0 is not None else x.new_zeros(B, H)
        out, c = lstm_kernels.lstm_fwd(gates, w_hh, h0_, c0_)

        ctx.save_for_backward(x, h0_, c0_, w_ih, w_hh, gates, c, out)
        ctx.batch_first = batch_first
        ctx.has_bias = b_ih is not None
        h_n = out[T - 1].clone()
        c_n = c[T - 1].to(x.dtype, copy=True)  # not a view that would pin all of c
        return (out.transpose(0, 1) if batch_first else out), h_n, c_n

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out, d_hn, d_cn):
        x, h0, c0, w_ih, w_hh, gates, c, out = ctx.saved_tensors
        need = ctx.needs_input_grad
        d_out_tm = d_out.transpose(0, 1) if ctx.batch_first else d_out
        d_gates, d_c0 = lstm_kernels.lstm_bwd(gates, c, c0, w_hh, d_out_tm, d_hn, d_cn)
        # d_gates has the layout of x, so the flat views pair the same (t, b) rows.
        d_gates_x = d_gates.transpose(0, 1) if ctx.batch_first else d_gates
        dx = dh0 = dc0 = dw_ih = dw_hh = db = None
        if need[0]:
            dx = (_flat(d_gates_x) @ w_ih).view(x.shape)
        if need[1]:
            dh0 = d_gates[0] @ w_hh
        if need[2]:
            dc0 = d_c0.to(c0.dtype)
        if need[3]:
            dw_ih = _flat(d_gates_x).t() @ _flat(x)
        if need[4]:
            # sum_t dG_t^T h_{t-1}, with h_{-1} = h0 (zeros if none was given).
            if ctx.batch_first:
                # Shift h by one step in the (B, T, H) layout: an H-sized copy, so that
                # d_gates (4H wide) stays a flat view.
                h_prev = torch.cat((h0[:, None], out.transpose(0, 1)[:, :-1]), dim=1)
                dw_hh = _flat(d_gates_x).t() @ _flat(h_prev)
            else:
                dw_hh = d_gates[0].t() @ h0
                if gates.shape[0] > 1:
                    dw_hh += _flat(d_gates[1:]).t() @ _flat(out[:-1])
        if ctx.has_bias and (need[5] or need[6]):
            db = _flat(d_gates_x).sum(0, dtype=torch.float32).to(w_ih.dtype)
        db_ih = db if need[5] else None
        db_hh = (db.clone() if need[5] else db) if need[6] else None  # two tensors, never one aliased
        return dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, None
