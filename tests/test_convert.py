"""fusedrnn.convert / fusedrnn.revert: swap torch's recurrent modules in a model, sharing parameters."""

import copy
import warnings

import pytest
import torch
from helpers import DEVICE
from torch import nn

import fusedrnn
from fusedrnn.convert import NotConvertedWarning
from fusedrnn.testing import assert_close


class Tagger(nn.Module):
    """An LSTM stack feeding an LSTMCell unrolled by hand, then a linear head."""

    def __init__(self, I=5, H=6):
        super().__init__()
        self.encoder = nn.LSTM(I, H, num_layers=2, bidirectional=True, proj_size=3, batch_first=True)
        self.decoder = nn.ModuleDict({"cell": nn.LSTMCell(6, H)})
        self.head = nn.Linear(H, 2)

    def forward(self, x):
        y, _ = self.encoder(x)
        state = None
        for t in range(y.shape[1]):
            state = self.decoder["cell"](y[:, t], state)
        return self.head(state[0])


def test_convert_swaps_every_lstm_and_shares_parameters():
    model = Tagger()
    params = list(model.parameters())
    names = list(model.state_dict())
    assert fusedrnn.convert(model) is model
    assert type(model.encoder) is fusedrnn.LSTM and type(model.decoder["cell"]) is fusedrnn.LSTMCell
    assert all(a is b for a, b in zip(params, model.parameters()))  # the same Parameter objects
    assert list(model.state_dict()) == names
    assert fusedrnn.revert(model) is model
    assert type(model.encoder) is nn.LSTM and type(model.decoder["cell"]) is nn.LSTMCell
    assert all(a is b for a, b in zip(params, model.parameters()))


def test_convert_names_the_recurrent_modules_it_leaves_alone():
    class MyLSTM(nn.LSTM):  # a subclass may override forward: not converted
        pass

    class MyGRUCell(nn.GRUCell):
        pass

    model = nn.ModuleDict(dict(lstm=nn.LSTM(3, 4), gru=nn.GRU(3, 4), rnn=nn.RNN(3, 4), mine=MyLSTM(3, 4),
                               cell=MyGRUCell(3, 4), gru_cell=nn.GRUCell(3, 4)))  # fmt: skip
    with pytest.warns(NotConvertedWarning) as caught:
        fusedrnn.convert(model)
    (message,) = [str(w.message) for w in caught]
    assert "2 recurrent module(s)" in message and "warn=False" in message
    for name in ("mine (MyLSTM)", "cell (MyGRUCell)"):
        assert name in message
    assert type(model["lstm"]) is fusedrnn.LSTM and type(model["gru"]) is fusedrnn.GRU and type(model["rnn"]) is fusedrnn.RNN
    assert type(model["gru_cell"]) is fusedrnn.GRUCell
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fusedrnn.convert(model, warn=False)  # silenced
        fusedrnn.convert(nn.Sequential(nn.LSTM(3, 4)))  # nothing left alone: no warning


@pytest.mark.parametrize("args", [(3, 4), (3, 4, 2, False, True, 0.25, True)], ids=["plain", "every-argument"])
def test_convert_and_revert_a_gru_and_its_cell_keep_their_parameters_and_arguments(args):
    """nn.GRU (and nn.GRUCell) -> fusedrnn's -> torch's: the same Parameter objects, every
    constructor argument, the same outputs."""
    model = nn.ModuleDict(dict(layer=nn.GRU(*args), cell=nn.GRUCell(3, 4, bias=len(args) == 2))).eval()
    params = list(model.parameters())
    x = torch.randn(2, 3, 3)
    want = model["layer"](x)[0], model["cell"](x[0])
    fusedrnn.convert(model, backend="reference")
    assert type(model["layer"]) is fusedrnn.GRU and type(model["cell"]) is fusedrnn.GRUCell
    assert all(a is b for a, b in zip(params, model.parameters())) and repr(model["layer"]).startswith(repr(nn.GRU(*args))[:-1])
    assert_close(model["layer"](x)[0], want[0], rel=1e-6, name="converted GRU")
    assert_close(model["cell"](x[0]), want[1], rel=1e-6, name="converted GRUCell")
    fusedrnn.revert(model)
    assert type(model["layer"]) is nn.GRU and type(model["cell"]) is nn.GRUCell
    assert all(a is b for a, b in zip(params, model.parameters()))
    assert torch.equal(model["layer"](x)[0], want[0])


@pytest.mark.parametrize("args", [(3, 4), (3, 4, 2, "relu", False, True, 0.25, True)], ids=["plain", "every-argument"])
def test_convert_and_revert_an_rnn_keep_its_parameters_and_its_arguments(args):
    """nn.RNN -> fusedrnn.RNN -> nn.RNN: the same Parameter objects, every constructor argument
    (nonlinearity included), the same outputs."""
    model = nn.Sequential(nn.RNN(*args)).eval()
    params = list(model.parameters())
    x = torch.randn(2, 3, 3)
    want = model(x)[0]
    fusedrnn.convert(model, backend="reference")
    assert type(model[0]) is fusedrnn.RNN and model[0].backend == "reference" and not model[0].training
    assert all(a is b for a, b in zip(params, model.parameters())) and repr(model[0]).startswith(repr(nn.RNN(*args))[:-1])
    assert_close(model[0](x)[0], want, rel=1e-6, name="converted")
    fusedrnn.revert(model)
    assert type(model[0]) is nn.RNN and model[0].nonlinearity == (args[3] if len(args) > 3 else "tanh")
    assert all(a is b for a, b in zip(params, model.parameters()))
    assert torch.equal(model[0](x)[0], want)


def test_convert_a_bare_module_returns_the_new_one():
    lstm = nn.LSTM(3, 4).eval()
    new = fusedrnn.convert(lstm, backend="reference")
    assert type(new) is fusedrnn.LSTM and new.backend == "reference" and not new.training
    assert new.weight_hh_l0 is lstm.weight_hh_l0


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_converted_model_gives_the_same_outputs_and_trains(backend):
    torch.manual_seed(0)
    theirs = Tagger().double()
    ours = fusedrnn.convert(copy.deepcopy(theirs).to(DEVICE, torch.float32), backend=backend)
    x = torch.randn(4, 7, 5, dtype=torch.float64)
    target = torch.randn(4, 2, dtype=torch.float64)
    assert_close(ours(x.to(DEVICE, torch.float32)), theirs(x), rel=1e-5, name="output")

    # An optimizer built before the swap keeps training the swapped model.
    ours = fusedrnn.revert(ours)
    optimizer = torch.optim.Adam(ours.parameters(), lr=1e-2)
    ours = fusedrnn.convert(ours, backend=backend)
    optimizer_theirs = torch.optim.Adam(theirs.parameters(), lr=1e-2)
    losses = []
    for _ in range(5 if backend == "reference" or DEVICE == "cuda" else 3):  # interpreted: 3 steps
        for model, opt, dtype, device in ((ours, optimizer, torch.float32, DEVICE),
                                          (theirs, optimizer_theirs, torch.float64, "cpu")):  # fmt: skip
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x.to(device, dtype)), target.to(device, dtype))
            loss.backward()
            opt.step()
            if model is ours:
                losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    for (name, a), (_, b) in zip(ours.named_parameters(), theirs.named_parameters()):
        assert_close(a, b, rel=1e-4, name=name)  # Adam steps in fp32 against float64


def test_convert_and_revert_keep_the_hooks_and_one_module_shared_by_two_parents():
    """A forward or backward hook on nn.LSTM (logging, gradient clipping) still runs after the
    swap, the handle the user holds still removes it, and an LSTM reached from two parents
    (tied encoders) becomes one fusedrnn.LSTM, not two."""
    lstm = nn.LSTM(3, 4)
    model = nn.ModuleDict(dict(left=nn.Sequential(lstm), right=nn.Sequential(lstm)))
    calls = []
    forward = lstm.register_forward_hook(lambda module, args, output: calls.append(("forward", type(module))))
    lstm.register_full_backward_hook(lambda module, grad_in, grad_out: calls.append(("backward", type(module))))

    def drop_bias_hh(module, state, prefix, local_metadata):
        del state[prefix + "bias_hh_l0"]

    lstm.register_state_dict_post_hook(drop_bias_hh)

    fusedrnn.convert(model, backend="reference")
    assert model["left"][0] is model["right"][0] and type(model["left"][0]) is fusedrnn.LSTM
    model["left"](torch.randn(2, 3, 3, requires_grad=True))[0].sum().backward()
    assert calls == [("forward", fusedrnn.LSTM), ("backward", fusedrnn.LSTM)]
    assert "left.0.bias_hh_l0" not in model.state_dict() and "left.0.bias_ih_l0" in model.state_dict()

    forward.remove()
    fusedrnn.revert(model)
    assert model["left"][0] is model["right"][0] and type(model["left"][0]) is nn.LSTM
    calls.clear()
    model["right"](torch.randn(2, 3, 3, requires_grad=True))[0].sum().backward()
    assert calls == [("backward", nn.LSTM)]
