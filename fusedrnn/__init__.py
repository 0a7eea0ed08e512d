"""fusedrnn: fused Triton kernels for recurrent layers, drop-in for torch.nn.LSTM, RNN and GRU."""

from importlib.metadata import PackageNotFoundError, version

from fusedrnn import functional
from fusedrnn.cell import GRUCell, LSTMCell, RNNCell
from fusedrnn.convert import NotConvertedWarning, convert, revert
from fusedrnn.modules import GRU, LSTM, RNN

try:
    __version__ = version("fusedrnn")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = ["LSTM", "LSTMCell", "RNN", "RNNCell", "GRU", "GRUCell", "convert", "revert", "NotConvertedWarning", "functional", "__version__"]
