"""Swap ``torch.nn.LSTM``/``LSTMCell``/``RNN``/``RNNCell``/``GRU``/``GRUCell`` modules for
fusedrnn's inside a model, and back.

The new module is built on the meta device (no allocation) and then takes the old module's
``Parameter`` objects themselves: no copy, so an optimizer built before the swap keeps
updating the same tensors, and its state stays valid. It takes the old module's hooks too
(forward, backward, state_dict): a hook that logs or clips would otherwise stop running,
silently.
"""

import warnings

from torch import nn


class NotConvertedWarning(UserWarning):
    """``convert`` left recurrent modules as they were (see its docstring)."""


def _pairs():
    """[(torch's class, fusedrnn's class, its constructor arguments from a module)]."""
    from fusedrnn.cell import GRUCell, LSTMCell, RNNCell
    from fusedrnn.modules import GRU, LSTM, RNN

    layer = ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional")
    cell = ("input_size", "hidden_size", "bias")
    return [
        (nn.LSTM, LSTM, (*layer, "proj_size")),
        (nn.RNN, RNN, (*layer, "nonlinearity")),
        (nn.GRU, GRU, layer),
        (nn.LSTMCell, LSTMCell, cell),
        (nn.RNNCell, RNNCell, (*cell, "nonlinearity")),
        (nn.GRUCell, GRUCell, cell),
    ]


def _arguments(module, names):
    return {name: getattr(module, name) for name in names}


def convert(model, backend="auto", *, warn=True):
    """Replace every ``torch.nn.LSTM``, ``LSTMCell``, ``RNN``, ``RNNCell``, ``GRU`` and
    ``GRUCell`` in ``model``, in place, by fusedrnn's module of the same name sharing the same
    parameters. Returns the model (the new module if ``model`` itself is one of them).

    Only those exact classes are converted: a subclass may override ``forward`` or hold
    state that fusedrnn's module would not keep. Every recurrent module left as it was is
    named in a ``NotConvertedWarning``; ``warn=False`` (or a warnings filter on that
    category) silences it."""
    pairs = _pairs()

    def make(module):
        for theirs, ours, names in pairs:
            if type(module) is theirs:
                return ours(**_arguments(module, names), device="meta", backend=backend)
        return None

    model = _swap(model, make)
    ours_classes = tuple(ours for _, ours, _ in pairs)
    left = [f"{name or '(the model)'} ({type(module).__name__})" for name, module in model.named_modules()
            if isinstance(module, (nn.RNNBase, nn.RNNCellBase)) and not isinstance(module, ours_classes)]  # fmt: skip
    if warn and left:
        warnings.warn(
            f"fusedrnn.convert left {len(left)} recurrent module(s) as they were: {', '.join(left)}. It converts "
            "torch.nn.LSTM, LSTMCell, RNN, RNNCell, GRU and GRUCell only, not their subclasses; "
            "convert(..., warn=False) silences this.",
            NotConvertedWarning, stacklevel=2,
        )  # fmt: skip
    return model


def revert(model):
    """The inverse of :func:`convert`: fusedrnn modules back to torch's, sharing parameters."""
    pairs = _pairs()

    def make(module):
        for theirs, ours, names in pairs:
            if isinstance(module, ours):
                return theirs(**_arguments(module, names), device="meta")
        return None

    return _swap(model, make)


def _swap(model, make):
    replacement = _adopt(model, make)
    if replacement is not None:
        return replacement
    swapped = {}  # id(old) -> new: a module shared by two parents stays one module
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if id(child) not in swapped:
                swapped[id(child)] = _adopt(child, make)
            if swapped[id(child)] is not None:
                setattr(parent, name, swapped[id(child)])
    return model


# nn.Module's hook registries (forward, backward, state_dict, load_state_dict), read from a
# fresh module so that a torch release adding one is followed.
_HOOK_ATTRIBUTES = tuple(name for name in vars(nn.Module()) if "hook" in name)


def _adopt(old, make):
    """``make(old)`` with old's parameters, buffers, hooks and train/eval mode, or None."""
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
    for name in _HOOK_ATTRIBUTES:  # the same dicts: the handles a user holds still remove them
        if name in vars(old):
            vars(new)[name] = vars(old)[name]
    new.train(old.training)
    return new
