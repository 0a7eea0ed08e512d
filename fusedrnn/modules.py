"""``fusedrnn.LSTM``: a drop-in ``torch.nn.LSTM`` running fused Triton kernels on CUDA."""

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from fusedrnn import functional as F


class LSTM(nn.RNNBase):
    """Drop-in replacement for :class:`torch.nn.LSTM`.

    Same constructor, parameters (``weight_ih_l0``, ``weight_hh_l0``, ``bias_ih_l0``,
    ``bias_hh_l0``), initialisation, ``state_dict``, input and output shapes as
    ``torch.nn.LSTM``, plus a keyword-only ``backend``:

    - ``"auto"`` (default): the Triton kernels for CUDA tensors, the PyTorch reference path
      otherwise (CPU, float64);
    - ``"triton"``: always the kernels (CPU tensors only under ``TRITON_INTERPRET=1``);
    - ``"reference"``: always the plain-PyTorch reference.

    It derives from ``nn.RNNBase`` as ``nn.LSTM`` does, not from ``nn.LSTM`` itself: Dynamo
    refuses to trace any ``nn.LSTM`` instance.

    Supported so far: one layer, one direction, no projection, batched ``(T, B, I)`` (or
    ``batch_first``) and unbatched ``(T, I)`` input, optional ``(h0, c0)``. Other
    configurations raise ``NotImplementedError``.
    """

    # torch.nn.LSTM's own argument checks, so errors read exactly as torch's.
    get_expected_cell_size = nn.LSTM.get_expected_cell_size
    check_forward_args = nn.LSTM.check_forward_args

    def __init__(self, *args, backend="auto", **kwargs):
        super().__init__("LSTM", *args, **kwargs)
        if backend not in F.BACKENDS:
            raise ValueError(f"backend must be one of {F.BACKENDS}, got {backend!r}")
        self.backend = backend
        unsupported = {
            "num_layers > 1": self.num_layers != 1,
            "bidirectional=True": self.bidirectional,
            "proj_size > 0": self.proj_size > 0,
        }
        for feature, requested in unsupported.items():
            if requested:
                raise NotImplementedError(f"fusedrnn.LSTM does not support {feature} yet")

    def extra_repr(self):
        s = super().extra_repr()
        return s if self.backend == "auto" else f"{s}, backend={self.backend!r}"

    def forward(self, input, hx=None):
        if isinstance(input, PackedSequence):
            raise NotImplementedError("fusedrnn.LSTM does not support PackedSequence input yet")
        self._update_flat_weights()
        if input.dim() not in (2, 3):
            raise ValueError(f"LSTM: Expected input to be 2D or 3D, got {input.dim()}D instead")
        is_batched = input.dim() == 3
        batch_dim = 0 if self.batch_first else 1
        if not is_batched:
            input = input.unsqueeze(batch_dim)
        if hx is None:
            self.check_input(input, None)
            state = None
        else:
            if not isinstance(hx, torch.Tensor) and len(hx) != 2:
                raise RuntimeError("lstm expects two hidden states")
            h0, c0 = hx[0], hx[1]  # a single tensor fails here with IndexError, as in torch
            want = 3 if is_batched else 2
            if h0.dim() != want or c0.dim() != want:
                kind = "batched 3-D" if is_batched else "unbatched 2-D"
                raise RuntimeError(
                    f"For {kind} input, hx and cx should also be {want}-D "
                    f"but got ({h0.dim()}-D, {c0.dim()}-D) tensors"
                )
            if not is_batched:
                h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)
            self.check_forward_args(input, (h0, c0), None)
            state = (h0[0], c0[0])  # the one layer's (B, H) states

        output, (h_n, c_n) = F.lstm(
            input,
            state,
            *self._flat_weights,
            batch_first=self.batch_first,
            backend=self.backend,
        )
        if not is_batched:
            return output.squeeze(batch_dim), (h_n, c_n)
        # Fresh (1, B, H) tensors, not views: torch's can be detached or modified in place.
        return output, (h_n.unsqueeze(0).clone(), c_n.unsqueeze(0).clone())
