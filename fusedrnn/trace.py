"""``python -m fusedrnn trace``: every gate, ``c`` and ``h`` of a small LSTM, step by step
(``--cell rnn``: each step's pre-activation and ``h`` of a torch.nn.RNN; ``--cell gru``: each
step's reset and update gates, ``W_hn h + b_hn``, candidate and ``h`` of a torch.nn.GRU; then
for both the gradients of sum(h_T) by hand-derived BPTT against torch's autograd, parameter
by parameter).

For each step it prints each gate's pre-activation ("raw computation") and activation, the
new cell state and the new hidden state, in the order of the hand-written notebooks (forget,
input, candidate, output). The cell update is the library's own (``lstm_cell_update`` of
the reference path); afterwards ``fusedrnn.LSTM`` runs the same weights and input and the
trace checks that every step's ``h`` and the final ``c`` agree with it.

Weights (``--weights FILE``, JSON) come in either layout:

- torch's: ``weight_ih_l0`` (4H, I), ``weight_hh_l0`` (4H, H), ``bias_ih_l0``, ``bias_hh_l0``
  (4H), gate order i, f, g, o;
- the notebooks': ``W_f``, ``W_i``, ``W_c``, ``W_o``, each (H, I + H) acting on the
  concatenation [x, h], and ``b_f``, ``b_i``, ``b_c``, ``b_o`` (H or H x 1); optionally an
  output layer ``W_y`` (O, H), ``b_y`` (O). They are converted to torch's layout.

``--example`` uses the weights and input [0.5, 1.5, 2.5] of the numerical example notebook
(input size 1, hidden size 2), whose printed gates the trace reproduces digit for digit.
Without weights, they are random (``--seed``), as is the input unless ``--input`` is given.
"""

import json

import torch

from fusedrnn._usage import UsageError

# The notebooks' concatenated layout: gate name -> torch's gate index (i, f, g, o).
NOTEBOOK_GATES = {"f": 1, "i": 0, "c": 2, "o": 3}
# Printed as the notebooks print them: name, torch's gate index, activation.
TRACE_GATES = (
    ("Forget Gate", 1, "sigmoid"),
    ("Input Gate", 0, "sigmoid"),
    ("Candidate Cell State", 2, "tanh"),
    ("Output Gate", 3, "sigmoid"),
)

# The numerical example notebook's hand-set weights (input size 1, hidden size 2).
EXAMPLE_WEIGHTS = {
    "W_f": [[0.65, -0.15, 0.25], [0.55, 0.35, -0.05]],
    "W_i": [[0.25, 0.35, -0.15], [0.15, 0.45, 0.05]],
    "W_c": [[0.45, 0.25, 0.15], [0.25, 0.35, 0.05]],
    "W_o": [[0.15, 0.45, 0.35], [0.25, 0.25, 0.3]],
    "b_f": [[0.55], [0.35]],
    "b_i": [[0.15], [0.25]],
    "b_c": [[0.35], [0.15]],
    "b_o": [[0.25], [0.15]],
    "W_y": [[0.55, 0.45]],
    "b_y": [[0.15]],
}
EXAMPLE_INPUT = [[0.5], [1.5], [2.5]]

TORCH_KEYS = {"weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"}
NOTEBOOK_KEYS = {f"W_{g}" for g in NOTEBOOK_GATES} | {f"b_{g}" for g in NOTEBOOK_GATES}
OUTPUT_KEYS = {"W_y", "b_y"}


def add_arguments(parser):
    parser.add_argument("--cell", choices=["lstm", "rnn", "gru"], default="lstm",
                        help="torch.nn.LSTM, torch.nn.RNN or torch.nn.GRU")  # fmt: skip
    parser.add_argument("--nonlinearity", choices=["tanh", "relu"], default="tanh", help="the RNN's (--cell rnn)")
    parser.add_argument("--example", action="store_true", help="the numerical example notebook's weights and input")
    parser.add_argument("--weights", metavar="FILE", help="JSON weights, torch's or the notebooks' layout")
    parser.add_argument(
        "--input",
        help="the sequence: steps separated by ';', features by ',' (e.g. '0.5; 1.5; 2.5'); default random",
    )
    parser.add_argument("--input-size", "-I", type=int, default=2, help="for random weights")
    parser.add_argument("--hidden-size", "-H", type=int, default=3, help="for random weights")
    parser.add_argument("--seq-len", "-T", type=int, default=3, help="for a random input")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--decimals", type=int, default=4)
    parser.add_argument(
        "--backend",
        choices=["auto", "triton", "reference"],
        default="auto",
        help="fusedrnn.LSTM's path for the cross-check ('triton': the kernels in float32, on CUDA when there is one, "
        "else interpreted on CPU)",
    )


def weights_from_notebook_layout(weights, input_size):
    """``W_f, W_i, W_c, W_o`` (H, I + H) over [x, h] and ``b_*`` -> torch.nn.LSTM's
    ``weight_ih_l0`` (4H, I), ``weight_hh_l0`` (4H, H), ``bias_ih_l0`` (4H, gate order
    i, f, g, o) and a zero ``bias_hh_l0``. Values are float64 tensors."""
    missing = NOTEBOOK_KEYS - weights.keys()
    if missing:
        raise ValueError(f"notebook-layout weights need {sorted(NOTEBOOK_KEYS)}; missing {sorted(missing)}")
    blocks = [None] * 4
    biases = [None] * 4
    hidden_size = None
    for gate, index in NOTEBOOK_GATES.items():
        w = torch.as_tensor(weights[f"W_{gate}"], dtype=torch.float64)
        b = torch.as_tensor(weights[f"b_{gate}"], dtype=torch.float64).reshape(-1)
        hidden_size = hidden_size or w.shape[0]
        if w.shape != (hidden_size, input_size + hidden_size) or b.shape != (hidden_size,):
            raise ValueError(
                f"W_{gate} must be (H, I + H) = ({hidden_size}, {input_size + hidden_size}) and b_{gate} (H,) "
                f"for input size {input_size}; got {tuple(w.shape)} and {tuple(b.shape)}"
            )
        blocks[index], biases[index] = w, b
    stacked = torch.cat(blocks)  # (4H, I + H), torch's gate order
    return {
        "weight_ih_l0": stacked[:, :input_size].contiguous(),
        "weight_hh_l0": stacked[:, input_size:].contiguous(),
        "bias_ih_l0": torch.cat(biases),
        "bias_hh_l0": torch.zeros(4 * hidden_size, dtype=torch.float64),
    }


def load_weights(weights, input_size):
    """torch-layout state dict (float64) and an optional output layer (W_y, b_y) or None."""
    keys = set(weights)
    unknown = keys - TORCH_KEYS - NOTEBOOK_KEYS - OUTPUT_KEYS
    if unknown:
        raise ValueError(
            f"unknown weight names {sorted(unknown)}: expected torch's {sorted(TORCH_KEYS)} "
            f"or the notebooks' {sorted(NOTEBOOK_KEYS)} (+ optional {sorted(OUTPUT_KEYS)})"
        )
    if keys & TORCH_KEYS and keys & NOTEBOOK_KEYS:
        raise ValueError("weights mix torch's names and the notebooks' names: use one layout")
    if keys & TORCH_KEYS:
        missing = {"weight_ih_l0", "weight_hh_l0"} - keys
        if missing:
            raise ValueError(f"torch-layout weights need {sorted(missing)}")
        state = {k: torch.as_tensor(weights[k], dtype=torch.float64) for k in keys & TORCH_KEYS}
        four_h = state["weight_hh_l0"].shape[0]
        state.setdefault("bias_ih_l0", torch.zeros(four_h, dtype=torch.float64))
        state.setdefault("bias_hh_l0", torch.zeros(four_h, dtype=torch.float64))
        if state["weight_ih_l0"].shape[1] != input_size:
            raise ValueError(f"weight_ih_l0 has input size {state['weight_ih_l0'].shape[1]}, the input {input_size}")
    else:
        state = weights_from_notebook_layout(weights, input_size)
    output_layer = None
    if "W_y" in weights:
        w_y = torch.as_tensor(weights["W_y"], dtype=torch.float64)
        b_y = torch.as_tensor(weights.get("b_y", [0.0] * w_y.shape[0]), dtype=torch.float64).reshape(-1)
        output_layer = (w_y, b_y)
    return state, output_layer


def parse_sequence(text):
    """'0.5; 1.5; 2.5' -> (T, I) float64 tensor."""
    try:
        rows = [[float(v) for v in step.split(",")] for step in text.split(";") if step.strip()]
    except ValueError as error:
        raise UsageError(f"--input: steps separated by ';', features by ',': {error}") from None
    if not rows or len({len(r) for r in rows}) != 1:
        raise UsageError(f"--input: every step needs the same number of features, got {text!r}")
    return torch.tensor(rows, dtype=torch.float64)


def trace_steps(x, state):
    """Runs the LSTM one step at a time on x (T, I) from zero state and returns, per step, a
    dict of the input, each gate's pre-activation and activation (torch's gate order), and
    the new c and h. Float64; the cell update is the reference path's."""
    from fusedrnn.kernels.reference import lstm_cell_update

    w_ih, w_hh = state["weight_ih_l0"], state["weight_hh_l0"]
    bias = state["bias_ih_l0"] + state["bias_hh_l0"]
    H = w_hh.shape[1]
    h = torch.zeros(1, H, dtype=torch.float64)
    c = torch.zeros(1, H, dtype=torch.float64)
    steps = []
    for x_t in x:
        pre = x_t[None] @ w_ih.t() + h @ w_hh.t() + bias  # (1, 4H), gates i, f, g, o
        h, c = lstm_cell_update(pre, c)
        raw = pre[0].chunk(4)
        act = [torch.sigmoid(raw[0]), torch.sigmoid(raw[1]), torch.tanh(raw[2]), torch.sigmoid(raw[3])]
        steps.append({"x": x_t, "raw": raw, "act": act, "c": c[0], "h": h[0]})
    return steps


def format_trace(x, steps, decimals=4, output_layer=None):
    """The notebooks' debug print-out, as lines."""
    import numpy as np

    def show(t):
        return str(np.round(t.numpy().flatten(), decimals))

    H = steps[0]["h"].numel() if steps else 0
    zeros = np.zeros(H)
    lines = [
        "=== LSTM Forward Pass Debug Details ===",
        f"Initial hidden state (h0): {zeros}",
        f"Initial cell state (c0): {zeros}",
    ]
    for t, step in enumerate(steps):
        lines += ["", f"[Time Step {t + 1}]", f"Input x[{t}]: {step['x'].numpy().flatten()}"]
        for name, index, activation in TRACE_GATES:
            lines += [
                f"{name}:",
                f"  Raw computation: {show(step['raw'][index])}",
                f"  After {activation}: {show(step['act'][index])}",
            ]
        lines += [
            "Updated Cell State:",
            f"  c_new: {show(step['c'])}",
            "Updated Hidden State:",
            f"  h_new: {show(step['h'])}",
            "-" * 50,
        ]
    if output_layer is not None and steps:
        w_y, b_y = output_layer
        prediction = w_y @ steps[-1]["h"] + b_y
        lines += ["", f"Final Prediction (W_y h_T + b_y): {show(prediction)}"]
    return lines


def kernel_device(backend):
    """Where the cross-check runs fusedrnn's module: the kernels ('triton') on CUDA when there
    is one (``main`` switches the interpreter on only when there is none), else on CPU."""
    return "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"


def check_against_module(x, state, steps, backend):
    """Runs fusedrnn.LSTM on the same weights and input; returns (path, max |h diff|, |c diff|)."""
    import fusedrnn

    dtype = torch.float32 if backend == "triton" else torch.float64  # the kernels take no float64
    device = kernel_device(backend)
    I, H = state["weight_ih_l0"].shape[1], state["weight_hh_l0"].shape[1]
    lstm = fusedrnn.LSTM(I, H, backend=backend).to(device, dtype)
    lstm.load_state_dict({k: v.to(dtype) for k, v in state.items()})
    with torch.no_grad():
        output, (_, c_n) = lstm(x.to(device, dtype)[:, None])
    traced_h = torch.stack([s["h"] for s in steps])
    h_diff = (output[:, 0].cpu().double() - traced_h).abs().max().item()
    c_diff = (c_n[0, 0].cpu().double() - steps[-1]["c"]).abs().max().item()
    return f"backend={backend!r}, {dtype}", h_diff, c_diff


RNN_KEYS = TORCH_KEYS  # torch.nn.RNN's names: weight_ih_l0 (H, I), weight_hh_l0 (H, H), biases (H,)


def rnn_weights(weights, input_size, gates=1):
    """torch.nn.RNN's (``gates`` 1) or torch.nn.GRU's (3) one-layer state dict (float64) from
    JSON in torch's layout; biases default to zero."""
    kind = "RNN" if gates == 1 else "GRU"
    unknown = set(weights) - RNN_KEYS
    missing = {"weight_ih_l0", "weight_hh_l0"} - set(weights)
    if unknown or missing:
        raise ValueError(f"{kind} weights are torch's {sorted(RNN_KEYS)} (biases optional); unknown {sorted(unknown)}, "
                         f"missing {sorted(missing)}")  # fmt: skip
    state = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in weights.items()}
    if state["weight_hh_l0"].dim() != 2:
        raise ValueError(f"weight_hh_l0 must be a matrix, got shape {tuple(state['weight_hh_l0'].shape)}")
    H = state["weight_hh_l0"].shape[1]
    rows = f"{gates}H" if gates > 1 else "H"
    if state["weight_hh_l0"].shape != (gates * H, H) or state["weight_ih_l0"].shape != (gates * H, input_size):
        raise ValueError(f"expected weight_hh_l0 ({rows}, H) and weight_ih_l0 ({rows}, {input_size}) for the input, got "
                         f"{tuple(state['weight_hh_l0'].shape)} and {tuple(state['weight_ih_l0'].shape)}")  # fmt: skip
    for name in ("bias_ih_l0", "bias_hh_l0"):
        state.setdefault(name, torch.zeros(gates * H, dtype=torch.float64))
    return state


def trace_rnn(x, state, nonlinearity, decimals=4):
    """The RNN's step-by-step print-out as lines, and its h_t stacked (T, H), from zero state."""
    import numpy as np

    from fusedrnn.kernels.reference import RNN_NONLINEARITIES

    def show(t):
        return str(np.round(t.numpy().flatten(), decimals))

    w_ih, w_hh = state["weight_ih_l0"], state["weight_hh_l0"]
    h = torch.zeros(w_hh.shape[0], dtype=torch.float64)
    lines = ["=== RNN Forward Pass Debug Details ===", f"Initial hidden state (h0): {show(h)}"]
    hs = []
    for t, x_t in enumerate(x):
        z = x_t @ w_ih.t() + state["bias_ih_l0"] + h @ w_hh.t() + state["bias_hh_l0"]
        h = RNN_NONLINEARITIES[nonlinearity](z)
        hs.append(h)
        lines += ["", f"[Time Step {t + 1}]", f"Input x[{t}]: {x_t.numpy().flatten()}",
                  f"  z = x W_ih^T + b_ih + h W_hh^T + b_hh: {show(z)}",
                  f"  h = {nonlinearity}(z): {show(h)}", "-" * 50]  # fmt: skip
    return lines, torch.stack(hs)


def trace_gru(x, state, decimals=4):
    """The GRU's step-by-step print-out (torch's gate order r, z, n) as lines, and its h_t
    stacked (T, H), from zero state: ``GRUEquations``' forward, printed."""
    import numpy as np

    def show(t):
        return str(np.round(t.numpy().flatten(), decimals))

    w_ih, w_hh = state["weight_ih_l0"], state["weight_hh_l0"]
    h = torch.zeros(w_hh.shape[1], dtype=torch.float64)
    lines = ["=== GRU Forward Pass Debug Details ===", f"Initial hidden state (h0): {show(h)}"]
    hs = []
    for t, x_t in enumerate(x):
        zx_r, zx_z, zx_n = (x_t @ w_ih.t() + state["bias_ih_l0"]).chunk(3)
        zh_r, zh_z, zh_n = (h @ w_hh.t() + state["bias_hh_l0"]).chunk(3)
        r, z = torch.sigmoid(zx_r + zh_r), torch.sigmoid(zx_z + zh_z)
        n = torch.tanh(zx_n + r * zh_n)
        h = (1 - z) * n + z * h
        hs.append(h)
        lines += ["", f"[Time Step {t + 1}]", f"Input x[{t}]: {x_t.numpy().flatten()}",
                  f"  Reset Gate  r = sigmoid(x W_ir^T + b_ir + h W_hr^T + b_hr): {show(r)}",
                  f"  Update Gate z = sigmoid(x W_iz^T + b_iz + h W_hz^T + b_hz): {show(z)}",
                  f"  h W_hn^T + b_hn: {show(zh_n)}",
                  f"  Candidate   n = tanh(x W_in^T + b_in + r * (h W_hn^T + b_hn)): {show(n)}",
                  f"  h = (1 - z) * n + z * h: {show(h)}", "-" * 50]  # fmt: skip
    return lines, torch.stack(hs)


def rnn_gradient_lines(x, state, nonlinearity, decimals, cell="rnn"):
    """The gradients of sum(h_T) by the hand-derived BPTT (``RNNEquations``, or for ``cell``
    "gru" ``GRUEquations``) and by autograd through torch.nn.RNN (torch.nn.GRU), per
    parameter: the question of the notebook whose hand gradients of an nn.RNN did not match.
    Returns (lines, max |difference|)."""
    from fusedrnn.kernels.reference import gru_layers_reference_backward, rnn_layers_reference_backward

    H, I = state["weight_hh_l0"].shape[1], state["weight_ih_l0"].shape[1]
    if cell == "gru":
        rnn = torch.nn.GRU(I, H, dtype=torch.float64)
    else:
        rnn = torch.nn.RNN(I, H, nonlinearity=nonlinearity, dtype=torch.float64)
    rnn.load_state_dict(state)
    _, h_n = rnn(x[:, None])
    h_n.sum().backward()
    if cell == "gru":
        by_hand = gru_layers_reference_backward(x[:, None], None, rnn._flat_weights, None, torch.ones_like(h_n))
    else:
        by_hand = rnn_layers_reference_backward(x[:, None], None, rnn._flat_weights, None, torch.ones_like(h_n),
                                                nonlinearity=nonlinearity)  # fmt: skip
    lines = ["", f"Gradients of sum(h_T): hand-derived BPTT (fusedrnn.kernels.reference) vs torch.nn.{cell.upper()} "
             "autograd"]  # fmt: skip
    worst = 0.0
    for name, g in zip(rnn._flat_weights_names, by_hand["weights"]):
        theirs = getattr(rnn, name).grad
        diff = (g - theirs).abs().max().item()
        worst = max(worst, diff)
        lines.append(f"  {name}: BPTT {g.numpy().round(decimals).tolist()}  torch {theirs.numpy().round(decimals).tolist()}  "
                     f"max |diff| {diff:.1e}")  # fmt: skip
    return lines, worst


def main_rnn(args, x, weights, generator):
    """``--cell rnn`` or ``gru``: trace, the module cross-check, the gradients' check."""
    import fusedrnn

    gru = args.cell == "gru"
    gates = 3 if gru else 1
    if weights is None:
        I, H = x.shape[1], args.hidden_size
        bound = H**-0.5  # torch.nn.RNN's and GRU's initialisation
        G = gates * H
        weights = {name: (torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1) * bound
                   for name, shape in [("weight_ih_l0", (G, I)), ("weight_hh_l0", (G, H)), ("bias_ih_l0", (G,)),
                                       ("bias_hh_l0", (G,))]}  # fmt: skip
    try:
        state = rnn_weights(weights, x.shape[1], gates)
    except ValueError as error:
        raise UsageError(f"--weights: {error}" if args.weights else str(error)) from None
    lines, hs = trace_gru(x, state, args.decimals) if gru else trace_rnn(x, state, args.nonlinearity, args.decimals)
    print("=" * 60)
    print("GRU step by step (fusedrnn)" if gru else f"RNN ({args.nonlinearity}) step by step (fusedrnn)")
    print("=" * 60, "\n")
    print("\n".join(lines))
    dtype = torch.float32 if args.backend == "triton" else torch.float64
    device = kernel_device(args.backend)
    H, I = state["weight_hh_l0"].shape[1], state["weight_ih_l0"].shape[1]
    if gru:
        module = fusedrnn.GRU(I, H, backend=args.backend).to(device, dtype)
    else:
        module = fusedrnn.RNN(I, H, nonlinearity=args.nonlinearity, backend=args.backend).to(device, dtype)
    module.load_state_dict({k: v.to(dtype) for k, v in state.items()})
    with torch.no_grad():
        output, _ = module(x.to(device, dtype)[:, None])
    h_diff = (output[:, 0].cpu().double() - hs).abs().max().item()
    tolerance = 1e-5 if args.backend == "triton" else 1e-12
    grad_lines, grad_diff = rnn_gradient_lines(x, state, args.nonlinearity, args.decimals, args.cell)
    print("\n".join(grad_lines))
    agrees = h_diff <= tolerance and grad_diff <= 1e-12
    print(f"\nfusedrnn.{type(module).__name__} (backend={args.backend!r}, {dtype}) on the same weights and input: "
          f"max |h_t - trace| = {h_diff:.1e}; BPTT vs autograd: {grad_diff:.1e}: "
          f"{'agrees' if agrees else 'DISAGREES'}")  # fmt: skip
    return 0 if agrees else 1


def main(args):
    if args.backend == "triton" and not torch.cuda.is_available():
        import os

        os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels are imported
    # The trace is float32 against float64 at 1e-5: IEEE products, as `check` takes them. With
    # cuDNN's TF32 switch on (torch's default) the kernels' fp32 products are TF32, on a GPU
    # and, rounded as there, under the interpreter: errors of 1e-5 to 1e-4.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    generator = torch.Generator().manual_seed(args.seed)
    if args.cell in ("rnn", "gru"):
        if args.example:
            raise UsageError(f"--example is the LSTM notebook's; with --cell {args.cell} give --weights or --input")
        x = (parse_sequence(args.input) if args.input is not None
             else torch.randn(args.seq_len, args.input_size, generator=generator, dtype=torch.float64))  # fmt: skip
        weights = None
        if args.weights:
            try:
                with open(args.weights) as f:
                    weights = json.load(f)
            except (OSError, json.JSONDecodeError) as error:
                raise UsageError(f"--weights: cannot read {args.weights} as JSON: {error}") from None
        return main_rnn(args, x, weights, generator)
    if args.example and args.weights:
        raise UsageError("--example and --weights: pick one")
    if args.example:
        weights = EXAMPLE_WEIGHTS
        x = torch.tensor(EXAMPLE_INPUT, dtype=torch.float64) if args.input is None else parse_sequence(args.input)
    else:
        x = (
            parse_sequence(args.input)
            if args.input is not None
            else torch.randn(args.seq_len, args.input_size, generator=generator, dtype=torch.float64)
        )
        if args.weights:
            try:
                with open(args.weights) as f:
                    weights = json.load(f)
            except OSError as error:
                raise UsageError(f"--weights: cannot read {args.weights}: {error.strerror}") from None
            except json.JSONDecodeError as error:
                raise UsageError(f"--weights: {args.weights} is not JSON: {error}") from None
        else:
            I, H = x.shape[1], args.hidden_size
            bound = H**-0.5  # torch.nn.LSTM's initialisation
            weights = {
                name: (torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1) * bound
                for name, shape in [
                    ("weight_ih_l0", (4 * H, I)),
                    ("weight_hh_l0", (4 * H, H)),
                    ("bias_ih_l0", (4 * H,)),
                    ("bias_hh_l0", (4 * H,)),
                ]
            }
    try:
        state, output_layer = load_weights(weights, x.shape[1])
    except ValueError as error:
        raise UsageError(f"--weights: {error}" if args.weights else str(error)) from None
    steps = trace_steps(x, state)
    print("=" * 60)
    print("LSTM step by step (fusedrnn)")
    print(f"Input sequence: {x.numpy().flatten() if x.shape[1] == 1 else x.numpy()}")
    print("=" * 60, "\n")
    print("\n".join(format_trace(x, steps, args.decimals, output_layer)))

    path, h_diff, c_diff = check_against_module(x, state, steps, args.backend)
    tolerance = 1e-5 if args.backend == "triton" else 1e-12
    agrees = h_diff <= tolerance and c_diff <= tolerance
    print(
        f"\nfusedrnn.LSTM ({path}) on the same weights and input: max |h_t - trace| = {h_diff:.1e}, "
        f"|c_T - trace| = {c_diff:.1e}: {'agrees' if agrees else 'DISAGREES'}"
    )
    return 0 if agrees else 1
