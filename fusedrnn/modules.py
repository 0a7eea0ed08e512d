"""``fusedrnn.LSTM``, ``fusedrnn.RNN`` and ``fusedrnn.GRU``: drop-in ``torch.nn.LSTM``,
``torch.nn.RNN`` and ``torch.nn.GRU`` running fused Triton kernels on CUDA."""

import functools

import torch
from torch import _VF, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from fusedrnn import functional as F
from fusedrnn._backend import WithBackend


def _check_state_count(hx):
    """More than two states: torch.nn.LSTM's error on padded input (with packed input torch
    ignores the third; fusedrnn refuses it there too). One state fails as ``hx[1]`` is read,
    with torch's IndexError; one tensor holding both states, ``hx[0]`` and ``hx[1]``, runs as
    in torch, except where torch refuses it (``_refuse_one_tensor``)."""
    if not isinstance(hx, torch.Tensor) and len(hx) > 2:
        raise RuntimeError("lstm expects two hidden states")


def _refuse_one_tensor(hx):
    """torch.nn.LSTM's TypeError for one tensor as the state, after the shape checks, as torch
    raises it: for batched padded input, and packed input in order (out of order, permuting
    the state has made a pair of it, which runs)."""
    if isinstance(hx, torch.Tensor):
        raise TypeError("LSTM: hx must be a tuple (h0, c0) of tensors, got one tensor")


def _batched(module, input, lengths, dims_error):
    """What both modules' forward checks of a padded input, with torch's ``dims_error`` (a
    format string of the input's dims): ``(input, is_batched, batch_dim)``, an unbatched
    ``(T, I)`` input given its batch dimension of 1."""
    if input.dim() not in (2, 3):
        raise ValueError(dims_error.format(input.dim()))
    is_batched = input.dim() == 3
    if lengths is not None and not is_batched:
        raise ValueError("lengths= needs batched 3-D input")
    batch_dim = 0 if module.batch_first else 1
    return (input if is_batched else input.unsqueeze(batch_dim)), is_batched, batch_dim


class LSTM(WithBackend, nn.RNNBase):
    """Drop-in replacement for :class:`torch.nn.LSTM`.

    Same constructor, parameters (``weight_ih_l0``, ``weight_hh_l0``, ``bias_ih_l0``,
    ``bias_hh_l0``), initialisation, ``state_dict``, input and output shapes as
    ``torch.nn.LSTM``, plus a keyword-only ``backend``:

    - ``"auto"`` (default): the Triton kernels for CUDA tensors; on CPU, outside
      torch.compile, ``torch.nn.LSTM.forward`` itself (``lengths=``: packed, run by torch's
      op, padded again); the PyTorch reference path otherwise;
    - ``"triton"``: always the kernels (CPU tensors only under ``TRITON_INTERPRET=1``);
    - ``"reference"``: always the plain-PyTorch reference.

    It derives from ``nn.RNNBase`` as ``nn.LSTM`` does, not from ``nn.LSTM`` itself: Dynamo
    refuses to trace any ``nn.LSTM`` instance.

    Every configuration of ``torch.nn.LSTM`` (``num_layers``, ``dropout``, ``bidirectional``,
    ``proj_size``, ``bias``, ``batch_first``) and every input form it takes: batched,
    unbatched, with or without ``(h0, c0)``, and ``PackedSequence`` (variable lengths are
    masked inside the kernels). ``forward`` also takes ``lengths=`` with padded input: the
    same results as packing, without the packing.
    """

    # torch.nn.LSTM's own argument checks and hidden-state permutation, so errors and packed
    # sequences behave exactly as torch's.
    get_expected_cell_size = nn.LSTM.get_expected_cell_size
    check_forward_args = nn.LSTM.check_forward_args
    permute_hidden = nn.LSTM.permute_hidden

    def __init__(self, *args, backend="auto", **kwargs):
        super().__init__("LSTM", *args, **kwargs)
        self._set_backend(backend)

    def forward(self, input, hx=None, *, lengths=None):
        """As ``torch.nn.LSTM.forward``. ``lengths``: ``(B,)`` sequence lengths of a padded
        batched input (not with a PackedSequence); the output is zero past each length and
        ``h_n, c_n`` are each sequence's own last step."""
        device = (input.data if isinstance(input, PackedSequence) else input).device
        if lengths is None and F.uses_torch_cpu(device, self.backend) and not self._torch_op_fails_here(input):
            if self._can_call_torch_op_directly(input, hx):
                # What torch.nn.LSTM.forward calls, once its checks would pass: checked here
                # in a few comparisons instead (its checks are a tenth of a T = 16, B = 1 call).
                self._update_flat_weights()
                if hx is None:
                    hx = self._zero_state(input)
                output, h_n, c_n = _VF.lstm(input, hx, self._flat_weights, self.bias, self.num_layers,
                                            self.dropout, self.training, self.bidirectional, self.batch_first)  # fmt: skip
                return output, (h_n, c_n)
            # torch.nn.LSTM.forward itself for everything else: its checks and errors, packed
            # and unbatched input, autocast. Two of our errors stay: a third state refused with
            # packed input too, and one tensor as the state named, where torch's op lists its
            # overloads.
            if hx is not None:
                _check_state_count(hx)
            try:
                return nn.LSTM.forward(self, input, hx)
            except TypeError:
                _refuse_one_tensor(hx)
                raise
        self._update_flat_weights()
        if isinstance(input, PackedSequence):
            if lengths is not None:
                raise ValueError("lengths= is for padded input; a PackedSequence carries its own")
            return self._forward_packed(input, hx)
        dims_error = "LSTM: Expected input to be 2D or 3D, got {}D instead"
        input, is_batched, batch_dim = _batched(self, input, lengths, dims_error)
        if hx is None:
            self.check_input(input, None)
        else:
            h0, c0 = hx[0], hx[1]  # one state: IndexError, as in torch
            want = 3 if is_batched else 2
            if h0.dim() != want or c0.dim() != want:
                kind = "batched 3-D" if is_batched else "unbatched 2-D"
                raise RuntimeError(
                    f"For {kind} input, hx and cx should also be {want}-D "
                    f"but got ({h0.dim()}-D, {c0.dim()}-D) tensors"
                )
            state = (h0, c0) if is_batched else (h0.unsqueeze(1), c0.unsqueeze(1))
            self.check_forward_args(input, state, None)
            _check_state_count(hx)
            if is_batched:
                _refuse_one_tensor(hx)
            hx = state

        output, (h_n, c_n) = self._layers(input, hx, lengths, self.batch_first)
        if not is_batched:
            return output.squeeze(batch_dim), (h_n.squeeze(1), c_n.squeeze(1))
        return output, (h_n, c_n)

    def _zero_state(self, input):
        """(h0, c0) of zeros; one tensor for both where their shapes agree (the op only reads them)."""
        h_shape, c_shape = self.get_expected_hidden_size(input, None), self.get_expected_cell_size(input, None)
        zeros = dict(dtype=input.dtype, device=input.device)
        c0 = torch.zeros(c_shape, **zeros)
        return (c0 if h_shape == c_shape else torch.zeros(h_shape, **zeros)), c0

    def _torch_op_fails_here(self, input):
        """Whether torch.nn.LSTM would raise on this input under CPU autocast for want of
        oneDNN's bf16 (fp16) LSTM on this CPU (``F.torch_lstm_fails_under_cpu_autocast``).
        Then the layers run as with ``lengths=``: torch's op on copies in the autocast dtype,
        with autocast off, so the module works where torch's does not. Packed input and
        projections take other paths in torch, which run."""
        if isinstance(input, PackedSequence) or self.proj_size or not torch.is_autocast_enabled("cpu"):
            return False  # (autocast asked first: the common case, without reading a parameter, 1 us)
        return F.torch_lstm_fails_under_cpu_autocast(input.dtype, self.weight_ih_l0.dtype)

    def _can_call_torch_op_directly(self, input, hx):
        """Whether every check of torch.nn.LSTM.forward would pass and leave the input as it
        is: a batched padded tensor of the weights' dtype and input size, and no state or a
        pair of tensors of the expected shapes. Anything else takes torch's own forward."""
        if type(input) is not torch.Tensor or input.dim() != 3 or input.shape[2] != self.input_size:
            return False
        if input.dtype != self.weight_ih_l0.dtype:
            return False  # torch's error, or autocast's rule
        if hx is None:
            return True
        if type(hx) not in (tuple, list) or len(hx) != 2:
            return False
        h0, c0 = hx
        if type(h0) is not torch.Tensor or type(c0) is not torch.Tensor:
            return False
        return h0.shape == self.get_expected_hidden_size(input, None) and c0.shape == self.get_expected_cell_size(
            input, None
        )

    def _forward_packed(self, packed, hx):
        """Unpack to a padded batch in the packed (sorted) order, run it with its lengths
        (masked in the kernels), pack the output again; hx permuted as torch does."""
        data, batch_sizes, sorted_indices, unsorted_indices = packed
        if hx is not None:
            _check_state_count(hx)
            hx = self.permute_hidden(hx, sorted_indices)  # a pair, unless not permuted
            self.check_forward_args(data, hx, batch_sizes)
            _refuse_one_tensor(hx)
        else:
            self.check_input(data, batch_sizes)
        padded, lengths = pad_packed_sequence(PackedSequence(data, batch_sizes))
        output, (h_n, c_n) = self._layers(padded, hx, lengths, batch_first=False)
        output = pack_padded_sequence(output, lengths).data
        return (
            PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices),
            self.permute_hidden((h_n, c_n), unsorted_indices),
        )

    def _layers(self, input, hx, lengths, batch_first):
        return F.lstm_layers(
            input,
            hx,
            self._flat_weights,
            num_layers=self.num_layers,
            bidirectional=self.bidirectional,
            dropout=self.dropout,
            training=self.training,
            batch_first=batch_first,
            lengths=lengths,
            backend=self.backend,
        )


class _HOnlyRecurrent(WithBackend, nn.RNNBase):
    """The forward of the layers whose one state is h (:class:`RNN`, :class:`GRU`): torch's
    forward on CPU under ``"auto"``, otherwise torch's checks and unbatched handling, then
    ``_layers``. A subclass names torch's module (``_torch_module``) and its message prefix."""

    _torch_module = None  # nn.RNN or nn.GRU
    _dims_error = None  # torch's message for input of the wrong dimension

    def forward(self, input, hx=None, *, lengths=None):
        """As torch's forward. ``lengths``: ``(B,)`` sequence lengths of a padded batched input
        (not with a PackedSequence); the output is zero past each length and ``h_n`` is each
        sequence's own last step."""
        device = (input.data if isinstance(input, PackedSequence) else input).device
        if lengths is None and F.uses_torch_cpu(device, self.backend):
            return self._torch_module.forward(self, input, hx)  # torch's forward: its checks, errors and op
        self._update_flat_weights()
        if isinstance(input, PackedSequence):
            if lengths is not None:
                raise ValueError("lengths= is for padded input; a PackedSequence carries its own")
            return self._forward_packed(input, hx)
        input, is_batched, batch_dim = _batched(self, input, lengths, self._dims_error)
        if not is_batched and hx is not None:
            if hx.dim() != 2:
                raise RuntimeError(f"For unbatched 2-D input, hx should also be 2-D but got {hx.dim()}-D tensor")
            hx = hx.unsqueeze(1)
        elif is_batched and hx is not None and hx.dim() != 3:
            raise RuntimeError(f"For batched 3-D input, hx should also be 3-D but got {hx.dim()}-D tensor")
        if hx is None:
            self.check_input(input, None)
        else:
            self.check_forward_args(input, hx, None)
        output, h_n = self._layers(input, hx, lengths, self.batch_first)
        if not is_batched:
            return output.squeeze(batch_dim), h_n.squeeze(1)
        return output, h_n

    def _forward_packed(self, packed, hx):
        """As fusedrnn.LSTM's: unpack in the packed (sorted) order, run with the lengths
        masked in the kernels, pack again; hx permuted as torch does."""
        data, batch_sizes, sorted_indices, unsorted_indices = packed
        if hx is not None:
            hx = self.permute_hidden(hx, sorted_indices)
            self.check_forward_args(data, hx, batch_sizes)
        else:
            self.check_input(data, batch_sizes)
        padded, lengths = pad_packed_sequence(PackedSequence(data, batch_sizes))
        output, h_n = self._layers(padded, hx, lengths, batch_first=False)
        output = pack_padded_sequence(output, lengths).data
        return PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices), self.permute_hidden(
            h_n, unsorted_indices
        )

    def _layers(self, input, hx, lengths, batch_first):
        if self.mode == "GRU":
            layers = F.gru_layers
        else:  # torch.nn.RNN.forward picks its op by mode: an edited nonlinearity attribute changes nothing
            nonlinearity = "tanh" if self.mode == "RNN_TANH" else "relu"
            layers = functools.partial(F.rnn_layers, nonlinearity=nonlinearity)
        return layers(
            input, hx, self._flat_weights, num_layers=self.num_layers, bidirectional=self.bidirectional,
            dropout=self.dropout, training=self.training, batch_first=batch_first, lengths=lengths,
            backend=self.backend,
        )  # fmt: skip


def _refuse_proj_size(kwargs):
    if "proj_size" in kwargs:  # torch.nn.RNN's and GRU's message
        raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")


class RNN(_HOnlyRecurrent):
    """Drop-in replacement for :class:`torch.nn.RNN` (Elman RNN, ``nonlinearity`` ``"tanh"``
    or ``"relu"``), on the same recurrence kernels as :class:`fusedrnn.LSTM`.

    Same constructor (``nonlinearity`` the fourth positional argument, as in torch),
    parameters, initialisation, ``state_dict``, repr, input and output shapes as
    ``torch.nn.RNN``, plus a keyword-only ``backend`` (as :class:`fusedrnn.LSTM`'s: on CPU
    under ``"auto"``, outside torch.compile, ``torch.nn.RNN.forward`` itself). Batched and
    unbatched input, with or without ``h0``, ``PackedSequence``, and ``lengths=`` with padded
    input. Derives from ``nn.RNNBase`` as ``nn.RNN`` does: Dynamo refuses ``nn.RNN`` instances.
    """

    _torch_module = nn.RNN
    _dims_error = "RNN: Expected input to be 2D or 3D, got {}D tensor instead"

    def __init__(self, *args, backend="auto", **kwargs):
        # torch.nn.RNN's own argument handling, messages included.
        _refuse_proj_size(kwargs)
        if len(args) > 3:
            nonlinearity, args = args[3], args[:3] + args[4:]
        else:
            nonlinearity = kwargs.pop("nonlinearity", "tanh")
        F.rnn_cell_name(nonlinearity)  # torch's ValueError for any other
        self.nonlinearity = nonlinearity
        super().__init__("RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU", *args, **kwargs)
        self._set_backend(backend)  # the repr stays torch's, which leaves the nonlinearity out


class GRU(_HOnlyRecurrent):
    """Drop-in replacement for :class:`torch.nn.GRU` (gate order r, z, n, as torch), on the
    same recurrence framework as :class:`fusedrnn.LSTM` and :class:`fusedrnn.RNN`: torch's
    constructor, parameters, initialisation, ``state_dict``, repr, shapes and errors, plus a
    keyword-only ``backend`` (on CPU under ``"auto"``, outside torch.compile,
    ``torch.nn.GRU.forward`` itself). Batched and unbatched input, with or without ``h0``,
    ``PackedSequence``, and ``lengths=`` with padded input."""

    _torch_module = nn.GRU
    _dims_error = "GRU: Expected input to be 2D or 3D, got {}D instead"

    def __init__(self, *args, backend="auto", **kwargs):
        _refuse_proj_size(kwargs)
        super().__init__("GRU", *args, **kwargs)
        self._set_backend(backend)
