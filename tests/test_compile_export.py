r"""The PyTorch 2 compiler stack through our ops (issue 28):
``torch.compile(fullgraph=True)`` of FusedGATConv forward and backward,
no recompilation across graph sizes with ``dynamic=True``, ``torch.export``
round trips (FusedGATConv, a reversible stack, a flow's log-likelihood),
``torch.jit.trace``, and memory saving kept under ``torch.compile``."""
import pytest
import torch
import torch._dynamo

from conftest import random_graph, stored_reversible_outputs
from torch_geometric_gnf.nn import (FusedGATConv, GraphAffineCoupling,
                                    GraphNormalizingFlow,
                                    ReversibleMessagePassing)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()


def make_conv(edge_dim=None):
    torch.manual_seed(0)
    return FusedGATConv(6, 4, heads=2, edge_dim=edge_dim).double()


def features_and_graph(num_nodes, num_edges, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(num_nodes, 6, generator=gen, dtype=torch.float64)
    ea = torch.randn(num_edges + 7, 3, generator=gen, dtype=torch.float64)
    return x, random_graph(num_nodes, num_edges, seed=seed), ea


def forward_and_grads(model, x, ei, ea):
    x = x.clone().requires_grad_()
    out = model(x, ei, ea)
    params = [x] + list(model.parameters())
    grads = torch.autograd.grad((out * torch.cos(out)).sum(), params)
    return [out.detach()] + list(grads)


def test_compile_fullgraph_forward_and_backward(path):
    conv = make_conv(edge_dim=3)
    x, ei, ea = features_and_graph(12, 40)
    compiled = torch.compile(conv, fullgraph=True, backend='aot_eager')
    for a, b in zip(forward_and_grads(conv, x, ei, ea),
                    forward_and_grads(compiled, x, ei, ea)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_compile_dynamic_does_not_recompile(path):
    conv = make_conv()
    compiled = torch.compile(conv, fullgraph=True, dynamic=True,
                             backend='aot_eager')
    x, ei, _ = features_and_graph(12, 40)
    compiled(x, ei)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for n, e, seed in ((17, 55, 1), (30, 90, 2)):
            x, ei, _ = features_and_graph(n, e, seed)
            torch.testing.assert_close(compiled(x, ei), conv(x, ei),
                                       rtol=1e-10, atol=1e-10)


def test_export_fused_gat_conv(path):
    conv = make_conv(edge_dim=3).eval()
    x, ei, ea = features_and_graph(12, 40)
    program = torch.export.export(conv, (x, ei, ea))
    x2, ei2, ea2 = features_and_graph(12, 40, seed=5)  # same shapes
    torch.testing.assert_close(program.module()(x2, ei2, ea2),
                               conv(x2, ei2, ea2), rtol=1e-10, atol=1e-10)


class Stack(torch.nn.Module):
    def __init__(self, depth=3):
        super().__init__()
        torch.manual_seed(0)
        self.blocks = torch.nn.ModuleList([
            ReversibleMessagePassing(FusedGATConv(4, 4), FusedGATConv(4, 4))
            for _ in range(depth)])

    def forward(self, x, edge_index):
        for block in self.blocks:
            x = block(x, edge_index)
        return x


def test_export_reversible_stack(path):
    stack = Stack().double()
    x = torch.randn(12, 8, dtype=torch.float64)
    ei = random_graph(12, 40)
    program = torch.export.export(stack, (x, ei))
    torch.testing.assert_close(program.module()(x, ei), stack(x, ei),
                               rtol=1e-10, atol=1e-10)


class LogProb(torch.nn.Module):
    def __init__(self, flow):
        super().__init__()
        self.flow = flow

    def forward(self, x, edge_index, batch):
        return self.flow.log_prob(x, edge_index, batch, 2)


def test_export_flow_log_prob(path):
    torch.manual_seed(0)
    flow = GraphNormalizingFlow(
        [GraphAffineCoupling(FusedGATConv(2, 4), FusedGATConv(2, 4))
         for _ in range(2)], 4).double()
    model = LogProb(flow).eval()
    x = torch.randn(9, 4, dtype=torch.float64)
    ei = random_graph(9, 20)
    batch = torch.tensor([0] * 5 + [1] * 4)
    program = torch.export.export(model, (x, ei, batch))
    torch.testing.assert_close(program.module()(x, ei, batch),
                               model(x, ei, batch), rtol=1e-10, atol=1e-10)


# Tracing records the Python-side shape checks as constants and says so
# (TracerWarning); torch also marks jit.trace itself as deprecated.
@pytest.mark.filterwarnings('ignore::torch.jit.TracerWarning')
@pytest.mark.filterwarnings('ignore:`torch.jit.trace:DeprecationWarning')
def test_jit_trace_fused_gat_conv(path):
    conv = make_conv().eval()
    x, ei, _ = features_and_graph(12, 40)
    traced = torch.jit.trace(conv, (x, ei), check_trace=False)
    x2, ei2, _ = features_and_graph(12, 40, seed=3)  # graph: an input
    torch.testing.assert_close(traced(x2, ei2), conv(x2, ei2), rtol=1e-10,
                               atol=1e-10)


def test_reversible_memory_saving_kept_under_compile():
    stack = Stack(depth=6).double()
    x = torch.randn(12, 8, dtype=torch.float64, requires_grad=True)
    ei = random_graph(12, 40)
    compiled = torch.compile(stack, backend='aot_eager')
    packed = []
    with torch.autograd.graph.saved_tensors_hooks(
            lambda t: packed.append(t.numel()) or t, lambda t: t):
        y = compiled(x, ei)
    assert packed == []  # no conv activation saved for backward
    assert stored_reversible_outputs(y) == 1  # one feature matrix, whatever the depth
    y.pow(2).sum().backward()
    ref = x.detach().clone().requires_grad_()
    stack(ref, ei).pow(2).sum().backward()
    torch.testing.assert_close(x.grad, ref.grad, rtol=1e-10, atol=1e-10)
