r"""CUDA kernels of the fused GAT attention op, checked against the CPU
reference. Skipped unless a GPU is visible and the extension has CUDA."""
import pytest
import torch

from torch_geometric_gnf.ops import (build_csr, dropout_keep_mask,
                                     extension_with_cuda, fused_gat_attention,
                                     fused_gat_attention_reference)

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and extension_with_cuda()),
    reason='needs a GPU and the extension built with CUDA')

TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 2e-2,
       torch.bfloat16: 5e-2}


def graph(num_src, num_dst, E, seed=0, dtype=torch.long):
    gen = torch.Generator().manual_seed(seed)
    ei = torch.stack([torch.randint(0, num_src - 1, (E, ), generator=gen),
                      torch.randint(0, num_dst - 2, (E, ), generator=gen)])
    loops = torch.arange(3).repeat(2, 1)
    return torch.cat([ei, ei[:, :7], loops], dim=1).to(dtype)


def run(fn, inputs, csr, g, **kw):
    inputs = [None if v is None else v.detach().clone().requires_grad_()
              for v in inputs]
    out = fn(*inputs[:3], csr, inputs[3], **kw)
    used = [v for v in inputs if v is not None]
    return [out] + list(torch.autograd.grad(out, used, g.to(out.dtype)))


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32,
                                   torch.float16, torch.bfloat16])
@pytest.mark.parametrize('index_dtype', [torch.int32, torch.int64])
@pytest.mark.parametrize('C', [3, 64, 200])
@pytest.mark.parametrize('dropout', [0.0, 0.3])
@pytest.mark.parametrize('edge', [False, True])
def test_cuda_matches_cpu_reference(dtype, index_dtype, C, dropout, edge):
    num_src, num_dst, H = 40, 30, 3
    ei = graph(num_src, num_dst, 400, dtype=index_dtype)
    E = ei.size(1)
    gen = torch.Generator().manual_seed(1)
    inputs = [torch.randn(num_src, H, C, generator=gen, dtype=torch.float64),
              torch.randn(num_src, H, generator=gen, dtype=torch.float64),
              torch.randn(num_dst, H, generator=gen, dtype=torch.float64),
              torch.randn(E, H, generator=gen, dtype=torch.float64)
              if edge else None]
    g = torch.randn(num_dst, H, C, generator=gen, dtype=torch.float64)
    # inputs rounded to dtype first, so both sides see the same values
    inputs = [None if v is None else v.to(dtype).double() for v in inputs]
    want = run(fused_gat_attention_reference, inputs, build_csr(ei, num_src,
                                                                 num_dst),
               g, dropout=dropout, seed=11)
    cuda_inputs = [None if v is None else v.to('cuda', dtype) for v in inputs]
    got = run(fused_gat_attention, cuda_inputs,
              build_csr(ei.cuda(), num_src, num_dst), g.cuda(),
              dropout=dropout, seed=11)
    assert 'gat_attention_forward' in type(got[0].grad_fn).__name__
    for a, b in zip(got, want):
        assert a.dtype == dtype and a.is_cuda
        torch.testing.assert_close(a.double().cpu(), b, atol=TOL[dtype],
                                   rtol=TOL[dtype])
    assert torch.count_nonzero(got[0][-1]) == 0  # isolated destination


def test_cuda_mask_and_degenerate_graphs():
    keep = dropout_keep_mask(5, 1000, 4, 0.5, device='cuda')
    assert torch.equal(keep.cpu(), dropout_keep_mask(5, 1000, 4, 0.5))
    for n_src, n_dst in ((4, 3), (1, 1), (3, 0)):
        ei = torch.empty(2, 0, dtype=torch.long, device='cuda')
        x = torch.randn(n_src, 2, 5, device='cuda', requires_grad=True)
        a_s = torch.randn(n_src, 2, device='cuda', requires_grad=True)
        a_d = torch.randn(n_dst, 2, device='cuda', requires_grad=True)
        out = fused_gat_attention(x, a_s, a_d, build_csr(ei, n_src, n_dst),
                                  dropout=0.2)
        assert out.shape == (n_dst, 2, 5) and torch.count_nonzero(out) == 0
        out.sum().backward()
        assert torch.count_nonzero(x.grad) == 0


def test_cuda_gradcheck():
    ei = graph(8, 7, 20).cuda()
    csr = build_csr(ei, 8, 7)
    gen = torch.Generator().manual_seed(0)
    ins = [torch.randn(8, 2, 3, generator=gen, dtype=torch.float64),
           torch.randn(8, 2, generator=gen, dtype=torch.float64),
           torch.randn(7, 2, generator=gen, dtype=torch.float64),
           torch.randn(ei.size(1), 2, generator=gen, dtype=torch.float64)]
    ins = [v.cuda().requires_grad_() for v in ins]
    assert torch.autograd.gradcheck(
        lambda x, s, d, e: fused_gat_attention(x, s, d, csr, e, dropout=0.3,
                                               seed=3), ins)
