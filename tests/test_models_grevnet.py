import copy

import pytest
import torch
import torch.nn.functional as F
from torch_geometric.nn import GraphConv

from torch_geometric_gnf.datasets import community_node_classification
from torch_geometric_gnf.models import GRevNet

from conftest import (inverse_round_trip, perturb_parameters, random_graph,
                      unrolled_additive_steps)


@pytest.fixture(scope='module')
def data():
    return community_node_classification(num_nodes=600, num_classes=3,
                                         num_features=16, num_val=100, seed=1)


@pytest.mark.parametrize('conv,coupling', [('gcn', 'additive'), ('gat', 'additive'),
                                           ('sage', 'affine'), ('gin', 'additive')])
def test_grevnet_learns_node_classification(data, conv, coupling):
    torch.manual_seed(0)
    model = GRevNet(16, 16, 3, num_layers=3, conv=conv, coupling=coupling,
                    heads=2, dropout=0.2)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(40):
        model.train()
        opt.zero_grad()
        out = model(data.x, data.edge_index)
        F.cross_entropy(out[data.train_mask], data.y[data.train_mask]).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        pred = model(data.x, data.edge_index).argmax(-1)
    acc = (pred[data.test_mask] == data.y[data.test_mask]).float().mean()
    assert acc > 0.6  # chance is 1/3


def test_memory_saving_model_equals_plain_model(data):
    torch.manual_seed(0)
    plain = GRevNet(16, 8, 3, num_layers=4, conv='gat', heads=2, dropout=0.3,
                    attention_dropout=0.3, memory_saving=False).double()
    saving = copy.deepcopy(plain)
    for block in saving.blocks:
        block.memory_saving = True
    x = data.x.double()
    grads = []
    for model in (plain, saving):
        torch.manual_seed(42)
        loss = F.cross_entropy(model(x, data.edge_index), data.y)
        grads.append(torch.autograd.grad(loss, list(model.parameters())))
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-8)


def test_custom_conv_factory_and_repr():
    model = GRevNet(5, 6, 2, num_layers=2, conv=lambda i, o: GraphConv(i, o))
    assert isinstance(model.blocks[0].f.conv, GraphConv)
    out = model(torch.randn(7, 5), torch.tensor([[0, 1, 2], [1, 2, 3]]))
    assert out.shape == (7, 2)
    assert repr(model) == 'GRevNet(5, 6, 2, num_layers=2)'
    before = model.head.weight.clone()
    model.reset_parameters()
    assert not torch.equal(before, model.head.weight)


def test_bad_configuration():
    with pytest.raises(ValueError, match='even'):
        GRevNet(4, 7, 2, num_layers=2)
    with pytest.raises(ValueError, match='num_layers'):
        GRevNet(4, 8, 2, num_layers=0)
    with pytest.raises(ValueError, match='Unknown conv'):
        GRevNet(4, 8, 2, num_layers=1, conv='cheb')
    with pytest.raises(ValueError, match='divisible'):
        GRevNet(4, 8, 2, num_layers=1, conv='gat', heads=3)


def test_vanilla_baseline_same_layout(data):
    from torch_geometric_gnf.models import ResidualStep
    from torch_geometric_gnf.nn import ReversibleMessagePassing
    rev = GRevNet(16, 8, 3, num_layers=4)
    plain = GRevNet(16, 8, 3, num_layers=4, reversible=False)
    assert len(plain.blocks) == len(rev.blocks) == 4
    assert all(isinstance(b, ResidualStep) for b in plain.blocks)
    assert all(isinstance(b, ReversibleMessagePassing) for b in rev.blocks)
    # full width (8 -> 8) per plain step, half width (4 -> 4) per F/G
    assert plain.blocks[0].fn.conv.lin.weight.shape == (8, 8)
    assert rev.blocks[0].f.conv.lin.weight.shape == (4, 4)
    out = plain(data.x, data.edge_index)
    assert out.shape == (data.num_nodes, 3)
    assert repr(plain) == 'GRevNet(16, 8, 3, num_layers=4, reversible=False)'


def test_gated_steps_start_as_identity(data):
    from torch_geometric_gnf.models import MessagePassingStep
    torch.manual_seed(0)
    step = MessagePassingStep(GraphConv(4, 4), 4, gate=True)
    h = torch.randn(10, 4)
    ei = torch.tensor([[0, 1, 2], [1, 2, 3]])
    assert torch.equal(step(h, ei), torch.zeros(10, 4))
    model = GRevNet(16, 8, 3, num_layers=2,
                    conv=lambda i, o: GraphConv(i, o))
    for block in model.blocks:
        block.f.gate = torch.nn.Parameter(torch.zeros(1))
        block.g.gate = torch.nn.Parameter(torch.zeros(1))
    h0 = model.encoder(data.x)
    assert torch.equal(model.blocks[0](h0, data.edge_index), h0)
    # the gate itself receives a gradient, so the steps switch on in training
    model(data.x, data.edge_index).sum().backward()
    assert model.blocks[0].f.gate.grad.abs() > 0


def test_feature_dropout_statistics():
    from torch_geometric_gnf.models.grevnet import feature_dropout
    x = torch.ones(200_000)
    torch.manual_seed(0)
    y = feature_dropout(x, 0.3, training=True)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.7) < 0.01
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.7))
    assert feature_dropout(x, 0.3, training=False) is x
    torch.manual_seed(0)
    assert torch.equal(feature_dropout(x, 0.3, training=True), y)  # replayable
    with pytest.raises(ValueError, match='dropout'):
        feature_dropout(x, 1.0, training=True)


@pytest.mark.parametrize('reversible', [True, False])
def test_shared_weights_parameter_count_independent_of_depth(data, reversible):
    def count(model):
        return sum(p.numel() for p in model.parameters())

    tied = GRevNet(16, 8, 3, num_layers=6, reversible=reversible,
                   shared_weights=True)
    assert count(tied) == count(GRevNet(16, 8, 3, num_layers=1,
                                        reversible=reversible))
    assert count(tied) < count(GRevNet(16, 8, 3, num_layers=6,
                                       reversible=reversible))
    assert len(tied.blocks) == 6
    assert all(block is tied.blocks[0] for block in tied.blocks)
    assert repr(tied).endswith('shared_weights=True)')
    assert tied(data.x, data.edge_index).shape == (data.num_nodes, 3)


def _unrolled_grevnet(model: GRevNet, x, edge_index):
    r"""GRevNet's forward with its one shared step unrolled in plain autograd."""
    from torch_geometric_gnf.models.grevnet import feature_dropout
    h = model.encoder(feature_dropout(x, model.dropout, model.training))
    h = unrolled_additive_steps(model.blocks[0], h, edge_index, model.num_layers)
    h = feature_dropout(F.relu(model.norm(h)), model.dropout, model.training)
    return model.head(h)


@pytest.mark.parametrize('conv,coupling', [('gcn', 'additive'), ('gat', 'affine')])
def test_shared_weights_gradients_equal_plain_autograd(conv, coupling):
    torch.manual_seed(0)
    saving = GRevNet(6, 8, 3, num_layers=4, conv=conv, coupling=coupling,
                     heads=2, dropout=0.3, attention_dropout=0.3,
                     shared_weights=True).double()
    perturb_parameters(saving)
    plain = copy.deepcopy(saving)
    plain.blocks[0].memory_saving = False  # one step object: all steps
    assert not any(block.memory_saving for block in plain.blocks)
    x = torch.randn(25, 6, dtype=torch.double)
    y = torch.randint(0, 3, (25, ))
    ei = random_graph(25, 80)
    forwards = [saving, plain]
    if coupling == 'additive':  # plain autograd without the step's code
        forwards.append(lambda x, ei: _unrolled_grevnet(saving, x, ei))
    grads = []
    for forward in forwards:
        torch.manual_seed(42)  # same dropout masks in every run
        loss = F.cross_entropy(forward(x, ei), y)
        params = (forward if isinstance(forward, GRevNet) else saving).parameters()
        grads.append(torch.autograd.grad(loss, list(params)))
    for name, *per_run in zip(dict(saving.named_parameters()), *grads):
        assert per_run[0].abs().sum() > 0, name
        for other in per_run[1:]:
            assert torch.allclose(per_run[0], other, atol=1e-8), name


@pytest.mark.parametrize('coupling', ['additive', 'affine'])
def test_shared_weights_inverse_round_trip(coupling):
    torch.manual_seed(0)
    model = GRevNet(6, 8, 3, num_layers=5, conv='gat', heads=2,
                    coupling=coupling, dropout=0.3, attention_dropout=0.3,
                    shared_weights=True).double().eval()
    perturb_parameters(model)
    ei = random_graph(20, 60)
    h = torch.randn(20, 8, dtype=torch.double)
    assert torch.allclose(inverse_round_trip(model.blocks, h, ei), h, atol=1e-10)
