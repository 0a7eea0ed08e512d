"""Kernels of fusedrnn, installed as ``fusedrnn.kernels``.

- ``fusedrnn.kernels.reference``: the recurrences written in plain PyTorch ops. It is the CPU
  path of the modules and the oracle of the tests; it needs no Triton.
- ``fusedrnn.kernels.recurrence``: the fused Triton recurrence kernels (one forward and one
  backward body for every cell) and their host launchers; ``cell_math`` holds each cell's
  step math.
- ``fusedrnn.kernels.cells``, ``planner``, ``launch``, ``barrier``, ``aot``: what every cell's
  kernels share (the cell description, planning, launching, the grid barrier, ahead-of-time
  builds); ``kernels/README.md`` maps every file to its job.
- ``fusedrnn.kernels.step_graphs``: CUDA graphs that replay the per-step launches of the recurrence kernels.
- ``fusedrnn.kernels.tuning``: per-GPU tables of measured strategies and block sizes.
- ``fusedrnn.kernels.lstm_cell``: the fused LSTM cell-step kernels (one forward launch) and
  their launchers.

This package deliberately imports nothing at import time, so that the reference path works
on machines without Triton and so that ``TRITON_INTERPRET`` can still be set before the
Triton kernels are defined.
"""
