"""The argument checks of every public entry point, for every cell: what torch.nn.LSTM, RNN,
GRU and their cells reject, with torch's exception types and wording, before anything runs.

- ``check_sequence_args``: a layer over a sequence (``fusedrnn.functional.lstm``/``rnn``/``gru``).
- ``check_step_args``: one cell step (``fusedrnn.cell.lstm_cell``/``rnn_cell``/``gru_cell``).
- ``check_lengths``, ``check_params_like``, ``check_backend``, ``check_kernels_can_run``:
  shared by both.

The cell decides the shapes through its description (``kernels/cells.py``): the gate count
sizes ``W_ih``, ``W_hh`` and the biases, the states name ``hx``'s tensors.
"""

import torch

from fusedrnn.kernels.cells import CELLS, torch_layer

BACKENDS = ("auto", "triton", "reference")
# dtypes the Triton kernels compute; others (float64) take the reference path under "auto".
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_backend(backend):
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def check_sequence_args(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_first, backend, cell="lstm"):
    """Reject what torch.nn.LSTM (``cell="lstm"``), torch.nn.RNN (``"rnn_tanh"``,
    ``"rnn_relu"``) or torch.nn.GRU (``"gru"``) rejects, with the same exception types. Only
    the LSTM has c0 and a projection."""
    lstm = cell == "lstm"
    gates = CELLS[cell].gates
    name = f"{gates}*hidden_size" if gates > 1 else "hidden_size"
    check_backend(backend)
    if input.dim() != 3:
        module = torch_layer(cell)
        function = module.lower()
        raise ValueError(
            f"fusedrnn.functional.{function}: expected a 3-D input, got {input.dim()}-D "
            f"(the module fusedrnn.{module} also takes unbatched 2-D input)"
        )
    if w_hh.dim() != 2 or w_hh.shape[0] % gates:
        raise RuntimeError(f"weight_hh must have shape ({name}, {'proj_size or ' if lstm else ''}hidden_size), got {list(w_hh.shape)}")
    H, P = w_hh.shape[0] // gates, w_hh.shape[1]
    if w_hr is None and P != H:
        raise RuntimeError(f"weight_hh of shape {list(w_hh.shape)} needs weight_hr ({P}, {H}); without it P must equal H")
    if w_hr is not None and (not lstm or w_hr.dim() != 2 or tuple(w_hr.shape) != (P, H) or P >= H):
        raise RuntimeError(f"weight_hr must have shape (proj_size, hidden_size) = ({P}, {H}) with proj_size < hidden_size, got {list(w_hr.shape)}")
    _check_input_weights(w_ih, b_ih, b_hh, gates, H)
    if input.size(-1) != w_ih.shape[1]:
        raise RuntimeError(
            f"input.size(-1) must be equal to input_size. Expected {w_ih.shape[1]}, got {input.size(-1)}"
        )
    T, B = (input.shape[1], input.shape[0]) if batch_first else input.shape[:2]
    if T == 0:
        raise RuntimeError("Expected sequence length to be larger than 0 in RNN")

    check_params_like(input, (w_ih, w_hh, b_ih, b_hh, w_hr))
    if input.dtype != w_ih.dtype:
        raise ValueError(
            f"RNN input dtype ({input.dtype}) does not match weight dtype ({w_ih.dtype}). "
            f"Convert input: input.to({w_ih.dtype}), or convert model: model.to({input.dtype})"
        )

    if lstm and (h0 is None) != (c0 is None):
        raise ValueError("hx must be None or a tuple (h0, c0) of two tensors")
    for i, state in enumerate((h0, c0) if lstm else (h0,)):
        if state is None:
            continue
        if state.shape != (B, (P, H)[i]):
            raise RuntimeError(f"Expected hidden[{i}] size {(B, (P, H)[i])}, got {list(state.shape)}")
        _check_state_device(state, input)
        if state.dtype != input.dtype:
            raise RuntimeError(
                f"hidden[{i}] dtype ({state.dtype}) does not match input dtype ({input.dtype})"
            )


def check_step_args(cell, input, states, w_ih, w_hh, b_ih, b_hh):
    """Reject what torch's cell op of ``cell`` rejects (``states``: h, and the LSTM's c; each
    None or all None), with the same exception types. Sizes first, then devices and dtypes, in
    torch's order: its size checks come first, the dtypes meet only in the products (a float64
    input with a wrong hidden size reports the size, as PyTorch's own test_modules error
    samples expect)."""
    spec = CELLS[cell]
    gates = spec.gates
    name = f"{gates}*hidden_size" if gates > 1 else "hidden_size"
    function, module = f"{torch_layer(cell).lower()}_cell", f"{torch_layer(cell)}Cell"
    if input.dim() != 2:
        raise ValueError(
            f"fusedrnn.cell.{function}: expected a 2-D input (B, I), got {input.dim()}-D "
            f"(the module fusedrnn.{module} also takes unbatched 1-D input)"
        )
    if w_hh.dim() != 2 or w_hh.shape[0] != gates * w_hh.shape[1]:
        raise RuntimeError(f"weight_hh must have shape ({name}, hidden_size), got {list(w_hh.shape)}")
    H = w_hh.shape[1]
    _check_input_weights(w_ih, b_ih, b_hh, gates, H)
    B = input.shape[0]
    if input.shape[1] != w_ih.shape[1]:
        raise RuntimeError(f"input has inconsistent input_size: got {input.shape[1]} expected {w_ih.shape[1]}")
    if len({state is None for state in states}) > 1:  # the LSTM's (h, c): both or neither
        raise ValueError(f"hx must be None or a tuple ({', '.join(spec.states)}) of two tensors")
    for i, state in enumerate(states):
        if state is None:
            continue
        if state.dim() != 2:
            raise RuntimeError(f"Expected hidden{i} to be 2-D (B, H), got {state.dim()}-D")
        if state.shape[0] != B:
            raise RuntimeError(f"Input batch size {B} doesn't match hidden{i} batch size {state.shape[0]}")
        if state.shape[1] != H:
            raise RuntimeError(f"hidden{i} has inconsistent hidden_size: got {state.shape[1]}, expected {H}")
        _check_state_device(state, input)
    check_params_like(input, (w_ih, w_hh, b_ih, b_hh))
    # RuntimeError, as torch's cell ops raise
    if input.dtype != w_ih.dtype:
        raise RuntimeError(f"input dtype ({input.dtype}) does not match weight dtype ({w_ih.dtype})")
    h = states[0]
    if h is not None and h.dtype != input.dtype:
        raise RuntimeError(f"hidden0 dtype ({h.dtype}) does not match input dtype ({input.dtype})")
    for i, state in enumerate(states[1:], 1):  # the LSTM's c may be of a wider floating dtype
        if state is not None and not state.is_floating_point():
            raise RuntimeError(f"hidden{i} must have a floating dtype, got {state.dtype}")


def _check_input_weights(w_ih, b_ih, b_hh, gates, H):
    """W_ih (gates*H, I) and the biases (gates*H,) each, or both None: torch's exception types."""
    name = f"{gates}*hidden_size" if gates > 1 else "hidden_size"
    if w_ih.dim() != 2 or w_ih.shape[0] != gates * H:
        raise RuntimeError(f"weight_ih must have shape ({name}, input_size) = ({gates}*{H}, I), got {list(w_ih.shape)}")
    if (b_ih is None) != (b_hh is None):
        raise ValueError("bias_ih and bias_hh must both be given or both be None")
    for bias_name, b in (("bias_ih", b_ih), ("bias_hh", b_hh)):
        if b is not None and b.shape != (gates * H,):
            raise RuntimeError(f"{bias_name} must have shape ({name},) = ({gates * H},), got {list(b.shape)}")


def _check_state_device(state, input):
    if state.device != input.device:
        raise RuntimeError(
            "Input and hidden tensors are not at the same device, found input tensor at "
            f"{input.device} and hidden tensor at {state.device}"
        )


def check_lengths(lengths, T, B, device):
    """lengths as a (B,) int64 tensor on ``device`` (or None), every value in [1, T]."""
    if lengths is None:
        return None
    lengths = torch.as_tensor(lengths)
    if lengths.shape != (B,) or lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
        raise ValueError(f"lengths must be {B} integers, one per sequence, got {lengths.dtype} of shape {tuple(lengths.shape)}")
    if lengths.device.type == "cpu" and lengths.numel() and torch.compiler.is_compiling():
        # Reading the values on the host would break the graph: the graph checks them itself
        # (a RuntimeError when the compiled code runs, not a ValueError). No T in the message:
        # formatting it would specialize the graph to one sequence length.
        in_range = ((lengths >= 1) & (lengths <= T)).all()
        torch._assert_async(in_range, "lengths must lie in [1, T], T the sequence length")
    elif lengths.device.type == "cpu" and lengths.numel():  # (no device sync for CUDA lengths)
        low, high = int(lengths.min()), int(lengths.max())
        if low < 1 or high > T:
            raise ValueError(f"lengths must lie in [1, {T}] (the sequence length), got values in [{low}, {high}]")
    return lengths.to(device=device, dtype=torch.long)


def check_params_like(input, params):
    """Every parameter (None skipped) on input's device and of the first one's dtype, with
    torch's exception type and wording."""
    params = [p for p in params if p is not None]
    for p in params:
        if p.device != input.device:
            raise RuntimeError(
                "Input and parameter tensors are not at the same device, found input tensor "
                f"at {input.device} and parameter tensor at {p.device}"
            )
        if p.dtype != params[0].dtype:
            raise RuntimeError(f"all weights and biases must have one dtype, got {params[0].dtype} and {p.dtype}")


def check_kernels_can_run(input):
    if input.dtype not in KERNEL_DTYPES:
        raise TypeError(
            f"backend='triton' supports float32, float16 and bfloat16, got {input.dtype}; "
            "use backend='reference' (or 'auto') for other dtypes"
        )
    if input.is_cuda:
        return
    from fusedrnn.kernels.launch import kernels_interpreted

    if input.device.type != "cpu" or not kernels_interpreted():
        raise RuntimeError(
            f"backend='triton' needs CUDA tensors, got a tensor on {input.device}. CPU tensors "
            "run the kernels only under the Triton interpreter: set TRITON_INTERPRET=1 before "
            "fusedrnn is imported, or use backend='reference' (or 'auto')."
        )
