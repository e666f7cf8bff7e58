import copy

import pytest
import torch
import torch.nn.functional as F
from torch_geometric.nn import GATConv, GCNConv
from torch_geometric.nn import Sequential as PyGSequential

from torch_geometric_gnf.nn import (ReversibleGATStack, ReversibleMessagePassing,
                                    convert_to_reversible)
from torch_geometric_gnf.utils import run_in_fresh_process

from conftest import random_graph


class DeepGAT(torch.nn.Module):
    r"""The PyG-example pattern: a ModuleList of GATConv, ELU between."""
    def __init__(self, in_channels=12, hidden=16, heads=4, out_channels=3,
                 depth=4, dropout=0.0):
        super().__init__()
        self.convs = torch.nn.ModuleList(
            [GATConv(in_channels, hidden // heads, heads=heads, dropout=dropout)] +
            [GATConv(hidden, hidden // heads, heads=heads, dropout=dropout)
             for _ in range(depth - 2)] +
            [GATConv(hidden, out_channels, heads=1)])

    def forward(self, x, edge_index):
        for conv in self.convs[:-1]:
            x = F.elu(conv(x, edge_index))
        return self.convs[-1](x, edge_index)


class TwoLayerGAT(torch.nn.Module):
    r"""PyG's examples/gat.py layout: direct conv1 / conv2 attributes."""
    def __init__(self):
        super().__init__()
        self.conv1 = GATConv(12, 4, heads=4)
        self.conv2 = GATConv(16, 4, heads=4)
        self.conv3 = GATConv(16, 3, heads=2, concat=False)

    def forward(self, x, edge_index):
        x = F.elu(self.conv1(x, edge_index))
        x = F.elu(self.conv2(x, edge_index))
        return self.conv3(x, edge_index)


def half_conv_parameters(width, heads):
    return sum(p.numel() for p in GATConv(width // 2, width // (2 * heads),
                                          heads=heads).parameters())


@pytest.fixture
def graph():
    torch.manual_seed(0)
    return torch.randn(30, 12), random_graph(30, 100)


def test_module_with_convs_list(graph):
    x, ei = graph
    torch.manual_seed(0)
    model = DeepGAT(depth=5)
    rev = convert_to_reversible(model)
    assert isinstance(rev, ReversibleGATStack)
    kinds = [type(layer).__name__ for layer in rev.layers]
    assert kinds == ['_ConvThenOps'] + ['ReversibleMessagePassing'] * 3 + ['_ConvThenOps']
    assert rev.num_reversible == 3
    # Kept first/last layers: same parameters (copies); each same-width
    # layer became two half-width convs of the same class and heads.
    orig = [p for p in model.convs[0].parameters()]
    kept = [p for p in rev.layers[0].conv.parameters()]
    assert all(torch.equal(a, b) and a is not b for a, b in zip(orig, kept))
    for layer in rev.layers[1:4]:
        for fn in (layer.f, layer.g):
            assert fn.conv.heads == 4 and fn.conv.in_channels == 8
            assert fn.conv.out_channels == 2
        assert sum(p.numel() for p in layer.parameters()) == 2 * half_conv_parameters(16, 4)
    expected = (sum(p.numel() for p in model.convs[0].parameters())
                + sum(p.numel() for p in model.convs[-1].parameters())
                + 3 * 2 * half_conv_parameters(16, 4))
    assert sum(p.numel() for p in rev.parameters()) == expected
    assert model(x, ei).shape == rev(x, ei).shape == (30, 3)
    # the input model is untouched
    assert all(isinstance(c, GATConv) for c in model.convs)


def test_direct_attributes_and_module_list(graph):
    x, ei = graph
    rev = convert_to_reversible(TwoLayerGAT())
    assert rev.num_reversible == 1 and len(rev.layers) == 3
    assert rev(x, ei).shape == (30, 3)

    convs = torch.nn.ModuleList([GATConv(12, 8, heads=2), GATConv(16, 8, heads=2),
                                 GATConv(16, 8, heads=2)])
    rev = convert_to_reversible(convs, activation=torch.relu, dropout=0.5)
    assert rev.num_reversible == 2
    # activation + dropout after every conv but the last
    assert len(rev.layers[0].ops) == 2 and len(rev.layers[2].f.ops) == 0
    assert rev(x, ei).shape == (30, 16)


def test_pyg_sequential_keeps_its_own_modules(graph):
    x, ei = graph
    seq = PyGSequential('x, edge_index', [
        (torch.nn.Dropout(0.2), 'x -> x'),
        (GATConv(12, 8, heads=2), 'x, edge_index -> x'),
        torch.nn.LeakyReLU(0.1),
        (GATConv(16, 4, heads=4), 'x, edge_index -> x'),
        torch.nn.LeakyReLU(0.1),
        (GATConv(16, 3), 'x, edge_index -> x'),
    ])
    rev = convert_to_reversible(seq)
    assert isinstance(rev.pre[0], torch.nn.Dropout)
    step = rev.layers[1]
    assert isinstance(step, ReversibleMessagePassing)
    assert isinstance(step.f.ops[0], torch.nn.LeakyReLU)
    assert step.f.conv.heads == 4 and step.f.conv.out_channels == 2
    assert rev(x, ei).shape == seq(x, ei).shape == (30, 3)


def test_edge_features_reach_converted_convs(graph):
    x, ei = graph
    edge_attr = torch.randn(ei.size(1), 3)
    convs = torch.nn.ModuleList([GATConv(12, 8, heads=2, edge_dim=3),
                                 GATConv(16, 8, heads=2, edge_dim=3)])
    rev = convert_to_reversible(convs)
    assert rev.layers[1].f.conv.edge_dim == 3
    rev(x, ei, edge_attr=edge_attr).sum().backward()
    assert rev.layers[1].g.conv.lin_edge.weight.grad.abs().sum() > 0


def test_converted_model_trains_with_exact_gradients(graph):
    x, ei = graph
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    torch.manual_seed(0)
    rev = convert_to_reversible(DeepGAT(depth=6, dropout=0.3)).double()
    assert all(layer.memory_saving for layer in rev.layers
               if isinstance(layer, ReversibleMessagePassing))
    plain = copy.deepcopy(rev)
    for layer in plain.layers:
        if isinstance(layer, ReversibleMessagePassing):
            layer.memory_saving = False
    grads = []
    for model in (rev, plain):
        torch.manual_seed(3)  # same attention dropout masks
        loss = F.cross_entropy(model(x.double(), ei), y)
        grads.append(torch.autograd.grad(loss, list(model.parameters())))
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-8)

    opt = torch.optim.Adam(rev.parameters(), lr=0.02)
    losses = []
    for _ in range(25):
        opt.zero_grad()
        loss = F.cross_entropy(rev(x.double(), ei), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]


def _stored_after_forward(configs: list) -> dict:
    r"""In one fresh process (glibc returning freed blocks to the OS): the
    memory a training forward pass leaves alive for backward."""
    from torch_geometric_gnf.utils.profiling import current_rss_bytes
    torch.manual_seed(0)
    n = 2000
    ei = torch.randint(0, n, (2, 20000))
    x = torch.randn(n, 16)
    out = {}
    for converted, depth in configs:
        model = DeepGAT(16, 64, 4, 4, depth)
        if converted:
            model = convert_to_reversible(model)
        model(x[:50], ei[:, :100] % 50).sum().backward()  # warm-up
        base = current_rss_bytes()
        loss = model(x, ei).logsumexp(-1).sum()
        out[f'{converted}-{depth}'] = (current_rss_bytes() - base) / 2**20
        loss.backward()
        del loss, model
    return out


def test_memory_saving_is_on():
    from torch_geometric_gnf.utils.profiling import LIVE_PEAK_MALLOC_ENV
    mb = run_in_fresh_process(_stored_after_forward, env=LIVE_PEAK_MALLOC_ENV,
                              configs=[(True, 3), (True, 10), (False, 10)])
    assert mb['True-10'] < 1.3 * mb['True-3'] + 1.0, mb
    assert mb['False-10'] > 3 * mb['True-10'], mb


def test_clear_errors():
    with pytest.raises(TypeError, match='torch.nn.Module'):
        convert_to_reversible(lambda x: x)
    with pytest.raises(ValueError, match='no same-width'):
        convert_to_reversible(torch.nn.ModuleList([GATConv(8, 4, heads=4),
                                                   GATConv(16, 3)]))
    with pytest.raises(TypeError, match='not a GAT conv'):
        convert_to_reversible(torch.nn.ModuleList([GCNConv(8, 8)]))
    with pytest.raises(TypeError, match='has parameters but is not a GAT conv'):
        convert_to_reversible(torch.nn.Sequential(GATConv(8, 4, heads=2),
                                                  torch.nn.Linear(8, 8)))

    class WithLinear(DeepGAT):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 3)
    with pytest.raises(TypeError, match='outside the GAT stack'):
        convert_to_reversible(WithLinear())

    class NoConvs(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.ModuleList([GATConv(4, 4)])
            self.b = torch.nn.ModuleList([GATConv(4, 4)])
    with pytest.raises(TypeError, match='cannot find the GAT stack'):
        convert_to_reversible(NoConvs())
    with pytest.raises(ValueError, match='divisible by 2 \\* heads'):
        convert_to_reversible(torch.nn.ModuleList([GATConv(12, 3, heads=4)]))
    with pytest.raises(ValueError, match='odd width'):
        convert_to_reversible(torch.nn.ModuleList([GATConv(5, 5)]))
    with pytest.raises(ValueError, match='lazy|integer input'):
        convert_to_reversible(torch.nn.ModuleList([GATConv(-1, 8)]))
    with pytest.raises(ValueError, match='dropout'):
        convert_to_reversible(DeepGAT(), dropout=1.5)
    with pytest.raises(ValueError, match='contains no GATConv'):
        convert_to_reversible(torch.nn.ModuleList([]))
