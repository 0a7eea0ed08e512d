"""Swap ``torch.nn.LSTM``/``LSTMCell``/``RNN``/``RNNCell`` modules for fusedrnn's inside a model, and back.

The new module is built on the meta device (no allocation) and then takes the old module's
``Parameter`` objects themselves: no copy, so an optimizer built before the swap keeps
updating the same tensors, and its state stays valid.
"""

import warnings

from torch import nn


class NotConvertedWarning(UserWarning):
    """``convert`` left recurrent modules as they were (see its docstring)."""


def convert(model, backend="auto", *, warn=True):
    """Replace every ``torch.nn.LSTM``, ``LSTMCell``, ``RNN`` and ``RNNCell`` in ``model``, in
    place, by ``fusedrnn.LSTM``/``LSTMCell``/``RNN``/``RNNCell`` sharing the same parameters. Returns the model
    (the new module if ``model`` itself is one of them).

    Only those exact classes are converted: a subclass may override ``forward`` or hold
    state that fusedrnn's module would not keep, and ``nn.GRU`` and ``nn.GRUCell`` have no
    fusedrnn module yet. Every recurrent module left as it was is named in a
    ``NotConvertedWarning``; ``warn=False`` (or a warnings filter on that category) silences it."""
    from fusedrnn.cell import LSTMCell, RNNCell
    from fusedrnn.modules import LSTM, RNN

    def make(module):
        if type(module) is nn.RNNCell:
            return RNNCell(module.input_size, module.hidden_size, module.bias, module.nonlinearity, device="meta",
                           backend=backend)  # fmt: skip
        if type(module) is nn.LSTM:
            return LSTM(**_lstm_args(module), device="meta", backend=backend)
        if type(module) is nn.RNN:
            return RNN(**_rnn_args(module), device="meta", backend=backend)
        if type(module) is nn.LSTMCell:
            return LSTMCell(module.input_size, module.hidden_size, module.bias, device="meta", backend=backend)
        return None

    model = _swap(model, make)
    left = [f"{name or '(the model)'} ({type(module).__name__})" for name, module in model.named_modules()
            if isinstance(module, (nn.RNNBase, nn.RNNCellBase)) and not isinstance(module, (LSTM, LSTMCell, RNN, RNNCell))]  # fmt: skip
    if warn and left:
        warnings.warn(
            f"fusedrnn.convert left {len(left)} recurrent module(s) as they were: {', '.join(left)}. It converts "
            "torch.nn.LSTM, torch.nn.LSTMCell, torch.nn.RNN and torch.nn.RNNCell only, not their subclasses; convert(..., warn=False) silences this.",
            NotConvertedWarning, stacklevel=2,
        )  # fmt: skip
    return model


def revert(model):
    """The inverse of :func:`convert`: fusedrnn modules back to torch's, sharing parameters."""
    from fusedrnn.cell import LSTMCell, RNNCell
    from fusedrnn.modules import LSTM, RNN

    def make(module):
        if isinstance(module, RNNCell):
            return nn.RNNCell(module.input_size, module.hidden_size, module.bias, module.nonlinearity, device="meta")
        if isinstance(module, LSTM):
            return nn.LSTM(**_lstm_args(module), device="meta")
        if isinstance(module, RNN):
            return nn.RNN(**_rnn_args(module), device="meta")
        if isinstance(module, LSTMCell):
            return nn.LSTMCell(module.input_size, module.hidden_size, module.bias, device="meta")
        return None

    return _swap(model, make)


def _lstm_args(module):
    names = ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional", "proj_size")
    return {name: getattr(module, name) for name in names}


def _rnn_args(module):
    names = ("input_size", "hidden_size", "num_layers", "nonlinearity", "bias", "batch_first", "dropout", "bidirectional")
    return {name: getattr(module, name) for name in names}


def _swap(model, make):
    replacement = _adopt(model, make)
    if replacement is not None:
        return replacement
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            new = _adopt(child, make)
            if new is not None:
                setattr(parent, name, new)
    return model


def _adopt(old, make):
    """``make(old)`` with old's parameters, buffers and train/eval mode, or None."""
    new = make(old)
    if new is None:
        return None
    if list(new._parameters) != list(old._parameters):
        raise RuntimeError(f"cannot convert {old}: parameter names differ")
    for name, param in old._parameters.items():
        new._parameters[name] = param  # the same Parameter object, not a copy
    for name, buffer in old._buffers.items():
        new._buffers[name] = buffer
    if hasattr(new, "_init_flat_weights"):  # RNNBase caches its parameter list
        new._init_flat_weights()
    new.train(old.training)
    return new
