import pytest
import torch
import torch.nn.functional as F

from torch_geometric_gnf.ops import (elu_inverse, inplace_elu,
                                     inplace_leaky_relu, leaky_relu_inverse,
                                     recompute)
from torch_geometric_gnf.utils import set_input_checks

ACTS = [
    ('leaky_relu', lambda x: inplace_leaky_relu(x, 0.2),
     lambda x: F.leaky_relu(x, 0.2), lambda y: leaky_relu_inverse(y, 0.2)),
    ('elu', lambda x: inplace_elu(x, 0.7), lambda x: F.elu(x, 0.7),
     lambda y: elu_inverse(y, 0.7)),
]


def sample(shape=(40, 6), dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = 2 * torch.randn(shape, generator=gen, dtype=dtype)
    x[0, :3] = torch.tensor([0.0, 1e-8, -1e-8], dtype=dtype)  # near the kink
    return x


@pytest.mark.parametrize('name,inplace,plain,inverse', ACTS)
def test_matches_plain_activation(name, inplace, plain, inverse):
    x = sample()
    leaf = x.clone().requires_grad_()
    h = leaf * 1.0  # non-leaf, so in-place is allowed
    ptr = h.data_ptr()
    y = inplace(h)
    assert y.data_ptr() == ptr and y is h  # really in place
    ref_leaf = x.clone().requires_grad_()
    ref = plain(ref_leaf * 1.0)
    torch.testing.assert_close(y, ref, atol=0, rtol=0)
    g = torch.randn_like(x)
    y.backward(g)
    ref.backward(g)
    torch.testing.assert_close(leaf.grad, ref_leaf.grad, atol=1e-15, rtol=0)


@pytest.mark.parametrize('name,inplace,plain,inverse', ACTS)
def test_gradcheck(name, inplace, plain, inverse):
    x = sample((6, 4)).requires_grad_()
    # keep away from 0, where the derivative jumps
    with torch.no_grad():
        x.add_(torch.where(x >= 0, 0.1, -0.1))
    assert torch.autograd.gradcheck(lambda t: inplace(t.clone()), (x, ))


@pytest.mark.parametrize('name,inplace,plain,inverse', ACTS)
def test_saves_only_the_output(name, inplace, plain, inverse):
    leaf = sample().requires_grad_()
    h = leaf * 2.0
    saved = []

    def pack(t):
        saved.append(t)
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = inplace(h)
    assert len(saved) == 1 and saved[0].data_ptr() == y.data_ptr()
    # the plain activation keeps its input (or output) plus nothing less:
    # our version never holds a pre-activation copy
    assert all(t.data_ptr() == y.data_ptr() for t in saved)


@pytest.mark.parametrize('name,inplace,plain,inverse', ACTS)
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_inverse_round_trip(name, inplace, plain, inverse, dtype):
    x = sample(dtype=dtype)
    x = x.clamp(min=-8)  # ELU saturates for very negative x in float32
    y = inplace(x.clone())
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(inverse(y), x, atol=tol, rtol=tol)
    torch.testing.assert_close(inplace(inverse(y).clone()), y, atol=tol,
                               rtol=tol)


def test_bad_input():
    leaf = torch.randn(3, requires_grad=True)
    for fn in (inplace_leaky_relu, inplace_elu):
        with pytest.raises(RuntimeError, match='leaf Variable'):
            fn(leaf)
        with pytest.raises(TypeError, match='floating point'):
            fn(torch.arange(3))
        with pytest.raises(TypeError, match='Tensor'):
            fn([1.0, 2.0])
    with torch.no_grad():  # allowed without grad, as for torch's in-place ops
        inplace_leaky_relu(leaf)
    for bad in (0.0, -0.1, float('inf')):
        with pytest.raises(ValueError, match='invertible'):
            inplace_leaky_relu(torch.randn(3), bad)
        with pytest.raises(ValueError, match='invertible'):
            inplace_elu(torch.randn(3), bad)
        with pytest.raises(ValueError, match='invertible'):
            leaky_relu_inverse(torch.randn(3), bad)
    with pytest.raises(ValueError, match='range of ELU'):
        elu_inverse(torch.tensor([0.5, -1.0]), 1.0)
    set_input_checks(False)
    try:  # documented: no check, log1p(-1) = -inf
        assert torch.isinf(elu_inverse(torch.tensor([-1.0]), 1.0)).all()
    finally:
        set_input_checks(True)


# --------------------------------------------------------------------------
# recompute
# --------------------------------------------------------------------------
class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin1 = torch.nn.Linear(8, 16)
        self.lin2 = torch.nn.Linear(16, 8)

    def forward(self, x, scale):
        h = self.lin1(x) * scale
        h = inplace_leaky_relu(h, 0.1)
        h = F.dropout(h, 0.5, training=True)
        return self.lin2(h)


def _grads(model, x, use_recompute, seed=0):
    model.zero_grad()
    x = x.clone().requires_grad_()
    torch.manual_seed(seed)
    out = recompute(model, x, 2.0) if use_recompute else model(x, 2.0)
    g = torch.randn_like(out, dtype=out.dtype)
    out.backward(g)
    return [out.detach(), x.grad] + [p.grad.clone() for p in model.parameters()]


def test_recompute_equals_plain_autograd_with_dropout():
    torch.manual_seed(1)
    model = Block().double()
    x = torch.randn(10, 8, dtype=torch.float64)
    plain = _grads(model, x, False)
    recomputed = _grads(model, x, True)
    for a, b in zip(plain, recomputed):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


def test_recompute_keeps_the_rng_state_only_if_fn_draws():
    x = torch.randn(10, 8, dtype=torch.float64, requires_grad=True)
    model = Block().double()
    assert recompute(model, x, 2.0).grad_fn.rng.cpu is not None  # dropout
    lin = torch.nn.Linear(8, 8).double()
    out = recompute(lambda h: lin(h).relu(), x, params=lin.parameters())
    assert out.grad_fn.rng.cpu is None
    out.sum().backward()  # nothing to replay: runs as before
    assert x.grad is not None and lin.weight.grad is not None


def test_recompute_saves_only_inputs_and_works_with_autograd_grad():
    torch.manual_seed(1)
    model = Block().double()
    x = torch.randn(10, 8, dtype=torch.float64, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t)
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = recompute(model, x, 2.0)
    assert len(saved) == 1 and saved[0] is x  # no [10, 16] intermediate
    params = list(model.parameters())
    grads = torch.autograd.grad(out.sum(), [x] + params)
    assert all(g is not None for g in grads)
    assert all(p.grad is None for p in params)  # nothing accumulated aside


def test_recompute_gradcheck_and_tuple_outputs():
    w = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)

    def fn(a, b):
        h = (a @ w).tanh()
        return h * b, h.sum(1)
    a = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b, w_: recompute(fn, a, b, params=[w]), (a, b, w))
    # only some outputs used: a None upstream gradient is fine
    out1, _ = recompute(fn, a, b, params=[w])
    out1.sum().backward()
    assert a.grad is not None and w.grad is not None


def test_recompute_errors():
    w = torch.randn(3, 3, requires_grad=True)
    x = torch.randn(2, 3, requires_grad=True)
    out = recompute(lambda t: t @ w, x)  # w captured, not declared
    with pytest.raises(RuntimeError, match='neither arguments nor'):
        out.sum().backward()
    with pytest.raises(TypeError, match='callable'):
        recompute(3, x)

    def modifies(t):
        return t.mul_(2)
    with pytest.raises(RuntimeError, match='in place'):
        recompute(modifies, x * 1.0)
    with torch.no_grad():  # no graph: plain call
        assert torch.equal(recompute(lambda t: t + 1, x), x + 1)
