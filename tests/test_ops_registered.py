r"""The C++ ops as registered PyTorch operators (opcheck: schema, fake
kernels, autograd registration), validation of hand-made graphs inside the
kernels, and second-order gradients of the fused ops."""
import pytest
import torch

from tests.conftest import random_graph
from torch_geometric_gnf.ops import (CSRGraph, affine_coupling,
                                     affine_coupling_reference, build_csr,
                                     extension_available, fused_gat_attention,
                                     fused_gat_attention_reference)
from torch_geometric_gnf.ops.csr import csr_src_row, validate_csr
from torch_geometric_gnf.utils import set_input_checks

needs_ext = pytest.mark.skipif(not extension_available(),
                               reason='C++ extension unavailable')
ops = torch.ops.torch_geometric_gnf


def gat_inputs(N=9, E=30, H=2, C=3, edge=True, dtype=torch.float64, seed=0,
               requires_grad=False):
    ei = random_graph(N, E, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    E = ei.size(1)
    make = lambda *shape: torch.randn(*shape, generator=gen, dtype=dtype)  # noqa
    tensors = [make(N, H, C), make(N, H), make(N, H),
               make(E, H) if edge else None]
    if requires_grad:
        tensors = [t.requires_grad_() if t is not None else None
                   for t in tensors]
    return tensors, build_csr(ei, N, N)


def graph_args(csr):
    return (csr.rowptr, csr.col, csr.perm, csr.src_rowptr, csr.src_slot,
            csr_src_row(csr))


# --------------------------------------------------------------------------
# opcheck: schema, fake kernels, autograd registration (issue 28)
# --------------------------------------------------------------------------
@needs_ext
@pytest.mark.parametrize('edge', [False, True])
@pytest.mark.parametrize('dropout', [0.0, 0.4])
@pytest.mark.parametrize('index_dtype', [torch.int32, torch.int64])
def test_opcheck_gat_attention(edge, dropout, index_dtype):
    (x, a_s, a_d, a_e), csr = gat_inputs(edge=edge, requires_grad=True)
    csr = build_csr(random_graph(9, 30).to(index_dtype), 9, 9)
    args = (x, a_s, a_d, a_e, *graph_args(csr), 0.2, dropout, 7)
    torch.library.opcheck(ops.gat_attention_forward, args)
    with torch.no_grad():
        out, lse = ops.gat_attention_forward(*args)
    grad = torch.randn_like(out)
    torch.library.opcheck(
        ops.gat_attention_backward,
        (grad, x.detach(), a_s.detach(), a_d.detach(),
         None if a_e is None else a_e.detach(), out, lse, *graph_args(csr),
         0.2, dropout, 7))


@needs_ext
@pytest.mark.parametrize('inverse', [False, True])
@pytest.mark.parametrize('with_batch', [False, True])
def test_opcheck_affine_coupling(inverse, with_batch):
    gen = torch.Generator().manual_seed(0)
    x, s, t = (torch.randn(6, 3, generator=gen, dtype=torch.float64,
                           requires_grad=True) for _ in range(3))
    batch = torch.tensor([0, 0, 1, 1, 2, 2]) if with_batch else None
    args = (x, s, t, batch, 3, 2.0, inverse)
    torch.library.opcheck(ops.affine_coupling_forward, args)
    torch.library.opcheck(
        ops.affine_coupling_backward,
        (torch.randn(6, 3, dtype=torch.float64), x.detach(), s.detach(),
         batch, torch.randn(3, dtype=torch.float64), 3, 2.0, inverse))


@needs_ext
def test_ops_have_fake_kernels_and_autograd():
    (x, a_s, a_d, _), csr = gat_inputs(edge=False)
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode() as mode:
        fake = [mode.from_tensor(t) for t in (x, a_s, a_d)]
        graph = [mode.from_tensor(t) for t in graph_args(csr)]
        out, lse = ops.gat_attention_forward(*fake, None, *graph, 0.2, 0.0, 0)
    assert out.shape == (9, 2, 3) and lse.shape == (9, 2)
    x.requires_grad_()
    out = fused_gat_attention(x, a_s, a_d, csr)
    assert out.grad_fn is not None  # autograd through register_autograd


# --------------------------------------------------------------------------
# Hand-made / corrupted CSR graphs (issue 26.3): a clear ValueError on every
# path, whatever the input-check switch; never a crash or garbage
# --------------------------------------------------------------------------
def _corruptions(csr: CSRGraph):
    E = csr.num_edges
    bad_rowptr = csr.rowptr.clone()
    bad_rowptr[-1] = E + 5  # beyond the edge count (SIGSEGV before)
    dec_rowptr = csr.rowptr.clone()
    dec_rowptr[3], dec_rowptr[4] = dec_rowptr[4] + 1, dec_rowptr[3]
    big_col = csr.col.clone()
    big_col[2] = csr.num_src + 3
    neg_col = csr.col.clone()
    neg_col[0] = -1
    big_perm = csr.perm.clone()
    big_perm[1] = E + 100
    dup_perm = csr.perm.clone()
    dup_perm[1] = dup_perm[0]
    bad_slot = csr.src_slot.clone()
    bad_slot[0] = E
    swapped_slot = csr.src_slot.flip(0)
    bad_src_row = csr.src_row.clone()
    bad_src_row[0] = csr.num_dst + 7
    bad_src_rowptr = csr.src_rowptr.clone()
    bad_src_rowptr[1] = -4
    return {
        'rowptr beyond E': (csr._replace(rowptr=bad_rowptr), 'rowptr'),
        'rowptr decreasing': (csr._replace(rowptr=dec_rowptr), 'rowptr'),
        'col too large': (csr._replace(col=big_col), 'col'),
        'col negative': (csr._replace(col=neg_col), 'col'),
        'perm out of range': (csr._replace(perm=big_perm), 'perm'),
        'perm duplicate': (csr._replace(perm=dup_perm), 'perm'),
        'src_slot out of range': (csr._replace(src_slot=bad_slot), 'src_slot'),
        'src_slot inconsistent': (csr._replace(src_slot=swapped_slot),
                                  'src'),
        'src_row out of range': (csr._replace(src_row=bad_src_row), 'src_row'),
        'src_rowptr negative': (csr._replace(src_rowptr=bad_src_rowptr),
                                'src_rowptr'),
    }


@pytest.mark.parametrize('checks', [True, False])
@pytest.mark.parametrize('path', ['extension', 'reference', 'validate'])
def test_inconsistent_csr_raises_value_error(path, checks, monkeypatch):
    if path == 'extension' and not extension_available():
        pytest.skip('C++ extension unavailable')
    if path == 'reference':
        monkeypatch.setenv('GNF_DISABLE_EXTENSION', '1')
    (x, a_s, a_d, a_e), csr = gat_inputs()
    set_input_checks(checks)
    try:
        for name, (bad, field) in _corruptions(csr).items():
            with pytest.raises(ValueError, match=f'invalid CSRGraph.*{field}'):
                if path == 'validate':
                    validate_csr(bad)
                else:
                    fused_gat_attention(x, a_s, a_d, bad, a_e)
    finally:
        set_input_checks(True)


@needs_ext
def test_kernels_validate_graph_when_called_directly():
    # The registered ops themselves refuse a bad graph (forward and
    # backward), so nothing can make them read out of bounds.
    (x, a_s, a_d, a_e), csr = gat_inputs()
    with torch.no_grad():
        out, lse = ops.gat_attention_forward(x, a_s, a_d, a_e,
                                             *graph_args(csr), 0.2, 0.0, 0)
    for name, (bad, field) in _corruptions(csr).items():
        with pytest.raises(ValueError, match=field):
            ops.gat_attention_forward(x, a_s, a_d, a_e, *graph_args(bad), 0.2,
                                      0.0, 0)
        with pytest.raises(ValueError, match=field):
            ops.gat_attention_backward(torch.ones_like(out), x, a_s, a_d, a_e,
                                       out, lse, *graph_args(bad), 0.2, 0.0, 0)


def test_valid_csr_passes_validation():
    for seed in range(3):
        ei = random_graph(12, 40, seed=seed)
        validate_csr(build_csr(ei, 12, 12))
        validate_csr(build_csr(ei.int(), 12, 15))
    validate_csr(build_csr(torch.empty(2, 0, dtype=torch.long), 4, 0))


# --------------------------------------------------------------------------
# Second-order gradients (issue 26.5): exact double backward
# --------------------------------------------------------------------------
@pytest.mark.parametrize('path', ['extension', 'reference'])
@pytest.mark.parametrize('dropout', [0.0, 0.3])
def test_gat_attention_gradgradcheck(path, dropout, monkeypatch):
    if path == 'extension' and not extension_available():
        pytest.skip('C++ extension unavailable')
    if path == 'reference':
        monkeypatch.setenv('GNF_DISABLE_EXTENSION', '1')
    (x, a_s, a_d, a_e), csr = gat_inputs(N=6, E=12, H=2, C=2,
                                         requires_grad=True)

    def fn(*t):
        return fused_gat_attention(*t[:3], csr, t[3], dropout=dropout,
                                   seed=11)
    assert torch.autograd.gradgradcheck(fn, (x, a_s, a_d, a_e))


@needs_ext
@pytest.mark.parametrize('shared', [False, True])
def test_gradient_penalty_matches_reference_path(shared):
    # A gradient penalty through the fused op (create_graph=True) gives the
    # reference path's values (it returned wrong values and None before).
    # shared: one tensor as alpha_src and alpha_dst, a nonlinear loss.
    (x, a_s, a_d, a_e), csr = gat_inputs(requires_grad=True)
    if shared:
        a_d = a_s
    results = []
    for fn in (fused_gat_attention, fused_gat_attention_reference):
        out = fn(x, a_s, a_d, csr, a_e)
        grads = torch.autograd.grad(out.pow(2).sum(), (x, a_s, a_d, a_e),
                                    create_graph=True)
        penalty = sum(g.pow(2).sum() for g in grads)
        results.append(torch.autograd.grad(penalty, (x, a_s, a_d, a_e)))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@needs_ext
@pytest.mark.parametrize('inverse', [False, True])
def test_affine_coupling_gradgradcheck(inverse):
    gen = torch.Generator().manual_seed(0)
    x, s, t = (torch.randn(6, 3, generator=gen, dtype=torch.float64,
                           requires_grad=True) for _ in range(3))
    batch = torch.tensor([0, 0, 1, 1, 2, 2])
    assert torch.autograd.gradgradcheck(
        lambda *a: affine_coupling(*a, batch, 3, 2.0, inverse), (x, s, t))
    # and the same second-order values as the reference formulas
    res = []
    for fn in (affine_coupling, affine_coupling_reference):
        out, log_det = fn(x, s, t, batch, 3, 2.0, inverse)
        g = torch.autograd.grad(out.pow(2).sum() + log_det.pow(2).sum(),
                                (x, s, t), create_graph=True)
        res.append(torch.autograd.grad(sum(v.sum() for v in g), (x, s, t)))
    for a, b in zip(*res):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
