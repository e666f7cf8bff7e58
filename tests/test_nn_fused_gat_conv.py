r"""FusedGATConv against PyG's GATConv: same weights, same outputs, gradients
and attention weights, for every constructor option and awkward graph."""

import pytest
import torch
from torch_geometric.nn import GATConv
from torch_geometric.utils import (coalesce, to_torch_coo_tensor,
                                   to_torch_csc_tensor, to_torch_csr_tensor)

from torch_geometric_gnf.nn import FusedGATConv, ReversibleMessagePassing

from conftest import random_graph

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}

pytestmark = pytest.mark.filterwarnings('ignore:.*[Ss]parse.*:UserWarning')


def randomize(module: torch.nn.Module, seed: int = 0) -> None:
    r"""Non-trivial weights (the bias starts at zero, attention at glorot)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.rand(p.shape, generator=gen, dtype=p.dtype) - 0.5)


def make_pair(in_channels, out_channels=4, dtype=torch.float64, seed=0, **kwargs):
    gat = GATConv(in_channels, out_channels, **kwargs).to(dtype)
    randomize(gat, seed)
    fused = FusedGATConv(in_channels, out_channels, **kwargs).to(dtype)
    fused.load_state_dict(gat.state_dict())
    return gat, fused


def leaf(t):
    return None if t is None else t.detach().clone().requires_grad_()


def run(conv, x, edge_index, edge_attr=None, size=None, grad_out=None):
    r"""Forward with attention weights, then backward with a fixed random
    output gradient; returns outputs and every gradient by name."""
    xs = tuple(leaf(t) for t in x) if isinstance(x, tuple) else leaf(x)
    ea = leaf(edge_attr)
    out, (adj, alpha) = conv(xs, edge_index, ea, size=size,
                             return_attention_weights=True)
    gen = torch.Generator().manual_seed(1)
    g = torch.randn(out.shape, generator=gen, dtype=out.dtype)
    # The attention weights are differentiable in both; include them.
    ga = torch.randn(alpha.shape, generator=gen, dtype=alpha.dtype)
    conv.zero_grad()
    ((out * g).sum() + (alpha * ga).sum()).backward()
    grads = {n: p.grad for n, p in conv.named_parameters()}
    if isinstance(xs, tuple):
        grads.update({f'x{i}': t.grad for i, t in enumerate(xs) if t is not None})
    else:
        grads['x'] = xs.grad
    if ea is not None:
        grads['edge_attr'] = ea.grad
    return out, adj, alpha, grads


def assert_close(a, b, tol, what=''):
    if a is None or b is None:
        assert a is None and b is None, what
        return
    assert a.shape == b.shape, (what, a.shape, b.shape)
    torch.testing.assert_close(a, b, atol=tol, rtol=tol, msg=lambda m: f'{what}: {m}')


def assert_same_as_gat(gat, fused, x, edge_index, edge_attr=None, size=None,
                       dtype=torch.float64):
    tol = TOL[dtype]
    # GATConv's backward is wrong with int32 indices (PyG 2.8.1: its gradient
    # w.r.t. att_src differs from the int64 one); compare with int64.
    gat_index = edge_index.long() if edge_index.layout == torch.strided else edge_index
    out_g, adj_g, alpha_g, grads_g = run(gat, x, gat_index, edge_attr, size)
    out_f, adj_f, alpha_f, grads_f = run(fused, x, edge_index, edge_attr, size)
    assert_close(out_f, out_g, tol, 'output')
    assert_close(alpha_f, alpha_g, tol, 'attention weights')
    if isinstance(adj_g, torch.Tensor) and adj_g.layout == torch.strided:
        assert torch.equal(adj_f.long(), adj_g.long())
    assert grads_f.keys() == grads_g.keys()
    for name in grads_g:
        assert_close(grads_f[name], grads_g[name], tol, f'grad of {name}')
    return out_f, alpha_f


N, F_IN = 14, 5

# Every constructor option, on a graph with isolated nodes, self-loops and
# duplicate edges.
OPTIONS = [
    dict(),
    dict(heads=3),
    dict(heads=3, concat=False),
    dict(heads=2, negative_slope=0.01),
    dict(heads=2, add_self_loops=False),
    dict(heads=2, edge_dim=3),                      # fill_value='mean'
    dict(heads=2, edge_dim=3, fill_value='add'),
    dict(heads=2, edge_dim=3, fill_value='max'),
    dict(heads=2, edge_dim=3, fill_value=0.5),
    dict(heads=2, edge_dim=3, fill_value=torch.tensor([1.0, -2.0, 0.5])),
    dict(heads=2, edge_dim=3, add_self_loops=False),
    dict(heads=2, edge_dim=3, concat=False, residual=True),
    dict(heads=2, bias=False),
    dict(heads=2, residual=True),
    dict(heads=2, dropout=0.5),                     # in eval mode below
]


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('options', OPTIONS, ids=lambda o: ','.join(
    f'{k}={v if not isinstance(v, torch.Tensor) else "tensor"}'
    for k, v in o.items()) or 'default')
def test_matches_gatconv_for_every_option(options, dtype):
    torch.manual_seed(0)
    ei = random_graph(N, 40)
    x = torch.randn(N, F_IN, dtype=dtype)
    ea = torch.randn(ei.size(1), 3, dtype=dtype)
    gat, fused = make_pair(F_IN, 4, dtype, **options)
    gat.eval(), fused.eval()
    out, alpha = assert_same_as_gat(gat, fused, x, ei, ea, dtype=dtype)
    heads = options.get('heads', 1)
    concat = options.get('concat', True)
    assert out.shape == (N, 4 * heads if concat else 4)
    num_loops = N if options.get('add_self_loops', True) else 0
    num_kept = int((ei[0] != ei[1]).sum()) if num_loops else ei.size(1)
    assert alpha.shape == (num_kept + num_loops, heads)


def test_bipartite_layer_and_graphs():
    dtype = torch.float64
    torch.manual_seed(1)
    x_src, x_dst = torch.randn(14, 5, dtype=dtype), torch.randn(9, 7, dtype=dtype)
    ei = torch.stack([torch.randint(0, 14, (50, )), torch.randint(0, 7, (50, ))])
    ea = torch.randn(50, 2, dtype=dtype)
    for options in [dict(heads=2), dict(heads=2, residual=True, edge_dim=2),
                    dict(heads=3, concat=False, add_self_loops=False)]:
        # (in_src, in_dst) tuple: separate lin_src / lin_dst
        gat, fused = make_pair((5, 7), 4, dtype, **options)
        assert_same_as_gat(gat, fused, (x_src, x_dst), ei, ea, dtype=dtype)
        # ... with an explicit size
        assert_same_as_gat(gat, fused, (x_src, x_dst), ei, ea, size=(14, 9),
                           dtype=dtype)
    # Source features only: targets get source logits only (no alpha_dst).
    gat, fused = make_pair((5, 7), 4, dtype, heads=2, add_self_loops=False)
    assert_same_as_gat(gat, fused, (x_src, None), ei, dtype=dtype)
    # A shared `lin` applied to a pair of equally wide feature matrices.
    gat, fused = make_pair(5, 4, dtype, heads=2, residual=True)
    assert_same_as_gat(gat, fused, (x_src, x_dst[:, :5]), ei, dtype=dtype)
    # A tuple-initialised layer called with one matrix.
    gat, fused = make_pair((5, 5), 4, dtype, heads=2)
    assert_same_as_gat(gat, fused, x_src, random_graph(14, 30), dtype=dtype)


GRAPHS = {
    'isolated_loops_duplicates': lambda: (14, random_graph(14, 40)),
    'int32': lambda: (14, random_graph(14, 40, dtype=torch.int32)),
    'empty_edge_set': lambda: (6, torch.empty(2, 0, dtype=torch.long)),
    'single_node': lambda: (1, torch.empty(2, 0, dtype=torch.long)),
    'single_node_with_loop': lambda: (1, torch.zeros(2, 1, dtype=torch.long)),
    'only_self_loops': lambda: (5, torch.arange(5).repeat(2, 1)),
    'non_contiguous': lambda: (14, random_graph(14, 80).t().contiguous().t()[:, ::2]),
}


@pytest.mark.parametrize('name', list(GRAPHS))
@pytest.mark.parametrize('loops', [True, False])
def test_awkward_graphs(name, loops):
    dtype = torch.float64
    num_nodes, ei = GRAPHS[name]()
    torch.manual_seed(2)
    x = torch.randn(num_nodes, F_IN, dtype=dtype)
    ea = torch.randn(ei.size(1), 2, dtype=dtype)
    gat, fused = make_pair(F_IN, 3, dtype, heads=2, edge_dim=2,
                           add_self_loops=loops, residual=True)
    out, alpha = assert_same_as_gat(gat, fused, x, ei, ea, dtype=dtype)
    assert torch.isfinite(out).all()
    if not loops:
        # Nodes without incoming edges aggregate nothing: residual + bias.
        lonely = torch.ones(num_nodes, dtype=torch.bool)
        lonely[ei[1].long()] = False
        expect = fused.res(x) + fused.bias
        assert_close(out[lonely].detach(), expect[lonely].detach(), 1e-12)


def test_int32_stays_int32_and_float32_inputs_match():
    torch.manual_seed(3)
    ei = random_graph(14, 40, dtype=torch.int32)
    x = torch.randn(N, F_IN)
    gat, fused = make_pair(F_IN, 4, torch.float32, heads=2)
    out, (ei_out, alpha) = fused(x, ei, return_attention_weights=True)
    assert ei_out.dtype == torch.int32  # no silent up-cast of the indices
    out_g, (ei_g, alpha_g) = gat(x, ei.long(), return_attention_weights=True)
    assert_close(out, out_g, 1e-5)
    assert_close(alpha, alpha_g, 1e-5)


@pytest.mark.parametrize('loops', [True, False])
@pytest.mark.parametrize('layout', ['coo', 'csr'])
def test_torch_sparse_inputs_match_gatconv(layout, loops):
    dtype = torch.float64
    torch.manual_seed(4)
    ei = coalesce(random_graph(14, 40))  # sparse adjacencies merge duplicates
    x = torch.randn(N, F_IN, dtype=dtype)
    to_sparse = {'coo': to_torch_coo_tensor, 'csr': to_torch_csr_tensor}[layout]
    adj = to_sparse(ei.flip(0), size=(N, N))
    gat, fused = make_pair(F_IN, 4, dtype, heads=2, add_self_loops=loops)
    out_g, adj_g, alpha_g, grads_g = run(gat, x, adj)
    out_f, adj_f, alpha_f, grads_f = run(fused, x, adj)
    assert_close(out_f, out_g, 1e-10, 'output')
    assert_close(alpha_f, alpha_g, 1e-10, 'attention')
    assert adj_f.layout == adj_g.layout
    assert_close(adj_f.to_dense(), adj_g.to_dense(), 1e-10, 'attention matrix')
    for name in grads_g:
        assert_close(grads_f[name], grads_g[name], 1e-10, name)
    # The same graph as a dense edge_index gives the same output.
    assert_close(fused(x, ei), out_f.detach(), 1e-10)


@pytest.mark.parametrize('loops', [True, False])
def test_torch_sparse_hybrid_values_are_edge_features(loops):
    dtype = torch.float64
    torch.manual_seed(5)
    ei = coalesce(random_graph(14, 40))
    ea = torch.randn(ei.size(1), 3, dtype=dtype)
    x = torch.randn(N, F_IN, dtype=dtype)
    adj = to_torch_csr_tensor(ei.flip(0), ea, size=(N, N))
    gat, fused = make_pair(F_IN, 4, dtype, heads=2, edge_dim=3, add_self_loops=loops)
    out_g, (_, alpha_g) = gat(x, adj, return_attention_weights=True)
    out_f, (adj_f, alpha_f) = fused(x, adj, return_attention_weights=True)
    assert_close(out_f, out_g, 1e-10)
    assert_close(alpha_f, alpha_g, 1e-10)
    assert adj_f.shape == (N, N, 2)  # [num_dst, num_src, heads]
    # and the same as the dense edge_index with the features as edge_attr
    assert_close(fused(x, ei.flip(0).flip(0), ea), out_f, 1e-10)


@pytest.mark.parametrize('loops', [True, False])
def test_torch_sparse_csc_beyond_gatconv(loops):
    # GATConv rejects CSC; we accept it and agree with GATConv on the CSR
    # form of the same adjacency.
    dtype = torch.float64
    torch.manual_seed(6)
    ei = coalesce(random_graph(14, 40))
    x = torch.randn(N, F_IN, dtype=dtype)
    gat, fused = make_pair(F_IN, 4, dtype, heads=2, add_self_loops=loops)
    csc = to_torch_csc_tensor(ei.flip(0), size=(N, N))
    csr = to_torch_csr_tensor(ei.flip(0), size=(N, N))
    out_g, (adj_g, _) = gat(x, csr, return_attention_weights=True)
    out_f, (adj_f, alpha_f) = fused(x, csc, return_attention_weights=True)
    assert adj_f.layout == torch.sparse_csc
    assert_close(out_f, out_g, 1e-10)
    assert_close(adj_f.to_dense(), adj_g.to_dense(), 1e-10)
    assert_close(adj_f.values(), alpha_f, 0)


def test_sparse_tensor_input():
    torch_sparse = pytest.importorskip('torch_sparse')
    dtype = torch.float64
    ei = coalesce(random_graph(14, 40))
    x = torch.randn(N, F_IN, dtype=dtype)
    adj = torch_sparse.SparseTensor.from_edge_index(ei, sparse_sizes=(N, N)).t()
    gat, fused = make_pair(F_IN, 4, dtype, heads=2)
    out_g, adj_g = gat(x, adj, return_attention_weights=True)
    out_f, adj_f = fused(x, adj, return_attention_weights=True)
    assert_close(out_f, out_g, 1e-10)
    assert_close(adj_f.to_dense(), adj_g.to_dense(), 1e-10)


def test_state_dict_round_trip_both_ways_strict():
    for options in [dict(heads=2, edge_dim=3, residual=True),
                    dict(in_channels=(5, 7), heads=3, concat=False, bias=False)]:
        options = dict(options)
        in_channels = options.pop('in_channels', F_IN)
        gat = GATConv(in_channels, 4, **options)
        fused = FusedGATConv(in_channels, 4, **options)
        sd_g, sd_f = gat.state_dict(), fused.state_dict()
        assert list(sd_g) == list(sd_f)
        assert all(sd_g[k].shape == sd_f[k].shape for k in sd_g)
        fused.load_state_dict(sd_g, strict=True)
        assert all(torch.equal(fused.state_dict()[k], sd_g[k]) for k in sd_g)
        gat2 = GATConv(in_channels, 4, **options)
        gat2.load_state_dict(fused.state_dict(), strict=True)
        assert all(torch.equal(gat2.state_dict()[k], sd_g[k]) for k in sd_g)


def test_lazy_in_channels():
    torch.manual_seed(7)
    gat, _ = make_pair(F_IN, 4, torch.float32, heads=2)
    fused = FusedGATConv(-1, 4, heads=2)
    fused.load_state_dict(gat.state_dict())
    x, ei = torch.randn(N, F_IN), random_graph()
    assert_close(fused(x, ei), gat(x, ei), 1e-5)
    fresh = FusedGATConv(-1, 4, heads=2)
    assert fresh(x, ei).shape == (N, 8)


def test_layer_gradcheck_float64():
    torch.manual_seed(8)
    conv = FusedGATConv(3, 2, heads=2, edge_dim=2, residual=True).double()
    randomize(conv)
    ei = random_graph(8, 16)
    x = torch.randn(8, 3, dtype=torch.float64, requires_grad=True)
    ea = torch.randn(ei.size(1), 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, ea: conv(x, ei, ea), (x, ea))


def test_reference_and_extension_paths_agree(monkeypatch):
    torch.manual_seed(9)
    conv = FusedGATConv(F_IN, 4, heads=2, edge_dim=3, dropout=0.3)
    randomize(conv)
    ei = random_graph()
    ea = torch.randn(ei.size(1), 3)
    outs = []
    for disable in ('0', '1'):
        monkeypatch.setenv('GNF_DISABLE_EXTENSION', disable)
        x = torch.randn(N, F_IN, generator=torch.Generator().manual_seed(0),
                        requires_grad=True)
        torch.manual_seed(10)  # same dropout seed on both paths
        out = conv(x, ei, ea)
        out.pow(2).sum().backward()
        outs.append((out.detach(), x.grad))
    assert_close(outs[0][0], outs[1][0], 1e-5)
    assert_close(outs[0][1], outs[1][1], 1e-5)


def test_graph_cache_builds_once_and_sees_in_place_edits(monkeypatch):
    import torch_geometric_gnf.nn.fused_gat_conv as module
    import torch_geometric_gnf.ops.csr as csr_module
    module.clear_graph_cache()
    calls = []
    build = csr_module.build_csr
    monkeypatch.setattr(csr_module, 'build_csr',
                        lambda *a, **k: calls.append(a[0].dtype) or build(*a, **k))
    convs = [FusedGATConv(F_IN, 4, heads=2) for _ in range(3)]
    ei, x = random_graph(), torch.randn(N, F_IN)
    expect = [GATConv(F_IN, 4, heads=2) for _ in range(3)]
    for conv, gat in zip(convs, expect):
        gat.load_state_dict(conv.state_dict())
    for conv in convs:  # a stack on one graph sorts its edges once
        conv(x, ei)
    assert calls == [torch.int32]  # int32 indices inside when they fit
    ei[0, 0] = (int(ei[0, 0]) + 1) % N  # in-place edit: rebuilt, not stale
    for conv, gat in zip(convs, expect):
        assert_close(conv(x, ei), gat(x, ei), 1e-5)
    assert len(calls) == 2
    assert len(csr_module._cache) == 1  # the stale entry was replaced
    del ei  # entries die with their edge_index
    assert len(csr_module._cache) == 0


# ---------------------------------------------------------------------------
# Attention dropout
# ---------------------------------------------------------------------------
def test_dropout_masks_are_reproducible_and_returned_weights_are_the_used_ones():
    torch.manual_seed(11)
    conv = FusedGATConv(F_IN, 4, heads=3, dropout=0.5).double()
    randomize(conv)
    num_nodes = 200
    ei = torch.randint(0, num_nodes, (2, 3000))
    x = torch.randn(num_nodes, F_IN, dtype=torch.float64)

    torch.manual_seed(0)
    out1, (ei1, a1) = conv(x, ei, return_attention_weights=True)
    torch.manual_seed(0)
    out2, (_, a2) = conv(x, ei, return_attention_weights=True)
    out3, (_, a3) = conv(x, ei, return_attention_weights=True)
    assert torch.equal(out1, out2) and torch.equal(a1, a2)  # same seed
    assert not torch.equal(a1, a3)                            # new seed

    conv.eval()
    out_eval, (_, a_eval) = conv(x, ei, return_attention_weights=True)
    dropped = a1 == 0
    # Dropped with probability p; the kept weights are scaled by 1/(1-p).
    assert abs(dropped.double().mean().item() - 0.5) < 0.02
    assert_close(a1[~dropped], 2 * a_eval[~dropped], 1e-12)
    # The output is the aggregation with exactly the returned weights.
    h = conv.lin(x).view(-1, 3, 4)
    msg = a1.unsqueeze(-1) * h[ei1[0]]
    manual = torch.zeros(num_nodes, 3, 4, dtype=x.dtype).index_add_(0, ei1[1], msg)
    assert_close(out1, manual.view(num_nodes, 12) + conv.bias, 1e-10)
    # Unbiased: over many seeds, each weight averages to its eval value.
    conv.train()
    with torch.no_grad():
        mean = sum(conv(x, ei, return_attention_weights=True)[1][1]
                   for _ in range(20)) / 20
    assert abs((mean / a_eval).mean().item() - 1) < 0.02


@pytest.mark.parametrize('coupling', ['additive', 'affine'])
def test_reversible_stack_with_attention_dropout_equals_plain_autograd(coupling):
    dtype = torch.float64
    torch.manual_seed(12)
    ei = random_graph(14, 40)
    x0 = torch.randn(N, 8, dtype=dtype)
    width = 4 if coupling == 'additive' else 8  # affine: [scale | shift]

    def block():
        return ReversibleMessagePassing(
            FusedGATConv(4, width // 2, heads=2, dropout=0.5),
            FusedGATConv(4, width // 2, heads=2, dropout=0.5),
            coupling=coupling, memory_saving=True)

    saving = torch.nn.ModuleList([block() for _ in range(3)]).to(dtype)
    randomize(saving)
    plain = torch.nn.ModuleList([block() for _ in range(3)]).to(dtype)
    plain.load_state_dict(saving.state_dict())
    for b in plain:
        b.memory_saving = False

    results = []
    for model in (saving, plain):
        x = x0.clone().requires_grad_()
        torch.manual_seed(13)
        h = x
        for b in model:
            h = b(h, ei)
        h.pow(2).sum().backward()
        results.append((h.detach(), x.grad, [p.grad for p in model.parameters()]))
    (h1, gx1, gp1), (h2, gx2, gp2) = results
    assert_close(h1, h2, 1e-12)
    assert_close(gx1, gx2, 1e-10)
    for a, b in zip(gp1, gp2):
        assert_close(a, b, 1e-10)
    # dropout was really active: eval mode gives another output
    saving.eval()
    with torch.no_grad():
        h = x0
        for b in saving:
            h = b(h, ei)
    assert not torch.allclose(h, h1)


# ---------------------------------------------------------------------------
# torch.compile, repr, reset, bad input
# ---------------------------------------------------------------------------
def test_runs_under_torch_compile():
    torch.manual_seed(14)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = FusedGATConv(F_IN, 4, heads=2, edge_dim=2)
            self.conv2 = FusedGATConv(8, 3, heads=1)

        def forward(self, x, edge_index, edge_attr):
            x = self.conv1(x, edge_index, edge_attr).relu()
            return self.conv2(x, edge_index)

    model = Net()
    ei = random_graph()
    x = torch.randn(N, F_IN)
    ea = torch.randn(ei.size(1), 2)
    expect = model(x, ei, ea)
    expect.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    torch._dynamo.reset()
    compiled = torch.compile(model, backend='eager')
    out = compiled(x, ei, ea)
    out.sum().backward()
    assert_close(out, expect, 1e-6)
    for p, g in zip(model.parameters(), grads):
        assert_close(p.grad, g, 1e-6)


def test_repr_and_reset_parameters():
    fused = FusedGATConv((5, 7), 4, heads=3)
    gat = GATConv((5, 7), 4, heads=3)
    assert repr(fused) == repr(gat).replace('GATConv', 'FusedGATConv')
    assert repr(fused) == 'FusedGATConv((5, 7), 4, heads=3)'
    fused = FusedGATConv(5, 4, heads=2, edge_dim=3, residual=True)
    randomize(fused)
    before = {n: p.clone() for n, p in fused.named_parameters()}
    fused.reset_parameters()
    assert torch.equal(fused.bias, torch.zeros_like(fused.bias))
    for n, p in fused.named_parameters():
        if n != 'bias':
            assert not torch.equal(p, before[n]), n


@pytest.mark.parametrize('edit', ['data', 'numpy', 'from_numpy'])
def test_graph_cache_sees_writes_the_version_counter_misses(edit):
    # Issue 26.1: such writes left a stale CSR (outputs off by up to 4.7).
    gat, fused = make_pair(F_IN, 4, heads=2)
    x = torch.randn(N, F_IN, dtype=torch.float64)
    buffer = random_graph().numpy().copy()
    ei = torch.from_numpy(buffer)
    assert_close(fused(x, ei), gat(x, ei), TOL[torch.float64])
    other = random_graph(seed=7).numpy()
    if edit == 'data':
        ei.data[:, :10] = torch.from_numpy(other[:, :10])
    elif edit == 'numpy':
        ei.numpy()[:, :10] = other[:, :10]
    else:  # a data loader refilling the buffer it wrapped once
        buffer[:] = other
    assert_close(fused(x, ei), gat(x, ei), TOL[torch.float64])


@pytest.mark.parametrize('bad', [[[0, 1], [2, N]], [[-1, 1], [2, 3]],
                                 [[N + 5, 1], [N + 5, 3]]])
def test_index_bounds_checked_without_input_checks(bad):
    # Issue 26.2: with the value checks off, a bad index went into the
    # kernel (out-of-bounds reads, garbage) or hit a bincount error. A
    # self-loop out of range (third case) is removed before the CSR is built
    # and must be reported as well.
    from torch_geometric_gnf.utils import set_input_checks
    conv = FusedGATConv(F_IN, 4, heads=2)
    set_input_checks(False)
    try:
        with pytest.raises(ValueError, match="'edge_index'.*out-of-range"):
            conv(torch.randn(N, F_IN), torch.tensor(bad))
    finally:
        set_input_checks(True)


def test_non_finite_edge_attr_names_edge_attr():
    # Issue 26 (messages): the error named the internal 'alpha_edge'.
    conv = FusedGATConv(F_IN, 4, heads=2, edge_dim=3)
    ei = random_graph()
    ea = torch.randn(ei.size(1), 3)
    ea[4, 1] = float('nan')
    with pytest.raises(ValueError, match="'edge_attr' contains non-finite"):
        conv(torch.randn(N, F_IN), ei, ea)


def test_bad_input():
    conv = FusedGATConv(F_IN, 4, heads=2, edge_dim=3)
    x, ei = torch.randn(N, F_IN), random_graph()
    ea = torch.randn(ei.size(1), 3)
    with pytest.raises(ValueError, match='out-of-range'):
        conv(x, torch.tensor([[0, 1], [2, N]]))
    with pytest.raises(ValueError, match='out-of-range'):
        conv(x, torch.tensor([[-1, 1], [2, 3]]))
    with pytest.raises(ValueError, match='dtype'):
        conv(x, ei.float())
    with pytest.raises(ValueError, match=r'\[2, num_edges\]'):
        conv(x, ei[:1])
    with pytest.raises(TypeError, match='edge_index'):
        conv(x, ei.tolist())
    with pytest.raises(TypeError, match="'x'"):
        conv(x.tolist(), ei)
    with pytest.raises(ValueError, match='shape'):
        conv(x.view(N, 1, F_IN), ei)
    with pytest.raises(ValueError, match='non-finite'):
        conv(torch.full((N, F_IN), float('nan')), ei)
    with pytest.raises(ValueError, match='edge_attr'):
        conv(x, ei, ea[:-1])
    with pytest.raises(ValueError, match='size'):
        conv(x, ei, size=(N + 1, N))
    with pytest.raises(ValueError, match='on meta'):
        conv(x, ei.to('meta'))
    adj = to_torch_csr_tensor(coalesce(ei).flip(0), size=(N + 2, N + 2))
    with pytest.raises(ValueError, match='sparse adjacency'):
        conv(x, adj)
    with pytest.raises(NotImplementedError, match='add_self_loops'):
        conv(x, to_torch_csr_tensor(coalesce(ei).flip(0), size=(N, N)), ea[:5])
    with pytest.raises(NotImplementedError, match='aggr'):
        FusedGATConv(F_IN, 4, aggr='mean')
    with pytest.raises(ValueError, match='dropout'):
        FusedGATConv(F_IN, 4, dropout=1.5)
    with pytest.raises(ValueError, match='heads'):
        FusedGATConv(F_IN, 4, heads=0)
    # Non-contiguous features are fine.
    xt = torch.randn(F_IN, N).t()
    assert_close(conv(xt, ei, ea), conv(xt.contiguous(), ei, ea), 1e-6)


# ---------------------------------------------------------------------------
# Benchmark scripts (tiny sizes, in this process; the real runs spawn fresh
# processes per configuration, see benchmarks/fused_gat.py)
# ---------------------------------------------------------------------------
def _load_script(name):
    import importlib.util
    import os
    path = os.path.join(os.path.dirname(__file__), '..', 'benchmarks', f'{name}.py')
    spec = importlib.util.spec_from_file_location(f'_bench_{name}', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fused_gat_benchmark_tiny(tmp_path):
    bench = _load_script('fused_gat')
    threads = torch.get_num_threads()
    try:
        results = {}
        for method in bench.METHODS:
            r = bench.measure(method, 300, 2000, 8, 4, 2, repeats=0, device='cpu', threads=1)
            r.update(bench.measure(method, 300, 2000, 8, 4, 2, repeats=1,
                                   device='cpu', threads=1))
            # (in-process RSS growth is not meaningful, only that it runs)
            assert isinstance(r['peak_mb'], float)
            assert r['seconds'] > 0 and r['first_seconds'] > 0
            results[(method, 'tiny')] = r
    finally:
        torch.set_num_threads(threads)
    table = bench.format_table(results, ['tiny'], 'caption')
    row = table.splitlines()[-1].split('|')
    assert row[1].strip() == 'tiny' and float(row[10]) > 0  # time ratio filled
    bench.plot(results, ['tiny'], str(tmp_path / 'fused.png'), 'title')
    assert (tmp_path / 'fused.png').stat().st_size > 0


def test_memory_vs_depth_fused_column(tmp_path):
    bench = _load_script('memory_vs_depth')
    torch.manual_seed(0)
    model = bench.build_model('fused', 2, 16, 4)
    assert all(type(b.f) is FusedGATConv for b in model)
    x, ei = torch.randn(50, 16, requires_grad=True), random_graph(50, 200)
    bench.forward('fused', model, x, ei).pow(2).mean().backward()
    assert torch.isfinite(x.grad).all()
    # the plot script finds the new column by its header
    plot = _load_script('plot_memory_vs_depth')
    table = tmp_path / 't.md'
    table.write_text('caption; more\n\n| depth | ours MB | ours+FusedGATConv MB | ours s '
                     '| ours+FusedGATConv s |\n|---|---|---|---|---|\n| 1 | 10 | 5 | 1.0 | 0.5 |\n'
                     '| 4 | 11 | skipped | 2.0 | - |\n')
    _, series = plot.read_table(str(table))
    assert series['ours + FusedGATConv'] == [(1, 5.0, 0.5)]
    assert series['ours (ReversibleMessagePassing)'] == [(1, 10.0, 1.0), (4, 11.0, 2.0)]
