import pytest
import torch
import torch.nn.functional as F
from torch_geometric.utils import softmax as pyg_softmax

from torch_geometric_gnf.ops import (build_csr, cached_csr, dropout_keep_mask,
                                     fused_gatv2_attention,
                                     fused_gatv2_attention_reference,
                                     gatv2_attention_weights)
from torch_geometric_gnf.utils import set_input_checks

# The awkward graphs and the comparison helpers of the GAT op's tests (the
# two-path fixture `path` comes from conftest.py).
from test_ops_gat_attention import (TOL, assert_close_all, awkward_graph,
                                    needs_ext, outputs_and_grads)


def make_inputs(num_src, num_dst, E, H, C, dtype, edge_dim=0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    xs = torch.randn(num_src, H, C, generator=gen, dtype=dtype)
    xd = torch.randn(num_dst, H, C, generator=gen, dtype=dtype)
    att = torch.randn(H, C, generator=gen, dtype=dtype)
    if not edge_dim:
        return [xs, xd, att, None, None]
    ea = torch.randn(E, edge_dim, generator=gen, dtype=dtype)
    w = torch.randn(H * C, edge_dim, generator=gen, dtype=dtype) / edge_dim
    return [xs, xd, att, ea, w]


def oracle(xs, xd, att, ei, ea=None, w=None, slope=0.2, keep=None, p=0.0):
    r"""Independent edge-list GATv2 with PyG's softmax."""
    src, dst = ei[0].long(), ei[1].long()
    H, C = att.shape
    z = xs[src] + xd[dst]
    if ea is not None:
        z = z + (ea @ w.t()).view(-1, H, C)
    a = pyg_softmax((F.leaky_relu(z, slope) * att).sum(-1), dst,
                    num_nodes=xd.size(0))
    if keep is not None:
        a = a * keep.to(a.dtype) / (1 - p)
    return torch.zeros_like(xd).index_add(0, dst, a.unsqueeze(-1) * xs[src])


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('index_dtype', [torch.int32, torch.int64])
@pytest.mark.parametrize('edge_dim', [0, 3])
@pytest.mark.parametrize('sizes', [(12, 12), (9, 15), (15, 6)])
def test_matches_oracle(path, dtype, index_dtype, edge_dim, sizes):
    ei = awkward_graph(*sizes, 40, dtype=index_dtype)
    csr = build_csr(ei, *sizes)
    inputs = make_inputs(*sizes, ei.size(1), 3, 5, dtype, edge_dim)
    ours = outputs_and_grads(
        lambda *v: fused_gatv2_attention(*v[:3], csr, *v[3:]), inputs)
    ref = outputs_and_grads(lambda *v: oracle(*v[:3], ei, *v[3:]), inputs)
    assert_close_all(ours, ref, dtype)
    assert ours[0][sizes[1] - 1].abs().max() == 0  # isolated target: 0


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('edge_dim', [0, 2])
def test_dropout_matches_oracle_with_same_mask(path, dtype, edge_dim):
    ei = awkward_graph(11, 11, 60, seed=1)
    csr = build_csr(ei, 11, 11)
    inputs = make_inputs(11, 11, ei.size(1), 2, 4, dtype, edge_dim, seed=1)
    p, seed = 0.4, 1234
    keep = dropout_keep_mask(seed, ei.size(1), 2, p)
    assert 0 < keep.sum() < keep.numel()
    ours = outputs_and_grads(lambda *v: fused_gatv2_attention(
        *v[:3], csr, *v[3:], dropout=p, seed=seed), inputs)
    ref = outputs_and_grads(
        lambda *v: oracle(*v[:3], ei, *v[3:], keep=keep, p=p), inputs)
    assert_close_all(ours, ref, dtype)
    # eval mode: no dropout at all
    ev = fused_gatv2_attention(*inputs[:3], csr, *inputs[3:], dropout=p,
                               training=False, seed=seed)
    torch.testing.assert_close(ev, oracle(*inputs[:3], ei, *inputs[3:]),
                               atol=TOL[dtype], rtol=TOL[dtype])


@needs_ext
@pytest.mark.parametrize('index_dtype', [torch.int32, torch.int64])
@pytest.mark.parametrize('dropout', [0.0, 0.3, 1.0])
@pytest.mark.parametrize('edge_dim', [0, 4])
def test_extension_equals_reference_larger(monkeypatch, index_dtype, dropout,
                                           edge_dim):
    dtype = torch.float64
    ei = awkward_graph(300, 250, 3000, seed=2, dtype=index_dtype)
    csr = build_csr(ei, 300, 250)
    inputs = make_inputs(300, 250, ei.size(1), 4, 19, dtype, edge_dim, 2)

    def run(*v):
        return fused_gatv2_attention(*v[:3], csr, *v[3:], dropout=dropout,
                                     seed=99)
    ours = outputs_and_grads(run, inputs)
    monkeypatch.setenv('GNF_DISABLE_EXTENSION', '1')
    ref = outputs_and_grads(run, inputs)
    assert_close_all(ours, ref, dtype)


@needs_ext
def test_extension_multithreaded_deterministic():
    ei = awkward_graph(500, 500, 6000, seed=4)
    ei = torch.cat([ei, torch.stack([torch.arange(400),
                                     torch.zeros(400, dtype=torch.long)])], 1)
    csr = build_csr(ei, 500, 500)
    inputs = make_inputs(500, 500, ei.size(1), 2, 8, torch.float64, 3, seed=4)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 2):
            torch.set_num_threads(n)
            results.append(outputs_and_grads(lambda *v: fused_gatv2_attention(
                *v[:3], csr, *v[3:]), inputs))
    finally:
        torch.set_num_threads(threads)
    assert_close_all(results[0], results[1], torch.float64)
    for u, v in zip(results[1], results[2]):  # same threads: same bits
        assert torch.equal(u, v)


@needs_ext  # the reference is autograd's, checked against the oracle above
@pytest.mark.parametrize('edge_dim', [0, 2])
@pytest.mark.parametrize('dropout', [0.0, 0.4])
@pytest.mark.parametrize('sizes', [(7, 7), (5, 8)])
def test_gradcheck(edge_dim, dropout, sizes):
    ei = awkward_graph(*sizes, 20, seed=5)
    csr = build_csr(ei, *sizes)
    inputs = [None if v is None else v.requires_grad_()
              for v in make_inputs(*sizes, ei.size(1), 2, 3, torch.float64,
                                   edge_dim, seed=5)]

    def fn(*v):
        return fused_gatv2_attention(*v[:3], csr, *v[3:], dropout=dropout,
                                     seed=7)
    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize('sizes,ei', [
    ((5, 4), torch.empty(2, 0, dtype=torch.long)),          # no edges
    ((0, 3), torch.empty(2, 0, dtype=torch.long)),          # no sources
    ((1, 1), torch.zeros(2, 3, dtype=torch.long)),          # one node, loops
    ((4, 6), torch.tensor([[3, 3, 3], [5, 5, 5]])),         # one hub
])
def test_degenerate_graphs(path, sizes, ei):
    csr = build_csr(ei, *sizes)
    inputs = make_inputs(*sizes, ei.size(1), 2, 3, torch.float64, 2)
    ours = outputs_and_grads(
        lambda *v: fused_gatv2_attention(*v[:3], csr, *v[3:]), inputs)
    ref = outputs_and_grads(lambda *v: oracle(*v[:3], ei, *v[3:]), inputs)
    assert_close_all(ours, ref, torch.float64)


def test_numerically_stable_for_large_scores(path):
    ei = awkward_graph(10, 10, 30, seed=6)
    csr = build_csr(ei, 10, 10)
    xs, xd, att, _, _ = make_inputs(10, 10, 0, 2, 3, torch.float64, seed=6)
    out = fused_gatv2_attention(xs * 400, xd * 400, att, csr)
    ref = oracle(xs * 400, xd * 400, att, ei)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, atol=1e-8, rtol=1e-10)


@pytest.mark.parametrize('edge_dim', [0, 2])
def test_attention_weights(edge_dim):
    ei = awkward_graph(9, 9, 30, seed=8)
    csr = build_csr(ei, 9, 9)
    xs, xd, att, ea, w = make_inputs(9, 9, ei.size(1), 2, 3, torch.float64,
                                     edge_dim, seed=8)
    a = gatv2_attention_weights(xs, xd, att, csr, ea, w, negative_slope=0.1)
    z = xs[ei[0]] + xd[ei[1]]
    if ea is not None:
        z = z + (ea @ w.t()).view(-1, 2, 3)
    ref = pyg_softmax((F.leaky_relu(z, 0.1) * att).sum(-1), ei[1],
                      num_nodes=9)
    torch.testing.assert_close(a, ref, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize('edge_dim', [0, 2])
def test_attention_weights_in_chunks(edge_dim, monkeypatch):
    # Large graphs: chunks of edges, checkpointed. Same values and
    # gradients as one pass, and autograd saves no [E, H, C] tensor.
    from torch_geometric_gnf.ops import gatv2_attention as module
    ei = awkward_graph(12, 12, 70, seed=4)
    csr = build_csr(ei, 12, 12)
    E, H, C = ei.size(1), 2, 3
    inputs = [None if v is None else v.requires_grad_()
              for v in make_inputs(12, 12, E, H, C, torch.float64, edge_dim,
                                   seed=4)]
    weight = torch.randn(E, H, dtype=torch.float64)

    def run():
        a = gatv2_attention_weights(*inputs[:3], csr, *inputs[3:])
        grads = torch.autograd.grad((a * weight).sum(),
                                    [v for v in inputs if v is not None])
        return a.detach(), grads

    whole, whole_grads = run()
    monkeypatch.setattr(module, '_WEIGHTS_CHUNK', 16)  # 5 chunks
    saved = []

    def pack(t):
        saved.append(t)
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        chunked, chunked_grads = run()
    torch.testing.assert_close(chunked, whole, atol=1e-13, rtol=0)
    for a, b in zip(chunked_grads, whole_grads):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    assert saved and max(t.numel() for t in saved) < E * H * C
    with torch.no_grad():
        torch.testing.assert_close(
            gatv2_attention_weights(*inputs[:3], csr, *inputs[3:]), whole,
            atol=1e-13, rtol=0)


def test_seed_drawn_from_torch_generator_replays(path):
    ei = awkward_graph(8, 8, 30, seed=9)
    csr = build_csr(ei, 8, 8)
    inputs = make_inputs(8, 8, 0, 2, 3, torch.float64, seed=9)
    torch.manual_seed(5)
    a = fused_gatv2_attention(*inputs[:3], csr, dropout=0.5)
    torch.manual_seed(5)
    b = fused_gatv2_attention(*inputs[:3], csr, dropout=0.5)
    c = fused_gatv2_attention(*inputs[:3], csr, dropout=0.5)
    assert torch.equal(a, b) and not torch.equal(b, c)


# --------------------------------------------------------------------------
# Memory model
# --------------------------------------------------------------------------
@needs_ext
@pytest.mark.parametrize('edge_dim', [0, 3])
def test_saves_and_returns_no_edge_by_channel_tensor(edge_dim):
    ei = awkward_graph(40, 40, 400, seed=10)
    csr = build_csr(ei, 40, 40)
    E = ei.size(1)
    inputs = [None if v is None else v.requires_grad_()
              for v in make_inputs(40, 40, E, 2, 6, torch.float64, edge_dim)]
    saved = []

    def pack(t):
        saved.append(t)
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fused_gatv2_attention(*inputs[:3], csr, *inputs[3:],
                                    dropout=0.2, seed=1)
    derived = [t for t in saved if t.is_floating_point() and
               not any(t is v for v in inputs)]
    assert len(derived) == 2  # out [N, H, C] and lse [N, H]
    for t in derived:
        assert t.numel() < E * 2, tuple(t.shape)
    out.sum().backward()


# --------------------------------------------------------------------------
# torch.library registration
# --------------------------------------------------------------------------
def _op_args(edge_dim, dropout, index_dtype=torch.long, requires_grad=True):
    ei = awkward_graph(9, 7, 25, seed=11, dtype=index_dtype)
    csr = build_csr(ei, 9, 7)
    xs, xd, att, ea, w = [
        None if v is None else v.requires_grad_(requires_grad)
        for v in make_inputs(9, 7, ei.size(1), 2, 3, torch.float64,
                             edge_dim, seed=11)]
    return (xs, xd, att, ea, w, csr.rowptr, csr.col, csr.perm,
            csr.src_rowptr, csr.src_slot, csr.src_row, 0.2, dropout, 17)


@needs_ext
@pytest.mark.parametrize('edge_dim', [0, 2])
@pytest.mark.parametrize('dropout', [0.0, 0.5])
@pytest.mark.parametrize('index_dtype', [torch.int32, torch.int64])
def test_opcheck(edge_dim, dropout, index_dtype):
    op = torch.ops.torch_geometric_gnf.gatv2_attention_forward
    torch.library.opcheck(op, _op_args(edge_dim, dropout, index_dtype))


@needs_ext
def test_compile_fullgraph_sees_the_op():
    ei = awkward_graph(9, 9, 25, seed=12)
    csr = cached_csr(ei, 9, 9)
    xs, xd, att, _, _ = make_inputs(9, 9, 0, 2, 3, torch.float64, seed=12)

    def fn(xs, xd, att):
        return fused_gatv2_attention(xs, xd, att, csr, training=False)
    compiled = torch.compile(fn, fullgraph=True, backend='aot_eager')
    torch.testing.assert_close(compiled(xs, xd, att), fn(xs, xd, att))


@needs_ext
def test_double_backward_raises_clearly_reference_supports_it(monkeypatch):
    ei = awkward_graph(4, 4, 6, seed=13)
    csr = build_csr(ei, 4, 4)
    inputs = [v.requires_grad_() for v in
              make_inputs(4, 4, 0, 2, 2, torch.float64, seed=13)[:3]]
    out = fused_gatv2_attention(*inputs, csr)
    g, = torch.autograd.grad(out.pow(2).sum(), inputs[0], create_graph=True)
    with pytest.raises(RuntimeError, match='fused_gatv2_attention: double '
                                           'backward'):
        g.sum().backward()
    monkeypatch.setenv('GNF_DISABLE_EXTENSION', '1')
    assert torch.autograd.gradgradcheck(
        lambda *v: fused_gatv2_attention(*v, csr), inputs)


# --------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------
def test_bad_input_errors(path):
    ei = awkward_graph(6, 6, 15, seed=14)
    csr = build_csr(ei, 6, 6)
    xs, xd, att, ea, w = make_inputs(6, 6, ei.size(1), 2, 3, torch.float64, 2)
    cases = [
        ((xs[0], xd, att, csr), ValueError, "'x_src' must have shape"),
        ((xs, xd[:, :1], att, csr), ValueError, "'x_dst' must have shape"),
        ((xs, xd, att[:1], csr), ValueError, "'att' must have shape"),
        ((xs, xd, att, ei), TypeError, "'csr' must be a CSRGraph"),
        ((xs[:4], xd, att, csr), ValueError, 'num_src=6'),
        ((xs, xd, att, csr, ea), ValueError, 'given together'),
        ((xs, xd, att, csr, ea[:3], w), ValueError, "'edge_attr' must have"),
        ((xs, xd, att, csr, ea, w[:, :1]), ValueError, "'edge_weight' must"),
        ((xs, xd.float(), att, csr), ValueError, 'dtype mismatch'),
        ((xs.long(), xd.long(), att.long(), csr), ValueError, 'floating'),
        ((xs, xd * float('nan'), att, csr), ValueError, 'non-finite'),
    ]
    for args, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            fused_gatv2_attention(*args)
    with pytest.raises(ValueError, match="'dropout' must lie"):
        fused_gatv2_attention(xs, xd, att, csr, dropout=1.5)


@needs_ext
def test_kernel_never_trusts_index_values():
    ei = awkward_graph(6, 6, 15, seed=15)
    csr = build_csr(ei, 6, 6)
    args = list(_op_args(0, 0.0))
    args[5:11] = [csr.rowptr, csr.col, csr.perm, csr.src_rowptr,
                  csr.src_slot, csr.src_row]
    args[:3] = make_inputs(6, 6, 0, 2, 3, torch.float64)[:3]
    op = torch.ops.torch_geometric_gnf.gatv2_attention_forward
    bad = {5: (csr.rowptr.flip(0), 'rowptr'),
           6: (csr.col + 100, 'col'),
           7: (csr.perm - 1, 'perm')}
    set_input_checks(False)  # the kernel checks regardless
    try:
        for pos, (value, name) in bad.items():
            broken = list(args)
            broken[pos] = value
            with pytest.raises(RuntimeError, match=name):
                op(*broken)
        out, lse = op(*args)
        grad = torch.ops.torch_geometric_gnf.gatv2_attention_backward
        gargs = [torch.ones_like(out)] + args[:5] + [out, lse] + args[5:]
        for pos, name in ((12, 'src_slot'), (13, 'src_row')):
            broken = list(gargs)
            broken[pos] = broken[pos] + 50
            with pytest.raises(RuntimeError, match=name):
                grad(*broken)
    finally:
        set_input_checks(True)


# --------------------------------------------------------------------------
# Reversible recomputation replays the dropout mask
# --------------------------------------------------------------------------
class TinyAttentionV2(torch.nn.Module):
    r"""Minimal GATv2-style module on the fused op (dropout seed drawn from
    the default generator)."""
    def __init__(self, channels, heads=2):
        super().__init__()
        self.heads, self.out = heads, channels // heads
        self.lin_l = torch.nn.Linear(channels, channels)
        self.lin_r = torch.nn.Linear(channels, channels)
        self.att = torch.nn.Parameter(torch.randn(heads, self.out))

    def forward(self, h, edge_index):
        xs = self.lin_l(h).view(-1, self.heads, self.out)
        xd = self.lin_r(h).view(-1, self.heads, self.out)
        csr = cached_csr(edge_index, h.size(0), h.size(0))
        out = fused_gatv2_attention(xs, xd, self.att, csr, dropout=0.5,
                                    training=self.training)
        return out.reshape(h.size(0), -1)


def test_reversible_step_replays_dropout(path):
    from torch_geometric_gnf.nn import ReversibleMessagePassing
    ei = awkward_graph(12, 12, 50, seed=16)
    x = torch.randn(12, 8, dtype=torch.float64)
    grads = []
    for memory_saving in (False, True):
        torch.manual_seed(1)
        block = ReversibleMessagePassing(TinyAttentionV2(4), TinyAttentionV2(4),
                                         memory_saving=memory_saving).double()
        xin = x.clone().requires_grad_()
        torch.manual_seed(2)  # same dropout seeds in both runs
        y = block(xin, ei)
        y = y[0] if isinstance(y, tuple) else y
        w = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
        (y * w).sum().backward()
        grads.append([xin.grad] + [p.grad for p in block.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
