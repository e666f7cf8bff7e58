import copy

import pytest
import torch
from torch_geometric.nn import GCNConv

from torch_geometric_gnf.models import MessagePassingStep
from torch_geometric_gnf.nn import ReversibleMessagePassing

from conftest import (CONVS, make_conv, random_graph,
                      stored_reversible_outputs)


def make_stack(conv, channels, depth, coupling='additive', memory_saving=True,
               pair=False, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    half = channels // 2
    out = half if coupling == 'additive' or pair else 2 * half

    def fn():
        if pair:
            return (make_conv(conv, half, half), make_conv(conv, half, half))
        return make_conv(conv, half, out)

    blocks = torch.nn.ModuleList([
        ReversibleMessagePassing(fn(), fn(), coupling=coupling,
                                 memory_saving=memory_saving)
        for _ in range(depth)
    ])
    return blocks.to(dtype)


def assert_close(a, b, tol=1e-8):
    r"""``|a - b| <= tol`` measured against the gradient's scale (affine
    stacks produce gradients of size 1e5, where float64 itself gives 1e-11
    absolute differences)."""
    scale = max(1.0, float(a.abs().max()))
    err = float((a - b).abs().max())
    assert err <= tol * scale, f'max abs error {err:.3e} at scale {scale:.3e}'


def run_stack(blocks, x, edge_index, *args):
    for block in blocks:
        x = block(x, edge_index, *args)
    return x


def grads_of(blocks, x, edge_index, seed=123):
    torch.manual_seed(seed)  # same dropout masks for both runs
    out = run_stack(blocks, x, edge_index)
    loss = (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype)
            .view_as(out)).sum() + out.pow(2).sum()
    inputs = [x] + [p for p in blocks.parameters()]
    return out.detach(), torch.autograd.grad(loss, inputs, allow_unused=True)


def plain_and_saving(plain, x, edge_index):
    r"""Outputs and gradients of a plain stack and of a memory-saving copy
    (and that copy)."""
    saving = copy.deepcopy(plain)
    for block in saving:
        block.memory_saving = True
    return (grads_of(plain, x, edge_index), grads_of(saving, x, edge_index),
            saving)


@pytest.mark.parametrize('conv', CONVS)
@pytest.mark.parametrize('coupling,pair', [('additive', False), ('affine', False),
                                           ('affine', True)])
def test_memory_saving_gradients_equal_autograd(conv, coupling, pair):
    edge_index = random_graph()
    x = torch.randn(14, 8, dtype=torch.float64, requires_grad=True)
    plain = make_stack(conv, 8, 3, coupling, memory_saving=False, pair=pair)
    (out_a, grads_a), (out_b, grads_b), _ = plain_and_saving(plain, x, edge_index)
    assert torch.allclose(out_a, out_b, atol=1e-12, rtol=0)
    assert len(grads_a) == len(grads_b) == 1 + len(list(plain.parameters()))
    for a, b in zip(grads_a, grads_b):
        assert (a is None) == (b is None)
        if a is not None:
            assert_close(a, b)


@pytest.mark.parametrize('coupling', ['additive', 'affine'])
def test_dropout_is_replayed_not_redrawn(coupling):
    # With attention dropout 0.5 a fresh mask in the recomputation would give
    # gradients that differ from autograd's by O(1); equality proves replay.
    edge_index = random_graph(seed=3)
    x = torch.randn(14, 8, dtype=torch.float64, requires_grad=True)
    plain = make_stack('gat', 8, 4, coupling, memory_saving=False)
    saving = copy.deepcopy(plain)
    for block in saving:
        block.memory_saving = True
    _, grads_a = grads_of(plain, x, edge_index, seed=7)
    _, grads_b = grads_of(saving, x, edge_index, seed=7)
    _, grads_c = grads_of(plain, x, edge_index, seed=8)
    assert not torch.allclose(grads_a[0], grads_c[0])  # dropout is active
    for a, b in zip(grads_a, grads_b):
        assert_close(a, b)


def test_training_rng_stream_is_not_disturbed():
    edge_index = random_graph()
    blocks = make_stack('gat', 8, 2)
    x = torch.randn(14, 8, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(0)
    run_stack(blocks, x, edge_index).sum().backward()
    after_saving = torch.rand(3)
    for block in blocks:
        block.memory_saving = False
    torch.manual_seed(0)
    run_stack(blocks, x, edge_index).sum().backward()
    assert torch.equal(after_saving, torch.rand(3))


@pytest.mark.parametrize('coupling', ['additive', 'affine'])
def test_gradcheck(coupling):
    edge_index = random_graph(num_nodes=8, num_edges=16)
    blocks = make_stack('gcn', 4, 2, coupling)
    x = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda h: run_stack(blocks, h, edge_index), (x, ))
    # w.r.t. a parameter: gradcheck perturbs the parameter tensor in place
    weight = blocks[0].f.lin.weight
    assert torch.autograd.gradcheck(
        lambda w: run_stack(blocks, x.detach(), edge_index), (weight, ))


@pytest.mark.parametrize('coupling', ['additive', 'affine'])
@pytest.mark.parametrize('dtype', [torch.int64, torch.int32])
def test_inverse_of_forward_float64(coupling, dtype):
    edge_index = random_graph(dtype=dtype)
    blocks = make_stack('gat', 8, 4, coupling).eval()
    with torch.no_grad():  # near-identity start, as for flows (conditioning)
        for p in blocks.parameters():
            p.mul_(0.5)
    x = torch.randn(14, 8, dtype=torch.float64)
    y = run_stack(blocks, x, edge_index)
    assert (y - x).abs().max() > 0.1
    for block in reversed(blocks):
        y = block.inverse(y, edge_index)
    assert (y - x).abs().max() < 1e-10


@pytest.mark.parametrize('coupling', ['additive', 'affine'])
def test_inverse_of_forward_float32_50_blocks(coupling):
    # F and G as in a real deep model (LayerNorm -> ReLU -> conv), started
    # near the identity as flows are (weights x0.25): float32 round-off is
    # amplified by the stack's condition number, which a randomly scaled
    # 50-step affine flow makes arbitrarily large for any implementation.
    torch.manual_seed(0)
    out = 8 if coupling == 'additive' else 16
    blocks = torch.nn.ModuleList([
        ReversibleMessagePassing(MessagePassingStep(GCNConv(8, out), 8),
                                 MessagePassingStep(GCNConv(8, out), 8),
                                 coupling=coupling) for _ in range(50)]).eval()
    with torch.no_grad():
        for block in blocks:
            block.f.conv.lin.weight.mul_(0.25)
            block.g.conv.lin.weight.mul_(0.25)
    edge_index = random_graph(num_nodes=40, num_edges=160)
    x = torch.randn(40, 16)
    with torch.no_grad():
        y = run_stack(blocks, x, edge_index)
        assert (y - x).norm() > 0.5 * x.norm()  # far from the identity
        for block in reversed(blocks):
            y = block.inverse(y, edge_index)
    assert ((y - x).norm() / x.norm()) < 1e-4


def test_x_without_grad_and_params_only():
    edge_index = random_graph()
    plain = make_stack('sage', 8, 3, memory_saving=False)
    saving = copy.deepcopy(plain)
    for block in saving:
        block.memory_saving = True
    x = torch.randn(14, 8, dtype=torch.float64)  # no grad on the input
    g_plain = torch.autograd.grad(run_stack(plain, x, edge_index).sum(),
                                  list(plain.parameters()))
    g_saving = torch.autograd.grad(run_stack(saving, x, edge_index).sum(),
                                   list(saving.parameters()))
    for a, b in zip(g_plain, g_saving):
        assert_close(a, b)

    # Only the input requires grad (frozen parameters).
    for p in list(plain.parameters()) + list(saving.parameters()):
        p.requires_grad_(False)
    x.requires_grad_(True)
    g_plain, = torch.autograd.grad(run_stack(plain, x, edge_index).sum(), [x])
    g_saving, = torch.autograd.grad(run_stack(saving, x, edge_index).sum(), [x])
    assert_close(g_plain, g_saving)


def test_no_grad_inference_builds_no_graph():
    edge_index = random_graph()
    blocks = make_stack('gcn', 8, 3)
    x = torch.randn(14, 8, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        y = run_stack(blocks, x, edge_index)
    assert y.grad_fn is None and not y.requires_grad
    y_grad = run_stack(blocks, x, edge_index)
    assert torch.allclose(y, y_grad.detach())


def test_backward_accumulates_into_param_grad_and_trains():
    edge_index = random_graph()
    blocks = make_stack('gcn', 8, 4)
    x = torch.randn(14, 8, dtype=torch.float64)
    target = torch.randn(14, 8, dtype=torch.float64)
    opt = torch.optim.Adam(blocks.parameters(), lr=0.05)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = (run_stack(blocks, x, edge_index) - target).pow(2).mean()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize('depth', [1, 8, 64])
def test_stack_stores_one_feature_matrix_whatever_the_depth(depth):
    edge_index = random_graph()
    blocks = make_stack('gcn', 8, depth)
    x = torch.randn(14, 8, dtype=torch.float64, requires_grad=True)
    packed = []
    with torch.autograd.graph.saved_tensors_hooks(
            lambda t: packed.append(t.numel()) or t, lambda t: t):
        y = run_stack(blocks, x, edge_index)
    assert packed == []  # no activation of any conv is saved for backward
    assert stored_reversible_outputs(y) == 1  # only the last step's output is held
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_plain_mode_stores_activations():
    # The counter-check of the test above: without memory saving the convs'
    # activations are saved, so the hook does see them.
    edge_index = random_graph()
    blocks = make_stack('gcn', 8, 4, memory_saving=False)
    x = torch.randn(14, 8, dtype=torch.float64, requires_grad=True)
    packed = []
    with torch.autograd.graph.saved_tensors_hooks(
            lambda t: packed.append(t.numel()) or t, lambda t: t):
        run_stack(blocks, x, edge_index)
    assert len(packed) > 0


def test_released_output_without_successor_backward_raises():
    edge_index = random_graph()
    a, b = make_stack('gcn', 8, 2)
    x = torch.randn(14, 8, dtype=torch.float64, requires_grad=True)
    h = a(x, edge_index)
    b(h, edge_index)  # takes over h, but is never backpropagated
    with pytest.raises(RuntimeError, match='lost its output'):
        h.sum().backward()


def test_edge_weight_argument_receives_gradients():
    edge_index = random_graph()
    weight = torch.rand(edge_index.size(1), dtype=torch.float64, requires_grad=True)
    x = torch.randn(14, 8, dtype=torch.float64, requires_grad=True)
    plain = make_stack('gcn', 8, 2, memory_saving=False)
    saving = copy.deepcopy(plain)
    for block in saving:
        block.memory_saving = True
    g_a = torch.autograd.grad(run_stack(plain, x, edge_index, weight).pow(2).sum(),
                              [x, weight])
    g_b = torch.autograd.grad(run_stack(saving, x, edge_index, weight).pow(2).sum(),
                              [x, weight])
    for a, b in zip(g_a, g_b):
        assert_close(a, b)


def test_split_dim_and_pair_validation():
    with pytest.raises(ValueError, match='coupling'):
        ReversibleMessagePassing(GCNConv(2, 2), GCNConv(2, 2), coupling='bogus')
    with pytest.raises(ValueError, match='pair'):
        ReversibleMessagePassing((GCNConv(2, 2), GCNConv(2, 2)), GCNConv(2, 2))
    block = ReversibleMessagePassing(GCNConv(2, 2), GCNConv(2, 2), split_dim=0)
    with pytest.raises(ValueError, match='node dimension'):
        block(torch.randn(4, 4), random_graph(4, 4))


def test_reset_parameters_and_repr():
    block = make_stack('gat', 8, 1)[0]
    before = block.f.lin.weight.clone()
    block.reset_parameters()
    assert not torch.equal(before, block.f.lin.weight)
    assert 'ReversibleMessagePassing' in repr(block) and 'GATConv' in repr(block)


def test_torch_sparse_adjacency_input():
    # PyG convs also take a transposed sparse adjacency; it passes through.
    edge_index = random_graph()
    adj_t = torch.sparse_coo_tensor(edge_index.flip(0), torch.ones(edge_index.size(1)),
                                    (14, 14), check_invariants=True).coalesce()
    adj_t = adj_t.to_sparse_csr()
    plain = make_stack('gcn', 8, 2, memory_saving=False)
    saving = copy.deepcopy(plain)
    for block in saving:
        block.memory_saving = True
    x = torch.randn(14, 8, dtype=torch.float64, requires_grad=True)
    adj_t = adj_t.double()
    g_a, = torch.autograd.grad(run_stack(plain, x, adj_t).pow(2).sum(), [x])
    g_b, = torch.autograd.grad(run_stack(saving, x, adj_t).pow(2).sum(), [x])
    assert_close(g_a, g_b)
    with pytest.raises(ValueError, match='sparse adjacency of size'):
        plain[0](torch.randn(10, 8, dtype=torch.float64), adj_t)


def test_second_order_gradients_need_memory_saving_off():
    # Issue 26.5: create_graph=True through the memory-saving backward gave
    # results that failed only later (or silently); now it raises at once,
    # naming the remedy, and memory_saving=False differentiates twice.
    edge_index = random_graph()
    x = torch.randn(14, 8, dtype=torch.float64, requires_grad=True)
    (block, ) = make_stack('gcn', 8, 1, coupling='affine')
    with pytest.raises(RuntimeError, match='memory_saving=False'):
        torch.autograd.grad(block(x, edge_index).pow(2).sum(), x,
                            create_graph=True)
    block.memory_saving = False
    (g, ) = torch.autograd.grad(block(x, edge_index).pow(2).sum(), x,
                                create_graph=True)
    (gg, ) = torch.autograd.grad(g.pow(2).sum(), x)
    assert torch.isfinite(gg).all() and gg.abs().sum() > 0


@pytest.mark.parametrize('split_dims', [(-1, -1, -1), (1, -1, 1)])
def test_rebuilt_input_handed_back_as_halves_or_merged(split_dims):
    # A step hands its rebuilt input to its predecessor as two halves when
    # both split the same way (no merged copy), merged otherwise; either way
    # the gradients are plain autograd's, also when the retained graph is
    # backpropagated a second time.
    edge_index = random_graph()
    x = torch.randn(14, 8, dtype=torch.float64, requires_grad=True)
    plain = make_stack('gcn', 8, 3, 'affine', memory_saving=False)
    for block, dim in zip(plain, split_dims):
        block.split_dim = dim
    (out_a, grads_a), (out_b, grads_b), saving = plain_and_saving(plain, x,
                                                                  edge_index)
    assert torch.allclose(out_a, out_b, atol=1e-12, rtol=0)
    for a, b in zip(grads_a, grads_b):
        assert_close(a, b)
    out = run_stack(saving, x, edge_index)
    first = torch.autograd.grad(out.sum(), x, retain_graph=True)[0]
    second = torch.autograd.grad(out.sum(), x)[0]
    assert torch.equal(first, second)


def test_rng_state_kept_only_where_a_half_step_draws():
    # A state the function left unchanged is dropped in forward: no small
    # block per half-step is held until backward (utils.memory).
    edge_index = random_graph()
    x = torch.randn(14, 8, dtype=torch.float64, requires_grad=True)
    y = make_stack('gcn', 8, 1)[0](x, edge_index)
    assert [r.cpu for r in y.grad_fn.rng] == [None, None]
    gat = make_stack('gat', 8, 1)[0]  # attention dropout 0.5 while training
    y = gat(x, edge_index)
    assert all(r.cpu is not None for r in y.grad_fn.rng)
    y = gat.eval()(x, edge_index)
    assert [r.cpu for r in y.grad_fn.rng] == [None, None]


@pytest.mark.parametrize('coupling', ['additive', 'affine'])
def test_param_grads_reserved_accumulated_and_shared(coupling):
    # .grad: allocated at the start of the chain's backward where it is None,
    # accumulated into where it exists (second pass), summed for a conv shared
    # by two blocks, left None for a frozen parameter.
    edge_index = random_graph(seed=5)
    x = torch.randn(14, 8, dtype=torch.float64)
    plain = make_stack('gat', 8, 3, coupling, memory_saving=False)
    plain[2].f = plain[0].f
    frozen = next(plain[1].g.parameters())
    frozen.requires_grad_(False)
    saving = copy.deepcopy(plain)
    for block in saving:
        block.memory_saving = True
    for blocks in (plain, saving):
        for seed in (1, 2):  # different dropout masks per pass
            torch.manual_seed(seed)
            run_stack(blocks, x, edge_index).pow(2).sum().backward()
    assert next(saving[1].g.parameters()).grad is None
    for (name, a), b in zip(plain.named_parameters(), saving.parameters()):
        if a.requires_grad:
            assert b.grad is not None, name
            assert_close(a.grad, b.grad)
