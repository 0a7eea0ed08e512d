"""What a recurrent cell is to the shared framework: a small description (``CellSpec``).

Everything that is not the cell's own math (the launch strategies, the block planner, the
launch, residency and barriers, the ahead-of-time compile spec, the tuning tables) reads a
cell through this description and nothing else. The math lives beside the kernels as
``@triton.jit`` functions (``kernels/cell_math.py``, branched on ``CellSpec.name``; one
kernel body for every cell in ``kernels/recurrence.py``) and in the reference
(``kernels/reference.py``). ``kernels/README.md`` says where a new cell goes.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class CellSpec:
    """A recurrent cell as the framework sees it.

    - ``name``: the key of the tuning tables and of ``CELLS``.
    - ``gates``: gate blocks of H rows in ``W_ih`` and ``W_hh`` (torch's layout): the width
      of the input projection ``Gx`` and of the recurrent product, ``gates * H``.
    - ``states``: the states a step carries, ``h`` first (``c`` is the LSTM's, kept in fp32).
    - ``saved_tiles``: the H-wide tiles the forward step saves for the backward: ``gates`` of
      them written over ``Gx`` (the LSTM's four pre-activations; its fp32 ``c`` is a state and
      saved apart), and any beyond those in a buffer of their own (the GRU's fourth, hn).
    - ``folded_biases``: the biases added into ``Gx`` by the input GEMM; the others are added
      inside the step.
    - ``projection``: whether the cell takes torch's ``proj_size`` (``h = W_hr m``).
    - ``split_gate_grads``: whether the gate gradients on the input side (for dX, dW_ih,
      db_ih) differ from the recurrent side's (for dW_hh, db_hh, dh), so that the backward
      writes two tensors.
    """

    name: str
    gates: int
    states: tuple
    saved_tiles: int
    folded_biases: tuple
    projection: bool
    split_gate_grads: bool


# PyTorch's gate order (i, f, g, o); c' = f*c + i*g, h' = o*tanh(c').
LSTM = CellSpec(
    name="lstm", gates=4, states=("h", "c"), saved_tiles=4, folded_biases=("b_ih", "b_hh"), projection=True,
    split_gate_grads=False,
)  # fmt: skip

# torch.nn.RNN's two nonlinearities (torch's _VF.rnn_tanh and rnn_relu): h' = act(Gx + W_hh h).
RNN_TANH = CellSpec(
    name="rnn_tanh", gates=1, states=("h",), saved_tiles=1, folded_biases=("b_ih", "b_hh"), projection=False,
    split_gate_grads=False,
)  # fmt: skip
RNN_RELU = CellSpec(
    name="rnn_relu", gates=1, states=("h",), saved_tiles=1, folded_biases=("b_ih", "b_hh"), projection=False,
    split_gate_grads=False,
)  # fmt: skip

# torch.nn.GRU, gate order (r, z, n): n = tanh(Gx_n + r * (W_hn h + b_hn)), h' = (1-z)*n + z*h.
# b_hn stays inside the step (r multiplies it); b_hr and b_hz fold with b_ih. The step saves
# the r and z pre-activations, Gx_n and W_hn h + b_hn; the n slot's gradient is da_n on the
# input side and r * da_n on the recurrent side.
GRU = CellSpec(
    name="gru", gates=3, states=("h",), saved_tiles=4, folded_biases=("b_ih", "b_hr", "b_hz"), projection=False,
    split_gate_grads=True,
)  # fmt: skip

CELLS = {cell.name: cell for cell in (LSTM, RNN_TANH, RNN_RELU, GRU)}


def torch_layer(cell_name):
    """torch.nn's layer class name of a cell: "LSTM", "RNN" (both nonlinearities) or "GRU";
    its cell module is this + "Cell"."""
    return "RNN" if cell_name.startswith("rnn_") else cell_name.upper()
