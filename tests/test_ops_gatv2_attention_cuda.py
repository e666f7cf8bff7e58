r"""CUDA kernels of the fused GATv2 attention op, checked against the CPU
reference. Skipped unless a GPU is visible and the extension has CUDA."""
import pytest
import torch

from torch_geometric_gnf.ops import (build_csr, extension_with_cuda,
                                     fused_gatv2_attention,
                                     fused_gatv2_attention_reference)

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and extension_with_cuda()),
    reason='needs a GPU and the extension built with CUDA')

# The tolerances and the graph of the GAT op's CUDA tests.
from test_ops_gat_attention_cuda import TOL, graph  # noqa: E402


def make_inputs(num_src, num_dst, E, H, C, edge_dim, seed=1):
    gen = torch.Generator().manual_seed(seed)
    inputs = [torch.randn(num_src, H, C, generator=gen, dtype=torch.float64),
              torch.randn(num_dst, H, C, generator=gen, dtype=torch.float64),
              torch.randn(H, C, generator=gen, dtype=torch.float64) / C ** 0.5,
              None, None]
    if edge_dim:
        inputs[3] = torch.randn(E, edge_dim, generator=gen, dtype=torch.float64)
        inputs[4] = torch.randn(H * C, edge_dim, generator=gen,
                                dtype=torch.float64) / edge_dim
    return inputs


def run(fn, inputs, csr, g, **kw):
    inputs = [None if v is None else v.detach().clone().requires_grad_()
              for v in inputs]
    out = fn(*inputs[:3], csr, *inputs[3:], **kw)
    used = [v for v in inputs if v is not None]
    return [out] + list(torch.autograd.grad(out, used, g.to(out.dtype)))


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32,
                                   torch.float16, torch.bfloat16])
@pytest.mark.parametrize('index_dtype', [torch.int32, torch.int64])
@pytest.mark.parametrize('C', [3, 64, 200])
@pytest.mark.parametrize('dropout', [0.0, 0.3])
@pytest.mark.parametrize('edge_dim', [0, 3])
def test_cuda_matches_cpu_reference(dtype, index_dtype, C, dropout, edge_dim):
    num_src, num_dst, H = 40, 30, 3
    ei = graph(num_src, num_dst, 400, dtype=index_dtype)
    inputs = make_inputs(num_src, num_dst, ei.size(1), H, C, edge_dim)
    g = torch.randn(num_dst, H, C, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(2))
    # inputs rounded to dtype first, so both sides see the same values
    inputs = [None if v is None else v.to(dtype).double() for v in inputs]
    want = run(fused_gatv2_attention_reference, inputs,
               build_csr(ei, num_src, num_dst), g, dropout=dropout, seed=11)
    cuda_inputs = [None if v is None else v.to('cuda', dtype) for v in inputs]
    got = run(fused_gatv2_attention, cuda_inputs,
              build_csr(ei.cuda(), num_src, num_dst), g.cuda(),
              dropout=dropout, seed=11)
    for a, b in zip(got, want):
        assert a.dtype == dtype and a.is_cuda
        torch.testing.assert_close(a.double().cpu(), b, atol=TOL[dtype],
                                   rtol=TOL[dtype])
    assert torch.count_nonzero(got[0][-1]) == 0  # isolated destination


def test_cuda_degenerate_graphs():
    for n_src, n_dst in ((4, 3), (1, 1), (3, 0)):
        ei = torch.empty(2, 0, dtype=torch.long, device='cuda')
        xs = torch.randn(n_src, 2, 5, device='cuda', requires_grad=True)
        xd = torch.randn(n_dst, 2, 5, device='cuda', requires_grad=True)
        att = torch.randn(2, 5, device='cuda', requires_grad=True)
        out = fused_gatv2_attention(xs, xd, att, build_csr(ei, n_src, n_dst),
                                    dropout=0.2)
        assert out.shape == (n_dst, 2, 5) and torch.count_nonzero(out) == 0
        out.sum().backward()
        assert torch.count_nonzero(xs.grad) == 0


def test_cuda_kernel_rejects_bad_indices():
    ei = graph(8, 7, 20).cuda()
    csr = build_csr(ei, 8, 7)
    xs, xd, att, _, _ = [None if v is None else v.cuda()
                         for v in make_inputs(8, 7, 0, 2, 3, 0)]
    op = torch.ops.torch_geometric_gnf.gatv2_attention_forward
    with pytest.raises(RuntimeError, match='col'):
        op(xs, xd, att, None, None, csr.rowptr, csr.col + 100, csr.perm,
           csr.src_rowptr, csr.src_slot, csr.src_row, 0.2, 0.0, 0)


@pytest.mark.parametrize('edge_dim', [0, 2])
def test_cuda_gradcheck_and_opcheck(edge_dim):
    ei = graph(8, 7, 20).cuda()
    csr = build_csr(ei, 8, 7)
    ins = [None if v is None else v.cuda().requires_grad_()
           for v in make_inputs(8, 7, ei.size(1), 2, 3, edge_dim, seed=0)]
    used = [v for v in ins if v is not None]

    def fn(*v):
        v = list(v) + [None] * (5 - len(v))
        return fused_gatv2_attention(*v[:3], csr, *v[3:], dropout=0.3,
                                     seed=3)
    assert torch.autograd.gradcheck(fn, used)
    torch.library.opcheck(
        torch.ops.torch_geometric_gnf.gatv2_attention_forward,
        (*ins, csr.rowptr, csr.col, csr.perm, csr.src_rowptr, csr.src_slot,
         csr.src_row, 0.2, 0.3, 5))
