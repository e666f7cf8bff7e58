r"""Fused GAT attention aggregation (scores, softmax, dropout and weighted sum
of neighbours in one kernel), its pure-PyTorch reference and the counter-based
dropout mask shared by every path."""
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from torch_geometric_gnf.ops._extension import (extension_supports,
                                                op_registered)
from torch_geometric_gnf.ops.csr import (CSRGraph, csr_row, csr_src_row,
                                         is_traced, validate_csr)
from torch_geometric_gnf.utils.checks import all_finite, input_checks_enabled

_MASK32 = 0xFFFFFFFF
_SEED_SALT = 0x9E3779B9  # must match csrc/gat_attention_math.h


# ---------------------------------------------------------------------------
# Counter-based dropout RNG. The same integer hash is implemented in
# csrc/gat_attention_math.h (CPU and CUDA); here it runs on int64 tensors
# holding uint32 values, with 32-bit products split in 16-bit halves so that
# no intermediate exceeds 2^49 (no signed overflow anywhere).
# ---------------------------------------------------------------------------
def _mul32(x, c: int):
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _MASK32


def _mix32(x):
    # "lowbias32" integer finaliser (Wellons): a bijection of uint32.
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def normalize_seed(seed: int) -> int:
    r"""Maps any Python integer to the signed 64-bit seed the kernels take
    (two's complement wrap-around)."""
    return ((int(seed) + 2**63) % 2**64) - 2**63


def _seed_key(seed: int) -> int:
    u = int(seed) % 2**64
    return _mix32((u & _MASK32) ^ _mix32((u >> 32) ^ _SEED_SALT))


def _keep_threshold(p: float) -> int:
    # keep <=> hash >= p * 2^32 (p * 2^32 is exact in double)
    return min(int(math.floor(float(p) * 4294967296.0)), 2**32)


def dropout_keep_mask(seed: int, num_edges: int, heads: int, p: float,
                      device=None) -> Tensor:
    r"""The attention dropout keep-mask of the fused kernels, ``[E, H]``
    bool, in the *original* edge order.

    Entry :math:`(e, h)` is a pure function of :obj:`(seed, e, h)`: with the
    counter :math:`c = e H + h` (64 bit) and a 32-bit key derived from the
    seed, :math:`r = \mathrm{mix}(\mathrm{mix}(c_{lo} \oplus k) \oplus
    \mathrm{mix}(c_{hi} + k))` and the edge is kept iff :math:`r \geq
    \lfloor p \cdot 2^{32} \rfloor`, so it is dropped with probability
    :math:`p`. C++, CUDA and this function compute the same bits, so the
    forward pass, the recomputing backward and every path agree exactly.
    """
    num_edges, heads = int(num_edges), int(heads)
    if num_edges < 0 or heads < 1:
        raise ValueError(f"dropout_keep_mask: need num_edges >= 0 and "
                         f"heads >= 1, got {num_edges}, {heads}")
    if not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"dropout_keep_mask: 'p' must lie in [0, 1], got "
                         f"{p}")
    ctr = torch.arange(num_edges * heads, dtype=torch.long, device=device)
    key = _seed_key(seed)
    r = _mix32(_mix32((ctr & _MASK32) ^ key)
               ^ _mix32(((ctr >> 32) + key) & _MASK32))
    return (r >= _keep_threshold(p)).view(num_edges, heads)


def draw_dropout_seed(device: torch.device) -> int:
    r"""A dropout seed from the default generator of :obj:`device`, so that
    a recorded and replayed RNG state (reversible backward) regenerates the
    same seed, hence the same attention dropout mask."""
    return int(torch.randint(-2**63, 2**63 - 1, (1, ), dtype=torch.long,
                             device=device).item())


# ---------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------
def _check_finite(name: str, t: Tensor) -> None:
    if t.numel() > 0 and not all_finite(t):
        raise ValueError(f"fused_gat_attention: '{name}' contains "
                         f"non-finite values (NaN or Inf)")


def _validate(x: Tensor, alpha_src: Tensor, alpha_dst: Tensor,
              csr: CSRGraph, alpha_edge: Optional[Tensor],
              negative_slope: float, dropout: float) -> None:
    fn = 'fused_gat_attention'
    for name, v in (('x', x), ('alpha_src', alpha_src),
                    ('alpha_dst', alpha_dst)):
        if not isinstance(v, Tensor):
            raise TypeError(f"{fn}: '{name}' must be a Tensor, got "
                            f"{type(v).__name__}")
    if alpha_edge is not None and not isinstance(alpha_edge, Tensor):
        raise TypeError(f"{fn}: 'alpha_edge' must be a Tensor or None, got "
                        f"{type(alpha_edge).__name__}")
    if not isinstance(csr, CSRGraph):
        raise TypeError(f"{fn}: 'csr' must be a CSRGraph (see "
                        f"torch_geometric_gnf.ops.build_csr), got "
                        f"{type(csr).__name__}")
    if x.dim() != 3:
        raise ValueError(f"{fn}: 'x' must have shape [num_src, heads, "
                         f"channels], got {tuple(x.shape)}")
    num_src, heads, _ = x.shape
    E = csr.col.numel()
    expect = {'alpha_src': (alpha_src, (csr.num_src, heads)),
              'alpha_dst': (alpha_dst, (csr.num_dst, heads))}
    if alpha_edge is not None:
        expect['alpha_edge'] = (alpha_edge, (E, heads))
    if num_src != csr.num_src:
        raise ValueError(f"{fn}: 'x' has {num_src} source nodes but the CSR "
                         f"graph has num_src={csr.num_src}")
    for name, (t, shape) in expect.items():
        if tuple(t.shape) != shape:
            raise ValueError(f"{fn}: '{name}' must have shape {shape}, got "
                             f"{tuple(t.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{fn}: expected floating point inputs, got "
                         f"{x.dtype}")
    for name, (t, _) in expect.items():
        if t.dtype != x.dtype:
            raise ValueError(f"{fn}: dtype mismatch, 'x' is {x.dtype} but "
                             f"'{name}' is {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"{fn}: device mismatch, 'x' is on {x.device} "
                             f"but '{name}' is on {t.device}")
    if csr.col.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{fn}: CSR indices must be int32 or int64, got "
                         f"{csr.col.dtype}")
    for name in ('rowptr', 'col', 'perm', 'src_rowptr', 'src_slot',
                 'src_row'):
        t = getattr(csr, name)
        if t is not None and t.device != x.device:
            raise ValueError(f"{fn}: device mismatch, 'x' is on {x.device} "
                             f"but csr.{name} is on {t.device}")
    if (csr.rowptr.numel() != csr.num_dst + 1 or
            csr.src_rowptr.numel() != csr.num_src + 1 or
            csr.perm.numel() != E or csr.src_slot.numel() != E or
            (csr.src_row is not None and csr.src_row.numel() != E)):
        raise ValueError(f"{fn}: inconsistent CSRGraph sizes (use "
                         f"build_csr to construct it)")
    if not is_traced(x) and not math.isfinite(negative_slope):
        raise ValueError(f"{fn}: 'negative_slope' must be finite, got "
                         f"{negative_slope}")
    if not 0.0 <= dropout <= 1.0:
        raise ValueError(f"{fn}: 'dropout' must lie in [0, 1], got "
                         f"{dropout}")
    if input_checks_enabled():
        for name, (t, _) in expect.items():
            _check_finite(name, t)
        _check_finite('x', x)


# ---------------------------------------------------------------------------
# Reference path (pure PyTorch, differentiated by autograd)
# ---------------------------------------------------------------------------
def _scores(alpha_src: Tensor, alpha_dst: Tensor, csr: CSRGraph,
            alpha_edge: Optional[Tensor], negative_slope: float,
            row: Tensor) -> Tensor:
    raw = alpha_src.index_select(0, csr.col.long()) + \
        alpha_dst.index_select(0, row)
    if alpha_edge is not None:
        raw = raw + alpha_edge.index_select(0, csr.perm)
    return F.leaky_relu(raw, negative_slope)


def _softmax_by_row(score: Tensor, row: Tensor, num_dst: int) -> Tensor:
    heads = score.size(1)
    index = row.view(-1, 1).expand(-1, heads)
    # The max only stabilises exp(); softmax does not depend on it.
    top = score.new_full((num_dst, heads), float('-inf')).scatter_reduce(
        0, index, score.detach(), 'amax', include_self=True)
    ex = torch.exp(score - top.index_select(0, row))
    den = score.new_zeros(num_dst, heads).index_add(0, row, ex)
    return ex / den.index_select(0, row)


def _reference(x: Tensor, alpha_src: Tensor, alpha_dst: Tensor,
               csr: CSRGraph, alpha_edge: Optional[Tensor],
               negative_slope: float, p: float, seed: int) -> Tensor:
    row = csr_row(csr)
    a = _softmax_by_row(
        _scores(alpha_src, alpha_dst, csr, alpha_edge, negative_slope, row),
        row, csr.num_dst)
    if p > 0:
        keep = dropout_keep_mask(seed, csr.col.numel(), x.size(1), p,
                                 x.device).index_select(0, csr.perm)
        scale = 1.0 / (1.0 - p) if p < 1 else 0.0
        a = a * keep.to(a.dtype) * scale
    msg = a.unsqueeze(-1) * x.index_select(0, csr.col.long())
    return x.new_zeros(csr.num_dst, x.size(1), x.size(2)).index_add(
        0, row, msg)


# ---------------------------------------------------------------------------
# Extension path: the C++ ops registered with torch.library (fake kernels for
# tracing, autograd through register_autograd), so torch.compile(fullgraph=
# True), torch.export and jit.trace see one op instead of a graph break.
# ---------------------------------------------------------------------------
_FORWARD = 'torch_geometric_gnf::gat_attention_forward'
_BACKWARD = 'torch_geometric_gnf::gat_attention_backward'


def _ops():
    return torch.ops.torch_geometric_gnf


# Fixed once _C is loaded; a constant is also what the compiler wants to see.
_HAS_KERNEL = op_registered('gat_attention_forward')


def _has_kernel() -> bool:
    return _HAS_KERNEL


def _csr_args(csr: CSRGraph) -> Tuple[Tensor, ...]:
    return (csr.rowptr, csr.col, csr.perm, csr.src_rowptr, csr.src_slot,
            csr_src_row(csr))


def _fake_forward(x, alpha_src, alpha_dst, alpha_edge, rowptr, col, perm,
                  src_rowptr, src_slot, src_row, negative_slope, dropout,
                  seed):
    num_dst, heads, channels = alpha_dst.size(0), x.size(1), x.size(2)
    return (x.new_empty(num_dst, heads, channels),
            x.new_empty(num_dst, heads))


def _fake_backward(grad_out, x, alpha_src, alpha_dst, alpha_edge, out, lse,
                   rowptr, col, perm, src_rowptr, src_slot, src_row,
                   negative_slope, dropout, seed):
    grad_edge = x.new_empty(0) if alpha_edge is None else \
        torch.empty_like(alpha_edge)
    return (torch.empty_like(x), torch.empty_like(alpha_src),
            torch.empty_like(alpha_dst), grad_edge)


def _setup_context(ctx, inputs, output) -> None:
    # Saves only the inputs, the output and the [num_dst, H] log-sum-exp;
    # the backward recomputes each edge's score, weight and dropout bit.
    (x, alpha_src, alpha_dst, alpha_edge, *graph, negative_slope, dropout,
     seed) = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(x, alpha_src, alpha_dst, alpha_edge, *graph, out,
                          lse)
    ctx.negative_slope, ctx.dropout, ctx.seed = negative_slope, dropout, seed


def _differentiable_backward(grad_out: Tensor, x: Tensor, alpha_src: Tensor,
                             alpha_dst: Tensor, alpha_edge: Optional[Tensor],
                             csr: CSRGraph, negative_slope: float, p: float,
                             seed: int) -> Tuple[Optional[Tensor], ...]:
    r"""The backward as a graph (``create_graph=True``, e.g. a gradient
    penalty): autograd through the reference path on the same inputs, so
    second-order gradients are exact (it materialises ``[E, H, C]``, only in
    this case)."""
    # One alias per argument: the same tensor passed twice (e.g. as
    # alpha_src and alpha_dst) must get each argument's share, not the sum.
    inputs = [t.view_as(t) if t.requires_grad else t.detach().requires_grad_()
              for t in (x, alpha_src, alpha_dst, alpha_edge) if t is not None]
    with torch.enable_grad():
        out = _reference(*inputs[:3], csr,
                         inputs[3] if alpha_edge is not None else None,
                         negative_slope, p, seed)
        grads = list(torch.autograd.grad(out, inputs, grad_out,
                                         create_graph=True,
                                         allow_unused=True))
    return tuple(grads) + (None, ) * (4 - len(grads))


def _backward(ctx, grad_out: Tensor, grad_lse: Optional[Tensor]):
    (x, alpha_src, alpha_dst, alpha_edge, rowptr, col, perm, src_rowptr,
     src_slot, src_row, out, lse) = ctx.saved_tensors
    args = (ctx.negative_slope, ctx.dropout, ctx.seed)
    if torch.is_grad_enabled():  # a graph of the backward is requested
        csr = CSRGraph(rowptr, col, perm, src_rowptr, src_slot, x.size(0),
                       alpha_dst.size(0), src_row)
        grads = _differentiable_backward(grad_out, x, alpha_src, alpha_dst,
                                         alpha_edge, csr, *args)
    else:
        grads = _ops().gat_attention_backward(
            grad_out.contiguous(), x, alpha_src, alpha_dst, alpha_edge, out,
            lse, rowptr, col, perm, src_rowptr, src_slot, src_row, *args)
    gx, gs, gd, ge = grads
    return (gx, gs, gd, ge if alpha_edge is not None else None) + \
        (None, ) * 9


def _register() -> None:
    if not _has_kernel():
        return
    torch.library.register_fake(_FORWARD)(_fake_forward)
    torch.library.register_fake(_BACKWARD)(_fake_backward)
    torch.library.register_autograd(_FORWARD, _backward,
                                    setup_context=_setup_context)


_register()


# ---------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------
def _prepare(x, alpha_src, alpha_dst, csr, alpha_edge, negative_slope,
             dropout, training, seed) -> Tuple:
    negative_slope, dropout = float(negative_slope), float(dropout)
    _validate(x, alpha_src, alpha_dst, csr, alpha_edge, negative_slope,
              dropout)
    p = dropout if training else 0.0
    if p > 0:
        seed = draw_dropout_seed(x.device) if seed is None else normalize_seed(seed)
    else:
        seed = 0
    alpha_edge = None if alpha_edge is None else alpha_edge.contiguous()
    return (x.contiguous(), alpha_src.contiguous(), alpha_dst.contiguous(),
            alpha_edge, negative_slope, p, seed)


def fused_gat_attention_reference(
        x: Tensor, alpha_src: Tensor, alpha_dst: Tensor, csr: CSRGraph,
        alpha_edge: Optional[Tensor] = None, *, negative_slope: float = 0.2,
        dropout: float = 0.0, training: bool = True,
        seed: Optional[int] = None) -> Tensor:
    r"""Pure-PyTorch version of :func:`fused_gat_attention` (same arguments
    and results, same dropout mask, differentiated by autograd). It
    materialises ``[E, H, C]`` messages: this is the test oracle and the
    fallback without the extension, not the memory-efficient path."""
    x, alpha_src, alpha_dst, alpha_edge, slope, p, seed = _prepare(
        x, alpha_src, alpha_dst, csr, alpha_edge, negative_slope, dropout,
        training, seed)
    return _reference(x, alpha_src, alpha_dst, csr, alpha_edge, slope, p,
                      seed)


def fused_gat_attention(
        x: Tensor, alpha_src: Tensor, alpha_dst: Tensor, csr: CSRGraph,
        alpha_edge: Optional[Tensor] = None, *, negative_slope: float = 0.2,
        dropout: float = 0.0, training: bool = True,
        seed: Optional[int] = None) -> Tensor:
    r"""GAT attention aggregation (`"Graph Attention Networks"
    <https://arxiv.org/abs/1710.10903>`_) in one fused pass over a
    destination-sorted graph.

    For every edge :math:`e = (j \to i)` and head :math:`h`

    .. math::
        s_{e,h} &= \mathrm{LeakyReLU}\big(\alpha^{src}_{j,h} +
            \alpha^{dst}_{i,h} + \alpha^{edge}_{e,h}\big), \\
        a_{e,h} &= \frac{\exp(s_{e,h} - m_{i,h})}
            {\sum_{e' \to i} \exp(s_{e',h} - m_{i,h})}, \qquad
            m_{i,h} = \max_{e' \to i} s_{e',h}, \\
        \mathbf{out}_{i,h} &= \sum_{e = (j \to i)} a_{e,h}
            \frac{\mu_{e,h}}{1 - p} \mathbf{x}_{j,h},

    with the dropout keep-mask :math:`\mu` of :func:`dropout_keep_mask`
    (only when :obj:`training` and :math:`p > 0`). Nodes without incoming
    edges get exactly :math:`0`; duplicate edges and self-loops count as
    given.

    Memory: the kernels save only the inputs, the output and the per-node
    log-sum-exp :math:`\ell_{i,h} = m_{i,h} + \log \sum \exp(\cdot)`; no
    :math:`E \times H` tensor is kept. The backward recomputes scores per
    edge (as FlashAttention does) with :math:`D_{i,h} = \langle
    \mathbf{g}_{i,h}, \mathbf{out}_{i,h} \rangle` and

    .. math::
        \frac{\partial L}{\partial s_{e,h}} = a_{e,h} \Big(
            \frac{\mu_{e,h}}{1-p} \langle \mathbf{g}_{i,h},
            \mathbf{x}_{j,h} \rangle - D_{i,h} \Big).

    Uses the C++/CUDA kernels when the extension supports the inputs (CPU
    float32/float64; CUDA also float16/bfloat16), else
    :func:`fused_gat_attention_reference`; both give the same numbers.
    The kernels are registered PyTorch operators
    (``torch.ops.torch_geometric_gnf.gat_attention_forward`` / ``_backward``
    with fake kernels and :func:`torch.library.register_autograd`), so
    :func:`torch.compile` (also :obj:`fullgraph=True`), :func:`torch.export`
    and :func:`torch.jit.trace` see them as single ops.

    Graph safety: the CPU kernels validate every index of :obj:`csr`
    (:func:`~torch_geometric_gnf.ops.csr.validate_csr` on the other paths)
    and raise a :class:`ValueError` for an inconsistent hand-made graph; the
    CUDA kernels also guard every load, so no path reads out of bounds.

    Second-order gradients: when a graph of the backward is requested
    (``create_graph=True``, e.g. a gradient penalty), the backward runs as
    autograd through the reference path on the same inputs, so double
    backward is exact (checked with :func:`torch.autograd.gradgradcheck`)
    at the reference path's memory cost for that call.

    Args:
        x (torch.Tensor): Projected source features ``[num_src, H, C]``.
        alpha_src (torch.Tensor): Source attention logits ``[num_src, H]``.
        alpha_dst (torch.Tensor): Target attention logits ``[num_dst, H]``.
        csr (CSRGraph): The graph, from :func:`build_csr` / :func:`cached_csr`.
        alpha_edge (torch.Tensor, optional): Edge attention logits ``[E, H]``
            in the original edge order. (default: :obj:`None`)
        negative_slope (float): LeakyReLU slope. (default: :obj:`0.2`)
        dropout (float): Attention dropout probability. (default: :obj:`0.`)
        training (bool): Apply dropout. (default: :obj:`True`)
        seed (int, optional): Dropout seed; drawn from the default generator
            of :obj:`x`'s device when :obj:`None` (so an RNG-state replay
            reproduces it). (default: :obj:`None`)

    Returns:
        torch.Tensor: ``[num_dst, H, C]``.
    """
    x, alpha_src, alpha_dst, alpha_edge, slope, p, seed = _prepare(
        x, alpha_src, alpha_dst, csr, alpha_edge, negative_slope, dropout,
        training, seed)
    fused = extension_supports(x) and _has_kernel()
    # The CPU kernels validate the graph themselves; elsewhere (reference
    # path, CUDA when the checks are on) it is checked here.
    if not is_traced(x) and not (fused and x.device.type == 'cpu') and \
            (not fused or input_checks_enabled()):
        validate_csr(csr, 'fused_gat_attention')
    if fused:
        out, _ = _ops().gat_attention_forward(x, alpha_src, alpha_dst,
                                              alpha_edge, *_csr_args(csr),
                                              slope, p, seed)
        return out
    return _reference(x, alpha_src, alpha_dst, csr, alpha_edge, slope, p,
                      seed)


def gat_attention_weights(alpha_src: Tensor, alpha_dst: Tensor,
                          csr: CSRGraph, alpha_edge: Optional[Tensor] = None,
                          *, negative_slope: float = 0.2) -> Tensor:
    r"""The softmax attention weights :math:`a_{e,h}` of
    :func:`fused_gat_attention` (before dropout), ``[E, H]`` in the original
    edge order. Computed on demand (materialises ``[E, H]``), differentiable.
    """
    if not isinstance(alpha_src, Tensor) or alpha_src.dim() != 2:
        raise ValueError("gat_attention_weights: 'alpha_src' must be a "
                         "[num_src, H] tensor")
    heads = alpha_src.size(1)
    # Reuse the full validation with a zero-width feature tensor.
    x = alpha_src.new_empty(alpha_src.size(0), heads, 0)
    _validate(x, alpha_src, alpha_dst, csr, alpha_edge, float(negative_slope),
              0.0)
    row = csr_row(csr)
    a = _softmax_by_row(
        _scores(alpha_src, alpha_dst, csr, alpha_edge, float(negative_slope),
                row), row, csr.num_dst)
    return a.new_zeros(a.shape).index_copy(0, csr.perm, a)
