import math

import pytest
import torch

from torch_geometric_gnf.nn import DenseSelfAttention


def _reference(attn: DenseSelfAttention, x: torch.Tensor, attend=None,
               bias=None) -> torch.Tensor:
    r"""One graph [n, C], computed head by head with explicit loops;
    :obj:`attend` [n, n] and :obj:`bias` [H, n, n] optional."""
    C, H = attn.channels, attn.heads
    D = C // H
    q, k, v = attn.query(x), attn.key(x), attn.value(x)
    heads = []
    for h in range(H):
        sl = slice(h * D, (h + 1) * D)
        scores = q[:, sl] @ k[:, sl].T / math.sqrt(D)
        if bias is not None:
            scores = scores + bias[h]
        if attend is not None:
            scores = scores.masked_fill(~attend, float('-inf'))
        heads.append(torch.softmax(scores, dim=-1) @ v[:, sl])
    return attn.out(torch.cat(heads, dim=-1))


def test_matches_reference_and_sdpa():
    torch.manual_seed(0)
    attn = DenseSelfAttention(8, heads=2).double()
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    out = attn(x)
    for b in range(3):
        assert torch.allclose(out[b], _reference(attn, x[b]), atol=1e-12)
    # torch's fused attention with the same projections
    q = attn.query(x).view(3, 5, 2, 4).transpose(1, 2)
    k = attn.key(x).view(3, 5, 2, 4).transpose(1, 2)
    v = attn.value(x).view(3, 5, 2, 4).transpose(1, 2)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    ref = attn.out(ref.transpose(1, 2).reshape(3, 5, 8))
    assert torch.allclose(out, ref, atol=1e-12)


def test_permutation_equivariant():
    torch.manual_seed(1)
    attn = DenseSelfAttention(8, heads=4).double()
    x = torch.randn(2, 6, 8, dtype=torch.float64)
    perm = torch.randperm(6)
    assert torch.allclose(attn(x)[:, perm], attn(x[:, perm]), atol=1e-12)


def test_without_attention_nodes_are_independent():
    torch.manual_seed(2)
    attn = DenseSelfAttention(8, heads=2, attention=False).double()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    out = attn(x)
    assert torch.allclose(out, attn.out(attn.value(x)), atol=1e-12)
    y = x.clone()
    y[:, 1:] += 1.0  # other nodes change, node 0 does not
    assert torch.allclose(attn(y)[:, 0], out[:, 0], atol=1e-12)
    # with attention node 0 does see the others
    mp = DenseSelfAttention(8, heads=2).double()
    assert not torch.allclose(mp(y)[:, 0], mp(x)[:, 0], atol=1e-6)


def test_mask_equals_separate_graphs_and_node_level_input():
    torch.manual_seed(3)
    attn = DenseSelfAttention(8, heads=2).double()
    sizes = [3, 0, 5, 1]
    graphs = [torch.randn(n, 8, dtype=torch.float64) for n in sizes]
    dense = torch.zeros(4, 5, 8, dtype=torch.float64)
    mask = torch.zeros(4, 5, dtype=torch.bool)
    for i, g in enumerate(graphs):
        dense[i, :len(g)] = g
        dense[i, len(g):] = 100.0  # padding values must not matter
        mask[i, :len(g)] = True
    dense.requires_grad_()
    out = attn(dense, mask=mask)
    for i, g in enumerate(graphs):
        if len(g):
            assert torch.allclose(out[i, :len(g)], _reference(attn, g), atol=1e-12)
        assert (out[i, len(g):] == 0).all()
    out.sum().backward()  # an empty graph and padded rows: finite gradients
    assert torch.isfinite(dense.grad).all()
    assert (dense.grad[~mask] == 0).all()
    assert all(torch.isfinite(p.grad).all() for p in attn.parameters())
    # node-level input with a batch vector, and with a fixed set size
    flat = torch.cat(graphs)
    node_batch = torch.repeat_interleave(torch.arange(4), torch.tensor(sizes))
    assert torch.allclose(attn(flat, None, node_batch=node_batch), out[mask], atol=1e-12)
    equal = torch.randn(12, 8, dtype=torch.float64)
    assert torch.allclose(attn(equal, None, set_size=4),
                          attn(equal.view(3, 4, 8)).view(12, 8), atol=1e-12)


def test_gradcheck():
    torch.manual_seed(4)
    attn = DenseSelfAttention(4, heads=2).double()
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    assert torch.autograd.gradcheck(lambda t: attn(t, mask=mask), (x,))
    assert torch.autograd.gradcheck(lambda t: attn(t), (x,))


def test_attention_dropout_only_in_training():
    torch.manual_seed(5)
    attn = DenseSelfAttention(8, heads=2, dropout=0.5)
    x = torch.randn(2, 4, 8)
    attn.eval()
    assert torch.equal(attn(x), attn(x))
    attn.train()
    assert not torch.allclose(attn(x), attn(x))


def test_reset_and_repr():
    attn = DenseSelfAttention(8, heads=2)
    before = attn.query.weight.clone()
    attn.reset_parameters()
    assert not torch.equal(before, attn.query.weight)
    assert repr(attn) == 'DenseSelfAttention(8, heads=2, attention=True)'


def test_bad_input():
    with pytest.raises(ValueError, match='divide'):
        DenseSelfAttention(6, heads=4)
    attn = DenseSelfAttention(8, heads=2)
    with pytest.raises(ValueError, match='channels'):
        attn(torch.randn(2, 3, 5))
    with pytest.raises(TypeError, match='floating'):
        attn(torch.ones(2, 3, 8, dtype=torch.long))
    with pytest.raises(ValueError, match='exactly one'):
        attn(torch.randn(6, 8))
    with pytest.raises(ValueError, match='sets of 4'):
        attn(torch.randn(6, 8), set_size=4)
    with pytest.raises(ValueError, match='mask'):
        attn(torch.randn(2, 3, 8), mask=torch.ones(2, 3))
    with pytest.raises(ValueError, match='sorted'):
        attn(torch.randn(3, 8), node_batch=torch.tensor([1, 0, 1]))
    with pytest.raises(ValueError, match='dense input'):
        attn(torch.randn(2, 3, 8), set_size=3)


def test_attend_pattern_and_logit_bias_match_reference():
    torch.manual_seed(3)
    attn = DenseSelfAttention(8, heads=2).double()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    attend = torch.rand(2, 5, 5) < 0.5
    attend |= torch.eye(5, dtype=torch.bool)  # every node may attend to itself
    bias = torch.randn(2, 2, 5, 5, dtype=torch.float64)
    out = attn(x, mask=mask, attend=attend, bias=bias)
    for b, n in enumerate((5, 3)):
        ref = _reference(attn, x[b, :n], attend[b, :n, :n], bias[b, :, :n, :n])
        assert torch.allclose(out[b, :n], ref, atol=1e-12)
    assert bool((out[1, 3:] == 0).all())
    # all-True pattern and no bias: the plain complete-graph attention
    full = torch.ones(2, 5, 5, dtype=torch.bool)
    assert torch.equal(attn(x, mask=mask, attend=full), attn(x, mask=mask))
    torch.autograd.gradcheck(lambda t: attn(t, mask=mask, attend=attend, bias=bias),
                             (x.clone().requires_grad_(),))


def test_attend_and_bias_bad_input():
    attn = DenseSelfAttention(8, heads=2)
    x = torch.randn(1, 3, 8)
    with pytest.raises(ValueError, match="'attend' must be a bool tensor"):
        attn(x, attend=torch.ones(1, 3, 3))
    with pytest.raises(ValueError, match='at least one real node'):
        attn(x, attend=torch.zeros(1, 3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="for dense"):
        attn(x[0], set_size=3, bias=torch.zeros(2, 3, 3))
    with pytest.raises(ValueError, match="needs attention=True"):
        DenseSelfAttention(8, heads=2, attention=False)(x, bias=torch.zeros(2, 3, 3))
