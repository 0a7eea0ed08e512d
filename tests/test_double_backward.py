"""Second derivatives and reproducible gradients.

The reference path is plain PyTorch ops: autograd differentiates it twice (checked against
finite differences in float64). The kernel path's backward is once differentiable: a second
differentiation raises fusedrnn's error, which says to use backend='reference'. Its gradients
are bitwise reproducible: every reduction is a GEMM or a sum, no atomics.
"""

import pytest
import torch
from helpers import DEVICE, TEST_STRATEGIES

import fusedrnn
from fusedrnn import functional as F

T, B, I, H, P = 3, 2, 2, 3, 2


def tiny_layer(proj, seed=0):
    """float64 leaves of one layer: input, h0, c0, then the weights in functional order."""
    g = torch.Generator().manual_seed(seed)
    width = P if proj else H
    shapes = [(T, B, I), (B, width), (B, H), (4 * H, I), (4 * H, width), (4 * H,), (4 * H,)]
    shapes += [(P, H)] if proj else []
    return [(torch.rand(*s, generator=g, dtype=torch.float64) - 0.5).requires_grad_() for s in shapes]


@pytest.mark.parametrize(
    "proj, reverse, lengths",
    [(False, False, None), (True, True, [3, 1])],
    ids=["plain", "proj-reverse-lengths"],
)
def test_reference_path_gradcheck_and_gradgradcheck(proj, reverse, lengths):
    tensors = tiny_layer(proj)
    lengths = torch.tensor(lengths) if lengths is not None else None

    def layer(x, h0, c0, *weights):
        output, (h_n, c_n) = F.lstm(x, (h0, c0), *weights, reverse=reverse, lengths=lengths, backend="reference")
        return output, h_n, c_n

    assert torch.autograd.gradcheck(layer, tensors)
    assert torch.autograd.gradgradcheck(layer, tensors)


def test_reference_module_double_backward_matches_finite_differences():
    """A gradient penalty through fusedrnn.LSTM: autograd.grad(create_graph=True), then the
    gradient of the penalty, against a central difference along a random direction."""
    torch.manual_seed(0)
    kwargs = dict(num_layers=2, bidirectional=True, proj_size=P, dtype=torch.float64)
    lstm = fusedrnn.LSTM(I, H, backend="reference", **kwargs)
    x = torch.randn(T, 3, I, dtype=torch.float64)
    lengths = torch.tensor([3, 1, 2])
    params = list(lstm.parameters())

    def penalty():
        output, (h_n, c_n) = lstm(x, lengths=lengths)
        loss = output.square().sum() + (h_n * c_n[..., :P]).sum()
        grads = torch.autograd.grad(loss, params, create_graph=True)
        return sum(g.square().sum() for g in grads)

    second = torch.autograd.grad(penalty(), params)
    direction = [torch.randn_like(p) for p in params]
    eps = 1e-6
    with torch.no_grad():
        for p, d in zip(params, direction):
            p.add_(d, alpha=eps)
    plus = penalty().item()
    with torch.no_grad():
        for p, d in zip(params, direction):
            p.sub_(d, alpha=2 * eps)
    minus = penalty().item()
    numeric = (plus - minus) / (2 * eps)
    analytic = sum((s * d).sum() for s, d in zip(second, direction)).item()
    assert analytic == pytest.approx(numeric, rel=1e-6)


def kernel_layer(proj):
    """fp32 copies of tiny_layer on DEVICE, run through the kernels."""
    tensors = [t.detach().to(DEVICE, torch.float32).requires_grad_() for t in tiny_layer(proj)]
    x, h0, c0, *weights = tensors
    output, (h_n, c_n) = F.lstm(x, (h0, c0), *weights, backend="triton")
    return tensors, (output, h_n, c_n)


@pytest.mark.parametrize("loss", ["linear", "square"])
@pytest.mark.parametrize("proj", [False, True], ids=["noproj", "proj"])
def test_kernel_path_double_backward_says_how(proj, loss):
    """A second grad with respect to any input, whether or not the first backward's
    cotangents depend on the inputs: our message, naming the way out (torch's
    once_differentiable gives "does not require grad" or "not used in the graph" here)."""
    for wrt in range(len(tiny_layer(proj))):
        tensors, (output, h_n, c_n) = kernel_layer(proj)
        value = output.sum() if loss == "linear" else output.square().sum() + h_n.square().sum()
        first = torch.autograd.grad(value + c_n.sum(), tensors, create_graph=True)
        assert all(g.requires_grad for g in first)
        with pytest.raises(RuntimeError, match=r"double backward.*backend='reference'"):
            torch.autograd.grad(sum(g.square().sum() for g in first), tensors[wrt])


def test_kernel_path_create_graph_alone_is_harmless():
    """create_graph=True gives the plain backward's values, as tensors an optimizer may
    update in place; only differentiating them raises."""
    tensors, outputs = kernel_layer(proj=True)
    plain = torch.autograd.grad(sum(o.square().sum() for o in outputs), tensors, retain_graph=True)
    assert not any(g.requires_grad for g in plain)
    first = torch.autograd.grad(sum(o.square().sum() for o in outputs), tensors, create_graph=True)
    for a, b in zip(first, plain):
        assert torch.equal(a, b)
    with torch.no_grad():
        first[0].mul_(0.5)  # in place, as clip_grad_norm_ does


def test_kernel_module_double_backward_says_how():
    lstm = fusedrnn.LSTM(I, H, num_layers=2, bidirectional=True, backend="triton", device=DEVICE)
    output, _ = lstm(torch.randn(T, B, I, device=DEVICE))
    grads = torch.autograd.grad(output.square().sum(), list(lstm.parameters()), create_graph=True)
    with pytest.raises(RuntimeError, match="backend='reference'"):
        torch.autograd.grad(grads[0].sum(), lstm.weight_hh_l0)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_cell_double_backward_works_or_says_how(backend):
    cell = fusedrnn.LSTMCell(I, H, backend=backend, device=DEVICE)
    x = torch.randn(B, I, device=DEVICE)
    h, c = cell(x, (torch.randn(B, H, device=DEVICE), torch.randn(B, H, device=DEVICE)))
    grads = torch.autograd.grad((h.square().sum() + c.sum()), list(cell.parameters()), create_graph=True)
    if backend == "reference":
        (second,) = torch.autograd.grad(grads[0].sum(), cell.weight_hh)
        assert torch.isfinite(second).all() and second.abs().sum() > 0
    else:
        with pytest.raises(RuntimeError, match=r"double backward.*backend='reference'"):
            torch.autograd.grad(grads[0].sum(), cell.weight_hh)


# The interpreter runs a grid's programs one after another, always in one order, so on CPU
# two runs can differ only through the host code around the launches: one strategy checks
# that (persistent-streamed, whose backward splits its dh loop over K). All four repeat on
# CUDA, where the order of programs varies.
REPEAT_STRATEGIES = TEST_STRATEGIES if DEVICE == "cuda" else ["persistent-streamed"]


@pytest.mark.parametrize("strategy", REPEAT_STRATEGIES, indirect=True)
def test_kernel_gradients_are_bitwise_reproducible(strategy):
    """Bidirectional, 2 layers, a projection and packed-style lengths (unsorted, a length-1
    row, full rows), in every launch strategy: two runs, identical bits. Sizes split H, P
    and K over several blocks on the per-step path."""
    torch.manual_seed(0)
    lstm = fusedrnn.LSTM(4, 20, num_layers=2, bidirectional=True, proj_size=17, backend="triton", device=DEVICE)
    x = torch.randn(5, 5, 4, device=DEVICE)
    hx = (torch.randn(4, 5, 17, device=DEVICE), torch.randn(4, 5, 20, device=DEVICE))
    lengths = torch.tensor([5, 1, 3, 2, 5])
    cotangent = torch.randn(5, 5, 34, device=DEVICE)

    def run():
        leaves = [t.detach().clone().requires_grad_() for t in (x, *hx)]
        lstm.zero_grad()
        output, (h_n, c_n) = lstm(leaves[0], tuple(leaves[1:]), lengths=lengths)
        ((output * cotangent).sum() + h_n.square().sum() + c_n.sum()).backward()
        grads = [t.grad for t in leaves] + [p.grad.clone() for p in lstm.parameters()]
        return [output, h_n, c_n, *grads]

    first, second = run(), run()
    assert len(first) == 3 + 3 + len(list(lstm.parameters()))
    for i, (a, b) in enumerate(zip(first, second)):
        assert torch.equal(a, b), i
