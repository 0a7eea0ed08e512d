"""fusedrnn.LSTM against torch.nn.LSTM for every constructor argument and input form.

Both backends: the reference path and the Triton kernels (under the interpreter on CPU,
natively on CUDA), each compared with torch's float64 CPU LSTM through a shared
state_dict: output, h_n, c_n and every gradient by name, at 1e-5 relative (fp32).
"""

import itertools

import pytest
import torch
from helpers import DEVICE
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fusedrnn
from fusedrnn.testing import assert_close, module_forward_backward

BACKENDS = ["reference", "triton"]
T, B, I, H, P = 4, 3, 5, 7, 3  # small odd sizes; P: proj_size


def make_pair(backend, seed=0, **kwargs):
    """Ours in fp32 on DEVICE and torch's in float64 on CPU, sharing one state_dict."""
    torch.manual_seed(seed)
    theirs = torch.nn.LSTM(I, H, dtype=torch.float64, **kwargs)
    ours = fusedrnn.LSTM(I, H, backend=backend, dtype=torch.float64, **kwargs)
    ours.load_state_dict(theirs.state_dict())
    return ours.to(DEVICE, torch.float32), theirs


def random_like_outputs(outputs, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(t.shape, generator=g, dtype=torch.float64) for t in outputs]


def to_device(value):
    """fp32 copy on DEVICE of a tensor, a PackedSequence or a tuple of tensors."""
    if value is None:
        return None
    if isinstance(value, torch.nn.utils.rnn.PackedSequence):  # a tuple too: before the tuples
        # PackedSequence.to moves sorted_indices and unsorted_indices with the data.
        return value.to(DEVICE, torch.float32)
    if isinstance(value, tuple):
        return tuple(map(to_device, value))
    return value.to(DEVICE, torch.float32)


def assert_matches_torch(ours, theirs, x, hx, rel=1e-5, **forward_kwargs):
    with torch.no_grad():
        y, (h_n, c_n) = theirs(x, hx)
    y = y.data if isinstance(y, torch.nn.utils.rnn.PackedSequence) else y
    cotangents = random_like_outputs((y, h_n, c_n))
    expected = module_forward_backward(theirs, x, hx, cotangents)
    actual = module_forward_backward(ours, to_device(x), to_device(hx), cotangents, **forward_kwargs)
    assert actual.keys() == expected.keys()
    for name in expected:
        assert actual[name].shape == expected[name].shape, name
        assert_close(actual[name], expected[name], rel=rel, name=name)
    return actual


def random_hx(num_layers, bidirectional, proj_size, batched=True, batch_size=B):
    D = 2 if bidirectional else 1
    batch = (batch_size,) if batched else ()
    h0 = torch.randn(num_layers * D, *batch, proj_size or H, dtype=torch.float64)
    c0 = torch.randn(num_layers * D, *batch, H, dtype=torch.float64)
    return h0, c0


CONFIGS = list(itertools.product([1, 2, 3], [False, True], [0, P], [True, False], [False, True]))


def config_id(num_layers, bidirectional, proj_size, bias, batch_first):
    direction, bias, layout = "bi" if bidirectional else "uni", "bias" if bias else "nobias", "bf" if batch_first else "tm"
    return f"L{num_layers}-{direction}-proj{proj_size}-{bias}-{layout}"


# The kernels under the interpreter are slow, so on CPU they run a pairwise cover of the 48
# configurations instead of all of them (the reference path, and CUDA, run all): every pair of
# settings occurs (test_kernel_configurations_cover_every_pair_of_settings), plus the largest
# configuration. (num_layers, bidirectional, proj_size, bias, batch_first):
PAIRWISE = [
    (1, False, 0, True, False),
    (1, True, P, False, True),
    (2, False, 0, False, True),
    (2, True, P, True, False),
    (3, False, P, True, True),
    (3, True, 0, False, False),
    (3, True, P, True, True),
]
KERNEL_CONFIGS = CONFIGS if DEVICE == "cuda" else PAIRWISE
BACKEND_CONFIGS = [("reference", c) for c in CONFIGS] + [("triton", c) for c in KERNEL_CONFIGS]


@pytest.mark.parametrize("backend, config", BACKEND_CONFIGS, ids=[f"{config_id(*c)}-{b}" for b, c in BACKEND_CONFIGS])
def test_every_configuration_matches_torch(backend, config):
    num_layers, bidirectional, proj_size, bias, batch_first = config
    kwargs = dict(num_layers=num_layers, bidirectional=bidirectional, proj_size=proj_size, bias=bias, batch_first=batch_first)
    ours, theirs = make_pair(backend, **kwargs)
    x = torch.randn((B, T, I) if batch_first else (T, B, I), dtype=torch.float64)
    # with hx, batched; without hx, unbatched: every flag is crossed with both forms
    assert_matches_torch(ours, theirs, x, random_hx(num_layers, bidirectional, proj_size))
    x_unbatched = x[0] if batch_first else x[:, 0]
    assert_matches_torch(ours, theirs, x_unbatched, None)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("hx", [False, True], ids=["no-hx", "hx"])
def test_unbatched_with_hx_and_batched_without(backend, bidirectional, hx):
    ours, theirs = make_pair(backend, num_layers=2, bidirectional=bidirectional, proj_size=P)
    x = torch.randn(T, B, I, dtype=torch.float64)
    if hx:
        assert_matches_torch(ours, theirs, x[:, 0], random_hx(2, bidirectional, P, batched=False))
    else:
        assert_matches_torch(ours, theirs, x, None)


LENGTHS = [3, 1, 4, 2, 4]  # unsorted, with a length-1 row and two full rows


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("enforce_sorted", [False, True], ids=["unsorted", "sorted"])
@pytest.mark.parametrize(
    "num_layers, bidirectional, proj_size", [(1, False, 0), (1, True, 0), (2, True, P), (3, False, P)],
    ids=["L1-uni", "L1-bi", "L2-bi-proj", "L3-uni-proj"],
)
def test_packed_sequence_matches_torch(backend, enforce_sorted, num_layers, bidirectional, proj_size):
    ours, theirs = make_pair(backend, num_layers=num_layers, bidirectional=bidirectional, proj_size=proj_size)
    lengths = sorted(LENGTHS, reverse=True) if enforce_sorted else LENGTHS
    padded = torch.randn(T, len(lengths), I, dtype=torch.float64)
    packed = pack_padded_sequence(padded, lengths, enforce_sorted=enforce_sorted)
    hx = random_hx(num_layers, bidirectional, proj_size, batch_size=len(lengths))
    assert_matches_torch(ours, theirs, packed, hx)
    assert_matches_torch(ours, theirs, packed, None)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch_first", [False, True], ids=["tm", "bf"])
def test_lengths_keyword_equals_packing(backend, batch_first):
    """Padded input with lengths= gives torch's packed results, and zeros past each length."""
    ours, theirs = make_pair(backend, num_layers=2, bidirectional=True, batch_first=batch_first)
    padded = torch.randn(len(LENGTHS), T, I, dtype=torch.float64)  # batch-first
    packed = pack_padded_sequence(padded, LENGTHS, batch_first=True, enforce_sorted=False)
    hx = random_hx(2, True, 0, batch_size=len(LENGTHS))
    with torch.no_grad():
        y_torch, (h_torch, c_torch) = theirs(packed, hx)
        y_torch, _ = pad_packed_sequence(y_torch, batch_first=batch_first, total_length=T)
        x = padded if batch_first else padded.transpose(0, 1)
        y, (h, c) = ours(to_device(x), to_device(hx), lengths=torch.tensor(LENGTHS))
    assert_close(y, y_torch, rel=1e-5, name="output")
    assert_close(h, h_torch, rel=1e-5, name="h_n")
    assert_close(c, c_torch, rel=1e-5, name="c_n")
    # Gradients: as the padded output of torch's packed run, whose padding carries no gradient.
    x_leaf = to_device(x).requires_grad_()
    y, (h, c) = ours(x_leaf, to_device(hx), lengths=LENGTHS)
    (y.sum() + h.sum() + c.sum()).backward()
    x_torch = padded.clone().requires_grad_()
    y_t, (h_t, c_t) = theirs(pack_padded_sequence(x_torch, LENGTHS, batch_first=True, enforce_sorted=False), hx)
    (y_t.data.sum() + h_t.sum() + c_t.sum()).backward()
    grad_torch = x_torch.grad if batch_first else x_torch.grad.transpose(0, 1)
    assert_close(x_leaf.grad, grad_torch, rel=1e-5, name="grad input")


@pytest.mark.parametrize("bad", [[0, 1, 2, 3, 4], [5, 1, 2, 3, 4], [1, 2, 3], [[1, 2, 3, 4, 1]]], ids=["zero", "too-long", "count", "shape"])
def test_bad_lengths_are_refused(bad):
    with pytest.raises(ValueError, match="lengths"):
        fusedrnn.LSTM(I, H)(torch.randn(T, 5, I), lengths=torch.tensor(bad))


@pytest.mark.parametrize("backend", BACKENDS)
def test_dropout_between_layers_only_in_training(backend):
    kwargs = dict(num_layers=3, dropout=0.5, bidirectional=True)
    ours, theirs = make_pair(backend, **kwargs)
    x = torch.randn(T, B, I, dtype=torch.float64)
    ours.eval(), theirs.eval()
    assert_matches_torch(ours, theirs, x, None)  # eval: no dropout, exactly torch's

    ours.train()
    xs = to_device(x)
    torch.manual_seed(0)
    y1, _ = ours(xs)
    torch.manual_seed(0)
    y2, _ = ours(xs)
    torch.manual_seed(1)
    y3, _ = ours(xs)
    assert torch.equal(y1, y2)  # the dropout masks come from torch's RNG
    assert not torch.allclose(y1, y3) and not torch.allclose(y1, ours.eval()(xs)[0])


@pytest.mark.parametrize("batch_first", [False, True], ids=["time-major", "batch-first"])
def test_dropout_masks_are_torch_s_under_the_same_seed(batch_first):
    """Training with dropout under one seed gives torch.nn.LSTM's result: the masks are drawn
    from the same generator in the same (time-major) order, batch_first or not. CPU only: the
    reference in float64 against torch's float64 CPU LSTM (on CUDA cuDNN draws its own)."""
    kwargs = dict(num_layers=3, dropout=0.4, bidirectional=True, batch_first=batch_first)
    torch.manual_seed(0)
    theirs = torch.nn.LSTM(I, H, dtype=torch.float64, **kwargs)
    ours = fusedrnn.LSTM(I, H, backend="reference", dtype=torch.float64, **kwargs)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn((B, T, I) if batch_first else (T, B, I), dtype=torch.float64)
    results = []
    for lstm in (theirs, ours):
        torch.manual_seed(5)
        results.append(lstm(x)[0])
    assert_close(results[1], results[0], rel=1e-10, name="output")
    torch.manual_seed(6)
    assert not torch.allclose(ours(x)[0], results[0])  # another seed, other masks


@pytest.mark.parametrize("batch_first", [False, True], ids=["time-major", "batch-first"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_dropout_one_zeroes_the_next_layer_s_input(backend, batch_first):
    """With p=1 every layer but the first sees zeros in training: deterministic, so torch's
    training run gives the same result."""
    ours, theirs = make_pair(backend, num_layers=2, dropout=1.0, batch_first=batch_first)
    ours.train(), theirs.train()
    assert_matches_torch(ours, theirs, torch.randn(T, B, I, dtype=torch.float64), None)


def test_dropout_rate_statistics():
    """The fraction of the first layer's outputs zeroed before the second layer is p (the
    layer stack's own dropout; auto on CPU runs torch's op, whose masks tests/test_cpu_path.py
    checks are torch's)."""
    seen = []
    real_dropout = torch.nn.functional.dropout

    def spy(t, p, training):
        out = real_dropout(t, p, training)
        seen.append(float((out == 0).double().mean()))
        return out

    lstm = fusedrnn.LSTM(I, 64, num_layers=2, dropout=0.3, backend="reference")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.nn.functional, "dropout", spy)
        lstm(torch.randn(20, 16, I))
    assert len(seen) == 1 and abs(seen[0] - 0.3) < 0.03


def test_state_dict_round_trips_for_every_parameter_kind():
    kwargs = dict(num_layers=2, bidirectional=True, proj_size=P)
    theirs = torch.nn.LSTM(I, H, **kwargs)
    ours = fusedrnn.LSTM(I, H, **kwargs)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())
    back = torch.nn.LSTM(I, H, **kwargs)
    back.load_state_dict(ours.state_dict())
    for name, value in theirs.state_dict().items():
        assert torch.equal(back.state_dict()[name], value), name
    assert repr(ours) == repr(theirs)


@pytest.mark.parametrize("bad_kwargs", [dict(proj_size=H), dict(proj_size=-1), dict(dropout=1.5), dict(num_layers=0)])
def test_constructor_rejects_what_torch_rejects(bad_kwargs):
    with pytest.raises(ValueError) as theirs:
        torch.nn.LSTM(I, H, **bad_kwargs)
    with pytest.raises(type(theirs.value)):
        fusedrnn.LSTM(I, H, **bad_kwargs)


@pytest.mark.parametrize(
    "make_hx",
    [
        lambda: (torch.randn(2, B, P), torch.randn(2, B, H)),  # h0 not projected... wrong P
        lambda: (torch.randn(4, B, P), torch.randn(4, B, P)),  # c0 must be H wide
        lambda: (torch.randn(3, B, P), torch.randn(4, B, H)),  # layers x directions
    ],
    ids=["h0-size", "c0-size", "layers"],
)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_bad_hidden_states_rejected_like_torch(make_hx, packed):
    kwargs = dict(num_layers=2, bidirectional=True, proj_size=P)
    x = torch.randn(T, B, I)
    if packed:
        x = pack_padded_sequence(x, [T, T - 1, 1], enforce_sorted=False)
    hx = make_hx()
    with pytest.raises(Exception) as theirs:
        torch.nn.LSTM(I, H, **kwargs)(x, hx)
    with pytest.raises(type(theirs.value)):
        fusedrnn.LSTM(I, H, **kwargs)(x, hx)


@pytest.mark.parametrize(
    "make_hx",
    [
        lambda: torch.randn(2, 2, B, H),  # (h0, c0) stacked in one tensor: TypeError
        lambda: torch.randn(2, B, H),  # h0 alone, for two layers: the shape check's RuntimeError
        lambda: (torch.randn(2, B, H),),  # IndexError
        lambda: (torch.randn(2, B, H),) * 3,  # RuntimeError
    ],
    ids=["stacked", "h0-alone", "one-state", "three-states"],
)
def test_hidden_state_must_be_a_pair(make_hx):
    x = torch.randn(T, B, I)
    hx = make_hx()
    with pytest.raises(Exception) as theirs:
        torch.nn.LSTM(I, H, num_layers=2)(x, hx)
    with pytest.raises(type(theirs.value), match=r"one tensor|two hidden states|3-D|index"):
        fusedrnn.LSTM(I, H, num_layers=2)(x, hx)


def test_one_tensor_holding_both_states_with_packed_input_in_order_is_refused_like_torch():
    packed = pack_padded_sequence(torch.randn(T, B, I), [T, T - 1, 1])
    stacked = torch.randn(2, 2, B, H)
    with pytest.raises(TypeError):
        torch.nn.LSTM(I, H, num_layers=2)(packed, stacked)
    with pytest.raises(TypeError, match="one tensor"):
        fusedrnn.LSTM(I, H, num_layers=2)(packed, stacked)


def test_three_states_with_packed_input_are_refused():
    """torch.nn.LSTM ignores a third state with packed input; fusedrnn refuses it, as torch
    does for padded input."""
    packed = pack_padded_sequence(torch.randn(T, B, I), [T, T - 1, 1], enforce_sorted=False)
    with pytest.raises(RuntimeError, match="two hidden states"):
        fusedrnn.LSTM(I, H, num_layers=2)(packed, (torch.randn(2, B, H),) * 3)


@pytest.mark.parametrize("form", ["unbatched", "packed"])
def test_one_tensor_holding_both_states_runs_where_torch_runs_it(form):
    """Unbatched, or packed out of order, torch.nn.LSTM takes hx[0] and hx[1] of one tensor as
    h0 and c0 (permuting the packed input's state makes a pair of it): so does fusedrnn, with
    the same results as the pair."""
    theirs = torch.nn.LSTM(I, H, num_layers=2, dtype=torch.float64)
    ours = fusedrnn.LSTM(I, H, num_layers=2, backend="reference", dtype=torch.float64)
    ours.load_state_dict(theirs.state_dict())
    stacked = torch.randn(2, 2, H, dtype=torch.float64) if form == "unbatched" else torch.randn(2, 2, B, H, dtype=torch.float64)
    x = torch.randn(T, I, dtype=torch.float64) if form == "unbatched" else torch.randn(T, B, I, dtype=torch.float64)
    if form == "packed":
        x = pack_padded_sequence(x, [T, T - 1, 1], enforce_sorted=False)
    with torch.no_grad():
        expected = theirs(x, stacked)
        actual = ours(x, stacked)
        as_pair = ours(x, (stacked[0], stacked[1]))
    for a, p, e in zip(*map(_flat_outputs, (actual, as_pair, expected))):
        assert torch.equal(a, p)
        assert_close(a, e, rel=1e-10, name=form)


def _flat_outputs(result):
    output, (h_n, c_n) = result
    return [output.data if isinstance(output, torch.nn.utils.rnn.PackedSequence) else output, h_n, c_n]


def test_kernel_configurations_cover_every_pair_of_settings():
    """The pairwise cover above: every pair of settings (layers and the four flags) occurs."""
    values = [sorted(set(column)) for column in zip(*CONFIGS)]
    for i, j in itertools.combinations(range(5), 2):
        want = set(itertools.product(values[i], values[j]))
        assert {(c[i], c[j]) for c in PAIRWISE} == want, (i, j)
