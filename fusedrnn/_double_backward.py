"""The once-differentiable backward of the kernel paths, with an error that says what to do.

torch's ``once_differentiable`` links its error node to none of the Function's inputs, so a
second ``torch.autograd.grad`` of a weight fails with "does not require grad" or "not used in
the graph" and its message never shows. Here the first backward's results pass through a
node that does link to the inputs, and whose own backward raises the message.
"""

import torch

DOUBLE_BACKWARD_ERROR = (
    "fusedrnn: the backward of the Triton kernels is not differentiable, so double backward "
    "(torch.autograd.grad(..., create_graph=True) followed by a second grad) cannot go "
    "through it. Use backend='reference' (fusedrnn.LSTM, LSTMCell, RNN or RNNCell(..., "
    "backend='reference'), or the functional forms' backend='reference'), "
    "whose plain PyTorch ops autograd differentiates twice."
)


class _DoubleBackwardError(torch.autograd.Function):
    """Passes a first backward's gradients through; its own backward raises
    DOUBLE_BACKWARD_ERROR. Taking the Function's inputs as well makes it the path from those
    gradients to them, so any second differentiation through the kernels reaches it."""

    @staticmethod
    def forward(ctx, n_grads, *tensors):
        # detached aliases, not views of the inputs: a .grad may be changed in place later
        return tuple(g.detach() for g in tensors[:n_grads])

    @staticmethod
    def backward(ctx, *unused):
        raise RuntimeError(DOUBLE_BACKWARD_ERROR)


def tie_to_double_backward_error(grads, inputs):
    """grads with each tensor replaced by one whose differentiation raises our message."""
    index = [i for i, g in enumerate(grads) if g is not None]
    inputs = [t for t in inputs if t is not None and t.requires_grad]
    tied = _DoubleBackwardError.apply(len(index), *(grads[i] for i in index), *inputs)
    grads = list(grads)
    for i, g in zip(index, tied):
        grads[i] = g
    return tuple(grads)
