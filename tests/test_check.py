"""python -m fusedrnn check: prints the table, passes on the real thing, fails on a mismatch."""

import torch

from fusedrnn import functional
from fusedrnn.__main__ import main
from fusedrnn.kernels.reference import lstm_reference

SMALL = ["check", "-T", "4", "-B", "3", "-I", "5", "-H", "7"]


def torch_baseline(layer):
    """What the check names torch's side: cuDNN where it runs on CUDA (the default device)."""
    return "cuDNN" if torch.cuda.is_available() else f"torch.nn.{layer}"


def test_check_passes_and_prints_every_tensor(capsys):
    assert main(SMALL) == 0
    out = capsys.readouterr().out
    for name in ["output", "h_n", "c_n", "grad input", "grad h0", "grad c0", "grad weight_ih_l0",
                 "grad weight_hh_l0", "grad bias_ih_l0", "grad bias_hh_l0"]:
        assert out.count(name + " ") == 2, name  # one row per backend: reference and triton
    assert "all tensors within tolerance" in out


def test_check_fails_on_a_wrong_forget_gate(capsys, monkeypatch):
    def forget_gate_bias_off(x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, w_hr=None, **kwargs):
        H = w_hh.shape[0] // 4
        shift = torch.zeros_like(b_ih)
        shift[H : 2 * H] = 1e-3  # a small error in one gate only
        return lstm_reference(x, h0, c0, w_ih, w_hh, b_ih + shift, b_hh, w_hr, **kwargs)

    monkeypatch.setattr(functional, "lstm_reference", forget_gate_bias_off)
    assert main(SMALL + ["--backend", "reference"]) == 1
    assert "MISMATCH" in capsys.readouterr().out


def test_check_takes_layers_directions_projection_and_packed_input(capsys):
    args = ["-L", "2", "--bidirectional", "-P", "3", "--packed", "--batch-first"]
    assert main(SMALL + args) == 0
    out = capsys.readouterr().out
    assert "num_layers=2, bidirectional=True, proj_size=3, packed" in out
    for name in ["grad weight_hr_l1_reverse", "grad weight_ih_l1", "grad h0"]:
        assert out.count(name + " ") == 2, name


def test_check_fails_when_autograd_and_hand_derived_bptt_disagree(capsys, monkeypatch):
    # The third oracle is checked, not only printed: a wrong hand-derived gradient fails.
    from fusedrnn import check

    real = check.bptt_gradients

    def one_gradient_off(*args):
        grads = real(*args)
        grads["grad weight_hh_l0"] = grads["grad weight_hh_l0"] * (1 + 1e-6)
        return grads

    monkeypatch.setattr(check, "bptt_gradients", one_gradient_off)
    assert main(SMALL + ["--backend", "reference"]) == 1
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("grad weight_hh_l0 "))
    assert row.endswith("NO")


def test_an_interpreter_that_cannot_run_is_said_not_a_traceback(capsys, monkeypatch):
    """numpy >= 2.4 breaks Triton 3.6's interpreter (an InterpreterError deep in Triton): the
    check says why and what to install before it runs a kernel, and exits 2."""
    import numpy
    import pytest
    import triton

    monkeypatch.setattr(numpy, "__version__", "2.4.0")
    monkeypatch.setattr(triton, "__version__", "3.6.0")
    with pytest.raises(SystemExit) as exited:
        main(SMALL + ["--device", "cpu"])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "Traceback" not in err
    assert "numpy 2.4.0 with triton 3.6.0" in err and "pip install 'numpy<2.4'" in err and "--backend reference" in err
    assert main(SMALL + ["--device", "cpu", "--backend", "reference"]) == 0  # the other backends still run


def test_check_of_the_rnn_passes_for_both_nonlinearities_and_prints_every_tensor(capsys):
    for nonlinearity in ("tanh", "relu"):
        assert main(SMALL + ["--cell", "rnn", "--nonlinearity", nonlinearity, "-L", "2", "--bidirectional",
                             "--packed"]) == 0  # fmt: skip
        out = capsys.readouterr().out
        assert f"vs {torch_baseline('RNN')}" in out and "all tensors within tolerance" in out
        assert ("nonlinearity=relu" in out) == (nonlinearity == "relu") and "c_n" not in out
        for name in ["output", "h_n", "grad input", "grad h0", "grad weight_hh_l1_reverse", "grad bias_ih_l0"]:
            assert out.count(name + " ") == 2, name


def test_check_of_the_rnn_fails_on_the_wrong_nonlinearity(capsys, monkeypatch):
    """relu computed where tanh is asked for: the reference path's rows mismatch."""
    real = functional.rnn_reference

    def always_relu(*args, **kwargs):
        return real(*args, **dict(kwargs, nonlinearity="relu"))

    monkeypatch.setattr(functional, "rnn_reference", always_relu)
    assert main(SMALL + ["--cell", "rnn", "--backend", "reference"]) == 1
    assert "MISMATCH" in capsys.readouterr().out


def test_check_of_the_rnn_refuses_a_projection(capsys):
    import pytest

    with pytest.raises(SystemExit):
        main(SMALL + ["--cell", "rnn", "-P", "3", "--backend", "reference"])
    assert "--proj-size is the LSTM's" in capsys.readouterr().err


def test_check_of_the_gru_passes_and_fails_on_swapped_gates(capsys, monkeypatch):
    """--cell gru on the reference path: every tensor of torch.nn.GRU within tolerance; with
    the reset and update gates swapped in the reference's step, rows mismatch."""
    from fusedrnn.kernels import reference

    assert main(SMALL + ["--cell", "gru", "-L", "2", "--bidirectional", "--packed", "--backend", "reference"]) == 0
    out = capsys.readouterr().out
    assert f"vs {torch_baseline('GRU')}" in out and "all tensors within tolerance" in out and "c_n" not in out
    for name in ["output", "h_n", "grad input", "grad h0", "grad weight_hh_l1_reverse", "grad bias_hh_l0"]:
        assert out.count(name + " ") == 1, name
    real = reference.gru_step

    def swapped(gx, rec, h, b_hn):
        H = h.shape[-1]
        order = torch.cat([torch.arange(H, 2 * H), torch.arange(H), torch.arange(2 * H, 3 * H)])
        return real(gx[..., order], rec[..., order], h, b_hn[..., :] if b_hn is not None else None)

    monkeypatch.setattr(reference, "gru_step", swapped)
    assert main(SMALL + ["--cell", "gru", "--backend", "reference"]) == 1
    assert "MISMATCH" in capsys.readouterr().out
