"""The README's drop-in snippet runs as printed (on CPU: torch's own LSTM op, see "On CPU")."""

import re
import warnings
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def python_block_after(heading):
    text = README.read_text()
    start = text.index(heading)
    return re.search(r"```python\n(.*?)```", text[start:], re.S).group(1)


def test_drop_in_snippet_runs():
    code = python_block_after("## Drop-in use")
    scope = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error", category=Warning)  # e.g. convert's NotConvertedWarning
        warnings.filterwarnings("ignore", message=".*oneDNN.*")  # torch's own, for projections
        exec(compile(code, str(README), "exec"), scope)
    assert tuple(scope["output"].shape) == (32, 100, 1024) and tuple(scope["h"].shape) == (32, 512)
    assert tuple(scope["rnn_output"].shape) == (100, 32, 512) and tuple(scope["rnn_h_n"].shape) == (2, 32, 512)
    assert tuple(scope["h_rnn"].shape) == (32, 512)
    assert type(scope["model"]["encoder"]).__module__ == "torch.nn.modules.rnn"  # reverted
