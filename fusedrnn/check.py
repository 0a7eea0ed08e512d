"""``python -m fusedrnn check``: fusedrnn against torch.nn.LSTM (``--cell lstm``, default),
torch.nn.RNN (``--cell rnn``, ``--nonlinearity tanh|relu``) or torch.nn.GRU (``--cell gru``),
tensor by tensor.

Runs fusedrnn's module and torch's (cuDNN on CUDA) on the same weights, input, initial
state and output cotangents, and prints for the output, h_n, c_n (the LSTM's) and the
gradient of the input, h0, c0 and every parameter: the mean and max absolute difference and
the relative error ||ours - torch|| / ||torch||, plus both errors against a float64 CPU run
of torch's module and, for gradients, ours against the hand-derived BPTT of
``fusedrnn.kernels.reference`` (float64, no autograd). Exits 1 when a tensor is out of
tolerance, or when the two float64 oracles (autograd, hand-derived BPTT) disagree by more
than rounding:

- float32: relative error against torch.nn.LSTM <= --tol (default 1e-5; TF32 is off);
- float16/bfloat16: err(ours vs float64) <= 2 * err(torch vs float64) + one unit roundoff.
"""

import os

import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from fusedrnn._usage import UsageError

# Relative disagreement allowed between the float64 autograd gradients and the float64
# hand-derived BPTT ones: rounding only.
BPTT_AGREEMENT = 1e-10
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def add_arguments(parser):
    parser.add_argument("--cell", choices=["lstm", "rnn", "gru"], default="lstm",
                        help="torch.nn.LSTM, torch.nn.RNN or torch.nn.GRU")  # fmt: skip
    parser.add_argument("--nonlinearity", choices=["tanh", "relu"], default="tanh", help="the RNN's (--cell rnn)")
    parser.add_argument("--seq-len", "-T", type=int, default=16)
    parser.add_argument("--batch", "-B", type=int, default=8)
    parser.add_argument("--input-size", "-I", type=int, default=32)
    parser.add_argument("--hidden-size", "-H", type=int, default=48)
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--backend",
        choices=["all", "auto", "triton", "reference"],
        default="all",
        help="'all': the reference path and the Triton kernels (interpreted on CPU)",
    )
    parser.add_argument("--num-layers", "-L", type=int, default=1)
    parser.add_argument("--bidirectional", action="store_true")
    parser.add_argument("--proj-size", "-P", type=int, default=0)
    parser.add_argument(
        "--packed", action="store_true", help="a PackedSequence of random, unsorted lengths (one of them 1)"
    )
    parser.add_argument("--batch-first", action="store_true")
    parser.add_argument("--no-bias", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tol", type=float, default=1e-5, help="float32 relative tolerance")


# What to do when the kernels cannot run interpreted on CPU.
INTERPRETER_HINT = (
    "the kernels run on CPU only under Triton's interpreter, which needs numpy < 2.4 with Triton 3.6 "
    "(pip install 'numpy<2.4'); or check the other backends alone: --backend reference (or auto)"
)


def _check_interpreter_can_run():
    """numpy 2.4 breaks Triton 3.6's interpreter on loops with a runtime bound (every kernel
    here): say so before the first kernel fails with an InterpreterError deep in Triton."""
    import numpy
    import triton

    def version(module):
        return tuple(int(part) for part in module.__version__.split(".")[:2])

    if version(numpy) >= (2, 4) and version(triton) <= (3, 6):
        raise UsageError(f"numpy {numpy.__version__} with triton {triton.__version__}: {INTERPRETER_HINT}")


def check_backend(args, backend):
    """Print the table for one backend; return True when every tensor is within tolerance."""
    import fusedrnn
    from fusedrnn.testing import error_stats, module_forward_backward

    dtype, device = DTYPES[args.dtype], torch.device(args.device)
    T, B, I, H = args.seq_len, args.batch, args.input_size, args.hidden_size
    torch.manual_seed(args.seed)
    lstm = args.cell == "lstm"
    if not lstm and args.proj_size:
        raise UsageError(f"--proj-size is the LSTM's (torch.nn.{args.cell.upper()} has no projection)")
    kwargs = {
        "bias": not args.no_bias,
        "batch_first": args.batch_first,
        "num_layers": args.num_layers,
        "bidirectional": args.bidirectional,
        **({"proj_size": args.proj_size} if lstm else {"nonlinearity": args.nonlinearity} if args.cell == "rnn" else {}),
    }
    torch_module, our_module = (getattr(torch.nn, args.cell.upper()), getattr(fusedrnn, args.cell.upper()))
    exact = torch_module(I, H, dtype=torch.float64, **kwargs)
    theirs = torch_module(I, H, **kwargs).to(device, dtype)
    ours = our_module(I, H, backend=backend, **kwargs).to(device, dtype)
    theirs.load_state_dict(exact.state_dict())
    ours.load_state_dict(exact.state_dict())

    x = torch.randn((B, T, I) if args.batch_first else (T, B, I), dtype=torch.float64)
    if args.packed:
        lengths = torch.randint(1, T + 1, (B,))
        lengths[torch.randperm(B)[:2]] = torch.tensor([1, T])[: min(B, 2)]
        x = pack_padded_sequence(x, lengths, batch_first=args.batch_first, enforce_sorted=False)
    states = args.num_layers * (2 if args.bidirectional else 1)
    h0 = torch.randn(states, B, args.proj_size or H, dtype=torch.float64)
    hx = (h0, torch.randn(states, B, H, dtype=torch.float64)) if lstm else h0
    with torch.no_grad():
        y, final = exact(x, hx)
    y = y.data if args.packed else y
    cotangents = [torch.randn_like(t) for t in (y, *(final if lstm else (final,)))]

    def on_device(t):
        # A tensor or a PackedSequence, whose .to moves its sorted and unsorted indices along
        # with the data (torch's permute_hidden indexes the state with them on its device).
        return t.to(device, dtype)

    want = module_forward_backward(exact, x, hx, cotangents)
    by_hand = bptt_gradients(exact, x, hx, cotangents)
    hx_device = tuple(map(on_device, hx)) if lstm else on_device(hx)
    got_torch = module_forward_backward(theirs, on_device(x), hx_device, cotangents)
    got_ours = module_forward_backward(ours, on_device(x), hx_device, cotangents)

    torch_name = "cuDNN" if device.type == "cuda" else f"torch.nn.{torch_module.__name__}"
    defaults = {"bias": True, "num_layers": 1, "nonlinearity": "tanh"}
    config = ", ".join(f"{k}={v}" for k, v in kwargs.items() if v != defaults.get(k, 0))
    config += ", packed" if args.packed else ""
    print(f"\nbackend={backend}  vs {torch_name}  ({args.dtype}, {device}, T={T} B={B} I={I} H={H}{', ' + config if config else ''})")
    header = (
        f"{'tensor':<28}{'mean |diff|':>13}{'max |diff|':>13}{'rel err':>11}"
        f"{'ours/fp64':>11}{'torch/fp64':>11}{'ours/BPTT':>11}  ok"
    )
    print(header)
    print("-" * len(header))
    all_ok = True
    unit_roundoff = torch.finfo(dtype).eps / 2
    for name in want:
        vs_torch = error_stats(got_ours[name], got_torch[name])
        ours_err = error_stats(got_ours[name], want[name]).rel
        torch_err = error_stats(got_torch[name], want[name]).rel
        if dtype == torch.float32:
            ok = vs_torch.rel <= args.tol
        else:
            ok = ours_err <= 2 * torch_err + unit_roundoff
        by_hand_err = "-"
        if name in by_hand:
            by_hand_err = f"{error_stats(got_ours[name], by_hand[name]).rel:.2e}"
            # The two float64 oracles, autograd and hand-derived BPTT, must agree to rounding.
            ok &= error_stats(want[name], by_hand[name]).rel <= BPTT_AGREEMENT
        all_ok &= ok
        print(
            f"{name:<28}{vs_torch.mean_abs:>13.3e}{vs_torch.max_abs:>13.3e}{vs_torch.rel:>11.2e}"
            f"{ours_err:>11.2e}{torch_err:>11.2e}{by_hand_err:>11}  {'yes' if ok else 'NO'}"
        )
    return all_ok


def bptt_gradients(module, x, hx, cotangents):
    """Every gradient of a float64 ``torch.nn.LSTM``, ``RNN`` or ``GRU`` (no dropout) by the
    hand-derived BPTT of ``fusedrnn.kernels.reference`` (no autograd), named as
    ``module_forward_backward`` names them."""
    from fusedrnn.kernels.reference import (
        gru_layers_reference_backward,
        lstm_layers_reference_backward,
        rnn_layers_reference_backward,
    )

    grad_output = cotangents[0]
    lengths = None
    if isinstance(x, PackedSequence):
        x_time_major, lengths = pad_packed_sequence(x)
        grad_output, _ = pad_packed_sequence(x._replace(data=grad_output))
    elif module.batch_first:
        x_time_major, grad_output = x.transpose(0, 1), grad_output.transpose(0, 1)
    else:
        x_time_major = x
    layout = dict(num_layers=module.num_layers, bidirectional=module.bidirectional, lengths=lengths)
    if isinstance(module, torch.nn.LSTM):
        grads = lstm_layers_reference_backward(x_time_major, hx, module._flat_weights, grad_output, *cotangents[1:],
                                               **layout)  # fmt: skip
    elif isinstance(module, torch.nn.GRU):
        grads = gru_layers_reference_backward(x_time_major, hx, module._flat_weights, grad_output, cotangents[1],
                                              **layout)  # fmt: skip
    else:
        grads = rnn_layers_reference_backward(x_time_major, hx, module._flat_weights, grad_output, cotangents[1],
                                              nonlinearity=module.nonlinearity, **layout)  # fmt: skip
    grad_input = grads["input"]
    if isinstance(x, PackedSequence):
        grad_input = pack_padded_sequence(grad_input, lengths, enforce_sorted=False).data
    elif module.batch_first:
        grad_input = grad_input.transpose(0, 1)
    named = {"grad input": grad_input, "grad h0": grads["h0"]}
    if "c0" in grads:
        named["grad c0"] = grads["c0"]
    named.update({f"grad {n}": g for n, g in zip(module._flat_weights_names, grads["weights"])})
    return named


def main(args):
    if args.device == "cpu" and args.backend in ("all", "triton"):
        # The kernels run on CPU tensors only in the interpreter, which must be switched on
        # before the kernel module is imported.
        os.environ.setdefault("TRITON_INTERPRET", "1")
    # cuDNN's fp32 LSTM uses TF32 by default, and fusedrnn follows the same switch; the
    # fp32 tolerance is meant for true fp32 on both sides.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    backends = ["reference", "triton"] if args.backend == "all" else [args.backend]
    if args.device == "cpu" and "triton" in backends:
        _check_interpreter_can_run()
    import fusedrnn

    print(f"fusedrnn {fusedrnn.__version__}, torch {torch.__version__}", end="")
    try:
        import triton

        print(f", triton {triton.__version__}", end="")
    except ImportError:
        pass
    if args.device.startswith("cuda"):
        print(f", {torch.cuda.get_device_name(torch.device(args.device))}", end="")
    print()
    try:
        results = [check_backend(args, b) for b in backends]
    except Exception as error:
        if type(error).__name__ != "InterpreterError":  # triton.runtime.errors.InterpreterError
            raise
        raise UsageError(f"the Triton interpreter failed ({str(error).strip().splitlines()[-1]}); {INTERPRETER_HINT}") from None
    ok = all(results)
    print("\nall tensors within tolerance" if ok else "\nMISMATCH: some tensors are out of tolerance")
    return 0 if ok else 1

