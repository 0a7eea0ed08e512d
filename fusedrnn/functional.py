"""Functional API: ``fusedrnn.functional.lstm``."""

import torch

from fusedrnn.kernels.reference import lstm_reference

BACKENDS = ("auto", "triton", "reference")
# dtypes the Triton kernels compute; others (float64) take the reference path under "auto".
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def lstm(
    input,
    hx,
    weight_ih,
    weight_hh,
    bias_ih=None,
    bias_hh=None,
    *,
    batch_first=False,
    backend="auto",
):
    """One LSTM layer, one direction, as ``torch.nn.LSTM`` computes it (gate order i, f, g, o).

    Args:
        input: ``(T, B, I)``, or ``(B, T, I)`` if ``batch_first``.
        hx: ``(h0, c0)``, each ``(B, H)``, or ``None`` for zeros.
        weight_ih: ``(4H, I)``. weight_hh: ``(4H, H)``.
        bias_ih, bias_hh: ``(4H,)`` each, or both ``None``.
        batch_first: layout of ``input`` and ``output``.
        backend: ``"auto"`` (Triton kernels for CUDA tensors of float32/float16/bfloat16, the
            reference otherwise), ``"triton"`` (always the kernels; CPU tensors only under
            ``TRITON_INTERPRET=1``) or ``"reference"`` (plain PyTorch ops).

    Returns:
        ``output, (h_n, c_n)``: output ``(T, B, H)`` (``(B, T, H)`` if ``batch_first``),
        ``h_n`` and ``c_n`` ``(B, H)``. Every input that requires grad gets a gradient, in
        training and in eval mode alike.
    """
    if autocast_enabled(input.device.type):
        raise NotImplementedError(
            "fusedrnn does not support autocast yet; run it outside autocast "
            "with input and weights of one dtype"
        )
    h0, c0 = hx if hx is not None else (None, None)
    _check_args(input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, batch_first, backend)
    batch_size = input.shape[0 if batch_first else 1]
    use_kernels = backend == "triton" or (
        backend == "auto" and input.is_cuda and input.dtype in KERNEL_DTYPES
    )
    if use_kernels and batch_size > 0:
        _check_kernels_can_run(input)
        from fusedrnn.autograd import LSTMFunction

        output, h_n, c_n = LSTMFunction.apply(
            input, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, batch_first
        )
        return output, (h_n, c_n)

    x = input.transpose(0, 1) if batch_first else input
    output, (h_n, c_n) = lstm_reference(x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh)
    return (output.transpose(0, 1) if batch_first else output), (h_n, c_n)


def autocast_enabled(device_type):
    return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)


def _check_kernels_can_run(input):
    if input.dtype not in KERNEL_DTYPES:
        raise TypeError(
            f"backend='triton' supports float32, float16 and bfloat16, got {input.dtype}; "
            "use backend='reference' (or 'auto') for other dtypes"
        )
    if input.is_cuda:
        return
    from fusedrnn.kernels import lstm as lstm_kernels
    from fusedrnn.kernels._helpers import is_interpreted

    if input.device.type != "cpu" or not is_interpreted(lstm_kernels._lstm_fwd_kernel):
        raise RuntimeError(
            f"backend='triton' needs CUDA tensors, got a tensor on {input.device}. CPU tensors "
            "run the kernels only under the Triton interpreter: set TRITON_INTERPRET=1 before "
            "fusedrnn is imported, or use backend='reference' (or 'auto')."
        )


def _check_args(input, h0, c0, w_ih, w_hh, b_ih, b_hh, batch_first, backend):
    """Reject what torch.nn.LSTM rejects, with the same exception types."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if input.dim() != 3:
        raise ValueError(
            f"fusedrnn.functional.lstm: expected a 3-D input, got {input.dim()}-D "
            "(the module fusedrnn.LSTM also takes unbatched 2-D input)"
        )
    if w_hh.dim() != 2 or w_hh.shape[0] != 4 * w_hh.shape[1]:
        raise RuntimeError(f"weight_hh must have shape (4*hidden_size, hidden_size), got {list(w_hh.shape)}")
    H = w_hh.shape[1]
    if w_ih.dim() != 2 or w_ih.shape[0] != 4 * H:
        raise RuntimeError(f"weight_ih must have shape (4*hidden_size, input_size) = (4*{H}, I), got {list(w_ih.shape)}")
    if (b_ih is None) != (b_hh is None):
        raise ValueError("bias_ih and bias_hh must both be given or both be None")
    for name, b in (("bias_ih", b_ih), ("bias_hh", b_hh)):
        if b is not None and b.shape != (4 * H,):
            raise RuntimeError(f"{name} must have shape (4*hidden_size,) = ({4 * H},), got {list(b.shape)}")
    if input.size(-1) != w_ih.shape[1]:
        raise RuntimeError(
            f"input.size(-1) must be equal to input_size. Expected {w_ih.shape[1]}, got {input.size(-1)}"
        )
    T, B = (input.shape[1], input.shape[0]) if batch_first else input.shape[:2]
    if T == 0:
        raise RuntimeError("Expected sequence length to be larger than 0 in RNN")

    params = [p for p in (w_ih, w_hh, b_ih, b_hh) if p is not None]
    for p in params:
        if p.device != input.device:
            raise RuntimeError(
                "Input and parameter tensors are not at the same device, found input tensor "
                f"at {input.device} and parameter tensor at {p.device}"
            )
        if p.dtype != w_ih.dtype:
            raise RuntimeError(f"all weights and biases must have one dtype, got {w_ih.dtype} and {p.dtype}")
    if input.dtype != w_ih.dtype:
        raise ValueError(
            f"RNN input dtype ({input.dtype}) does not match weight dtype ({w_ih.dtype}). "
            f"Convert input: input.to({w_ih.dtype}), or convert model: model.to({input.dtype})"
        )

    if (h0 is None) != (c0 is None):
        raise ValueError("hx must be None or a tuple (h0, c0) of two tensors")
    for i, state in enumerate((h0, c0)):
        if state is None:
            continue
        if state.shape != (B, H):
            raise RuntimeError(f"Expected hidden[{i}] size {(B, H)}, got {list(state.shape)}")
        if state.device != input.device:
            raise RuntimeError(
                "Input and hidden tensors are not at the same device, found input tensor at "
                f"{input.device} and hidden tensor at {state.device}"
            )
        if state.dtype != input.dtype:
            raise RuntimeError(
                f"hidden[{i}] dtype ({state.dtype}) does not match input dtype ({input.dtype})"
            )
