import copy

import pytest
import torch
import torch.nn.functional as F
from torch_geometric.nn import GATConv

from torch_geometric_gnf.datasets import community_node_classification
from torch_geometric_gnf.models import RevGAT
from torch_geometric_gnf.models.rev_gat import default_gat_conv
from torch_geometric_gnf.nn import ReversibleMessagePassing
from torch_geometric_gnf.utils import run_in_fresh_process

from conftest import (inverse_round_trip, perturb_parameters, random_graph,
                      unrolled_additive_steps)


def test_shapes_gradients_and_layout():
    torch.manual_seed(0)
    model = RevGAT(10, 32, 3, num_layers=3, heads=4, dropout=0.2,
                   attention_dropout=0.2, input_dropout=0.1)
    assert len(model.blocks) == 3
    assert all(isinstance(b, ReversibleMessagePassing) for b in model.blocks)
    assert model.input_conv.heads == 4 and model.input_conv.out_channels == 8
    # F and G work on halves of 16 channels: 4 heads x 4 channels.
    assert model.blocks[0].f.conv.in_channels == 16
    assert model.blocks[0].f.conv.out_channels == 4
    assert model.output_conv.heads == 1 and model.output_conv.out_channels == 3
    ei = random_graph(30, 90)
    x = torch.randn(30, 10)
    out = model(x, ei)
    assert out.shape == (30, 3)
    out.logsumexp(-1).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_default_conv_class():
    # FusedGATConv when the package provides it, otherwise PyG's GATConv.
    cls = default_gat_conv()
    assert RevGAT(4, 8, 2, num_layers=1, heads=2).input_conv.__class__ is cls
    model = RevGAT(4, 8, 2, num_layers=1, heads=2, conv_cls=GATConv)
    convs = [m for m in model.modules() if hasattr(m, 'att_src')]
    assert len(convs) == 4 and all(type(m) is GATConv for m in convs)


@pytest.mark.parametrize('conv_cls', [GATConv, None])
def test_memory_saving_gradients_equal_plain_autograd(conv_cls):
    torch.manual_seed(0)
    plain = RevGAT(6, 8, 3, num_layers=3, heads=2, dropout=0.3,
                   attention_dropout=0.3, input_dropout=0.2, memory_saving=False,
                   conv_cls=conv_cls).double()
    saving = copy.deepcopy(plain)
    for block in saving.blocks:
        block.memory_saving = True
    x = torch.randn(25, 6, dtype=torch.double)
    y = torch.randint(0, 3, (25, ))
    ei = random_graph(25, 80)
    grads = []
    for model in (plain, saving):
        torch.manual_seed(42)  # same dropout masks in both runs
        loss = F.cross_entropy(model(x, ei), y)
        grads.append(torch.autograd.grad(loss, list(model.parameters())))
    for (name, _), a, b in zip(plain.named_parameters(), *grads):
        assert torch.allclose(a, b, atol=1e-8), name
    # and dropout really is on: another seed gives other gradients
    torch.manual_seed(7)
    other = torch.autograd.grad(F.cross_entropy(saving(x, ei), y),
                                list(saving.parameters()))
    assert not all(torch.allclose(a, b) for a, b in zip(grads[1], other))


def test_edge_features():
    torch.manual_seed(0)
    ei = random_graph(20, 60)
    edge_attr = torch.randn(ei.size(1), 5)
    model = RevGAT(4, 8, 2, num_layers=2, heads=2, edge_dim=5)
    x = torch.randn(20, 4)
    out = model(x, ei, edge_attr=edge_attr)
    out.sum().backward()
    assert model.blocks[1].g.conv.lin_edge.weight.grad.abs().sum() > 0
    # the edge features change the prediction
    assert not torch.allclose(out, model(x, ei, edge_attr=edge_attr + 1.0))
    with pytest.raises(ValueError, match='no .edge_attr'):
        model(x, ei)
    with pytest.raises(ValueError, match='edge_dim=None'):
        RevGAT(4, 8, 2, num_layers=1, heads=2)(x, ei, edge_attr=edge_attr)


def test_plain_baseline_has_same_layout():
    rev = RevGAT(10, 16, 3, num_layers=4, heads=2)
    plain = RevGAT(10, 16, 3, num_layers=4, heads=2, reversible=False)
    assert len(plain.blocks) == len(rev.blocks) == 4
    assert not any(isinstance(b, ReversibleMessagePassing) for b in plain.blocks)
    # full-width conv per step: 16 -> 2 heads x 8
    assert plain.blocks[0].fn.conv.in_channels == 16
    assert plain.blocks[0].fn.conv.out_channels == 8
    out = plain(torch.randn(12, 10), random_graph(12, 30))
    assert out.shape == (12, 3)
    assert 'reversible=False' in repr(plain)


def test_learns_and_reset_parameters():
    data = community_node_classification(num_nodes=400, num_classes=3,
                                         num_features=12, num_val=80, seed=3)
    torch.manual_seed(0)
    model = RevGAT(12, 16, 3, num_layers=2, heads=2, dropout=0.1)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(20):
        model.train()
        opt.zero_grad()
        F.cross_entropy(model(data.x, data.edge_index)[data.train_mask],
                        data.y[data.train_mask]).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        pred = model(data.x, data.edge_index).argmax(-1)
    assert (pred[data.test_mask] == data.y[data.test_mask]).float().mean() > 0.6
    before = model.output_conv.lin.weight.clone()
    model.reset_parameters()
    assert not torch.equal(before, model.output_conv.lin.weight)


def test_bad_configuration():
    with pytest.raises(ValueError, match='divisible by 2 \\* heads'):
        RevGAT(4, 12, 2, num_layers=1, heads=4)
    with pytest.raises(ValueError, match='num_layers'):
        RevGAT(4, 8, 2, num_layers=-1)
    with pytest.raises(ValueError, match='heads'):
        RevGAT(4, 8, 2, heads=0)
    with pytest.raises(ValueError, match='dropout'):
        RevGAT(4, 8, 2, heads=2, dropout=1.0)


def _stored_after_forward(configs: list) -> dict:
    r"""In one fresh process (glibc returning freed blocks to the OS, see
    LIVE_PEAK_MALLOC_ENV): the memory a training forward pass leaves alive
    for backward, per (reversible, depth) configuration."""
    from torch_geometric_gnf.utils.profiling import current_rss_bytes
    torch.manual_seed(0)
    n = 2000
    ei = torch.randint(0, n, (2, 20000))
    x = torch.randn(n, 16)
    out = {}
    for reversible, depth in configs:
        model = RevGAT(16, 64, 4, num_layers=depth, heads=2, reversible=reversible,
                       conv_cls=GATConv)
        model(x[:50], ei[:, :100] % 50).sum().backward()  # warm-up
        base = current_rss_bytes()
        loss = model(x, ei).logsumexp(-1).sum()
        out[f'{reversible}-{depth}'] = (current_rss_bytes() - base) / 2**20
        loss.backward()
        del loss, model
    return out


def test_memory_does_not_grow_with_depth():
    from torch_geometric_gnf.utils.profiling import LIVE_PEAK_MALLOC_ENV
    mb = run_in_fresh_process(_stored_after_forward, env=LIVE_PEAK_MALLOC_ENV,
                              configs=[(True, 2), (True, 8), (False, 8)])
    # Reversible: 4x the depth keeps (almost) nothing more alive; the plain
    # stack of the same depth keeps every step's attention tensors.
    assert mb['True-8'] < 1.3 * mb['True-2'] + 1.0, mb
    assert mb['False-8'] > 3 * mb['True-8'], mb


def test_memory_saving_head_keeps_no_activation_copies():
    # With memory saving the head's LayerNorm -> ReLU -> dropout runs under
    # ops.recompute: its normalised and activated features are not saved.
    def saved_hidden_sized(model, x, edge_index):
        shapes = []

        def pack(t):
            shapes.append(tuple(t.shape))
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(x, edge_index)
        return sum(s == (x.size(0), 16) for s in shapes)

    torch.manual_seed(0)
    x, edge_index = torch.randn(30, 6), torch.randint(0, 30, (2, 90))
    counts = {}
    for saving in (False, True):
        torch.manual_seed(1)
        model = RevGAT(6, 16, 3, num_layers=2, heads=2, dropout=0.3,
                       memory_saving=saving, conv_cls=GATConv).train()
        counts[saving] = saved_hidden_sized(model, x, edge_index)
    assert counts[True] + 2 <= counts[False], counts


def _unrolled_rev_gat(model: RevGAT, x, edge_index):
    r"""RevGAT's forward with its one shared step unrolled in plain autograd."""
    from torch_geometric_gnf.models.grevnet import feature_dropout
    x = feature_dropout(x, model.input_dropout, model.training)
    h = model.input_conv(x, edge_index)
    h = unrolled_additive_steps(model.blocks[0], h, edge_index, model.num_layers)
    return model.output_conv(model._head_activation(h), edge_index)


@pytest.mark.parametrize('reversible', [True, False])
def test_shared_weights_parameter_count_independent_of_depth(reversible):
    def build(num_layers, shared_weights=False):
        return RevGAT(10, 16, 3, num_layers=num_layers, heads=2, gate=True,
                      reversible=reversible, shared_weights=shared_weights)

    def count(model):
        return sum(p.numel() for p in model.parameters())

    tied = build(8, shared_weights=True)
    assert count(tied) == count(build(1)) < count(build(8))
    assert count(build(0, shared_weights=True)) == count(build(0))
    assert len(tied.blocks) == 8
    assert all(block is tied.blocks[0] for block in tied.blocks)
    assert 'shared_weights=True' in repr(tied)
    assert 'shared_weights' not in repr(build(8))
    out = tied(torch.randn(12, 10), random_graph(12, 30))
    assert out.shape == (12, 3)


@pytest.mark.parametrize('conv_cls,memory_saving', [(GATConv, True), (None, True),
                                                    (None, False)])
def test_shared_weights_gradients_equal_unrolled_autograd(conv_cls, memory_saving):
    torch.manual_seed(0)
    model = RevGAT(6, 8, 3, num_layers=4, heads=2, dropout=0.3,
                   attention_dropout=0.3, input_dropout=0.2, conv_cls=conv_cls,
                   memory_saving=memory_saving, shared_weights=True).double()
    perturb_parameters(model)
    x = torch.randn(25, 6, dtype=torch.double)
    y = torch.randint(0, 3, (25, ))
    ei = random_graph(25, 80)
    params = list(model.parameters())
    grads = []
    for forward in (model, lambda x, ei: _unrolled_rev_gat(model, x, ei)):
        torch.manual_seed(42)  # same dropout masks in both runs
        loss = F.cross_entropy(forward(x, ei), y)
        grads.append(torch.autograd.grad(loss, params))
    for (name, _), a, b in zip(model.named_parameters(), *grads):
        assert torch.allclose(a, b, atol=1e-8), name
        assert a.abs().sum() > 0, name
    # dropout is on: another seed gives other gradients
    torch.manual_seed(7)
    other = torch.autograd.grad(F.cross_entropy(model(x, ei), y), params)
    assert not all(torch.allclose(a, b) for a, b in zip(grads[0], other))


def test_shared_weights_inverse_round_trip_and_state_dict():
    torch.manual_seed(0)
    model = RevGAT(6, 16, 3, num_layers=5, heads=2, dropout=0.3,
                   shared_weights=True, conv_cls=GATConv).double().eval()
    ei = random_graph(20, 60)
    h = torch.randn(20, 16, dtype=torch.double)
    assert torch.allclose(inverse_round_trip(model.blocks, h, ei), h, atol=1e-10)
    # A checkpoint restores the tie: a fresh tied model gives the same output.
    torch.manual_seed(1)
    restored = RevGAT(6, 16, 3, num_layers=5, heads=2, dropout=0.3,
                      shared_weights=True, conv_cls=GATConv).double().eval()
    restored.load_state_dict(model.state_dict())
    x = torch.randn(20, 6, dtype=torch.double)
    assert torch.equal(restored(x, ei), model(x, ei))
    assert all(block is restored.blocks[0] for block in restored.blocks)
