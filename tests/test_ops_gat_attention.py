import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch_geometric.utils import softmax as pyg_softmax

from torch_geometric_gnf.ops import (build_csr, dropout_keep_mask,
                                     extension_available, fused_gat_attention,
                                     fused_gat_attention_reference,
                                     gat_attention_weights)
from torch_geometric_gnf.utils import set_input_checks

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}

needs_ext = pytest.mark.skipif(not extension_available(),
                               reason='C++ extension unavailable')


@pytest.fixture(params=['extension', 'reference'])
def path(request, monkeypatch):
    if request.param == 'extension':
        if not extension_available():
            pytest.skip('C++ extension unavailable')
    else:
        monkeypatch.setenv('GNF_DISABLE_EXTENSION', '1')
    return request.param


def awkward_graph(num_src, num_dst, num_edges, seed=0, dtype=torch.long):
    r"""Random (bipartite if sizes differ) graph with isolated destination
    and source nodes, duplicate edges and self-loops."""
    gen = torch.Generator().manual_seed(seed)
    src = torch.randint(0, max(num_src - 1, 1), (num_edges, ), generator=gen)
    dst = torch.randint(0, max(num_dst - 2, 1), (num_edges, ), generator=gen)
    ei = torch.stack([src, dst])
    loops = torch.arange(min(num_src, num_dst, 3)).repeat(2, 1)
    ei = torch.cat([ei, ei[:, :5], loops], dim=1)
    return ei.to(dtype)


def make_inputs(num_src, num_dst, E, H, C, dtype, edge=False, seed=0,
                scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(num_src, H, C, generator=gen, dtype=dtype)
    a_s = scale * torch.randn(num_src, H, generator=gen, dtype=dtype)
    a_d = scale * torch.randn(num_dst, H, generator=gen, dtype=dtype)
    a_e = torch.randn(E, H, generator=gen, dtype=dtype) if edge else None
    return x, a_s, a_d, a_e


def oracle(x, a_s, a_d, ei, a_e=None, slope=0.2, keep=None, p=0.0):
    r"""Independent edge-list implementation with PyG's softmax."""
    src, dst = ei[0].long(), ei[1].long()
    raw = a_s[src] + a_d[dst]
    if a_e is not None:
        raw = raw + a_e
    a = pyg_softmax(F.leaky_relu(raw, slope), dst, num_nodes=a_d.size(0))
    if keep is not None:
        a = a * keep.to(a.dtype) / (1 - p)
    out = torch.zeros(a_d.size(0), x.size(1), x.size(2), dtype=x.dtype)
    return out.index_add(0, dst, a.unsqueeze(-1) * x[src])


def outputs_and_grads(fn, inputs, seed=3):
    inputs = [None if v is None else v.detach().clone().requires_grad_()
              for v in inputs]
    out = fn(*inputs)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed),
                    dtype=out.dtype)
    used = [v for v in inputs if v is not None]
    grads = torch.autograd.grad((out * g).sum(), used, allow_unused=True)
    return [out] + [torch.zeros_like(v) if gr is None else gr
                    for v, gr in zip(used, grads)]


def assert_close_all(a, b, dtype):
    assert len(a) == len(b)
    for u, v in zip(a, b):
        assert not torch.isnan(u).any()
        torch.testing.assert_close(u, v, atol=TOL[dtype], rtol=TOL[dtype])


# --------------------------------------------------------------------------
# Values and gradients against the oracle
# --------------------------------------------------------------------------
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('index_dtype', [torch.int32, torch.int64])
@pytest.mark.parametrize('edge', [False, True])
@pytest.mark.parametrize('sizes', [(12, 12), (9, 15), (15, 6)])
def test_matches_oracle(path, dtype, index_dtype, edge, sizes):
    ei = awkward_graph(*sizes, 50, dtype=index_dtype)
    E = ei.size(1)
    inputs = make_inputs(*sizes, E, 3, 5, dtype, edge=edge)
    csr = build_csr(ei, *sizes)
    got = outputs_and_grads(
        lambda x, s, d, e: fused_gat_attention(x, s, d, csr, e,
                                               negative_slope=0.15), inputs)
    want = outputs_and_grads(
        lambda x, s, d, e: oracle(x, s, d, ei, e, slope=0.15), inputs)
    assert_close_all(got, want, dtype)
    # isolated destinations (the last one never receives an edge): exact 0
    assert torch.count_nonzero(got[0][-1]) == 0


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('edge', [False, True])
def test_dropout_matches_oracle_with_same_mask(path, dtype, edge):
    ei = awkward_graph(10, 8, 60)
    E, H, p, seed = ei.size(1), 4, 0.35, 1234
    inputs = make_inputs(10, 8, E, H, 6, dtype, edge=edge)
    csr = build_csr(ei, 10, 8)
    keep = dropout_keep_mask(seed, E, H, p)
    assert 0 < int(keep.sum()) < keep.numel()
    got = outputs_and_grads(
        lambda x, s, d, e: fused_gat_attention(x, s, d, csr, e, dropout=p,
                                               seed=seed), inputs)
    want = outputs_and_grads(
        lambda x, s, d, e: oracle(x, s, d, ei, e, keep=keep, p=p), inputs)
    assert_close_all(got, want, dtype)
    # eval mode ignores dropout
    ev = fused_gat_attention(*inputs[:3], csr, inputs[3], dropout=p,
                             training=False)
    torch.testing.assert_close(ev, oracle(*inputs[:3], ei, inputs[3]),
                               atol=TOL[dtype], rtol=TOL[dtype])


@needs_ext
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('index_dtype', [torch.int32, torch.int64])
@pytest.mark.parametrize('dropout', [0.0, 0.3])
def test_extension_equals_reference_larger(monkeypatch, dtype, index_dtype,
                                           dropout):
    ei = awkward_graph(300, 250, 3000, seed=1, dtype=index_dtype)
    inputs = make_inputs(300, 250, ei.size(1), 4, 16, dtype, edge=True)
    csr = build_csr(ei, 300, 250)

    def run():
        return outputs_and_grads(
            lambda x, s, d, e: fused_gat_attention(
                x, s, d, csr, e, dropout=dropout, seed=7), inputs)
    ext = run()
    monkeypatch.setenv('GNF_DISABLE_EXTENSION', '1')
    ref = run()
    assert_close_all(ext, ref, dtype)


@needs_ext
def test_extension_multithreaded_on_skewed_graph(monkeypatch):
    # Several threads split the nodes by work (edges + nodes): a hub with
    # most of the edges, many isolated nodes, bipartite sizes.
    gen = torch.Generator().manual_seed(4)
    hub = torch.stack([torch.randint(0, 500, (3000, ), generator=gen),
                       torch.zeros(3000, dtype=torch.long)])
    rest = torch.stack([torch.zeros(2000, dtype=torch.long),
                        torch.randint(0, 300, (2000, ), generator=gen)])
    ei = torch.cat([hub, rest, awkward_graph(500, 400, 1000)], dim=1)
    inputs = make_inputs(500, 400, ei.size(1), 2, 8, torch.float64,
                         edge=True)
    csr = build_csr(ei, 500, 400)
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        ext = outputs_and_grads(
            lambda x, s, d, e: fused_gat_attention(x, s, d, csr, e,
                                                   dropout=0.1, seed=2),
            inputs)
    finally:
        torch.set_num_threads(threads)
    monkeypatch.setenv('GNF_DISABLE_EXTENSION', '1')
    ref = outputs_and_grads(
        lambda x, s, d, e: fused_gat_attention(x, s, d, csr, e, dropout=0.1,
                                               seed=2), inputs)
    assert_close_all(ext, ref, torch.float64)


@needs_ext
def test_extension_path_is_used():
    ei = awkward_graph(6, 6, 10)
    x, a_s, a_d, _ = make_inputs(6, 6, ei.size(1), 2, 3, torch.float32)
    x.requires_grad_()
    out = fused_gat_attention(x, a_s, a_d, build_csr(ei, 6, 6))
    assert 'gat_attention_forward' in type(out.grad_fn).__name__


@pytest.mark.skipif(os.environ.get('GNF_EXPECT_EXTENSION') != '1',
                    reason='set GNF_EXPECT_EXTENSION=1 where the build must '
                    'have run')
def test_extension_has_gat_kernels():
    assert extension_available()
    assert hasattr(torch.ops.torch_geometric_gnf, 'gat_attention_forward')
    assert hasattr(torch.ops.torch_geometric_gnf, 'gat_attention_backward')


def test_numerically_stable_for_large_scores(path):
    ei = awkward_graph(10, 10, 40)
    x, a_s, a_d, _ = make_inputs(10, 10, ei.size(1), 2, 3, torch.float32,
                                 scale=500.0)  # exp(500) overflows float32
    out = fused_gat_attention(x, a_s, a_d, build_csr(ei, 10, 10))
    want = oracle(x.double(), a_s.double(), a_d.double(), ei)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), want, atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------------
# gradcheck (float64)
# --------------------------------------------------------------------------
@pytest.mark.parametrize('edge', [False, True])
@pytest.mark.parametrize('dropout', [0.0, 0.4])
@pytest.mark.parametrize('sizes', [(7, 7), (5, 8)])
def test_gradcheck(path, edge, dropout, sizes):
    ei = awkward_graph(*sizes, 18, dtype=torch.int32)
    inputs = make_inputs(*sizes, ei.size(1), 2, 3, torch.float64, edge=edge)
    inputs = [v for v in inputs if v is not None]
    for v in inputs:
        v.requires_grad_()
    csr = build_csr(ei, *sizes)

    def fn(*args):
        e = args[3] if edge else None
        return fused_gat_attention(args[0], args[1], args[2], csr, e,
                                   negative_slope=0.3, dropout=dropout,
                                   seed=99)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7)


# --------------------------------------------------------------------------
# Degenerate graphs
# --------------------------------------------------------------------------
@pytest.mark.parametrize('sizes,ei', [
    ((5, 4), torch.empty(2, 0, dtype=torch.long)),  # E = 0
    ((1, 1), torch.tensor([[0], [0]])),  # single node, self-loop
    ((1, 1), torch.empty(2, 0, dtype=torch.int32)),  # single isolated node
    ((3, 0), torch.empty(2, 0, dtype=torch.long)),  # no destinations
    ((0, 2), torch.empty(2, 0, dtype=torch.long)),  # no sources
])
def test_degenerate_graphs(path, sizes, ei):
    x, a_s, a_d, a_e = make_inputs(*sizes, ei.size(1), 2, 3, torch.float64,
                                   edge=True)
    csr = build_csr(ei, *sizes)
    got = outputs_and_grads(
        lambda x, s, d, e: fused_gat_attention(x, s, d, csr, e, dropout=0.5,
                                               seed=1), [x, a_s, a_d, a_e])
    assert got[0].shape == (sizes[1], 2, 3)
    if ei.size(1) == 0:
        for t in got:
            assert torch.count_nonzero(t) == 0
    else:  # one self-loop: out = x * keep / (1 - p)
        keep = dropout_keep_mask(1, 1, 2, 0.5).to(x.dtype)
        torch.testing.assert_close(got[0], x * keep.view(1, 2, 1) * 2)
        assert torch.count_nonzero(got[2]) == 0  # softmax of one edge is 1


# --------------------------------------------------------------------------
# Dropout RNG
# --------------------------------------------------------------------------
def _mix32_np(x):
    x = np.uint32(x)
    x ^= x >> np.uint32(16)
    x = np.uint32(x * np.uint32(0x7FEB352D))
    x ^= x >> np.uint32(15)
    x = np.uint32(x * np.uint32(0x846CA68B))
    x ^= x >> np.uint32(16)
    return x


def _keep_np(seed, e, H, h, p):
    # Independent uint32 (wrapping) implementation of the documented hash.
    u = seed % 2**64
    with np.errstate(over='ignore'):
        key = _mix32_np(np.uint32(u & 0xFFFFFFFF)
                        ^ _mix32_np(np.uint32((u >> 32) ^ 0x9E3779B9)))
        c = e * H + h
        r = _mix32_np(_mix32_np(np.uint32(c & 0xFFFFFFFF) ^ key)
                      ^ _mix32_np(np.uint32(((c >> 32) + int(key))
                                            & 0xFFFFFFFF)))
    return int(r) >= int(p * 2**32)


@pytest.mark.parametrize('seed', [0, 1, -5, 2**63 - 1, 123456789012345])
def test_dropout_mask_matches_independent_hash(seed):
    E, H, p = 37, 3, 0.3
    mask = dropout_keep_mask(seed, E, H, p)
    want = torch.tensor([[_keep_np(seed, e, H, h, p) for h in range(H)]
                         for e in range(E)])
    assert torch.equal(mask, want)


def test_dropout_mask_statistics():
    E, H = 20000, 4
    for p in (0.1, 0.5, 0.9):
        rate = dropout_keep_mask(42, E, H, p).double().mean().item()
        assert abs(rate - (1 - p)) < 0.01
    a = dropout_keep_mask(1, E, H, 0.5)
    b = dropout_keep_mask(2, E, H, 0.5)
    assert 0.4 < (a == b).double().mean().item() < 0.6  # seeds decorrelate
    # heads and neighbouring edges are not correlated either
    assert 0.4 < (a[:, 0] == a[:, 1]).double().mean().item() < 0.6
    assert 0.4 < (a[1:, 0] == a[:-1, 0]).double().mean().item() < 0.6
    assert dropout_keep_mask(3, 10, 2, 0.0).all()
    assert not dropout_keep_mask(3, 10, 2, 1.0).any()


def test_seed_drawn_from_torch_generator_replays(path):
    ei = awkward_graph(10, 10, 40)
    inputs = make_inputs(10, 10, ei.size(1), 2, 4, torch.float64)
    csr = build_csr(ei, 10, 10)
    state = torch.get_rng_state()
    a = fused_gat_attention(*inputs[:3], csr, dropout=0.5)
    b = fused_gat_attention(*inputs[:3], csr, dropout=0.5)
    torch.set_rng_state(state)
    c = fused_gat_attention(*inputs[:3], csr, dropout=0.5)
    assert torch.equal(a, c) and not torch.equal(a, b)


def test_dropout_same_between_paths_without_seed(monkeypatch):
    ei = awkward_graph(10, 10, 40)
    inputs = make_inputs(10, 10, ei.size(1), 2, 4, torch.float64)
    csr = build_csr(ei, 10, 10)
    torch.manual_seed(5)
    a = fused_gat_attention(*inputs[:3], csr, dropout=0.5)
    monkeypatch.setenv('GNF_DISABLE_EXTENSION', '1')
    torch.manual_seed(5)
    b = fused_gat_attention(*inputs[:3], csr, dropout=0.5)
    torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


# --------------------------------------------------------------------------
# Memory: nothing of size E*H or more is saved for backward
# --------------------------------------------------------------------------
@needs_ext
@pytest.mark.parametrize('edge', [False, True])
def test_saves_no_edge_sized_tensor(edge):
    N, E, H, C = 20, 2000, 2, 3
    gen = torch.Generator().manual_seed(0)
    ei = torch.randint(0, N, (2, E), generator=gen)
    x, a_s, a_d, a_e = make_inputs(N, N, E, H, C, torch.float32, edge=edge)
    for v in (x, a_s, a_d) + ((a_e, ) if edge else ()):
        v.requires_grad_()
    csr = build_csr(ei, N, N)

    def saved_sizes(fn):
        sizes = []

        def pack(t):
            sizes.append(t.numel())
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = fn()
        return out, sizes

    out, sizes = saved_sizes(lambda: fused_gat_attention(
        x, a_s, a_d, csr, a_e, dropout=0.2))
    # the inputs (alpha_edge is itself [E, H]) and out, lse: nothing else
    allowed = E * H if edge else 0
    big = [s for s in sizes if s >= E * H]
    assert big == ([allowed] if edge else [])
    out.sum().backward()
    assert x.grad is not None
    # The check can fail: the reference path keeps [E, H] and [E, H, C].
    _, ref_sizes = saved_sizes(lambda: fused_gat_attention_reference(
        x, a_s, a_d, csr, a_e, dropout=0.2))
    assert max(ref_sizes) >= E * H * C


@needs_ext
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_backward_allocates_no_edge_sized_scratch(dtype):
    # The CPU backward recomputes every edge's weight and score gradient in
    # its source-parallel pass: besides its outputs it allocates only
    # [num_dst, H] buffers, never an [E, *] scratch tensor.
    from torch_geometric_gnf.ops.csr import csr_src_row
    ops = torch.ops.torch_geometric_gnf
    N, E, H, C = 20, 20000, 2, 3
    gen = torch.Generator().manual_seed(0)
    ei = torch.randint(0, N, (2, E), generator=gen)
    x, a_s, a_d, _ = make_inputs(N, N, E, H, C, dtype)
    csr = build_csr(ei, N, N)
    for p in (0.0, 0.3):
        out, lse = ops.gat_attention_forward(
            x, a_s, a_d, None, csr.rowptr, csr.col, csr.perm,
            csr.src_rowptr, csr.src_slot, csr_src_row(csr), 0.2, p, 5)
        g = torch.randn(out.shape, generator=gen, dtype=dtype)
        with torch.profiler.profile(
                activities=[torch.profiler.ProfilerActivity.CPU],
                profile_memory=True) as prof:
            grads = ops.gat_attention_backward(
                g, x, a_s, a_d, None, out, lse, csr.rowptr, csr.col,
                csr.perm, csr.src_rowptr, csr.src_slot, csr_src_row(csr),
                0.2, p, 5)
        assert grads[0].shape == x.shape
        sizes = [ev.cpu_memory_usage for ev in prof.events()
                 if ev.name.startswith('aten::')]
        assert sizes, 'the profiler recorded no allocation'
        assert max(sizes) < E * H * x.element_size(), sizes


@needs_ext
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('edge', [False, True])
@pytest.mark.parametrize('dropout', [0.0, 0.3, 1.0])
def test_backward_recompute_matches_reference(monkeypatch, dtype, edge,
                                              dropout):
    # Both backward passes recompute scores, weights and dropout bits; with
    # and without alpha_edge, with and without dropout, several threads.
    ei = awkward_graph(200, 150, 2500, seed=5)
    inputs = make_inputs(200, 150, ei.size(1), 3, 19, dtype, edge=edge,
                         scale=2.0)
    csr = build_csr(ei, 200, 150)

    def run():
        return outputs_and_grads(
            lambda x, s, d, e: fused_gat_attention(
                x, s, d, csr, e, dropout=dropout, seed=11), inputs)
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        ext = run()
    finally:
        torch.set_num_threads(threads)
    monkeypatch.setenv('GNF_DISABLE_EXTENSION', '1')
    ref = run()
    assert_close_all(ext, ref, dtype)


# --------------------------------------------------------------------------
# Attention weights on demand
# --------------------------------------------------------------------------
@pytest.mark.parametrize('edge', [False, True])
def test_attention_weights(edge):
    ei = awkward_graph(9, 11, 40, dtype=torch.int32)
    x, a_s, a_d, a_e = make_inputs(9, 11, ei.size(1), 3, 2, torch.float64,
                                   edge=edge)
    csr = build_csr(ei, 9, 11)
    w = gat_attention_weights(a_s, a_d, csr, a_e, negative_slope=0.1)
    raw = a_s[ei[0].long()] + a_d[ei[1].long()] + (0 if a_e is None else a_e)
    want = pyg_softmax(F.leaky_relu(raw, 0.1), ei[1].long(), num_nodes=11)
    torch.testing.assert_close(w, want, atol=1e-12, rtol=1e-12)
    sums = torch.zeros(11, 3, dtype=w.dtype).index_add(0, ei[1].long(), w)
    has_in = torch.bincount(ei[1].long(), minlength=11) > 0
    torch.testing.assert_close(sums[has_in], torch.ones_like(sums[has_in]))
    ins = [a_s.requires_grad_(), a_d.requires_grad_()]
    assert torch.autograd.gradcheck(
        lambda s, d: gat_attention_weights(s, d, csr, a_e), ins)


# --------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------
def test_non_contiguous_inputs(path):
    ei = awkward_graph(8, 8, 30)
    x, a_s, a_d, a_e = make_inputs(8, 8, ei.size(1), 3, 4, torch.float64,
                                   edge=True)
    csr = build_csr(ei, 8, 8)
    xt = x.transpose(1, 2).contiguous().transpose(1, 2)
    a_st = a_s.t().contiguous().t()
    a_et = a_e.t().contiguous().t()
    assert not (xt.is_contiguous() or a_st.is_contiguous()
                or a_et.is_contiguous())
    got = fused_gat_attention(xt, a_st, a_d, csr, a_et)
    torch.testing.assert_close(got, oracle(x, a_s, a_d, ei, a_e))


def test_bad_input_errors(path):
    ei = awkward_graph(6, 6, 20)
    E = ei.size(1)
    x, a_s, a_d, a_e = make_inputs(6, 6, E, 2, 3, torch.float32, edge=True)
    csr = build_csr(ei, 6, 6)
    f = fused_gat_attention
    with pytest.raises(ValueError, match=r"'x' must have shape"):
        f(x[:, 0], a_s, a_d, csr)
    with pytest.raises(ValueError, match='source nodes'):
        f(x[:5], a_s[:5], a_d, csr)
    with pytest.raises(ValueError, match="'alpha_src' must have shape"):
        f(x, a_s[:, :1], a_d, csr)
    with pytest.raises(ValueError, match="'alpha_dst' must have shape"):
        f(x, a_s, a_d[:4], csr)
    with pytest.raises(ValueError, match="'alpha_edge' must have shape"):
        f(x, a_s, a_d, csr, a_e[1:])
    with pytest.raises(ValueError, match='dtype mismatch'):
        f(x, a_s.double(), a_d, csr)
    with pytest.raises(ValueError, match='floating point'):
        f(x.long(), a_s.long(), a_d.long(), csr)
    with pytest.raises(ValueError, match='device mismatch'):
        f(x, a_s, a_d.to('meta'), csr)
    with pytest.raises(ValueError, match='csr.col is on meta'):
        f(x, a_s, a_d, csr._replace(col=csr.col.to('meta')))
    with pytest.raises(TypeError, match='CSRGraph'):
        f(x, a_s, a_d, ei)
    with pytest.raises(TypeError, match="'x' must be a Tensor"):
        f(x.tolist(), a_s, a_d, csr)
    with pytest.raises(ValueError, match='dropout'):
        f(x, a_s, a_d, csr, dropout=1.5)
    with pytest.raises(ValueError, match='negative_slope'):
        f(x, a_s, a_d, csr, negative_slope=float('nan'))
    with pytest.raises(ValueError, match='inconsistent'):
        f(x, a_s, a_d, csr._replace(perm=csr.perm[1:]))
    with pytest.raises(ValueError, match='int32 or int64'):
        f(x, a_s, a_d, csr._replace(col=csr.col.float()))
    for name, bad in (('x', x), ('alpha_src', a_s), ('alpha_dst', a_d),
                      ('alpha_edge', a_e)):
        bad = bad.clone()
        bad.view(-1)[0] = float('nan') if name != 'alpha_dst' else float('inf')
        args = {'x': x, 'alpha_src': a_s, 'alpha_dst': a_d,
                'alpha_edge': a_e, name: bad}
        with pytest.raises(ValueError, match=f"'{name}' contains non-finite"):
            f(args['x'], args['alpha_src'], args['alpha_dst'], csr,
              args['alpha_edge'])
    # finite values whose sum overflows are accepted (exact fallback check)
    big = x.clone()
    big[:2] = 3e38
    assert torch.isinf(big.sum())
    f(big, a_s, a_d, csr)
    bad = x.clone()
    bad[0, 0, 0], bad[1, 0, 0] = float('inf'), float('-inf')  # sum is NaN
    with pytest.raises(ValueError, match="'x' contains non-finite"):
        f(bad, a_s, a_d, csr)
    set_input_checks(False)
    try:  # documented: without value checks NaN propagates, no crash
        bad = x.clone()
        bad[0, 0, 0] = float('nan')
        f(bad, a_s, a_d, csr)
    finally:
        set_input_checks(True)


@needs_ext
def test_op_checks_shapes_itself():
    # The registered op validates what it is given (no out-of-bounds reads
    # when called directly with inconsistent tensors).
    ei = awkward_graph(6, 6, 20)
    x, a_s, a_d, _ = make_inputs(6, 6, ei.size(1), 2, 3, torch.float32)
    csr = build_csr(ei, 6, 6)
    op = torch.ops.torch_geometric_gnf.gat_attention_forward
    src = (csr.src_rowptr, csr.src_slot, csr.src_row)
    with pytest.raises(RuntimeError, match='rowptr'):
        op(x, a_s, a_d, None, csr.rowptr[:-1], csr.col, csr.perm, *src, 0.2,
           0.0, 0)
    with pytest.raises(RuntimeError, match='alpha_src'):
        op(x, a_s[:3], a_d, None, csr.rowptr, csr.col, csr.perm, *src, 0.2,
           0.0, 0)
    with pytest.raises(RuntimeError, match='perm'):
        op(x, a_s, a_d, None, csr.rowptr, csr.col, csr.perm[:3], *src, 0.2,
           0.0, 0)


# --------------------------------------------------------------------------
# Reversible recomputation replays the dropout mask
# --------------------------------------------------------------------------
class TinyAttention(torch.nn.Module):
    r"""Minimal GAT-style module on top of the fused op (dropout drawn from
    the default generator, seed=None)."""
    def __init__(self, channels, heads=2):
        super().__init__()
        self.heads, self.out = heads, channels // heads
        self.lin = torch.nn.Linear(channels, channels, bias=False)
        self.att_src = torch.nn.Parameter(torch.randn(heads, self.out))
        self.att_dst = torch.nn.Parameter(torch.randn(heads, self.out))

    def forward(self, h, edge_index):
        from torch_geometric_gnf.ops import cached_csr
        x = self.lin(h).view(-1, self.heads, self.out)
        a_s = (x * self.att_src).sum(-1)
        a_d = (x * self.att_dst).sum(-1)
        csr = cached_csr(edge_index, h.size(0), h.size(0))
        out = fused_gat_attention(x, a_s, a_d, csr, dropout=0.5,
                                  training=self.training)
        return out.reshape(h.size(0), -1)


def test_reversible_step_replays_dropout(path):
    from torch_geometric_gnf.nn import ReversibleMessagePassing
    torch.manual_seed(0)
    ei = awkward_graph(12, 12, 50)
    x = torch.randn(12, 8, dtype=torch.float64)
    grads = []
    for memory_saving in (False, True):
        torch.manual_seed(1)
        block = ReversibleMessagePassing(TinyAttention(4), TinyAttention(4),
                                         memory_saving=memory_saving).double()
        xin = x.clone().requires_grad_()
        torch.manual_seed(2)  # same dropout seeds in both runs
        y = block(xin, ei)
        y = y[0] if isinstance(y, tuple) else y
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
        grads.append([xin.grad] + [p.grad for p in block.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
