import pytest
import torch

from torch_geometric_gnf.ops import (affine_coupling, affine_coupling_reference,
                                     extension_available, soft_clamp)

TOL = {torch.float32: 1e-5, torch.float64: 1e-12}

needs_ext = pytest.mark.skipif(not extension_available(),
                               reason='C++ extension unavailable (not built '
                               'or GNF_DISABLE_EXTENSION=1)')


def make_inputs(shape, dtype, seed=0, requires_grad=False):
    gen = torch.Generator().manual_seed(seed)
    x, s_raw, t = (torch.randn(shape, generator=gen, dtype=dtype)
                   for _ in range(3))
    s_raw = 1.5 * s_raw  # reach the non-linear part of the soft clamp
    return [v.requires_grad_(requires_grad) for v in (x, s_raw, t)]


def make_batch(kind, N):
    if kind is None:
        return None, None
    if kind == 'int32':
        return torch.arange(N, dtype=torch.int32) // 3, None
    if kind == 'int64':
        return torch.arange(N) // 3, None
    if kind == 'unsorted':
        return torch.randperm(N, generator=torch.Generator().manual_seed(1)) % 3, None
    if kind == 'empty_graphs':  # graphs 1, 3 and 4, 5 have no nodes
        return (torch.arange(N) % 2) * 2, 6
    raise ValueError(kind)


def run_both(fn, x, s_raw, t, batch, num_graphs, clamp, inverse, seed=2):
    """Outputs and all input grads under a random upstream gradient."""
    inputs = [v.detach().clone().requires_grad_() for v in (x, s_raw, t)]
    out, log_det = fn(*inputs, batch=batch, num_graphs=num_graphs,
                      clamp=clamp, inverse=inverse)
    gen = torch.Generator().manual_seed(seed)
    g_out = torch.randn(out.shape, generator=gen, dtype=out.dtype)
    g_ld = torch.randn(log_det.shape, generator=gen, dtype=out.dtype)
    grads = torch.autograd.grad((out * g_out).sum() + (log_det * g_ld).sum(),
                                inputs, allow_unused=True)
    return [out, log_det] + [torch.zeros_like(v) if g is None else g
                             for v, g in zip(inputs, grads)]


@needs_ext
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('clamp', [2.0, 0.0])
@pytest.mark.parametrize('inverse', [False, True])
@pytest.mark.parametrize('batch_kind',
                         [None, 'int32', 'int64', 'unsorted', 'empty_graphs'])
@pytest.mark.parametrize('shape', [(10, 7), (10, 3, 4), (10, )])
def test_extension_matches_reference(dtype, clamp, inverse, batch_kind,
                                     shape):
    x, s_raw, t = make_inputs(shape, dtype)
    batch, num_graphs = make_batch(batch_kind, shape[0])
    fused = run_both(affine_coupling, x, s_raw, t, batch, num_graphs, clamp,
                     inverse)
    ref = run_both(affine_coupling_reference, x, s_raw, t, batch, num_graphs,
                   clamp, inverse)
    for name, a, b in zip(['out', 'log_det', 'grad_x', 'grad_s', 'grad_t'],
                          fused, ref):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        torch.testing.assert_close(a, b, rtol=TOL[dtype], atol=TOL[dtype],
                                   msg=name)
    if num_graphs is not None:  # graphs without nodes have log_det 0
        assert fused[1].shape == (num_graphs, )
        assert (fused[1][[1, 3, 4, 5]] == 0).all()


@needs_ext
@pytest.mark.parametrize('inverse', [False, True])
def test_extension_non_contiguous(inverse):
    x, s_raw, t = (v.transpose(0, 1) for v in make_inputs((5, 8),
                                                           torch.float64))
    batch = torch.tensor([0, 1, 0, 1, 1, 2, 2, 0])
    fused = run_both(affine_coupling, x, s_raw, t, batch, None, 2.0, inverse)
    ref = run_both(affine_coupling_reference, x, s_raw, t, batch, None, 2.0,
                   inverse)
    for a, b in zip(fused, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@needs_ext
def test_extension_is_used():
    x, s_raw, t = make_inputs((4, 3), torch.float64, requires_grad=True)
    out, log_det = affine_coupling(x, s_raw, t)
    assert 'affine_coupling_forward' in out.grad_fn.name()


@needs_ext
@pytest.mark.parametrize('inverse', [False, True])
def test_extension_only_one_output_used(inverse):
    # Undefined upstream grads (only out or only log_det used) act as zero.
    batch = torch.tensor([0, 1, 1, 0])
    for pick in (0, 1):
        grads = []
        for fn in (affine_coupling, affine_coupling_reference):
            x, s_raw, t = make_inputs((4, 3), torch.float64,
                                      requires_grad=True)
            res = fn(x, s_raw, t, batch, inverse=inverse)
            res[pick].pow(2).sum().backward()
            grads.append([torch.zeros_like(v) if v.grad is None else v.grad
                          for v in (x, s_raw, t)])
        for a, b in zip(*grads):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('batch_kind', [None, 'int32', 'int64'])
@pytest.mark.parametrize('inverse', [False, True])
def test_empty_input(batch_kind, inverse):
    x, s_raw, t = make_inputs((0, 3, 2), torch.float64, requires_grad=True)
    batch = None if batch_kind is None else torch.zeros(
        0, dtype=getattr(torch, batch_kind))
    for fn in (affine_coupling, affine_coupling_reference):
        out, log_det = fn(x, s_raw, t, batch, inverse=inverse)
        assert out.shape == (0, 3, 2)
        assert log_det.shape == ((1, ) if batch is None else (0, ))
        (out.sum() + log_det.sum()).backward()
        out, log_det = fn(x, s_raw, t, batch, num_graphs=3, inverse=inverse)
        assert log_det.tolist() == [0.0, 0.0, 0.0]


def _gradcheck_inputs():
    x, s_raw, t = make_inputs((6, 2, 3), torch.float64, requires_grad=True)
    batch = torch.tensor([2, 0, 2, 0, 0, 2], dtype=torch.int32)  # graph 1 empty
    return x, s_raw, t, batch


@pytest.mark.parametrize('clamp', [2.0, 0.0])
@pytest.mark.parametrize('inverse', [False, True])
def test_gradcheck_reference(clamp, inverse):
    x, s_raw, t, batch = _gradcheck_inputs()
    assert torch.autograd.gradcheck(
        lambda *a: affine_coupling_reference(*a, batch, 3, clamp, inverse),
        (x, s_raw, t))


@needs_ext
@pytest.mark.parametrize('clamp', [2.0, 0.0])
@pytest.mark.parametrize('inverse', [False, True])
@pytest.mark.parametrize('with_batch', [False, True])
def test_gradcheck_extension(clamp, inverse, with_batch):
    x, s_raw, t, batch = _gradcheck_inputs()
    if not with_batch:
        batch = None
    num_graphs = 3 if with_batch else 2  # num_graphs > 1 without batch too
    assert torch.autograd.gradcheck(
        lambda *a: torch.ops.torch_geometric_gnf.affine_coupling_forward(
            *a, batch, num_graphs, clamp, inverse), (x, s_raw, t))


@pytest.mark.parametrize('use_ext', [True, False])
@pytest.mark.parametrize('clamp', [2.0, 0.0])
def test_inverse_roundtrip(use_ext, clamp):
    if use_ext and not extension_available():
        pytest.skip('C++ extension unavailable')
    fn = affine_coupling if use_ext else affine_coupling_reference
    x, s_raw, t = make_inputs((9, 4, 2), torch.float64)
    batch = torch.tensor([0, 0, 1, 1, 1, 3, 3, 3, 3])
    y, ld = fn(x, s_raw, t, batch, clamp=clamp)
    x2, ld_inv = fn(y, s_raw, t, batch, clamp=clamp, inverse=True)
    torch.testing.assert_close(x2, x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ld_inv, -ld, rtol=1e-12, atol=1e-12)
    assert ld[2] == 0


@pytest.mark.parametrize('use_ext', [True, False])
@pytest.mark.parametrize('inverse', [False, True])
def test_log_det_matches_jacobian(use_ext, inverse):
    if use_ext and not extension_available():
        pytest.skip('C++ extension unavailable')
    fn = affine_coupling if use_ext else affine_coupling_reference
    x, s_raw, t = make_inputs((5, 2), torch.float64)
    batch = torch.tensor([1, 0, 1, 0, 1])
    _, log_det = fn(x, s_raw, t, batch, inverse=inverse)
    for g in range(2):  # Jacobian of graph g's output w.r.t. its own input
        mask = batch == g
        def f(xg):
            xfull = x.clone()
            xfull[mask] = xg
            return fn(xfull, s_raw, t, batch, inverse=inverse)[0][mask]
        J = torch.autograd.functional.jacobian(f, x[mask])
        n = x[mask].numel()
        J = J.reshape(n, n)
        expected = torch.linalg.slogdet(J).logabsdet
        torch.testing.assert_close(log_det[g], expected, rtol=1e-12,
                                   atol=1e-12)


def test_soft_clamp():
    s_raw = torch.linspace(-50, 50, 101, dtype=torch.float64)
    s = soft_clamp(s_raw, 2.0)
    assert s.abs().max() <= 2.0
    torch.testing.assert_close(s, 2.0 * torch.tanh(s_raw / 2.0))
    assert soft_clamp(s_raw, 0.0) is s_raw
    assert soft_clamp(s_raw, None) is s_raw


def test_clamp_none_equals_zero():
    x, s_raw, t = make_inputs((4, 3), torch.float64)
    for fn in (affine_coupling, affine_coupling_reference):
        a = fn(x, s_raw, t, clamp=None)
        b = fn(x, s_raw, t, clamp=0.0)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(a[0], x * s_raw.exp() + t)


def test_default_num_graphs():
    x, s_raw, t = make_inputs((4, 3), torch.float64)
    assert affine_coupling(x, s_raw, t)[1].shape == (1, )
    batch = torch.tensor([0, 4, 4, 1])
    assert affine_coupling(x, s_raw, t, batch)[1].shape == (5, )


def test_force_reference_via_env(monkeypatch):
    from torch_geometric_gnf.ops import _extension
    monkeypatch.setenv('GNF_DISABLE_EXTENSION', '1')
    assert not extension_available()
    assert not _extension.extension_supports(torch.zeros(1))
    x, s_raw, t = make_inputs((6, 3), torch.float64, requires_grad=True)
    batch = torch.tensor([0, 0, 1, 1, 2, 2])
    out, log_det = affine_coupling(x, s_raw, t, batch)
    assert 'affine_coupling_forward' not in out.grad_fn.name()
    ref = affine_coupling_reference(x, s_raw, t, batch)
    torch.testing.assert_close(out, ref[0])
    torch.testing.assert_close(log_det, ref[1])
    (out.sum() + log_det.sum()).backward()
    assert x.grad is not None and s_raw.grad is not None


def test_unsupported_dtype_falls_back():
    # float16 has no CPU kernel: the reference path must still work.
    x, s_raw, t = make_inputs((4, 3), torch.float16)
    out, log_det = affine_coupling(x, s_raw, t)
    ref = affine_coupling_reference(x, s_raw, t)
    torch.testing.assert_close(out, ref[0])
    torch.testing.assert_close(log_det, ref[1])


@pytest.mark.parametrize('fn', [affine_coupling, affine_coupling_reference])
def test_bad_inputs(fn):
    x, s_raw, t = make_inputs((4, 3), torch.float32)
    with pytest.raises(ValueError, match='shape mismatch'):
        fn(x, s_raw[:, :2], t)
    with pytest.raises(ValueError, match='dtype mismatch'):
        fn(x, s_raw.double(), t)
    with pytest.raises(ValueError, match='int32 or int64'):
        fn(x, s_raw, t, torch.zeros(4))
    with pytest.raises(ValueError, match='length 4'):
        fn(x, s_raw, t, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match='length 4'):
        fn(x, s_raw, t, torch.zeros(4, 1, dtype=torch.long))
    with pytest.raises(ValueError, match=r'\[0, 2\)'):
        fn(x, s_raw, t, torch.tensor([0, 1, 2, 0]), num_graphs=2)
    with pytest.raises(ValueError, match=r'\[0, 3\)'):
        fn(x, s_raw, t, torch.tensor([0, -1, 2, 0]))
    with pytest.raises(ValueError, match='finite'):
        fn(x, s_raw, t, clamp=float('inf'))
    with pytest.raises(ValueError, match='floating point'):
        fn(*(v.long() for v in (x, s_raw, t)))
    with pytest.raises(ValueError, match='num_graphs'):
        fn(x, s_raw, t, num_graphs=0)


@needs_ext
def test_cpp_checks():
    op = torch.ops.torch_geometric_gnf.affine_coupling_forward
    x, s_raw, t = make_inputs((4, 3), torch.float32)
    with pytest.raises(RuntimeError, match='same shape'):
        op(x, s_raw[:2], t, None, 1, 2.0, False)
    with pytest.raises(RuntimeError, match='same dtype'):
        op(x, s_raw.double(), t, None, 1, 2.0, False)
    with pytest.raises(RuntimeError, match='int32 or int64'):
        op(x, s_raw, t, torch.zeros(4), 1, 2.0, False)
    with pytest.raises(RuntimeError, match='length N=4'):
        op(x, s_raw, t, torch.zeros(5, dtype=torch.long), 1, 2.0, False)
    bwd = torch.ops.torch_geometric_gnf.affine_coupling_backward
    with pytest.raises(RuntimeError, match='grad_log_det'):
        bwd(x, x, s_raw, None, torch.zeros(2), 1, 2.0, False)


@pytest.mark.parametrize('inverse', [False, True])
@pytest.mark.parametrize('batch_kind', [None, 'int64', 'empty_graphs'])
def test_traced_by_torch_compile_matches_eager(inverse, batch_kind):
    # fullgraph: the C++ op and the data-dependent checks must not be in the
    # way of the compiler (it takes the PyTorch path instead).
    x, s_raw, t = make_inputs((9, 4), torch.float64)
    batch, num_graphs = make_batch(batch_kind, 9)
    if batch is not None and num_graphs is None:
        num_graphs = int(batch.max()) + 1
    compiled = torch.compile(affine_coupling, fullgraph=True, backend='aot_eager')
    expected = run_both(affine_coupling, x, s_raw, t, batch, num_graphs, 2.0, inverse)
    got = run_both(compiled, x, s_raw, t, batch, num_graphs, 2.0, inverse)
    for a, b in zip(expected, got):
        assert torch.allclose(a, b, atol=1e-12)
