"""The LSTM in plain PyTorch ops: the CPU path of ``fusedrnn.LSTM`` and the tests' oracle.

Differentiable by autograd, any device and dtype. It follows the kernels' numerics: the
input projection is one GEMM in the input dtype; the recurrent product, the gates and the
cell state are computed in at least fp32; ``h_t`` is rounded to the input dtype every
step, as the kernels store it. For float32 and float64 inputs this is the textbook LSTM.
"""

import torch


def lstm_reference(x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None):
    """One layer, one direction, time-major.

    x: (T, B, I); h0, c0: (B, H) or None for zeros; w_ih: (4H, I); w_hh: (4H, H);
    b_ih, b_hh: (4H,) or None. Gate order (i, f, g, o), as in ``torch.nn.LSTM``.
    Returns ``output (T, B, H), (h_n (B, H), c_n (B, H))``.
    """
    T, B, _ = x.shape
    H = w_hh.shape[1]
    acc_dtype = torch.promote_types(x.dtype, torch.float32)
    gx = x @ w_ih.t()
    if b_ih is not None:
        gx = gx + (b_ih + b_hh)
    h = h0 if h0 is not None else x.new_zeros(B, H)
    c = c0.to(acc_dtype) if c0 is not None else x.new_zeros(B, H, dtype=acc_dtype)
    w_hh_t = w_hh.to(acc_dtype).t()
    outputs = []
    for t in range(T):
        gates = gx[t].to(acc_dtype) + h.to(acc_dtype) @ w_hh_t
        i, f, g, o = gates.chunk(4, dim=1)
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        c = f * c + i * g
        h = (o * torch.tanh(c)).to(x.dtype)
        outputs.append(h)
    return torch.stack(outputs), (h, c.to(x.dtype))
