"""``fusedrnn.LSTMCell``: a drop-in ``torch.nn.LSTMCell`` whose forward is one fused Triton
launch on CUDA; its autograd Function and functional form. ``fusedrnn.RNNCell`` and
``fusedrnn.GRUCell`` (end of the file): drop-in ``torch.nn.RNNCell`` and ``GRUCell``, one
step of the recurrence kernels.

Forward:  gates, the activations and the cell update     fusedrnn.kernels.lstm_cell.lstm_cell_fwd
Backward: dG (gradient of the pre-activations) and dc     fusedrnn.kernels.lstm_cell.lstm_cell_bwd
          dx = dG W_ih, dh = dG W_hh, dW_ih = dG^T x, dW_hh = dG^T h, db_ih = db_hh = sum_b dG
          (cuBLAS; deterministic, no atomics).

Under ``torch.compile`` the launchers are called through the custom ops
``fusedrnn::lstm_cell_fwd`` and ``fusedrnn::lstm_cell_bwd`` (Dynamo cannot trace a Triton
launch under the interpreter, nor see inside a launcher that allocates); in eager mode they
are called directly, which saves the dispatcher's overhead on every step.
"""

from typing import Optional

import torch
from torch import nn

from fusedrnn._backend import WithBackend
from fusedrnn._double_backward import tie_to_double_backward_error
from fusedrnn._checks import KERNEL_DTYPES, check_backend, check_kernels_can_run, check_step_args
from fusedrnn import functional as F
from fusedrnn.functional import autocast_enabled, uses_torch_cpu
from fusedrnn.kernels.reference import lstm_cell_reference

# ----------------------------------------------------------------------------------------
# The launchers as custom ops, for torch.compile. The kernels module is imported lazily: it
# defines the @triton.jit kernels, which must come after TRITON_INTERPRET is set.


@torch.library.custom_op("fusedrnn::lstm_cell_fwd", mutates_args=())
def _lstm_cell_fwd_op(
    x: torch.Tensor,
    h: Optional[torch.Tensor],
    c: Optional[torch.Tensor],
    w_ih: torch.Tensor,
    w_hh: torch.Tensor,
    b_ih: Optional[torch.Tensor],
    b_hh: Optional[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from fusedrnn.kernels.lstm_cell import lstm_cell_fwd

    return lstm_cell_fwd(x, h, c, w_ih, w_hh, b_ih, b_hh)


@_lstm_cell_fwd_op.register_fake
def _(x, h, c, w_ih, w_hh, b_ih, b_hh):
    B, H = x.shape[0], w_hh.shape[1]
    out_dtype = torch.promote_types(x.dtype, c.dtype) if c is not None else x.dtype
    h_new, c_new = (x.new_empty(B, H, dtype=out_dtype) for _ in range(2))
    return h_new, c_new, x.new_empty(B, 4 * H, dtype=torch.float32)


@torch.library.custom_op("fusedrnn::lstm_cell_bwd", mutates_args=())
def _lstm_cell_bwd_op(
    gates: torch.Tensor,
    c: Optional[torch.Tensor],
    d_h: Optional[torch.Tensor],
    d_c: Optional[torch.Tensor],
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    from fusedrnn.kernels.lstm_cell import lstm_cell_bwd

    return lstm_cell_bwd(gates, c, d_h, d_c, dtype)


@_lstm_cell_bwd_op.register_fake
def _(gates, c, d_h, d_c, dtype):
    B, H = gates.shape[0], gates.shape[1] // 4
    return gates.new_empty(B, 4 * H, dtype=dtype), gates.new_empty(B, H, dtype=c.dtype if c is not None else dtype)


def _fwd(*args):
    if torch.compiler.is_compiling():
        return _lstm_cell_fwd_op(*args)
    from fusedrnn.kernels.lstm_cell import lstm_cell_fwd

    return lstm_cell_fwd(*args)


def _bwd(*args):
    if torch.compiler.is_compiling():
        return _lstm_cell_bwd_op(*args)
    from fusedrnn.kernels.lstm_cell import lstm_cell_bwd

    return lstm_cell_bwd(*args)


# ----------------------------------------------------------------------------------------


class LSTMCellFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, h, c, w_ih, w_hh, b_ih, b_hh):
        """x: (B, I); h, c: (B, H) or both None (zeros); b_ih, b_hh: (4H,) or both None."""
        h_new, c_new, gates = _fwd(x, h, c, w_ih, w_hh, b_ih, b_hh)
        ctx.save_for_backward(x, h, c, w_ih, w_hh, gates, b_ih, b_hh)  # biases: for the double-backward tie
        ctx.has_bias = b_ih is not None
        ctx.set_materialize_grads(False)  # an unused h' or c' costs no zero tensor
        return h_new, c_new

    @staticmethod
    def backward(ctx, d_h_new, d_c_new):
        """Once differentiable, with the LSTM's clear double-backward error (see
        ``fusedrnn.autograd.RecurrenceFunction.backward``)."""
        with torch.no_grad():
            grads = _cell_backward(ctx, d_h_new, d_c_new)
        if torch.is_grad_enabled():  # create_graph=True
            x, h, c, w_ih, w_hh, _, b_ih, b_hh = ctx.saved_tensors
            grads = tie_to_double_backward_error(grads, (x, h, c, w_ih, w_hh, b_ih, b_hh))
        return grads


def _cell_backward(ctx, d_h_new, d_c_new):
    """LSTMCellFunction's gradients (run without grad)."""
    x, h, c, w_ih, w_hh, gates, _, _ = ctx.saved_tensors
    need = ctx.needs_input_grad
    if d_h_new is None and d_c_new is None:
        return (None,) * 7
    d_gates, d_c = _bwd(gates, c, d_h_new, d_c_new, w_ih.dtype)
    dx = dh = dc = dw_ih = dw_hh = db_ih = db_hh = None
    if need[0]:
        dx = d_gates @ w_ih
    if need[1]:
        dh = d_gates @ w_hh
    if need[2]:
        dc = d_c
    if need[3]:
        dw_ih = d_gates.t() @ x
    if need[4]:
        dw_hh = d_gates.t() @ h if h is not None else torch.zeros_like(w_hh)
    if ctx.has_bias and (need[5] or need[6]):
        db = d_gates.sum(0, dtype=torch.float32).to(w_ih.dtype)
        db_ih = db if need[5] else None
        db_hh = (db.clone() if need[5] else db) if need[6] else None  # two tensors, never one aliased
    return dx, dh, dc, dw_ih, dw_hh, db_ih, db_hh


def lstm_cell(input, hx, weight_ih, weight_hh, bias_ih=None, bias_hh=None, *, backend="auto"):
    """One LSTM cell step, as ``torch.nn.LSTMCell`` computes it (gate order i, f, g, o).

    Args:
        input: ``(B, I)``.
        hx: ``(h, c)``, each ``(B, H)``, or ``None`` for zeros. ``c`` may have another
            floating dtype than the rest: the outputs then take ``promote(input, c)``, as in torch.
        weight_ih: ``(4H, I)``. weight_hh: ``(4H, H)``.
        bias_ih, bias_hh: ``(4H,)`` each, or both ``None``.
        backend: ``"auto"`` (the Triton kernel for CUDA tensors of float32/float16/bfloat16;
            on CPU torch's own cell op; the reference otherwise), ``"triton"`` (always the kernel; CPU tensors only under
            ``TRITON_INTERPRET=1``) or ``"reference"`` (plain PyTorch ops).

    Returns:
        ``(h', c')``, each ``(B, H)``. Under autocast: as ``torch.nn.LSTMCell`` (see
        ``_autocast_cell``).
    """
    check_backend(backend)
    if isinstance(hx, torch.Tensor):
        raise TypeError("lstm_cell(): hx must be a tuple (h, c) of two tensors, not a Tensor")
    if hx is not None and len(hx) != 2:
        raise RuntimeError("lstm_cell expects two hidden states")
    h, c = hx if hx is not None else (None, None)
    if autocast_enabled(input.device.type):
        return _autocast_cell(input, h, c, weight_ih, weight_hh, bias_ih, bias_hh, backend)
    check_step_args("lstm", input, (h, c), weight_ih, weight_hh, bias_ih, bias_hh)

    use_kernels = backend == "triton" or (
        backend == "auto"
        and input.is_cuda
        and input.dtype in KERNEL_DTYPES
        and (c is None or torch.promote_types(input.dtype, c.dtype) in KERNEL_DTYPES)
    )
    if use_kernels and input.shape[0] > 0:
        check_kernels_can_run(input)
        if c is not None and torch.promote_types(input.dtype, c.dtype) not in KERNEL_DTYPES:
            raise TypeError(
                f"backend='triton' computes float32, float16 and bfloat16; a {c.dtype} cell state "
                f"with {input.dtype} input needs backend='reference' (or 'auto')"
            )
        return LSTMCellFunction.apply(input, h, c, weight_ih, weight_hh, bias_ih, bias_hh)

    if h is None:
        h = c = input.new_zeros(input.shape[0], weight_hh.shape[1])
    out_dtype = torch.promote_types(input.dtype, c.dtype)
    if out_dtype != input.dtype:
        # A wider c: torch computes the cell update, and returns h' and c', in c's dtype.
        # The same math on exactly upcast inputs.
        input, h, weight_ih, weight_hh, bias_ih, bias_hh = (
            t.to(out_dtype) if t is not None else None for t in (input, h, weight_ih, weight_hh, bias_ih, bias_hh)
        )
    if uses_torch_cpu(input.device, backend):  # torch's own cell, what torch.nn.LSTMCell runs
        return torch._VF.lstm_cell(input, (h, c.to(out_dtype)), weight_ih, weight_hh, bias_ih, bias_hh)
    return lstm_cell_reference(input, h, c, weight_ih, weight_hh, bias_ih, bias_hh)


def _autocast_cell(input, h, c, w_ih, w_hh, b_ih, b_hh, backend):
    """What ``torch.nn.LSTMCell`` does under autocast. On CUDA ``lstm_cell`` is on autocast's
    lower-precision list: every floating argument but float64 is cast to the autocast dtype,
    and so are the outputs. On CPU it is on no list: only its two GEMMs autocast (x, h, the
    weights and biases cast), the cell update runs in c's dtype, which the outputs take (c is
    zeros of the input's dtype when hx is None)."""
    device_type = input.device.type
    dtype = torch.get_autocast_dtype(device_type)

    def cast(t):
        return t.to(dtype) if t is not None and t.is_floating_point() and t.dtype != torch.float64 else t

    whole_cell = device_type != "cpu"
    if c is None and not whole_cell:
        h = c = input.new_zeros(*input.shape[:-1], w_hh.shape[-1])
    h, x, w_ih, w_hh, b_ih, b_hh = map(cast, (h, input, w_ih, w_hh, b_ih, b_hh))
    c = cast(c) if whole_cell else c
    with torch.autocast(device_type, enabled=False):
        return lstm_cell(x, (h, c) if h is not None else None, w_ih, w_hh, b_ih, b_hh, backend=backend)


class LSTMCell(WithBackend, nn.LSTMCell):
    """Drop-in replacement for :class:`torch.nn.LSTMCell`.

    Same constructor, parameters (``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh``),
    initialisation, ``state_dict``, input and output shapes, errors and autocast behaviour as
    ``torch.nn.LSTMCell``, plus a keyword-only ``backend``: ``"auto"`` (default: the fused
    Triton kernel for CUDA tensors in float32/float16/bfloat16; on CPU, outside
    torch.compile, ``torch.nn.LSTMCell.forward`` itself; the PyTorch reference otherwise),
    ``"triton"`` (always the kernel; CPU tensors only under ``TRITON_INTERPRET=1``) or
    ``"reference"``.
    """

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None, *, backend="auto"):
        super().__init__(input_size, hidden_size, bias, device=device, dtype=dtype)
        self._set_backend(backend)

    def forward(self, input, hx=None):
        if uses_torch_cpu(input.device, self.backend):
            # torch.nn.LSTMCell itself: its checks, autocast rule and op, without a Python
            # layer of ours around them (at B = 1 that layer cost more than the step).
            return super().forward(input, hx)
        # torch.nn.LSTMCell.forward's own checks and unbatched handling, so errors read as torch's.
        if input.dim() not in (1, 2):
            raise ValueError(f"LSTMCell: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if hx is not None:
            for idx, value in enumerate(hx):
                if value.dim() not in (1, 2):
                    raise ValueError(f"LSTMCell: Expected hx[{idx}] to be 1D or 2D, got {value.dim()}D instead")
        is_batched = input.dim() == 2
        if not is_batched:
            input = input.unsqueeze(0)
            if hx is not None:
                hx = (hx[0].unsqueeze(0), hx[1].unsqueeze(0))
        h, c = lstm_cell(
            input, hx, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh, backend=self.backend
        )
        if not is_batched:
            return h.squeeze(0), c.squeeze(0)
        return h, c


# ----------------------------------------------------------------------------------------
# The RNN's cell: one step of the recurrence kernels (T = 1), no kernel of its own.


def rnn_cell(input, hx, weight_ih, weight_hh, bias_ih=None, bias_hh=None, *, nonlinearity="tanh", backend="auto"):
    """One step of ``torch.nn.RNNCell``: ``h' = act(x W_ih^T + b_ih + h W_hh^T + b_hh)``.

    input: ``(B, I)``; hx: ``(B, H)`` or None for zeros; weights ``(H, I)``, ``(H, H)``,
    biases ``(H,)`` or both None. ``backend`` as :func:`lstm_cell`: the kernels run it as a
    one-step recurrence (``fusedrnn.functional.rnn`` with T = 1, its autograd and ops), the
    reference as the reference's step; on CPU under ``"auto"`` torch's own cell op.
    Returns ``h'`` ``(B, H)``."""
    if nonlinearity not in ("tanh", "relu"):
        raise RuntimeError(f"Unknown nonlinearity: {nonlinearity}")  # torch's, at the call
    return _h_only_step(F.rnn_cell_name(nonlinearity), input, hx, weight_ih, weight_hh, bias_ih, bias_hh, backend)


def gru_cell(input, hx, weight_ih, weight_hh, bias_ih=None, bias_hh=None, *, backend="auto"):
    """One step of ``torch.nn.GRUCell`` (``fusedrnn.functional.gru``'s equations), as
    :func:`rnn_cell`, with weights ``(3H, I)``, ``(3H, H)`` and biases ``(3H,)``."""
    return _h_only_step("gru", input, hx, weight_ih, weight_hh, bias_ih, bias_hh, backend)


def _h_only_step(cell, input, hx, weight_ih, weight_hh, bias_ih, bias_hh, backend):
    """:func:`rnn_cell` and :func:`gru_cell`: one step of a cell whose only state is h."""
    check_backend(backend)
    if autocast_enabled(input.device.type):
        if uses_torch_cpu(input.device, backend):  # torch's op under torch's own autocast rule
            return getattr(torch._VF, f"{cell}_cell")(input, hx if hx is not None else input.new_zeros(
                input.shape[0], weight_hh.shape[1]), weight_ih, weight_hh, bias_ih, bias_hh)  # fmt: skip
        # as the layers: every floating argument in the autocast dtype, the step without autocast
        return F._without_autocast(_h_only_step, cell, input, hx, weight_ih, weight_hh, bias_ih, bias_hh, backend)
    check_step_args(cell, input, (hx,), weight_ih, weight_hh, bias_ih, bias_hh)
    if uses_torch_cpu(input.device, backend):
        if hx is None:
            hx = input.new_zeros(input.shape[0], weight_hh.shape[1])
        op = getattr(torch._VF, f"{cell}_cell")  # rnn_tanh_cell, rnn_relu_cell, gru_cell
        return op(input, hx, weight_ih, weight_hh, bias_ih, bias_hh)
    # torch's cells' products are cuBLAS GEMMs, which follow the matmul TF32 switch (default
    # off), not cuDNN's that the recurrence kernels follow as torch.nn.RNN does: the step is
    # planned under the cell's switch. (At T = 1 the backward has no recurrent product.)
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32
    try:
        _, h_n = F._h_only_layer(cell, input[None], hx, weight_ih, weight_hh, bias_ih, bias_hh, batch_first=False,
                                 reverse=False, lengths=None, backend=backend)  # fmt: skip
    finally:
        torch.backends.cudnn.allow_tf32 = saved
    return h_n


class _HOnlyCell(WithBackend):
    """The forward of :class:`RNNCell` and :class:`GRUCell`: torch's on CPU under ``"auto"``,
    otherwise torch's checks and unbatched handling around ``_step``."""

    def forward(self, input, hx=None):
        if uses_torch_cpu(input.device, self.backend):
            return super().forward(input, hx)  # torch's cell module itself
        # torch's forward's own checks and unbatched handling, so errors read as torch's.
        name = type(self).__name__
        if input.dim() not in (1, 2):
            raise ValueError(f"{name}: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if hx is not None and hx.dim() not in (1, 2):
            raise ValueError(f"{name}: Expected hidden to be 1D or 2D, got {hx.dim()}D instead")
        is_batched = input.dim() == 2
        if not is_batched:
            input = input.unsqueeze(0)
            hx = hx.unsqueeze(0) if hx is not None else None
        h = self._step(input, hx)
        return h if is_batched else h.squeeze(0)


class RNNCell(_HOnlyCell, nn.RNNCell):
    """Drop-in replacement for :class:`torch.nn.RNNCell` (tanh or relu): torch's constructor,
    parameters, initialisation, ``state_dict``, shapes and errors, plus a keyword-only
    ``backend`` (as :class:`LSTMCell`'s). On CUDA a step runs the recurrence kernels with
    T = 1; on CPU under ``"auto"``, outside torch.compile, ``torch.nn.RNNCell.forward`` itself."""

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh", device=None, dtype=None, *,
                 backend="auto"):  # fmt: skip
        super().__init__(input_size, hidden_size, bias, nonlinearity, device=device, dtype=dtype)
        self._set_backend(backend)

    def _step(self, input, hx):
        return rnn_cell(input, hx, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh,
                        nonlinearity=self.nonlinearity, backend=self.backend)  # fmt: skip


class GRUCell(_HOnlyCell, nn.GRUCell):
    """Drop-in replacement for :class:`torch.nn.GRUCell`, as :class:`RNNCell` is for
    ``torch.nn.RNNCell``: a step of the recurrence kernels with T = 1 on CUDA, on CPU under
    ``"auto"`` ``torch.nn.GRUCell.forward`` itself."""

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None, *, backend="auto"):
        super().__init__(input_size, hidden_size, bias, device=device, dtype=dtype)
        self._set_backend(backend)

    def _step(self, input, hx):
        return gru_cell(input, hx, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh, backend=self.backend)
