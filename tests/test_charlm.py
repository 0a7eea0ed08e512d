"""``python -m fusedrnn charlm``: it learns, its checkpoint loads into torch.nn.LSTM, and a
resumed run continues exactly where an uninterrupted one would be."""

import pytest
import torch

# The CPU CI installs these (the "cli" extra); the offline GPU image may lack them.
pytest.importorskip("tqdm", reason="charlm's progress bar needs tqdm: pip install 'fusedrnn[cli]'")
pytest.importorskip("matplotlib", reason="charlm's loss curve needs matplotlib: pip install 'fusedrnn[cli]'")

from fusedrnn.__main__ import main
from fusedrnn.charlm import CharLM, Corpus, default_text, load_checkpoint

# Small enough for a few seconds on two CPU cores.
TINY = ["-B", "8", "-T", "16", "--embed-size", "8", "-H", "24", "--lr", "1e-2", "--val-batches", "2"]


@pytest.fixture
def text_file(tmp_path):
    # A text with obvious structure, so a few dozen steps lower the loss a lot.
    path = tmp_path / "text.txt"
    path.write_text("The quick brown fox jumps over the lazy dog.\n" * 60, encoding="utf-8")
    return str(path)


def charlm(*args):
    return main(["charlm", "--no-progress", *map(str, args)])


def test_loss_falls_and_everything_is_written(text_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert charlm("--text", text_file, "--steps", 60, "--val-every", 30, "--sample-len", 20, "--out", out, *TINY) == 0
    printed = capsys.readouterr().out
    checkpoint = load_checkpoint(out / "charlm.pt")
    val = checkpoint["history"]["val_loss"]
    assert checkpoint["history"]["val_step"] == [0, 30, 60]
    # Uniform guessing over ~30 characters is ln(30) = 3.4 nats; this text is nearly
    # deterministic, so 60 steps must take the validation loss well below half of it.
    assert val[0] > 3.0 and val[-1] < 0.5 * val[0], val
    assert len(checkpoint["history"]["train_loss"]) == 60
    assert f"validation loss {val[0]:.3f} -> {val[-1]:.3f}" in printed
    assert "sample (temperature 0.8):\nThe " in printed
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_progress_bar_shows_loss_and_throughput(text_file, tmp_path, capsys):
    main(["charlm", "--text", text_file, "--steps", "5", "--sample-len", "0", "--out", str(tmp_path), *TINY])
    err = capsys.readouterr().err
    assert "5/5" in err and "loss " in err and "tok/s" in err, err[-500:]


def test_checkpoint_loads_into_torch_nn_lstm(text_file, tmp_path):
    charlm("--text", text_file, "--steps", 5, "--sample-len", 0, "--out", tmp_path, *TINY)
    checkpoint = torch.load(tmp_path / "charlm.pt", weights_only=True)  # plain tensors and lists only
    ours = CharLM(**checkpoint["config"])
    theirs = CharLM(**checkpoint["config"], lstm_class=torch.nn.LSTM)
    assert type(theirs.lstm) is torch.nn.LSTM
    ours.load_state_dict(checkpoint["model"])
    theirs.load_state_dict(checkpoint["model"])  # strict: every name matches torch's
    tokens = torch.randint(checkpoint["config"]["vocab_size"], (3, 11))
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens)[0], theirs(tokens)[0], rtol=1e-5, atol=1e-6)


def test_resume_continues_the_uninterrupted_run(text_file, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    common = ["--text", text_file, "--sample-len", 0, "--val-every", 4, *TINY]
    charlm("--steps", 8, "--out", straight, *common)
    charlm("--steps", 4, "--out", split, *common)
    charlm("--steps", 8, "--out", split, "--resume", split / "charlm.pt", *common)
    a, b = load_checkpoint(straight / "charlm.pt"), load_checkpoint(split / "charlm.pt")
    assert b["step"] == 8
    # Same batches (the sampler's state is in the checkpoint), same Adam moments: same weights.
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    assert a["history"] == b["history"]


def test_resume_refuses_a_text_with_new_characters(text_file, tmp_path):
    charlm("--text", text_file, "--steps", 2, "--sample-len", 0, "--out", tmp_path, *TINY)
    other = tmp_path / "other.txt"
    other.write_text("XYZ " * 500, encoding="utf-8")
    with pytest.raises(ValueError, match="vocabulary lacks"):
        charlm("--text", other, "--steps", 4, "--resume", tmp_path / "charlm.pt", "--out", tmp_path, *TINY)


def test_prompt_outside_the_vocabulary_fails_before_training(text_file, tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        charlm("--text", text_file, "--steps", 2, "--prompt", "Z", "--out", tmp_path, *TINY)
    assert exited.value.code == 2 and "error: --prompt" in capsys.readouterr().err
    assert not (tmp_path / "charlm.pt").exists()


@pytest.mark.parametrize(
    "argv, message",
    [(["--text", "missing.txt"], "--text: cannot read missing.txt: No such file or directory"),
     (["--resume", "missing.pt"], "--resume: no checkpoint file missing.pt")],
)  # fmt: skip
def test_bad_files_are_usage_errors_not_tracebacks(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        charlm(*argv, "--out", tmp_path, *TINY)
    err = capsys.readouterr().err
    assert exited.value.code == 2 and f"error: {message}" in err and "Traceback" not in err


def test_kernel_path_trains(text_file, tmp_path):
    # The Triton kernels (interpreted on CPU) in the same loop; the loss must move down.
    charlm("--text", text_file, "--steps", 4, "--val-every", 4, "--sample-len", 5, "--backend", "triton",
           "--out", tmp_path, *TINY)
    val = load_checkpoint(tmp_path / "charlm.pt")["history"]["val_loss"]
    assert val[-1] < val[0], val


def test_default_text_needs_no_download():
    text = default_text()
    assert len(text) > 100_000
    corpus = Corpus(text)
    assert corpus.decode(corpus.encode("The ")) == "The "
