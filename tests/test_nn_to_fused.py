r"""to_fused: every GATConv of a model becomes a FusedGATConv with the same
weights and the same outputs."""
import pytest
import torch
from torch_geometric.nn import GATConv, GCNConv
from torch_geometric.nn.models import GAT

from torch_geometric_gnf.nn import FusedGATConv, ReversibleMessagePassing, to_fused
from torch_geometric_gnf.nn.to_fused import fused_from_gat_conv

from conftest import random_graph


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.convs = torch.nn.ModuleList([
            GATConv(6, 4, heads=2, edge_dim=3, residual=True),
            GATConv(8, 8, heads=1, concat=False)])
        self.block = torch.nn.Sequential(GCNConv(8, 8))
        self.out = GATConv((8, 8), 3, heads=2, concat=False, add_self_loops=False)

    def forward(self, x, edge_index, edge_attr):
        x = self.convs[0](x, edge_index, edge_attr).relu()
        x = self.convs[1](x, edge_index).relu()
        x = self.block[0](x, edge_index)
        return self.out(x, edge_index)


def randomize(module, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.rand(p.shape, generator=gen, dtype=p.dtype) - 0.5)


def inputs(n=14):
    torch.manual_seed(0)
    ei = random_graph(n, 40)
    return torch.randn(n, 6), ei, torch.randn(ei.size(1), 3)


def count(model, cls):
    return sum(type(m) is cls for m in model.modules())


def test_copy_replaces_every_gatconv_with_same_outputs():
    model = Net()
    randomize(model)
    model.eval()
    x, ei, ea = inputs()
    expect = model(x, ei, ea)
    fused = to_fused(model)
    assert fused is not model
    assert count(fused, GATConv) == 0 and count(fused, FusedGATConv) == 3
    assert count(model, GATConv) == 3  # the original is untouched
    assert isinstance(fused.block[0], GCNConv)
    assert not fused.training  # modes carry over
    torch.testing.assert_close(fused(x, ei, ea), expect, atol=1e-5, rtol=1e-5)
    # same state dict (names, values), but its own copy of the weights
    sd, sd_f = model.state_dict(), fused.state_dict()
    assert list(sd) == list(sd_f)
    assert all(torch.equal(sd[k], sd_f[k]) for k in sd)
    assert all(p is not q for p, q in zip(model.parameters(), fused.parameters()))


def test_gradients_equal_after_conversion():
    model = Net().double()
    randomize(model)
    x, ei, ea = inputs()
    x, ea = x.double(), ea.double()
    fused = to_fused(model)
    grads = []
    for m in (model, fused):
        m(x, ei, ea).pow(2).sum().backward()
        grads.append({n: p.grad for n, p in m.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-10,
                                   rtol=1e-10, msg=name)


def test_inplace_shares_parameters_and_keeps_optimizer_working():
    model = Net()
    randomize(model)
    params = list(model.parameters())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, ei, ea = inputs()
    expect = model(x, ei, ea)
    out_model = to_fused(model, inplace=True)
    assert out_model is model and count(model, FusedGATConv) == 3
    assert all(p is q for p, q in zip(params, model.parameters()))
    torch.testing.assert_close(model(x, ei, ea), expect, atol=1e-5, rtol=1e-5)
    model(x, ei, ea).pow(2).sum().backward()
    optimizer.step()  # updates the shared parameters
    assert not torch.allclose(model(x, ei, ea), expect)


def test_pyg_gat_model_and_bare_conv():
    torch.manual_seed(1)
    model = GAT(6, 16, num_layers=3, out_channels=4, heads=4, v2=False)
    randomize(model)
    model.eval()
    x, ei, _ = inputs()
    fused = to_fused(model)
    assert count(fused, FusedGATConv) == 3 and count(fused, GATConv) == 0
    torch.testing.assert_close(fused(x, ei), model(x, ei), atol=1e-5, rtol=1e-5)

    conv = GATConv(6, 4, heads=2)
    fused_conv = to_fused(conv)
    assert type(fused_conv) is FusedGATConv
    torch.testing.assert_close(fused_conv(x, ei), conv(x, ei), atol=1e-5, rtol=1e-5)


def test_reversible_blocks_and_lazy_convs():
    torch.manual_seed(2)
    block = ReversibleMessagePassing(GATConv(3, 3), GATConv(3, 3))
    randomize(block)
    x, ei, _ = inputs()
    fused = to_fused(block)
    assert type(fused.f) is FusedGATConv and type(fused.g) is FusedGATConv
    torch.testing.assert_close(fused(x, ei), block(x, ei), atol=1e-5, rtol=1e-5)
    # Still lazy: initialised by the first call, like the GATConv.
    lazy = to_fused(torch.nn.Sequential(GATConv(-1, 4)))
    assert lazy[0](x, ei).shape == (14, 4)


def test_leaves_subclasses_and_rejects_what_it_cannot_fuse():
    class MyGAT(GATConv):
        pass

    model = torch.nn.Sequential(MyGAT(6, 4))
    assert type(to_fused(model)[0]) is MyGAT
    with pytest.raises(ValueError, match='aggr'):
        to_fused(torch.nn.Sequential(GATConv(6, 4, aggr='mean')))
    with pytest.raises(ValueError, match='flow'):
        fused_from_gat_conv(GATConv(6, 4, flow='target_to_source'))
    with pytest.raises(TypeError, match='Module'):
        to_fused('not a model')
    with pytest.raises(TypeError, match='GATConv'):
        fused_from_gat_conv(GCNConv(6, 4))
