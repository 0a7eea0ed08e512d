"""Autograd Function of one fused recurrent layer, for every cell (``kernels/cells.py``): the
Triton recurrence plus the GEMMs around it.

One layer, one direction (the reverse direction of a bidirectional layer is ``reverse=True``).

Forward:  Gx = X W_ih^T + (b_ih + b_hh)     one GEMM over all timesteps (cuBLAS)
          recurrence                         fusedrnn.kernels.recurrence.recurrence_fwd
Backward: dG (gradient of the pre-activations) from fusedrnn.kernels.recurrence.recurrence_bwd, then
          dX = dG W_ih,  dW_ih = dG^T X,  dW_hh = sum_t dG_t^T h_prev(t),
          db_ih = db_hh = sum_{t,b} dG,  dh_0 = dG_first W_hh,  the LSTM's dc_0 from the
          kernel, and for a projection dW_hr = sum_t dh_t^T m_t.
``h_prev(t)`` is the output of the step before, or h0 at a row's first step; ``dG_first``
is dG at each row's first step. All reductions are GEMMs or sums: deterministic, no atomics.
In fp32, dh_0's product is IEEE even under TF32 (``mm_ieee``); the other GEMMs follow torch's setting.

The GRU (``CellSpec.split_gate_grads``): Gx folds b_ih + (b_hr, b_hz, 0) and b_hn enters the
step (``reference.gru_bias_split``); the step saves hn = W_hn h + b_hn beside the gates. Its
dG has two sides that differ in the n slot: the kernel returns the recurrent side's
(r * da_n there) in d_gates, for dW_hh, db_hh and dh_0 (plus the part of dh_0 that came
through z * h, carried in the kernel as the LSTM's dc), and the input side's n slot (da_n)
apart, which then replaces d_gates' n slot for dX, dW_ih and db_ih.

The two launches run as custom operators, ``torch.ops.fusedrnn.recurrence_fwd`` (the Gx GEMM and
the forward recurrence) and ``torch.ops.fusedrnn.recurrence_bwd``, the cell (its
``CellSpec.name``) their first argument: torch.compile keeps them opaque and traces the rest
of this Function around them, with no graph break. A backward that frees the graph (no
``retain_graph``, not compiled) runs ``torch.ops.fusedrnn.recurrence_bwd_`` instead, which
writes dG over the saved gates: peak training memory then holds one (T, B, G*H) buffer, not two. The backward is once
differentiable; a second differentiation raises ``fusedrnn._double_backward.DOUBLE_BACKWARD_ERROR``.
"""

import threading
from typing import Optional

import torch
from torch import Tensor

from fusedrnn._double_backward import tie_to_double_backward_error
from fusedrnn.kernels import recurrence
from fusedrnn.kernels.cells import CELLS, GRU
from fusedrnn.kernels.reference import gru_bias_split, valid_steps


def _time_major(t, batch_first):
    return t.transpose(0, 1) if batch_first else t


def _flat(t):
    return t.reshape(-1, t.shape[-1])


# The Gx GEMM runs inside the forward op so that the buffer the kernel overwrites with the
# pre-activations is born there: the op is functional (returns them as a new tensor) and
# needs neither mutates_args nor a defensive copy of Gx under torch.compile.
def _or_empty(t, like):
    """``t``, or an empty tensor for None: an op cannot return None."""
    return t if t is not None else like.new_empty(0)


@torch.library.custom_op("fusedrnn::recurrence_fwd", mutates_args=())
def recurrence_fwd_op(
    cell: str, x: Tensor, w_ih: Tensor, bias: Optional[Tensor], w_hh: Tensor, h0: Tensor, c0: Optional[Tensor],
    w_hr: Optional[Tensor], lengths: Optional[Tensor], batch_first: bool, reverse: bool, b_hn: Optional[Tensor],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """Gx GEMM and forward recurrence of ``cell`` (a CELLS name). Returns ``out`` and
    ``gates`` (the pre-activations) in the layout of x, ``c`` (T, B, H) fp32 for a cell with
    c, ``m`` (T, B, H) for a projection, and the GRU's ``hn`` (T, B, H, time-major); an empty
    tensor for each absent one. ``b_hn``: the GRU's bias inside the step (None: zeros)."""
    gx = torch.addmm(bias, _flat(x), w_ih.t()) if bias is not None else _flat(x) @ w_ih.t()
    gates = gx.view(*x.shape[:2], w_hh.shape[0])  # the layout of x: batch_first costs no copy
    out, c, m, hn = recurrence.recurrence_fwd(
        CELLS[cell], _time_major(gates, batch_first), w_hh, h0, c0, w_hr=w_hr, lengths=lengths, reverse=reverse,
        b_hn=b_hn,
    )  # fmt: skip
    return _time_major(out, batch_first), gates, _or_empty(c, x), _or_empty(m, x), _or_empty(hn, x)


@recurrence_fwd_op.register_fake
def _(cell, x, w_ih, bias, w_hh, h0, c0, w_hr, lengths, batch_first, reverse, b_hn):
    # The launcher's own allocations, so shapes and strides cannot drift from the real op's.
    spec = CELLS[cell]
    gates = x.new_empty(*x.shape[:2], w_hh.shape[0])
    H, P = w_hh.shape[0] // spec.gates, w_hh.shape[1]
    out, c, m, hn = recurrence.forward_outputs(spec, _time_major(gates, batch_first), H, P, w_hr is not None)
    return _time_major(out, batch_first), gates, _or_empty(c, x), _or_empty(m, x), _or_empty(hn, x)


def _backward_kernels(cell, gates, c, c0, w_hh, d_out, d_hn, d_cn, w_hr, lengths, batch_first, reverse, hn, out,
                      h0, into_gates, fake=False):  # fmt: skip
    """The two backward ops' body (``fake``: only their allocations): ``d_gates`` in the
    layout of x (``gates`` itself when ``into_gates``), ``d_c0``, ``d_h`` and the GRU's
    ``d_gx_n`` (time-major; ``hn`` itself when ``into_gates``), or an empty tensor for each
    absent one."""
    spec = CELLS[cell]
    gates_tm = _time_major(gates, batch_first)
    if fake:
        outputs = recurrence.backward_outputs(spec, gates_tm, d_cn, w_hh.shape[1], w_hr is not None, into_gates, hn)
    else:
        outputs = recurrence.recurrence_bwd(
            spec, gates_tm, c, c0, w_hh, _time_major(d_out, batch_first), d_hn, d_cn,
            w_hr=w_hr, lengths=lengths, reverse=reverse, d_gates_into_gates=into_gates, hn=hn,
            out=_time_major(out, batch_first) if out is not None else None, h0=h0,
        )  # fmt: skip
    d_gates, d_c0, d_h, d_gx_n = outputs
    return (_time_major(d_gates, batch_first), _or_empty(d_c0, gates), _or_empty(d_h, gates),
            _or_empty(d_gx_n, gates))  # fmt: skip


@torch.library.custom_op("fusedrnn::recurrence_bwd", mutates_args=())
def recurrence_bwd_op(
    cell: str, gates: Tensor, c: Optional[Tensor], c0: Optional[Tensor], w_hh: Tensor, d_out: Tensor,
    d_hn: Tensor, d_cn: Optional[Tensor], w_hr: Optional[Tensor], lengths: Optional[Tensor], batch_first: bool,
    reverse: bool, hn: Optional[Tensor], out: Optional[Tensor], h0: Optional[Tensor],
) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """Backward recurrence. gates, d_out (and the GRU's out) in the layout of x. Returns
    ``d_gates`` in the layout of x, ``d_c0`` (B, H) fp32 for a cell with c (the GRU's: the
    part of dh0 through z * h), ``d_h`` (T, B, P) fp32 for a projection, and the GRU's
    ``d_gx_n`` (T, B, H); an empty tensor for each absent one."""
    return _backward_kernels(cell, gates, c, c0, w_hh, d_out, d_hn, d_cn, w_hr, lengths, batch_first, reverse, hn,
                             out, h0, False)  # fmt: skip


@recurrence_bwd_op.register_fake
def _(*args):
    return _backward_kernels(*args, into_gates=False, fake=True)


@torch.library.custom_op("fusedrnn::recurrence_bwd_", mutates_args=("gates", "hn"))
def recurrence_bwd_inplace_op(
    cell: str, gates: Tensor, c: Optional[Tensor], c0: Optional[Tensor], w_hh: Tensor, d_out: Tensor,
    d_hn: Tensor, d_cn: Optional[Tensor], w_hr: Optional[Tensor], lengths: Optional[Tensor], batch_first: bool,
    reverse: bool, hn: Optional[Tensor], out: Optional[Tensor], h0: Optional[Tensor],
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """``recurrence_bwd`` writing d_gates over ``gates`` (the backward's largest buffer
    saved), and the GRU's d_gx_n over ``hn``. Returns ``d_c0`` and ``d_h`` (or an empty
    tensor for each absent one)."""
    return _backward_kernels(cell, gates, c, c0, w_hh, d_out, d_hn, d_cn, w_hr, lengths, batch_first, reverse, hn,
                             out, h0, True)[1:3]  # fmt: skip


@recurrence_bwd_inplace_op.register_fake
def _(*args):
    return _backward_kernels(*args, into_gates=True, fake=True)[1:3]


_PRECISION_LOCK = threading.Lock()


@torch.library.custom_op("fusedrnn::mm_ieee", mutates_args=())
def mm_ieee(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b``, an fp32 product taken in IEEE fp32 even where the caller allows cuBLAS TF32.

    For dh_0 = dG_first W_hh: one product straight into grad h0, so TF32's rounding lands
    there undiluted: fp32-TF32 grad h0 was 2.2x cuDNN's error on an H200, and a CPU model of
    the roundings traces 40% of it to this product (bench/NOTES.md v1.13). It is one
    (B, G*H) x (G*H, P) product a backward. A custom op, so that a graph compiled
    under TF32 keeps it IEEE: the precision setting is read when cuBLAS runs, not traced."""
    matmul = torch.backends.cuda.matmul
    # The setting is process-wide and each device's backward runs in a thread of its own: two
    # interleaved save/set/restore sequences could leave IEEE set for good, hence the lock.
    with _PRECISION_LOCK:
        saved = matmul.fp32_precision
        matmul.fp32_precision = "ieee"
        try:
            return torch.mm(a, b)
        finally:
            matmul.fp32_precision = saved


@mm_ieee.register_fake
def _(a, b):
    return a.new_empty(a.shape[0], b.shape[1])


def gates_free_after_backward():
    """Whether the running backward frees the graph's saved tensors (no ``retain_graph``), so
    that the saved gates may take their own gradient. Not under torch.compile, whose backward
    graph is traced once for every later call; nor where torch does not say (a private
    function of its autograd engine, present in the torch versions this project runs; torch's
    AOTAutograd asks it the same question before it lets a compiled backward free what it
    saved)."""
    if torch.compiler.is_compiling():
        return False
    keep_graph = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
    try:
        return keep_graph is not None and not keep_graph()
    except RuntimeError:  # not inside a backward pass
        return False


def first_and_last_steps(T, B, lengths, reverse, device):
    """Per row, the time index of its first and of its last step (lengths: (B,) or None)."""
    full = torch.full((B,), T - 1, dtype=torch.long, device=device)
    ends = lengths.long() - 1 if lengths is not None else full
    zeros = torch.zeros(B, dtype=torch.long, device=device)
    return (ends, zeros) if reverse else (zeros, ends)


def implements(cell):
    """Whether RecurrenceFunction runs ``cell`` (a CELLS name): either both biases folded into
    Gx (one summed gradient for each), one gate-gradient tensor, the pre-activations saved
    over Gx; or exactly the GRU's description (b_hn inside the step, the n slot's two
    gradients, hn saved beside the gates). Any other description needs more here first."""
    spec = CELLS[cell]
    simple = spec.folded_biases == ("b_ih", "b_hh") and not spec.split_gate_grads and spec.saved_tiles == spec.gates
    return simple or spec == GRU


class RecurrenceFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, batch_first, reverse):
        """cell: a CELLS name. x: (T, B, I), or (B, T, I) if batch_first; h0: (B, P) or None;
        c0: (B, H) or None (always None for a cell without c); w_hr: (P, H) or None; lengths:
        (B,) int tensor on x's device, or None. Returns out, h_n and c_n (an empty tensor,
        not differentiable, for a cell without c)."""
        spec = CELLS[cell]
        if not implements(cell):
            raise NotImplementedError(f"RecurrenceFunction does not implement the {cell} cell's {spec}")
        has_c = "c" in spec.states
        H, P = w_hh.shape[0] // spec.gates, w_hh.shape[1]
        T, B = _time_major(x, batch_first).shape[:2]
        bias = b_hn = None
        if b_ih is not None and spec.split_gate_grads:  # the GRU: b_hn stays inside the step
            bias, b_hn = gru_bias_split(b_ih, b_hh)
        elif b_ih is not None:
            bias = b_ih + b_hh
        h0_ = h0 if h0 is not None else x.new_zeros(B, P)
        c0_ = (c0 if c0 is not None else x.new_zeros(B, H)) if has_c else None
        out_x, gates, c, m, hn = torch.ops.fusedrnn.recurrence_fwd(
            cell, x, w_ih, bias, w_hh, h0_, c0_, w_hr, lengths, batch_first, reverse, b_hn
        )
        m = m if w_hr is not None else None
        c = c if has_c else None
        hn = hn if spec.split_gate_grads else None

        ctx.save_for_backward(x, h0_, c0_, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, gates, c, m, out_x, hn)
        ctx.cell, ctx.batch_first, ctx.reverse = cell, batch_first, reverse
        ctx.has_bias = b_ih is not None
        rows = torch.arange(B, device=x.device)
        _, last = first_and_last_steps(T, B, lengths, reverse, x.device)
        h_n = _time_major(out_x, batch_first)[last, rows]  # a gather: fresh, not a view pinning out
        if not has_c:
            c_n = x.new_empty(0)
            ctx.mark_non_differentiable(c_n)
            return out_x, h_n, c_n
        # c is carried through inactive steps, so the last step of the loop holds every c_n.
        c_n = c[0 if reverse else T - 1].to(x.dtype, copy=True)
        return out_x, h_n, c_n

    @staticmethod
    def backward(ctx, d_out, d_hn, d_cn):
        """Once differentiable. As with torch's ``once_differentiable`` it computes without
        grad; under ``create_graph=True`` it ties its results to a node that raises
        DOUBLE_BACKWARD_ERROR when a second differentiation reaches it. That node links to
        the Function's inputs: torch's links to none, so ``torch.autograd.grad`` of a weight
        fails with "does not require grad" or "not used in the graph" instead."""
        with torch.no_grad():
            grads = _backward(ctx, d_out, d_hn, d_cn)
        if torch.is_grad_enabled():  # create_graph=True (never under torch.compile's trace)
            inputs = ctx.saved_tensors[:8]  # x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr
            grads = (None, *tie_to_double_backward_error(grads[1:], inputs))
        return grads


def _backward(ctx, d_out, d_hn, d_cn):
    """RecurrenceFunction's gradients (run without grad), the cell's argument first (None)."""
    x, h0, c0, w_ih, w_hh, _, _, w_hr, lengths, gates, c, m, out_x, hn = ctx.saved_tensors
    need = ctx.needs_input_grad[1:]  # the inputs after the cell's name
    has_c, split = c is not None, hn is not None  # split: the GRU's two sides of the n slot
    T, B = _time_major(gates, ctx.batch_first).shape[:2]
    # d_gates_x has the layout of x, so the flat views pair the same (t, b) rows.
    args = (ctx.cell, gates, c, c0, w_hh, d_out, d_hn, d_cn if has_c else None, w_hr, lengths, ctx.batch_first,
            ctx.reverse, hn, out_x if split else None, h0 if split else None)  # fmt: skip
    if gates_free_after_backward():
        d_c0, d_h = torch.ops.fusedrnn.recurrence_bwd_(*args)
        d_gates_x, d_gx_n = gates, hn
    else:
        d_gates_x, d_c0, d_h, d_gx_n = torch.ops.fusedrnn.recurrence_bwd(*args)
    d_gates = _time_major(d_gates_x, ctx.batch_first)
    rows = torch.arange(B, device=x.device)
    first, _ = first_and_last_steps(T, B, lengths, ctx.reverse, x.device)
    dx = dh0 = dc0 = dw_ih = dw_hh = db_ih = db_hh = dw_hr = None
    # The recurrent side first (dW_hh, db_hh, dh0): for the GRU, d_gates then takes the
    # input side's n slot in place, for dx, dW_ih and db_ih.
    # Each row's first step reads h0 (first: 0, or in reverse its last valid time index).
    d_gates_first = d_gates[first, rows] if need[1] or need[4] else None
    if need[1]:
        dh0 = mm_ieee(d_gates_first, w_hh) if w_hh.dtype == torch.float32 else d_gates_first @ w_hh
        if split:  # and what reached h0 through the first step's z * h
            dh0 = dh0 + d_c0.to(dh0.dtype)
    if need[2] and has_c:
        dc0 = d_c0.to(c0.dtype)
    if need[4]:
        dw_hh = _weight_hh_grad(d_gates_x, d_gates_first, out_x, h0, ctx)
    if ctx.has_bias and need[6]:
        db_hh = _flat(d_gates_x).sum(0, dtype=torch.float32).to(w_ih.dtype)
    if split:
        H = d_gx_n.shape[-1]
        d_gates[..., 2 * H :].copy_(d_gx_n)
    if need[0]:
        dx = (_flat(d_gates_x) @ w_ih).view(x.shape)
    if need[3]:
        # dG is zero past each row's length, but 0 * NaN is NaN: the padding (whatever it
        # holds) must not meet it. A masked copy of x, only with lengths.
        if lengths is not None:
            valid = valid_steps(T, lengths, x.device)
            x = x.masked_fill(~(valid.t() if ctx.batch_first else valid)[..., None], 0)
        dw_ih = _flat(d_gates_x).t() @ _flat(x)
    if ctx.has_bias and need[5]:
        if split or db_hh is None:
            db_ih = _flat(d_gates_x).sum(0, dtype=torch.float32).to(w_ih.dtype)
        else:
            db_ih = db_hh.clone()  # the same sum; two tensors, never one aliased
    if w_hr is not None and need[7]:
        # d_h is fp32 and P <= H wide: cast it, not the H-wide m.
        dw_hr = _flat(d_h).to(m.dtype).t() @ _flat(m)
    return None, dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr, None, None, None


def _weight_hh_grad(d_gates_x, d_gates_first, out_x, h0, ctx):
    """sum_t dG_t^T h_prev(t). A row's first step pairs with h0; every other step with the
    output one step earlier in the recurrence (zero where the row was inactive, so a reverse
    row's first step adds nothing there). The sum accumulates in place (addmm_): a second
    (4H, P) product and their sum would be two more weight-sized buffers at the peak, which
    at small B*T dominate the backward's memory."""
    dw_hh = d_gates_first.t() @ h0
    time_dim = 1 if ctx.batch_first else 0
    if out_x.shape[time_dim] == 1:
        return dw_hh
    if not ctx.batch_first:  # time-major: the shifted pairs are flat views, no copy
        later, earlier = (d_gates_x[:-1], out_x[1:]) if ctx.reverse else (d_gates_x[1:], out_x[:-1])
        return dw_hh.addmm_(_flat(later).t(), _flat(earlier))
    # Batch-major: a shift along T breaks the flat view. Shift h (P wide), not dG (4H wide);
    # the column that wraps around pairs with steps already counted against h0: zero it.
    h_prev = out_x.roll(-1 if ctx.reverse else 1, dims=1)
    h_prev[:, -1 if ctx.reverse else 0] = 0
    return dw_hh.addmm_(_flat(d_gates_x).t(), _flat(h_prev))
