r"""Fused GATv2 attention aggregation (the GATv2 score, softmax, dropout and
weighted sum of neighbours in one kernel) and its pure-PyTorch reference.

The C++/CUDA op ``torch_geometric_gnf::gatv2_attention_forward`` is
registered with :mod:`torch.library` (fake kernel + autograd), so
:func:`torch.compile` and :func:`torch.export` see it as one op."""
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from torch_geometric_gnf.ops._extension import extension_supports
from torch_geometric_gnf.ops.csr import (CSRGraph, csr_row, csr_src_row,
                                         is_traced)
from torch_geometric_gnf.ops.gat_attention import (_softmax_by_row,
                                                   draw_dropout_seed,
                                                   dropout_keep_mask,
                                                   normalize_seed)
from torch_geometric_gnf.utils.checks import all_finite, input_checks_enabled

_FN = 'fused_gatv2_attention'
_FORWARD = 'torch_geometric_gnf::gatv2_attention_forward'
_BACKWARD = 'torch_geometric_gnf::gatv2_attention_backward'


# ---------------------------------------------------------------------------
# Input checks (the kernels re-check shapes and index values themselves)
# ---------------------------------------------------------------------------
def _check_csr(csr: CSRGraph, num_src: int, num_dst: int,
               device: torch.device) -> None:
    if not isinstance(csr, CSRGraph):
        raise TypeError(f"{_FN}: 'csr' must be a CSRGraph (see "
                        f"torch_geometric_gnf.ops.build_csr), got "
                        f"{type(csr).__name__}")
    if csr.num_src != num_src or csr.num_dst != num_dst:
        raise ValueError(f"{_FN}: 'x_src'/'x_dst' have {num_src}/{num_dst} "
                         f"nodes but the CSR graph has num_src={csr.num_src}, "
                         f"num_dst={csr.num_dst}")
    if csr.col.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{_FN}: CSR indices must be int32 or int64, got "
                         f"{csr.col.dtype}")
    E = csr.col.numel()
    for name in CSRGraph._fields:
        t = getattr(csr, name)
        if isinstance(t, Tensor) and t.device != device:
            raise ValueError(f"{_FN}: device mismatch, 'x_src' is on "
                             f"{device} but csr.{name} is on {t.device}")
    if (csr.rowptr.numel() != num_dst + 1 or
            csr.src_rowptr.numel() != num_src + 1 or
            csr.perm.numel() != E or csr.src_slot.numel() != E or
            (csr.src_row is not None and csr.src_row.numel() != E)):
        raise ValueError(f"{_FN}: inconsistent CSRGraph sizes (use "
                         f"build_csr to construct it)")


def _validate(x_src: Tensor, x_dst: Tensor, att: Tensor, csr: CSRGraph,
              edge_attr: Optional[Tensor], edge_weight: Optional[Tensor],
              negative_slope: float, dropout: float) -> None:
    named = {'x_src': x_src, 'x_dst': x_dst, 'att': att,
             'edge_attr': edge_attr, 'edge_weight': edge_weight}
    for name, v in named.items():
        if not isinstance(v, Tensor) and (v is not None or name in
                                          ('x_src', 'x_dst', 'att')):
            raise TypeError(f"{_FN}: '{name}' must be a Tensor, got "
                            f"{type(v).__name__}")
    if (edge_attr is None) != (edge_weight is None):
        raise ValueError(f"{_FN}: 'edge_attr' and 'edge_weight' must be "
                         f"given together")
    if x_src.dim() != 3:
        raise ValueError(f"{_FN}: 'x_src' must have shape [num_src, heads, "
                         f"channels], got {tuple(x_src.shape)}")
    num_src, H, C = x_src.shape
    if x_dst.dim() != 3 or tuple(x_dst.shape[1:]) != (H, C):
        raise ValueError(f"{_FN}: 'x_dst' must have shape [num_dst, {H}, "
                         f"{C}], got {tuple(x_dst.shape)}")
    if tuple(att.shape) != (H, C):
        raise ValueError(f"{_FN}: 'att' must have shape ({H}, {C}), got "
                         f"{tuple(att.shape)}")
    _check_csr(csr, num_src, x_dst.size(0), x_src.device)
    if edge_attr is not None:
        if edge_attr.dim() != 2 or edge_attr.size(0) != csr.col.numel():
            raise ValueError(f"{_FN}: 'edge_attr' must have shape "
                             f"[{csr.col.numel()}, edge_dim], got "
                             f"{tuple(edge_attr.shape)}")
        if tuple(edge_weight.shape) != (H * C, edge_attr.size(1)):
            raise ValueError(f"{_FN}: 'edge_weight' must have shape "
                             f"({H * C}, {edge_attr.size(1)}), got "
                             f"{tuple(edge_weight.shape)}")
    if not x_src.is_floating_point():
        raise ValueError(f"{_FN}: expected floating point inputs, got "
                         f"{x_src.dtype}")
    for name, t in named.items():
        if t is None:
            continue
        if t.dtype != x_src.dtype:
            raise ValueError(f"{_FN}: dtype mismatch, 'x_src' is "
                             f"{x_src.dtype} but '{name}' is {t.dtype}")
        if t.device != x_src.device:
            raise ValueError(f"{_FN}: device mismatch, 'x_src' is on "
                             f"{x_src.device} but '{name}' is on {t.device}")
    if not math.isfinite(negative_slope):
        raise ValueError(f"{_FN}: 'negative_slope' must be finite, got "
                         f"{negative_slope}")
    if not 0.0 <= dropout <= 1.0:
        raise ValueError(f"{_FN}: 'dropout' must lie in [0, 1], got "
                         f"{dropout}")
    if input_checks_enabled():
        for name, t in named.items():
            if t is not None and t.numel() > 0 and not all_finite(t):
                raise ValueError(f"{_FN}: '{name}' contains non-finite "
                                 f"values (NaN or Inf)")


def _prepare(x_src, x_dst, att, csr, edge_attr, edge_weight, negative_slope,
             dropout, training, seed) -> Tuple:
    negative_slope, dropout = float(negative_slope), float(dropout)
    _validate(x_src, x_dst, att, csr, edge_attr, edge_weight, negative_slope,
              dropout)
    p = dropout if training else 0.0
    if p > 0:
        seed = draw_dropout_seed(x_src.device) if seed is None else \
            normalize_seed(seed)
    else:
        seed = 0
    if edge_attr is not None:
        edge_attr, edge_weight = edge_attr.contiguous(), edge_weight.contiguous()
    return (x_src.contiguous(), x_dst.contiguous(), att.contiguous(),
            edge_attr, edge_weight, negative_slope, p, seed)


# ---------------------------------------------------------------------------
# Reference path (pure PyTorch, differentiated by autograd)
# ---------------------------------------------------------------------------
def _scores(x_src: Tensor, x_dst: Tensor, att: Tensor, csr: CSRGraph,
            edge_attr: Optional[Tensor], edge_weight: Optional[Tensor],
            negative_slope: float, row: Tensor) -> Tensor:
    r"""GATv2 scores ``[E, H]`` in CSR order (materialises ``[E, H, C]``)."""
    return _edge_scores(x_src, x_dst, att, csr.col.long(), row, csr.perm,
                        edge_attr, edge_weight, negative_slope)


def _edge_scores(x_src: Tensor, x_dst: Tensor, att: Tensor, col: Tensor,
                 row: Tensor, perm: Tensor, edge_attr: Optional[Tensor],
                 edge_weight: Optional[Tensor], negative_slope: float) -> Tensor:
    r"""GATv2 scores ``[e, H]`` of the CSR-ordered edges given by their
    sources :obj:`col`, destinations :obj:`row` and original positions
    :obj:`perm` (all edges, or one chunk of them)."""
    H, C = att.shape
    z = x_src.index_select(0, col) + x_dst.index_select(0, row)
    if edge_attr is not None:
        z = z + (edge_attr.index_select(0, perm) @ edge_weight.t()).view(-1, H, C)
    return (F.leaky_relu(z, negative_slope) * att).sum(dim=-1)


def _reference(x_src: Tensor, x_dst: Tensor, att: Tensor, csr: CSRGraph,
               edge_attr: Optional[Tensor], edge_weight: Optional[Tensor],
               negative_slope: float, p: float, seed: int) -> Tensor:
    row = csr_row(csr)
    a = _softmax_by_row(
        _scores(x_src, x_dst, att, csr, edge_attr, edge_weight,
                negative_slope, row), row, csr.num_dst)
    if p > 0:
        keep = dropout_keep_mask(seed, csr.col.numel(), x_src.size(1), p,
                                 x_src.device).index_select(0, csr.perm)
        a = a * keep.to(a.dtype) * (1.0 / (1.0 - p) if p < 1 else 0.0)
    msg = a.unsqueeze(-1) * x_src.index_select(0, csr.col.long())
    return x_src.new_zeros(x_dst.shape).index_add(0, row, msg)


# ---------------------------------------------------------------------------
# Extension path: fake kernels and autograd for torch.library
# ---------------------------------------------------------------------------
def _has_kernel() -> bool:
    try:
        return hasattr(torch.ops.torch_geometric_gnf, 'gatv2_attention_forward')
    except (AttributeError, RuntimeError):  # pragma: no cover
        return False


def _fake_forward(x_src, x_dst, att, edge_attr, edge_weight, rowptr, col,
                  perm, src_rowptr, src_slot, src_row, negative_slope,
                  dropout, seed):
    return x_dst.new_empty(x_dst.shape), x_dst.new_empty(x_dst.shape[:2])


def _fake_backward(grad_out, x_src, x_dst, att, edge_attr, edge_weight, out,
                   lse, rowptr, col, perm, src_rowptr, src_slot, src_row,
                   negative_slope, dropout, seed):
    def like(t):
        return x_src.new_empty(0) if t is None else t.new_empty(t.shape)
    return (like(x_src), like(x_dst), like(att), like(edge_attr),
            like(edge_weight))


def _setup_context(ctx, inputs, output) -> None:
    (x_src, x_dst, att, edge_attr, edge_weight, rowptr, col, perm,
     src_rowptr, src_slot, src_row, slope, p, seed) = inputs
    out, lse = output
    # Only the inputs, the output and the [num_dst, H] log-sum-exp are kept;
    # the graph tensors are referenced (the caller keeps and caches them).
    ctx.save_for_backward(x_src, x_dst, att, edge_attr, edge_weight, out, lse,
                          rowptr, col, perm, src_rowptr, src_slot, src_row)
    ctx.mark_non_differentiable(lse)
    ctx.slope, ctx.p, ctx.seed = slope, p, seed


def _backward(ctx, grad_out: Tensor, grad_lse: Optional[Tensor]):
    (x_src, x_dst, att, edge_attr, edge_weight, out, lse, rowptr, col, perm,
     src_rowptr, src_slot, src_row) = ctx.saved_tensors
    g_src, g_dst, g_att, g_ea, g_w = \
        torch.ops.torch_geometric_gnf.gatv2_attention_backward(
            grad_out.contiguous(), x_src, x_dst, att, edge_attr, edge_weight,
            out, lse, rowptr, col, perm, src_rowptr, src_slot, src_row,
            ctx.slope, ctx.p, ctx.seed)
    if edge_attr is None:
        g_ea = g_w = None
    return (g_src, g_dst, g_att, g_ea, g_w) + (None, ) * 9


def _no_double_backward(ctx, *grads):
    raise RuntimeError(
        f"{_FN}: double backward (create_graph=True through the fused GATv2 "
        f"kernel) is not supported; use fused_gatv2_attention_reference or "
        f"GNF_DISABLE_EXTENSION=1 for higher-order gradients")


def _register() -> None:
    if not _has_kernel():
        return
    torch.library.register_fake(_FORWARD)(_fake_forward)
    torch.library.register_fake(_BACKWARD)(_fake_backward)
    torch.library.register_autograd(_FORWARD, _backward,
                                    setup_context=_setup_context)
    torch.library.register_autograd(
        _BACKWARD, _no_double_backward,
        setup_context=lambda ctx, inputs, output: None)


_register()


# ---------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------
def fused_gatv2_attention_reference(
        x_src: Tensor, x_dst: Tensor, att: Tensor, csr: CSRGraph,
        edge_attr: Optional[Tensor] = None,
        edge_weight: Optional[Tensor] = None, *, negative_slope: float = 0.2,
        dropout: float = 0.0, training: bool = True,
        seed: Optional[int] = None) -> Tensor:
    r"""Pure-PyTorch version of :func:`fused_gatv2_attention` (same
    arguments and results, same dropout mask, differentiated by autograd,
    also twice). It materialises ``[E, H, C]`` tensors: this is the test
    oracle and the fallback without the extension, not the memory-lean
    path."""
    x_src, x_dst, att, edge_attr, edge_weight, slope, p, seed = _prepare(
        x_src, x_dst, att, csr, edge_attr, edge_weight, negative_slope,
        dropout, training, seed)
    return _reference(x_src, x_dst, att, csr, edge_attr, edge_weight, slope,
                      p, seed)


def fused_gatv2_attention(
        x_src: Tensor, x_dst: Tensor, att: Tensor, csr: CSRGraph,
        edge_attr: Optional[Tensor] = None,
        edge_weight: Optional[Tensor] = None, *, negative_slope: float = 0.2,
        dropout: float = 0.0, training: bool = True,
        seed: Optional[int] = None) -> Tensor:
    r"""GATv2 attention aggregation (`"How Attentive are Graph Attention
    Networks?" <https://arxiv.org/abs/2105.14491>`_) in one fused pass over
    a destination-sorted graph.

    For every edge :math:`e = (j \to i)` and head :math:`h`

    .. math::
        \mathbf{z}_{e,h} &= \mathbf{x}^{src}_{j,h} + \mathbf{x}^{dst}_{i,h}
            + \mathbf{W}^{edge}_h \mathbf{e}_{e}, \qquad
        s_{e,h} = \mathbf{a}_h^{\top} \mathrm{LeakyReLU}(\mathbf{z}_{e,h}),\\
        a_{e,h} &= \operatorname{softmax}_{e' \to i}(s_{e',h}), \qquad
        \mathbf{out}_{i,h} = \sum_{e = (j \to i)} a_{e,h}
            \frac{\mu_{e,h}}{1 - p} \mathbf{x}^{src}_{j,h},

    with the dropout keep-mask :math:`\mu` of
    :func:`~torch_geometric_gnf.ops.dropout_keep_mask` (the same bits as the
    GAT op for a given seed; only when :obj:`training` and :math:`p > 0`).
    Nodes without incoming edges get exactly :math:`0`; duplicate edges and
    self-loops count as given.

    Memory: neither pass forms an :math:`E \times H \times C` tensor (nor
    the :math:`E \times HC` edge projection :math:`\mathbf{W}^{edge}
    \mathbf{e}`): the kernels recompute :math:`\mathbf{z}_{e,h}` per edge.
    Autograd saves the inputs, the output and the ``[num_dst, H]``
    log-sum-exp; with :math:`D_{i,h} = \langle \mathbf{g}_{i,h},
    \mathbf{out}_{i,h}\rangle` the backward uses
    :math:`\partial L / \partial s_{e,h} = a_{e,h} (\frac{\mu_{e,h}}{1-p}
    \langle \mathbf{g}_{i,h}, \mathbf{x}^{src}_{j,h}\rangle - D_{i,h})` and
    :math:`\partial L / \partial \mathbf{z}_{e,h} = \partial L / \partial
    s_{e,h} \, \mathbf{a}_h \odot \mathrm{LeakyReLU}'(\mathbf{z}_{e,h})`.

    Uses the registered C++/CUDA op when the extension supports the inputs
    (CPU float32/float64; CUDA also float16/bfloat16), else
    :func:`fused_gatv2_attention_reference`; both give the same numbers.
    A double backward through the kernel raises a clear error.

    Args:
        x_src (torch.Tensor): Projected source features
            ``[num_src, H, C]`` (GATv2's :math:`\mathbf{W}_l \mathbf{x}_j`).
        x_dst (torch.Tensor): Projected target features
            ``[num_dst, H, C]`` (:math:`\mathbf{W}_r \mathbf{x}_i`).
        att (torch.Tensor): Attention vectors ``[H, C]``.
        csr (CSRGraph): The graph, from :func:`build_csr` / :func:`cached_csr`.
        edge_attr (torch.Tensor, optional): Edge features ``[E, D]`` in the
            original edge order. (default: :obj:`None`)
        edge_weight (torch.Tensor, optional): Edge projection ``[H C, D]``
            (:obj:`lin_edge.weight`), with :obj:`edge_attr`.
            (default: :obj:`None`)
        negative_slope (float): LeakyReLU slope. (default: :obj:`0.2`)
        dropout (float): Attention dropout probability. (default: :obj:`0.`)
        training (bool): Apply dropout. (default: :obj:`True`)
        seed (int, optional): Dropout seed; drawn from the default generator
            of :obj:`x_src`'s device when :obj:`None` (so an RNG-state
            replay reproduces it). (default: :obj:`None`)

    Returns:
        torch.Tensor: ``[num_dst, H, C]``.
    """
    x_src, x_dst, att, edge_attr, edge_weight, slope, p, seed = _prepare(
        x_src, x_dst, att, csr, edge_attr, edge_weight, negative_slope,
        dropout, training, seed)
    if extension_supports(x_src) and _has_kernel():
        out, _ = torch.ops.torch_geometric_gnf.gatv2_attention_forward(
            x_src, x_dst, att, edge_attr, edge_weight, csr.rowptr, csr.col,
            csr.perm, csr.src_rowptr, csr.src_slot, csr_src_row(csr), slope,
            p, seed)
        return out
    return _reference(x_src, x_dst, att, csr, edge_attr, edge_weight, slope,
                      p, seed)


def gatv2_attention_weights(x_src: Tensor, x_dst: Tensor, att: Tensor,
                            csr: CSRGraph, edge_attr: Optional[Tensor] = None,
                            edge_weight: Optional[Tensor] = None, *,
                            negative_slope: float = 0.2) -> Tensor:
    r"""The softmax attention weights :math:`a_{e,h}` of
    :func:`fused_gatv2_attention` (before dropout), ``[E, H]`` in the
    original edge order. Computed on demand and differentiable; on graphs
    with more than 65,536 edges the per-edge ``[H, C]`` terms are built one
    chunk of edges at a time (checkpointed: recomputed in backward), so
    neither pass holds an ``[E, H, C]`` tensor."""
    slope = float(negative_slope)
    _validate(x_src, x_dst, att, csr, edge_attr, edge_weight, slope, 0.0)
    row = csr_row(csr)
    if is_traced(x_src) or csr.col.numel() <= _WEIGHTS_CHUNK:
        score = _scores(x_src, x_dst, att, csr, edge_attr, edge_weight,
                        slope, row)
    else:
        score = _chunked_scores(x_src, x_dst, att, csr, edge_attr,
                                edge_weight, slope, row)
    a = _softmax_by_row(score, row, csr.num_dst)
    return a.new_zeros(a.shape).index_copy(0, csr.perm, a)


# Edges scored at a time by gatv2_attention_weights on large graphs.
_WEIGHTS_CHUNK = 1 << 16


def _chunked_scores(x_src: Tensor, x_dst: Tensor, att: Tensor, csr: CSRGraph,
                    edge_attr: Optional[Tensor], edge_weight: Optional[Tensor],
                    negative_slope: float, row: Tensor) -> Tensor:
    r""":func:`_scores` a chunk of edges at a time, each chunk checkpointed
    (recomputed in backward): the ``[E, H, C]`` terms exist one chunk at a
    time, in forward and backward, and autograd keeps only ``[E, H]``."""
    col = csr.col.long()
    grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad
        for t in (x_src, x_dst, att, edge_attr, edge_weight))
    parts = []
    for start in range(0, col.numel(), _WEIGHTS_CHUNK):
        sl = slice(start, start + _WEIGHTS_CHUNK)
        chunk = (col[sl], row[sl], csr.perm[sl])
        if grad:
            parts.append(checkpoint(_edge_scores, x_src, x_dst, att, *chunk,
                                    edge_attr, edge_weight, negative_slope,
                                    use_reentrant=False))
        else:
            parts.append(_edge_scores(x_src, x_dst, att, *chunk, edge_attr,
                                       edge_weight, negative_slope))
    return torch.cat(parts)
