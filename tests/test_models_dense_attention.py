import math

import pytest
import torch
from torch_geometric.utils import to_dense_batch

from torch_geometric_gnf.nn.dense_attention import (DenseAttentionBlock, dense_layout,
                                                    fully_connected_attend, layout_of_mask)


def padded_block(block: DenseAttentionBlock, x, attend, bias=None):
    r"""The block's math on the padded grid, written out plainly: every
    layer runs on all [B, n] slots (the reference for the node-list block)."""
    B, n, C = x.shape
    d = C // block.heads
    q, k, v = block.qkv(x).view(B, n, 3, block.heads, d).permute(2, 0, 3, 1, 4)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    if bias is not None:
        scores = scores + bias
    scores = scores.masked_fill(~attend.unsqueeze(1), float('-inf'))
    att = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(B, n, C)
    x = block.norm1(x + block.out(att))
    return block.norm2(x + block.mlp(x))


@pytest.mark.parametrize('with_bias', [False, True])
def test_node_list_block_matches_the_padded_computation(with_bias):
    torch.manual_seed(0)
    # graph sizes 3, 1, 0 (empty), 5: padding rows, a single node, an empty row
    graph_index = torch.tensor([0, 0, 0, 1, 3, 3, 3, 3, 3])
    block = DenseAttentionBlock(8, heads=2).double()
    x = torch.randn(graph_index.numel(), 8, dtype=torch.float64)
    layout = dense_layout(graph_index)
    dense, mask = to_dense_batch(x, graph_index)
    bias = None
    if with_bias:
        linked = (torch.rand(mask.size(0), 1, 5, 5) < 0.5).double()
        bias = linked * torch.randn(1, 2, 1, 1, dtype=torch.float64)
    out = block(x, layout, bias)
    ref = padded_block(block, dense, fully_connected_attend(mask), bias)[mask]
    assert out.shape == x.shape
    assert torch.allclose(out, ref, atol=1e-12)
    # exact gradients through the padding and the cached logit mask
    xr = x.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: block(t, layout, bias), (xr, ))
    if with_bias:
        b = bias.clone().requires_grad_()
        assert torch.autograd.gradcheck(lambda t: block(x, layout, t), (b, ))


def test_logit_mask_is_cached_per_heads_and_dtype_and_follows_attend():
    mask = torch.tensor([[True, True, False], [True, False, False]])
    attend = torch.tensor([[[True, False, False], [True, True, False], [False, False, True]],
                           [[True, False, False], [False, True, False], [False, False, True]]])
    layout = layout_of_mask(mask, attend)
    m = layout.logit_mask(2, torch.float32)
    assert m.shape == (4, 3, 3) and m.dtype == torch.float32
    assert layout.logit_mask(2, torch.float32) is m
    assert layout.logit_mask(2, torch.float64).dtype == torch.float64
    for head in range(2):  # graph-major, then head
        assert torch.equal(m[head] == 0, attend[0])
        assert torch.equal(m[2 + head] == 0, attend[1])
    assert torch.isinf(m[~attend.repeat_interleave(2, 0)]).all()
    # a custom pattern (neighbours only) is what the block attends over
    block = DenseAttentionBlock(4, heads=2)
    x = torch.randn(3, 4)
    y = x.clone()
    y[1] += 1.0  # node 1 of graph 0: node 0 does not attend to it
    out_x, out_y = block(x, layout), block(y, layout)
    assert torch.equal(out_x[0], out_y[0])
    assert not torch.equal(out_x[1], out_y[1])
