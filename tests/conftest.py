import importlib.util
import os
import sys

import pytest
import torch
from torch_geometric.nn import GATConv, GCNConv, GINConv, SAGEConv, TransformerConv

SHARED = os.path.join(os.path.dirname(__file__), '..', '..', 'shared')
REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))


def load_example(name: str, folder: str = 'examples'):
    r"""Imports ``<folder>/<name>.py`` of the repository as a module."""
    spec = importlib.util.spec_from_file_location(
        f'{folder}_{name}', os.path.join(REPO, folder, f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    # PyG's conv inspector looks classes' modules up in sys.modules.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def import_benchmark(monkeypatch, name: str):
    r"""Imports ``benchmarks/<name>.py`` by its name, with ``benchmarks/`` on
    ``sys.path`` for the test (so the fresh measuring processes the script
    starts import it too)."""
    monkeypatch.syspath_prepend(os.path.join(REPO, 'benchmarks'))
    return importlib.import_module(name)


def random_graph(num_nodes: int = 14, num_edges: int = 40, seed: int = 0,
                 dtype: torch.dtype = torch.long) -> torch.Tensor:
    r"""A random directed graph with the awkward cases every kernel must
    survive: two isolated nodes, duplicate edges and explicit self-loops."""
    gen = torch.Generator().manual_seed(seed)
    ei = torch.randint(0, num_nodes - 2, (2, num_edges), generator=gen)
    loops = torch.tensor([[0, 3], [0, 3]])
    ei = torch.cat([ei, ei[:, :5], loops], dim=1)  # duplicates + self-loops
    return ei.to(dtype)


def make_conv(name: str, in_channels: int, out_channels: int) -> torch.nn.Module:
    r"""PyG convs mapping ``in_channels`` to ``out_channels``, with attention
    dropout where the conv has it (to exercise RNG replay)."""
    if name == 'gcn':
        return GCNConv(in_channels, out_channels)
    if name == 'gat':
        return GATConv(in_channels, out_channels // 2, heads=2, dropout=0.5)
    if name == 'sage':
        return SAGEConv(in_channels, out_channels)
    if name == 'gin':
        return GINConv(torch.nn.Sequential(
            torch.nn.Linear(in_channels, out_channels), torch.nn.Tanh(),
            torch.nn.Linear(out_channels, out_channels)))
    if name == 'transformer':
        return TransformerConv(in_channels, out_channels // 2, heads=2, dropout=0.3)
    raise ValueError(name)


CONVS = ['gcn', 'gat', 'sage', 'gin', 'transformer']


@pytest.fixture
def graph():
    return random_graph()


@pytest.fixture(params=['extension', 'reference'])
def path(request, monkeypatch):
    r"""Runs a test on the C++ extension and on the pure-PyTorch reference
    path (``GNF_DISABLE_EXTENSION=1``)."""
    from torch_geometric_gnf.ops import extension_available
    if request.param == 'extension':
        if not extension_available():
            pytest.skip('C++ extension unavailable')
    else:
        monkeypatch.setenv('GNF_DISABLE_EXTENSION', '1')
    return request.param


def stored_reversible_outputs(y: torch.Tensor) -> int:
    r"""Memory-saving reversible nodes in the graph of ``y`` that still hold
    an output (a stack of any depth should hold one)."""
    seen, stack, held = set(), [y.grad_fn], 0
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if getattr(node, 'is_gnf_reversible', False):
            held += node.output is not None
        stack.extend(n for n, _ in node.next_functions)
    return held


def unrolled_additive_steps(step: torch.nn.Module, h: torch.Tensor,
                            edge_index: torch.Tensor, num_steps: int) -> torch.Tensor:
    r"""Plain-autograd reference for weight-tied reversible steps, written
    without :class:`ReversibleMessagePassing`'s code: the additive coupling
    :math:`h_1 \mathrel{+}= F(h_0)`, :math:`h_0 \mathrel{+}= G(h_1)` of the
    one step's :obj:`f` and :obj:`g`, applied :obj:`num_steps` times (each
    application draws fresh dropout masks)."""
    for _ in range(num_steps):
        h0, h1 = h.chunk(2, dim=-1)
        h1 = h1 + step.f(h0, edge_index)
        h0 = h0 + step.g(h1, edge_index)
        h = torch.cat([h0, h1], dim=-1)
    return h


def inverse_round_trip(blocks, h: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
    r"""Runs reversible :obj:`blocks` forward, then their inverses backward."""
    for block in blocks:
        h = block(h, edge_index)
    for block in reversed(blocks):
        h = block.inverse(h, edge_index)
    return h


def perturb_parameters(model: torch.nn.Module, scale: float = 0.1) -> torch.nn.Module:
    r"""Moves every parameter off its initial value.  With zero-initialised
    biases, a node whose attention coefficients are all dropped gets an
    exactly zero feature row, which LayerNorm maps onto ReLU's kink; there
    the memory-saving backward (rebuilt input exact up to rounding) and
    plain autograd may pick different subgradients.  Generic parameters
    avoid that tie, so gradient comparisons test the algorithm."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    return model
