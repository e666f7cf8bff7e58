import pytest
import torch
from torch_geometric.nn import GCNConv

from torch_geometric_gnf.nn import GraphAffineCoupling, ReversibleMessagePassing
from torch_geometric_gnf.utils import input_checks_enabled, set_input_checks

from conftest import random_graph


@pytest.fixture
def block():
    return ReversibleMessagePassing(GCNConv(4, 4), GCNConv(4, 4))


def test_odd_channel_count(block):
    with pytest.raises(ValueError, match='Cannot split 7 channels'):
        block(torch.randn(14, 7), random_graph())


def test_out_of_range_edge_index(block):
    edge_index = torch.tensor([[0, 1, 20], [1, 2, 3]])
    with pytest.raises(ValueError, match=r'out-of-range node indices.*\[0, 20\].*14'):
        block(torch.randn(14, 8), edge_index)
    with pytest.raises(ValueError, match='out-of-range'):
        block(torch.randn(14, 8), torch.tensor([[-1], [0]]))
    with pytest.raises(ValueError, match='out-of-range'):
        block.inverse(torch.randn(14, 8), edge_index)


def test_edge_index_shape_and_dtype(block):
    with pytest.raises(ValueError, match=r'shape \[2, num_edges\]'):
        block(torch.randn(14, 8), torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match='int64 or torch.int32'):
        block(torch.randn(14, 8), torch.zeros(2, 4))


@pytest.mark.parametrize('bad', [float('nan'), float('inf')])
def test_non_finite_features(block, bad):
    x = torch.randn(14, 8)
    x[3, 2] = bad
    with pytest.raises(ValueError, match='non-finite'):
        block(x, random_graph())


def test_value_checks_can_be_disabled(block):
    assert input_checks_enabled()
    x = torch.randn(14, 8)
    x[0, 0] = float('nan')
    set_input_checks(False)
    try:
        out = block(x, random_graph())  # no error: the user opted out
        assert torch.isnan(out).any()
    finally:
        set_input_checks(True)


def test_dtype_mismatch(block):
    with pytest.raises(RuntimeError, match='dtype torch.float64.*float32'):
        block(torch.randn(14, 8, dtype=torch.float64), random_graph())
    with pytest.raises(ValueError, match='floating point'):
        block(torch.ones(14, 8, dtype=torch.long), random_graph())


def test_device_mismatch(block):
    meta_edges = random_graph().to('meta')
    with pytest.raises(RuntimeError, match="'edge_index' is on meta"):
        block(torch.randn(14, 8), meta_edges)
    with pytest.raises(RuntimeError, match='parameters of this step are on cpu'):
        block(torch.randn(14, 8, device='meta'), random_graph().to('meta'))


def test_bad_batch():
    coupling = GraphAffineCoupling((GCNConv(2, 2), GCNConv(2, 2)))
    with pytest.raises(ValueError, match=r"'batch' must have shape \[num_nodes=14\]"):
        coupling(torch.randn(14, 4), random_graph(), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="'batch' must have dtype"):
        coupling(torch.randn(14, 4), random_graph(), torch.zeros(14))


def test_conv_with_wrong_output_width():
    block = ReversibleMessagePassing(GCNConv(4, 3), GCNConv(4, 4))
    with pytest.raises(ValueError, match=r"'f' returned shape \(14, 3\)"):
        block(torch.randn(14, 8), random_graph())
    affine = ReversibleMessagePassing(GCNConv(4, 4), GCNConv(4, 8), coupling='affine')
    with pytest.raises(ValueError, match='times two for scale and shift'):
        affine(torch.randn(14, 8), random_graph())


def test_non_tensor_input(block):
    with pytest.raises(TypeError, match="'x' must be a torch.Tensor"):
        block([[1.0, 2.0]], random_graph())
