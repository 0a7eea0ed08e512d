"""Functional API: one layer (``lstm``, ``rnn``, ``gru``) and a stack of them (``lstm_layers``,
``rnn_layers``, ``gru_layers``), every cell through one stack driver (``recurrent_layers``) and one backend
rule (``use_kernels``, ``uses_torch_cpu``)."""

import functools

import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from fusedrnn.kernels.cells import CELLS
from fusedrnn.kernels.reference import gru_reference, lstm_reference, rnn_reference

from fusedrnn._checks import (  # noqa: F401  (BACKENDS, KERNEL_DTYPES, check_params_like: this module's API as before)
    BACKENDS,
    KERNEL_DTYPES,
    check_kernels_can_run,
    check_lengths,
    check_params_like,
    check_sequence_args,
)


def lstm(
    input,
    hx,
    weight_ih,
    weight_hh,
    bias_ih=None,
    bias_hh=None,
    weight_hr=None,
    *,
    batch_first=False,
    reverse=False,
    lengths=None,
    backend="auto",
):
    """One LSTM layer, one direction, as ``torch.nn.LSTM`` computes it (gate order i, f, g, o).

    Args:
        input: ``(T, B, I)``, or ``(B, T, I)`` if ``batch_first``.
        hx: ``(h0, c0)``, ``h0 (B, P)`` and ``c0 (B, H)``, or ``None`` for zeros.
        weight_ih: ``(4H, I)``. weight_hh: ``(4H, P)``.
        bias_ih, bias_hh: ``(4H,)`` each, or both ``None``.
        weight_hr: ``(P, H)``: an LSTMP layer, ``h_t = W_hr (o_t * tanh(c_t))``; or ``None``,
            and then ``P = H``.
        batch_first: layout of ``input`` and ``output``.
        reverse: run the sequence backwards (the second direction of a bidirectional layer).
        lengths: ``(B,)`` integer tensor (or list) of sequence lengths in ``[1, T]``, or
            ``None``. Row ``b`` stops after its own ``lengths[b]`` steps (reverse: starts at
            its step ``lengths[b] - 1``): its ``h_n, c_n`` are its own last step's, its
            output is zero past its length, and the kernels do no work that leaks there.
        backend: ``"auto"`` (Triton kernels for CUDA tensors of float32/float16/bfloat16;
            on CPU torch's own LSTM, see :func:`uses_torch_cpu`; the reference otherwise),
            ``"triton"`` (always the kernels; CPU tensors only under ``TRITON_INTERPRET=1``)
            or ``"reference"`` (plain PyTorch ops).

    Returns:
        ``output, (h_n, c_n)``: output ``(T, B, P)`` (``(B, T, P)`` if ``batch_first``),
        ``h_n (B, P)`` and ``c_n (B, H)``. Every input that requires grad gets a gradient, in
        training and in eval mode alike.

    Under ``torch.autocast`` floating tensors other than float64 are cast to the autocast dtype
    first, and the results come out in it, as ``torch.nn.LSTM`` does.
    """
    if autocast_enabled(input.device.type):
        return _without_autocast(
            lstm, input, hx, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr,
            batch_first=batch_first, reverse=reverse, lengths=lengths, backend=backend,
        )  # fmt: skip
    h0, c0 = hx if hx is not None else (None, None)
    check_sequence_args(input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, batch_first, backend)
    T, batch_size = (input.shape[1], input.shape[0]) if batch_first else input.shape[:2]
    lengths = check_lengths(lengths, T, batch_size, input.device)
    if use_kernels(input, backend) and batch_size > 0:
        check_kernels_can_run(input)
        from fusedrnn.autograd import RecurrenceFunction

        output, h_n, c_n = RecurrenceFunction.apply(
            "lstm", input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, lengths, batch_first, reverse
        )
        return output, (h_n, c_n)
    if uses_torch_cpu(input.device, backend) and not (reverse and lengths is not None):
        weights = [w for w in (weight_ih, weight_hh, bias_ih, bias_hh, weight_hr) if w is not None]
        state = (h0[None], c0[None]) if h0 is not None else None
        time_dim = 1 if batch_first else 0
        if reverse:  # the second direction of a bidirectional layer: the sequence flipped
            input = input.flip(time_dim)
        output, (h_n, c_n) = torch_cpu_layers("lstm", input, state, weights, batch_first=batch_first, lengths=lengths)
        return (output.flip(time_dim) if reverse else output), (h_n[0], c_n[0])

    x = input.transpose(0, 1) if batch_first else input
    output, (h_n, c_n) = lstm_reference(
        x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, reverse=reverse, lengths=lengths
    )
    return (output.transpose(0, 1) if batch_first else output), (h_n, c_n)


def lstm_layers(
    input,
    hx,
    weights,
    *,
    num_layers=1,
    bidirectional=False,
    dropout=0.0,
    training=False,
    batch_first=False,
    lengths=None,
    backend="auto",
):
    """A stack of LSTM layers, as ``torch.nn.LSTM``'s forward.

    Args:
        input: ``(T, B, I)``, or ``(B, T, I)`` if ``batch_first``.
        hx: ``(h0, c0)``, ``h0 (L*D, B, P)`` and ``c0 (L*D, B, H)`` with ``D = 2`` if
            bidirectional else 1, or ``None`` for zeros.
        weights: per layer and direction (the reverse one second), ``[w_ih, w_hh]``, then
            ``[b_ih, b_hh]`` if there are biases, then ``[w_hr]`` for a projection: the order
            of ``torch.nn.LSTM._flat_weights``.
        dropout: probability of zeroing the output of each layer but the last, in training.
        lengths: as in :func:`lstm`, for every layer.

    Returns:
        ``output, (h_n, c_n)``: output ``(T, B, D*P)``, ``h_n (L*D, B, P)``,
        ``c_n (L*D, B, H)``, where ``h_n[l*D + d]`` is layer l, direction d.
    """
    def check_first_layer(h0, c0, w):
        # As the reference path checks them (torch's own checks would catch the rest, with
        # torch's messages).
        has_bias = len(w) in (4, 5)
        check_sequence_args(input, h0, c0, w[0], w[1], *(w[2:4] if has_bias else (None, None)),
                    w[-1] if len(w) in (3, 5) else None, batch_first, backend)  # fmt: skip

    def layer(layer_input, state, w, reverse, layer_lengths):
        has_bias = len(w) in (4, 5)
        return lstm(
            layer_input, state, w[0], w[1], *(w[2:4] if has_bias else (None, None)), w[-1] if len(w) in (3, 5) else None,
            batch_first=batch_first, reverse=reverse, lengths=layer_lengths, backend=backend,
        )  # fmt: skip

    return recurrent_layers(
        "lstm", layer, check_first_layer, input, hx, weights, num_layers=num_layers, bidirectional=bidirectional,
        dropout=dropout, training=training, batch_first=batch_first, lengths=lengths, backend=backend,
    )  # fmt: skip


NONLINEARITIES = {"tanh": "rnn_tanh", "relu": "rnn_relu"}  # torch.nn.RNN's nonlinearity -> its cell


def rnn_cell_name(nonlinearity):
    """The cell (``kernels/cells.py``) of torch.nn.RNN's ``nonlinearity``, with torch's error."""
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
    return NONLINEARITIES[nonlinearity]


def rnn(
    input,
    hx,
    weight_ih,
    weight_hh,
    bias_ih=None,
    bias_hh=None,
    *,
    nonlinearity="tanh",
    batch_first=False,
    reverse=False,
    lengths=None,
    backend="auto",
):
    """One Elman RNN layer, one direction, as ``torch.nn.RNN`` computes it:
    ``h_t = act(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)``, act ``tanh`` or ``relu``.

    Args:
        input: ``(T, B, I)``, or ``(B, T, I)`` if ``batch_first``.
        hx: ``h0 (B, H)``, or ``None`` for zeros.
        weight_ih: ``(H, I)``. weight_hh: ``(H, H)``. bias_ih, bias_hh: ``(H,)`` each, or
            both ``None``.
        nonlinearity, batch_first, reverse, lengths, backend: as :func:`lstm` (and
            ``torch.nn.RNN``).

    Returns:
        ``output, h_n``: output ``(T, B, H)`` (``(B, T, H)`` if ``batch_first``), ``h_n (B, H)``.
    """
    return _h_only_layer(rnn_cell_name(nonlinearity), input, hx, weight_ih, weight_hh, bias_ih, bias_hh,
                         batch_first=batch_first, reverse=reverse, lengths=lengths, backend=backend)  # fmt: skip


def gru(input, hx, weight_ih, weight_hh, bias_ih=None, bias_hh=None, *, batch_first=False, reverse=False,
        lengths=None, backend="auto"):  # fmt: skip
    """One GRU layer, one direction, as ``torch.nn.GRU`` computes it (gate order r, z, n)::

        r = sig(x W_ir^T + b_ir + h W_hr^T + b_hr)    z = sig(x W_iz^T + b_iz + h W_hz^T + b_hz)
        n = tanh(x W_in^T + b_in + r * (h W_hn^T + b_hn))    h' = (1 - z) * n + z * h

    Arguments and result as :func:`rnn`'s, with weight_ih ``(3H, I)``, weight_hh ``(3H, H)``
    and the biases ``(3H,)``."""
    return _h_only_layer("gru", input, hx, weight_ih, weight_hh, bias_ih, bias_hh, batch_first=batch_first,
                         reverse=reverse, lengths=lengths, backend=backend)  # fmt: skip


def _h_only_reference(cell, x, h0, w_ih, w_hh, b_ih, b_hh, reverse, lengths):
    if cell == "gru":
        return gru_reference(x, h0, w_ih, w_hh, b_ih, b_hh, reverse=reverse, lengths=lengths)
    nonlinearity = cell.removeprefix("rnn_")
    return rnn_reference(x, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity=nonlinearity, reverse=reverse, lengths=lengths)


def _h_only_layer(cell, input, hx, weight_ih, weight_hh, bias_ih, bias_hh, *, batch_first, reverse, lengths,
                  backend):  # fmt: skip
    """:func:`rnn` and :func:`gru`: one layer of a cell whose only state is h."""
    if autocast_enabled(input.device.type):
        return _without_autocast(
            _h_only_layer, cell, input, hx, weight_ih, weight_hh, bias_ih, bias_hh, batch_first=batch_first,
            reverse=reverse, lengths=lengths, backend=backend,
        )  # fmt: skip
    check_sequence_args(input, hx, None, weight_ih, weight_hh, bias_ih, bias_hh, None, batch_first, backend, cell=cell)
    T, batch_size = (input.shape[1], input.shape[0]) if batch_first else input.shape[:2]
    lengths = check_lengths(lengths, T, batch_size, input.device)
    if use_kernels(input, backend) and batch_size > 0:
        check_kernels_can_run(input)
        from fusedrnn.autograd import RecurrenceFunction

        output, h_n, _ = RecurrenceFunction.apply(
            cell, input, hx, None, weight_ih, weight_hh, bias_ih, bias_hh, None, lengths, batch_first, reverse
        )
        return output, h_n
    if uses_torch_cpu(input.device, backend) and not (reverse and lengths is not None):
        weights = [w for w in (weight_ih, weight_hh, bias_ih, bias_hh) if w is not None]
        time_dim = 1 if batch_first else 0
        if reverse:  # the second direction of a bidirectional layer: the sequence flipped
            input = input.flip(time_dim)
        state = (hx[None],) if hx is not None else None
        output, (h_n,) = torch_cpu_layers(cell, input, state, weights, batch_first=batch_first, lengths=lengths)
        return (output.flip(time_dim) if reverse else output), h_n[0]
    x = input.transpose(0, 1) if batch_first else input
    output, h_n = _h_only_reference(cell, x, hx, weight_ih, weight_hh, bias_ih, bias_hh, reverse, lengths)
    return (output.transpose(0, 1) if batch_first else output), h_n


def rnn_layers(
    input,
    hx,
    weights,
    *,
    nonlinearity="tanh",
    num_layers=1,
    bidirectional=False,
    dropout=0.0,
    training=False,
    batch_first=False,
    lengths=None,
    backend="auto",
):
    """A stack of RNN layers, as ``torch.nn.RNN``'s forward: as :func:`lstm_layers`, with
    ``hx`` an ``h0 (L*D, B, H)`` or ``None``, the weights ``[w_ih, w_hh]`` then ``[b_ih,
    b_hh]`` per layer and direction (``torch.nn.RNN._flat_weights``). Returns
    ``output (T, B, D*H), h_n (L*D, B, H)``."""
    return _h_only_layers(
        rnn_cell_name(nonlinearity), input, hx, weights, num_layers=num_layers, bidirectional=bidirectional,
        dropout=dropout, training=training, batch_first=batch_first, lengths=lengths, backend=backend,
    )  # fmt: skip


def gru_layers(input, hx, weights, *, num_layers=1, bidirectional=False, dropout=0.0, training=False,
               batch_first=False, lengths=None, backend="auto"):  # fmt: skip
    """A stack of GRU layers, as ``torch.nn.GRU``'s forward: as :func:`rnn_layers` (the
    weights in ``torch.nn.GRU._flat_weights`` order)."""
    return _h_only_layers(
        "gru", input, hx, weights, num_layers=num_layers, bidirectional=bidirectional, dropout=dropout,
        training=training, batch_first=batch_first, lengths=lengths, backend=backend,
    )  # fmt: skip


def _h_only_layers(cell, input, hx, weights, *, num_layers, bidirectional, dropout, training, batch_first, lengths,
                   backend):  # fmt: skip
    """:func:`rnn_layers` and :func:`gru_layers`: a stack of a cell whose only state is h."""

    def check_first_layer(h0, w):
        check_sequence_args(input, h0, None, w[0], w[1], *(w[2:4] if len(w) == 4 else (None, None)), None, batch_first,
                            backend, cell=cell)  # fmt: skip

    def layer(layer_input, state, w, reverse, layer_lengths):
        output, h_n = _h_only_layer(
            cell, layer_input, state[0] if state is not None else None, w[0], w[1],
            *(w[2:4] if len(w) == 4 else (None, None)), batch_first=batch_first, reverse=reverse,
            lengths=layer_lengths, backend=backend,
        )  # fmt: skip
        return output, (h_n,)

    output, (h_n,) = recurrent_layers(
        cell, layer, check_first_layer, input, (hx,) if hx is not None else None, weights, num_layers=num_layers,
        bidirectional=bidirectional, dropout=dropout, training=training, batch_first=batch_first, lengths=lengths,
        backend=backend,
    )  # fmt: skip
    return output, h_n


def recurrent_layers(cell, layer, check_first_layer, input, hx, weights, *, num_layers, bidirectional, dropout,
                     training, batch_first, lengths, backend):  # fmt: skip
    """The stack driver of every cell: layers x directions, dropout between layers, lengths
    checked once, and on CPU under ``"auto"`` torch's own op for the whole stack.

    ``cell``: a ``kernels/cells.py`` name (torch's op for it on CPU). ``hx``: a tuple of the
    cell's states, each ``(L*D, B, *)``, or None. ``layer(input, state, weights, reverse,
    lengths) -> (output, states)`` runs one layer and direction (``state`` a tuple of
    ``(B, *)`` tensors or None); ``check_first_layer(*state, weights)`` checks the first
    layer's arguments before torch's op runs. Returns ``output, states`` (each stacked
    ``(L*D, B, *)``)."""
    directions = 2 if bidirectional else 1
    if len(weights) % (num_layers * directions):
        raise ValueError(f"expected a multiple of {num_layers * directions} weights, got {len(weights)}")
    per_layer = len(weights) // (num_layers * directions)
    if lengths is not None and input.dim() == 3:
        # Checked and moved to the device once for all layers and directions, not per call.
        T, B = (input.shape[1], input.shape[0]) if batch_first else input.shape[:2]
        lengths = check_lengths(lengths, T, B, input.device)
    if uses_torch_cpu(input.device, backend) and input.dim() == 3:
        check_first_layer(*(tuple(s[0] for s in hx) if hx is not None else (None,) * len(CELLS[cell].states)),
                          weights[:per_layer])  # fmt: skip
        return torch_cpu_layers(
            cell, input, hx, weights, num_layers=num_layers, bidirectional=bidirectional, dropout=dropout,
            training=training, batch_first=batch_first, lengths=lengths,
        )  # fmt: skip
    finals = None
    layer_input = input
    for index_layer in range(num_layers):
        outputs = []
        for direction in range(directions):
            index = index_layer * directions + direction
            w = weights[index * per_layer : (index + 1) * per_layer]
            state = tuple(s[index] for s in hx) if hx is not None else None
            output, states = layer(layer_input, state, w, direction == 1, lengths)
            outputs.append(output)
            finals = [[] for _ in states] if finals is None else finals
            for kept, s in zip(finals, states):
                kept.append(s)
        layer_input = outputs[0] if directions == 1 else torch.cat(outputs, dim=-1)
        if dropout > 0 and training and index_layer < num_layers - 1:
            layer_input = _dropout_time_major(layer_input, dropout, batch_first)
    return layer_input, tuple(torch.stack(kept) for kept in finals)


def use_kernels(input, backend):
    """The backend rule: the Triton kernels under ``"triton"``, and under ``"auto"`` for CUDA
    tensors of the kernels' dtypes."""
    return backend == "triton" or (backend == "auto" and input.is_cuda and input.dtype in KERNEL_DTYPES)


def uses_torch_cpu(device, backend):
    """Whether ``backend`` runs torch's own CPU op on ``device`` (the LSTM's or the RNN's):
    ``"auto"`` on CPU, outside torch.compile. That is aten's ``lstm`` (or ``rnn_tanh``,
    ``rnn_relu``), what ``torch.nn.LSTM`` (``RNN``) runs (oneDNN's fused RNN
    where it applies), a few times faster than the step-by-step reference there and twice
    differentiable too; the reference, as fast as a Python loop can be, stays the tests'
    oracle (``backend="reference"``). Under torch.compile the reference runs instead:
    Dynamo refuses aten's RNN ops unless ``torch._dynamo.config.allow_rnn`` is set."""
    return backend == "auto" and device.type == "cpu" and not torch.compiler.is_compiling()


def torch_cpu_layers(cell, input, hx, weights, *, num_layers=1, bidirectional=False, dropout=0.0, training=False,
                     batch_first=False, lengths=None):  # fmt: skip
    """:func:`recurrent_layers` by torch's own op (``torch._VF.lstm``, ``rnn_tanh``,
    ``rnn_relu``: the call of ``torch.nn.LSTM.forward`` or ``torch.nn.RNN.forward``), so its
    numerics and its dropout masks under one seed are torch's. ``hx``: a tuple of the cell's
    states or None. ``lengths``: the batch packed (``pack_padded_sequence``), run, and padded
    again with zeros: the padding takes no part, so nothing in it (NaN included) reaches an
    output or a gradient, and the final states are each row's own last step's, as the
    kernels give. Returns ``output, states`` (a tuple)."""
    if autocast_enabled(input.device.type):
        return _without_autocast(
            torch_cpu_layers, cell, input, hx, weights, num_layers=num_layers, bidirectional=bidirectional,
            dropout=dropout, training=training, batch_first=batch_first, lengths=lengths,
        )  # fmt: skip
    op = getattr(torch._VF, cell)  # a cell's name is its aten op's: lstm, rnn_tanh, rnn_relu, gru
    lstm = cell == "lstm"
    states = num_layers * (2 if bidirectional else 1)
    has_bias = len(weights) // states in ((4, 5) if lstm else (4,))
    B = input.shape[0 if batch_first else 1]
    if hx is None:  # aten tells a projection by h's width: zeros of the right widths
        H, P = weights[1].shape[0] // CELLS[cell].gates, weights[1].shape[1]
        hx = (input.new_zeros(states, B, P), input.new_zeros(states, B, H)) if lstm else (input.new_zeros(states, B, H),)
    if lengths is None:
        results = op(input, hx if lstm else hx[0], weights, has_bias, num_layers, dropout, training, bidirectional,
                     batch_first)  # fmt: skip
        return results[0], tuple(results[1:])
    # As torch.nn.LSTM / RNN run a PackedSequence: hx permuted into the packed order, the
    # final states back.
    T = input.shape[1 if batch_first else 0]
    data, batch_sizes, order, unorder = pack_padded_sequence(input, lengths.cpu(), batch_first=batch_first,
                                                             enforce_sorted=False)  # fmt: skip
    hx = tuple(s.index_select(1, order) for s in hx)
    results = op(data, batch_sizes, hx if lstm else hx[0], weights, has_bias, num_layers, dropout, training,
                 bidirectional)  # fmt: skip
    output, _ = pad_packed_sequence(PackedSequence(results[0], batch_sizes, order, unorder), batch_first=batch_first,
                                    total_length=T)  # fmt: skip
    return output, tuple(s.index_select(1, unorder) for s in results[1:])


def _dropout_time_major(layer_output, p, batch_first):
    """Dropout between layers. On CPU, torch.nn.LSTM draws the mask over time-major (T, B, *)
    order whatever its batch_first (its CPU dropout: a Bernoulli tensor scaled by 1 / (1 - p));
    a batch-first output gets its mask the same way here, read through a transpose, so that
    one seed gives torch's masks without copying the activations. On CUDA cuDNN draws its own
    masks (nothing to match): torch's fused dropout."""
    if not batch_first or layer_output.device.type != "cpu":
        return torch.nn.functional.dropout(layer_output, p=p, training=True)
    if p == 1:
        return layer_output * layer_output.new_zeros(())  # as torch: NaN and inf still propagate
    mask = layer_output.new_empty(layer_output.transpose(0, 1).shape).bernoulli_(1 - p).div_(1 - p)
    return layer_output * mask.transpose(0, 1)


def _without_autocast(fn, *args, **kwargs):
    """Call fn with autocast off and floating tensor arguments cast to the autocast dtype
    (float64 excepted), as autocast treats torch.nn.LSTM: its results come out in that dtype."""
    device_type = next(a for a in args if isinstance(a, torch.Tensor)).device.type  # (a cell's name may come first)
    dtype = torch.get_autocast_dtype(device_type)

    def cast(value):
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != torch.float64:
            return value.to(dtype)
        if isinstance(value, (tuple, list)):
            return type(value)(cast(v) for v in value)
        return value

    with torch.autocast(device_type, enabled=False):
        return fn(*cast(args), **kwargs)


# Device types torch.amp.is_autocast_available denies (torch 2.13), for code Dynamo traces.
_NO_AUTOCAST_DEVICE_TYPES = ("meta", "lazy")


def autocast_enabled(device_type):
    """Whether autocast is on for ``device_type``. Ask first whether the device type has
    autocast at all: ``torch.is_autocast_enabled("meta")`` raises. torch 2.11's Dynamo refuses
    to trace ``torch.amp.is_autocast_available`` (2.13's traces it), so under compilation the
    device types without autocast are named instead."""
    if torch.compiler.is_compiling():
        return device_type not in _NO_AUTOCAST_DEVICE_TYPES and torch.is_autocast_enabled(device_type)
    return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)


def torch_lstm_fails_under_cpu_autocast(input_dtype, weight_dtype):
    """Whether torch's CPU LSTM op (``torch.nn.LSTM``'s, padded input, no projection) raises
    under the CPU autocast now in force. With fp32 input aten's ``lstm`` takes oneDNN's fused
    LSTM, and autocast casts that op to bf16 (fp16) without asking whether the CPU can run it:
    on a CPU without oneDNN's bf16 (fp16) support (AVX2 only) torch.nn.LSTM fails with "could
    not create a primitive descriptor" (torch 2.13). False when autocast is off for CPU."""
    if not torch.is_autocast_enabled("cpu"):  # (CPU always has autocast: no need to ask, at 2 us a call)
        return False
    autocast_dtype = torch.get_autocast_dtype("cpu")
    return not _torch_lstm_runs_under_cpu_autocast(input_dtype, weight_dtype, autocast_dtype, torch.backends.mkldnn.enabled)


@functools.cache
def _torch_lstm_runs_under_cpu_autocast(input_dtype, weight_dtype, autocast_dtype, onednn_enabled):
    """One tiny call of torch's op, once per process and key: the CPU's ability is what decides."""
    del onednn_enabled  # a key only: the call runs under the flag in force
    x = torch.zeros(1, 1, 1, dtype=input_dtype)
    weights = [torch.zeros(4, 1, dtype=weight_dtype), torch.zeros(4, 1, dtype=weight_dtype)]
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=autocast_dtype):
            torch._VF.lstm(x, (x, x), weights, False, 1, 0.0, False, False, False)
    except RuntimeError:
        return False
    return True
