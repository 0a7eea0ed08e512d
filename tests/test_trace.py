"""``python -m fusedrnn trace``: the numerical example notebook's printed gates, reproduced;
its concatenated-weight layout converted to torch's correctly; bad weights refused."""

import json

import pytest
import torch

# The CPU CI installs these (the "cli" extra); the offline GPU image may lack them.
pytest.importorskip("numpy", reason="trace prints with numpy: pip install 'fusedrnn[cli]'")

from fusedrnn.__main__ import main
from fusedrnn.trace import EXAMPLE_WEIGHTS, load_weights, weights_from_notebook_layout

# What the numerical example notebook printed (its output stops inside step 2).
NOTEBOOK_OUTPUT = """\
=== LSTM Forward Pass Debug Details ===
Initial hidden state (h0): [0. 0.]
Initial cell state (c0): [0. 0.]

[Time Step 1]
Input x[0]: [0.5]
Forget Gate:
  Raw computation: [0.875 0.625]
  After sigmoid: [0.7058 0.6514]
Input Gate:
  Raw computation: [0.275 0.325]
  After sigmoid: [0.5683 0.5805]
Candidate Cell State:
  Raw computation: [0.575 0.275]
  After tanh: [0.519  0.2683]
Output Gate:
  Raw computation: [0.325 0.275]
  After sigmoid: [0.5805 0.5683]
Updated Cell State:
  c_new: [0.295  0.1557]
Updated Hidden State:
  h_new: [0.1664 0.0878]
--------------------------------------------------

[Time Step 2]
Input x[1]: [1.5]
Forget Gate:
  Raw computation: [1.522  1.2289]
  After sigmoid: [0.8208 0.7736]
Input Gate:
  Raw computation: [0.5701 0.5543]
  After sigmoid: [0.6388 0.6351]
Candidate Cell State:
  Raw computation: [1.0798 0.5876]
  After tanh: [0.7931 0.5282]
Output Gate:
  Raw computation: [0.5806 0.593 ]"""


def test_example_reproduces_the_notebooks_printout(capsys):
    assert main(["trace", "--example"]) == 0
    printed = capsys.readouterr().out
    start = printed.index("=== LSTM Forward Pass Debug Details ===")
    expected = NOTEBOOK_OUTPUT.splitlines()
    assert printed[start:].splitlines()[: len(expected)] == expected
    assert "[Time Step 3]" in printed and "agrees" in printed


def notebook_lstm(x, weights):
    """The notebook's own equations: every gate from W_gate @ [x; h] + b_gate."""
    W = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in weights.items()}
    H = W["W_f"].shape[0]
    h, c = torch.zeros(H, 1, dtype=torch.float64), torch.zeros(H, 1, dtype=torch.float64)
    hs = []
    for x_t in x:
        z = torch.cat([x_t.reshape(-1, 1), h])
        f = torch.sigmoid(W["W_f"] @ z + W["b_f"].reshape(-1, 1))
        i = torch.sigmoid(W["W_i"] @ z + W["b_i"].reshape(-1, 1))
        g = torch.tanh(W["W_c"] @ z + W["b_c"].reshape(-1, 1))
        o = torch.sigmoid(W["W_o"] @ z + W["b_o"].reshape(-1, 1))
        c = f * c + i * g
        h = o * torch.tanh(c)
        hs.append(h.flatten())
    return torch.stack(hs)


def test_notebook_layout_converts_to_torch_nn_lstm():
    # Random weights with distinct gates: a wrong gate order or a wrong [x, h] split shows.
    I, H, T = 2, 3, 5
    g = torch.Generator().manual_seed(0)
    weights = {f"W_{k}": torch.randn(H, I + H, generator=g, dtype=torch.float64) for k in "fico"}
    weights |= {f"b_{k}": torch.randn(H, 1, generator=g, dtype=torch.float64) for k in "fico"}
    x = torch.randn(T, I, generator=g, dtype=torch.float64)
    lstm = torch.nn.LSTM(I, H).double()
    lstm.load_state_dict(weights_from_notebook_layout(weights, I))
    with torch.no_grad():
        output, _ = lstm(x[:, None])
    torch.testing.assert_close(output[:, 0], notebook_lstm(x, weights), rtol=1e-12, atol=1e-12)


def test_torch_layout_file_and_input(tmp_path, capsys):
    lstm = torch.nn.LSTM(2, 3).double()
    path = tmp_path / "w.json"
    path.write_text(json.dumps({k: v.tolist() for k, v in lstm.state_dict().items()}))
    assert main(["trace", "--weights", str(path), "--input", "1, 2; 3, 4; -1, 0.5"]) == 0
    printed = capsys.readouterr().out
    with torch.no_grad():
        output, _ = lstm(torch.tensor([[1.0, 2.0], [3.0, 4.0], [-1.0, 0.5]], dtype=torch.float64)[:, None])
    for t in range(3):
        assert f"[Time Step {t + 1}]" in printed
    last_h = printed.split("h_new:")[-1].splitlines()[0]
    assert [round(v, 4) for v in output[-1, 0].tolist()] == [float(v) for v in last_h.strip(" []").split()]
    assert "agrees" in printed


@pytest.mark.parametrize("cell", ["lstm", "rnn", "gru"])
def test_kernel_cross_check(cell, capsys):
    # fusedrnn's Triton path (on CUDA when there is one, else interpreted on CPU) agrees with
    # the traced steps, also from torch's default TF32 switch (on), which a fresh process has
    # and the conftest turns off (it restores it after the test).
    torch.backends.cudnn.allow_tf32 = True
    argv = ["--example"] if cell == "lstm" else ["--cell", cell]
    assert main(["trace", *argv, "--backend", "triton"]) == 0
    assert "backend='triton'" in capsys.readouterr().out


@pytest.mark.parametrize(
    "weights, message",
    [
        ({"W_f": [[1.0]]}, "missing"),
        ({"weight_ih_l0": [[1.0]] * 4, "weight_hh_l0": [[1.0]] * 4, "W_f": [[1.0]]}, "mix"),
        ({"W_x": [[1.0]]}, "unknown weight names"),
        ({**EXAMPLE_WEIGHTS, "W_i": [[0.1, 0.2], [0.3, 0.4]]}, r"W_i must be \(H, I \+ H\)"),
    ],
)
def test_bad_weights_are_refused(weights, message):
    with pytest.raises(ValueError, match=message):
        load_weights(weights, input_size=1)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--example", "--input", "1, 2; 3"], "--input: every step needs the same number of features"),
        (["--input", "0.5; 1.5, 2"], "--input: every step needs the same number of features"),
        (["--input", "0.5; x"], "--input: steps separated by ';', features by ','"),
        (["--weights", "missing.json"], "--weights: cannot read missing.json: No such file or directory"),
        (["--example", "--weights", "w.json"], "--example and --weights: pick one"),
    ],
)  # fmt: skip
def test_bad_command_line_input_is_a_usage_error_not_a_traceback(argv, message, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["trace", *argv])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "Traceback" not in err
    assert err.startswith("usage: python -m fusedrnn trace") and f"error: {message}" in err


def test_bad_weights_file_is_a_usage_error(tmp_path, capsys):
    path = tmp_path / "w.json"
    path.write_text(json.dumps({"W_x": [[1.0]]}))
    with pytest.raises(SystemExit):
        main(["trace", "--weights", str(path)])
    assert "error: --weights: unknown weight names" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["trace", "check", "charlm"])
def test_help_describes_without_restructuredtext_markup(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    assert "``" not in out and f"python -m fusedrnn {command}: " in out


def test_rnn_trace_prints_each_step_and_the_gradients_and_agrees(capsys):
    from fusedrnn.__main__ import main

    assert main(["trace", "--cell", "rnn", "-H", "2", "--input", "1; 2; 3"]) == 0
    out = capsys.readouterr().out
    assert "[Time Step 3]" in out and "h = tanh(z)" in out and "z = x W_ih^T" in out
    assert "weight_ih_l0: BPTT" in out and out.rstrip().endswith("agrees")
    assert main(["trace", "--cell", "rnn", "--nonlinearity", "relu", "--backend", "triton"]) == 0
    assert "h = relu(z)" in capsys.readouterr().out


def test_gru_trace_prints_each_gate_and_the_gradients_and_agrees(capsys):
    """--cell gru: r, z, W_hn h + b_hn, n and h per step, against torch.nn.GRU's trajectory
    (the module cross-check) and its autograd gradients; the kernels agree too."""
    import torch

    from fusedrnn.__main__ import main
    from fusedrnn.trace import rnn_weights, trace_gru

    assert main(["trace", "--cell", "gru", "-H", "2", "--input", "1; 2; 3"]) == 0
    out = capsys.readouterr().out
    assert "[Time Step 3]" in out and "Reset Gate  r = sigmoid" in out and "Candidate   n = tanh" in out
    assert "bias_hh_l0: BPTT" in out and out.rstrip().endswith("agrees")
    assert main(["trace", "--cell", "gru", "--backend", "triton"]) == 0
    assert "fusedrnn.GRU (backend='triton'" in capsys.readouterr().out
    gru = torch.nn.GRU(2, 3, dtype=torch.float64)
    x = torch.randn(4, 2, dtype=torch.float64)
    _, hs = trace_gru(x, rnn_weights({k: v.tolist() for k, v in gru.state_dict().items()}, 2, gates=3))
    torch.testing.assert_close(hs, gru(x[:, None])[0][:, 0].detach(), rtol=1e-12, atol=1e-12)


def test_the_rnn_notebook_s_gradient_question_answered():
    """The seed notebook whose hand gradients of nn.RNN(1, 2) did not match torch's: its chain
    multiplies (1 - tanh(z_3)^2) @ W_hh by (1 - tanh(z_2)^2) elementwise, dropping the
    Jacobian's order; BPTT carries dh_{t-1} = (dh_t * (1 - h_t^2)) @ W_hh. The hand-derived
    oracle matches torch to rounding, the notebook's formula does not."""
    from fusedrnn.kernels.reference import rnn_layers_reference_backward

    torch.manual_seed(0)
    rnn = torch.nn.RNN(input_size=1, hidden_size=2, batch_first=True, dtype=torch.float64)
    x = torch.tensor([[1.0], [2.0], [3.0]], dtype=torch.float64)
    _, h_n = rnn(x)
    h_n.sum().backward()
    torch_grad = rnn.weight_ih_l0.grad
    by_hand = rnn_layers_reference_backward(x[:, None], None, rnn._flat_weights, None, torch.ones(1, 1, 2,
                                            dtype=torch.float64))["weights"][0]  # fmt: skip
    torch.testing.assert_close(by_hand, torch_grad, rtol=1e-12, atol=1e-14)

    w_ih, w_hh = rnn.weight_ih_l0.detach(), rnn.weight_hh_l0.detach()
    b = (rnn.bias_ih_l0 + rnn.bias_hh_l0).detach()
    h, zs = torch.zeros(2, dtype=torch.float64), []
    for x_t in x:
        zs.append(x_t @ w_ih.T + b + h @ w_hh.T)
        h = torch.tanh(zs[-1])
    d = [1 - torch.tanh(z) ** 2 for z in zs]
    notebook = d[2] * x[2] + (d[2] @ w_hh) * (d[1] * x[1]) + (d[2] @ w_hh) * (d[1] @ w_hh) * (d[0] * x[0])
    assert not torch.allclose(notebook[:, None], torch_grad, atol=1e-6)
    delta = d[2]  # the gradient of z_3; then back through W_hh and each step's tanh'
    chain = delta[:, None] * x[2]
    for t in (1, 0):
        delta = (delta @ w_hh) * d[t]
        chain = chain + delta[:, None] * x[t]
    torch.testing.assert_close(chain, torch_grad, rtol=1e-12, atol=1e-14)
