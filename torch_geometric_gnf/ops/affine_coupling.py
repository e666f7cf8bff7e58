r"""Fused elementwise affine coupling with a per-graph log-determinant."""
import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from torch_geometric_gnf.ops._extension import (extension_supports,
                                                op_registered)
from torch_geometric_gnf.utils import infer_num_graphs


def soft_clamp(s_raw: Tensor, clamp: Optional[float] = 2.0) -> Tensor:
    r"""Soft-clamps log-scales, :math:`s = c \tanh(s_{raw} / c)` for
    :math:`c > 0`; returns :obj:`s_raw` unchanged if :obj:`clamp` is
    :obj:`None` or :math:`\leq 0`."""
    if clamp is None or clamp <= 0:
        return s_raw
    return clamp * torch.tanh(s_raw / clamp)


def _validate(x: Tensor, s_raw: Tensor, t: Tensor, batch: Optional[Tensor],
              num_graphs: Optional[int], clamp: Optional[float]) -> int:
    r"""Checks the inputs; returns the number of graphs."""
    for name, v in (('x', x), ('s_raw', s_raw), ('t', t)):
        if not isinstance(v, Tensor):
            raise TypeError(f"affine_coupling: '{name}' must be a Tensor, "
                            f"got {type(v).__name__}")
    if x.dim() < 1:
        raise ValueError("affine_coupling: 'x' must have at least one "
                         "dimension (nodes on dim 0)")
    if not (x.shape == s_raw.shape == t.shape):
        raise ValueError(f"affine_coupling: shape mismatch, 'x' "
                         f"{tuple(x.shape)}, 's_raw' {tuple(s_raw.shape)} "
                         f"and 't' {tuple(t.shape)} must be equal")
    if not (x.dtype == s_raw.dtype == t.dtype):
        raise ValueError(f"affine_coupling: dtype mismatch, 'x' {x.dtype}, "
                         f"'s_raw' {s_raw.dtype} and 't' {t.dtype} must be "
                         f"equal")
    if not x.is_floating_point():
        raise ValueError(f"affine_coupling: expected a floating point dtype, "
                         f"got {x.dtype}")
    if not (x.device == s_raw.device == t.device):
        raise ValueError(f"affine_coupling: device mismatch, 'x' on "
                         f"{x.device}, 's_raw' on {s_raw.device} and 't' on "
                         f"{t.device}")
    if clamp is not None and not math.isfinite(clamp):
        raise ValueError(f"affine_coupling: 'clamp' must be finite, got "
                         f"{clamp}")
    N = x.size(0)
    if batch is not None:
        if not isinstance(batch, Tensor):
            raise TypeError("affine_coupling: 'batch' must be a Tensor")
        if batch.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"affine_coupling: 'batch' must be an int32 or "
                             f"int64 tensor, got {batch.dtype}")
        if batch.dim() != 1 or batch.numel() != N:
            raise ValueError(f"affine_coupling: 'batch' must be 1-D of "
                             f"length {N} (number of nodes), got shape "
                             f"{tuple(batch.shape)}")
        if batch.device != x.device:
            raise ValueError(f"affine_coupling: 'batch' on {batch.device} "
                             f"but 'x' on {x.device}")
    num_graphs = infer_num_graphs(batch, num_graphs)  # batch.max() syncs on CUDA
    if num_graphs < 0 or (batch is None and N > 0 and num_graphs < 1):
        raise ValueError(f"affine_coupling: invalid 'num_graphs' "
                         f"({num_graphs})")
    # Range check only on CPU (cheap there); on CUDA it would sync.
    if batch is not None and N > 0 and batch.device.type == 'cpu':
        lo, hi = int(batch.min()), int(batch.max())
        if lo < 0 or hi >= num_graphs:
            raise ValueError(f"affine_coupling: 'batch' values must lie in "
                             f"[0, {num_graphs}) (num_graphs), got "
                             f"[{lo}, {hi}]")
    return num_graphs


def _reference(x: Tensor, s_raw: Tensor, t: Tensor, batch: Optional[Tensor],
               num_graphs: int, clamp: Optional[float],
               inverse: bool) -> Tuple[Tensor, Tensor]:
    s = soft_clamp(s_raw, clamp)
    out = (x - t) * torch.exp(-s) if inverse else x * torch.exp(s) + t
    row = s.sum(dim=tuple(range(1, s.dim()))) if s.dim() > 1 else s
    if batch is None:
        batch = torch.zeros(x.size(0), dtype=torch.long, device=x.device)
    log_det = row.new_zeros(num_graphs).index_add(0, batch, row)
    return out, -log_det if inverse else log_det


# ---------------------------------------------------------------------------
# Extension path: the C++ ops registered with torch.library (fake kernels,
# autograd through register_autograd; see ops/gat_attention.py).
# ---------------------------------------------------------------------------
_FORWARD = 'torch_geometric_gnf::affine_coupling_forward'
_BACKWARD = 'torch_geometric_gnf::affine_coupling_backward'


def _fake_forward(x, s_raw, t, batch, num_graphs, clamp, inverse):
    return torch.empty_like(x), x.new_empty(num_graphs)


def _fake_backward(grad_out, data, s_raw, batch, grad_log_det, num_graphs,
                   clamp, inverse):
    return torch.empty_like(data), torch.empty_like(s_raw)


def _setup_context(ctx, inputs, output) -> None:
    # Saves the coupling's *input* in forward mode and its *output* in
    # inverse mode (x in both cases), so y is never stored.
    x, s_raw, t, batch, num_graphs, clamp, inverse = inputs
    out, _ = output
    ctx.save_for_backward(out if inverse else x, s_raw, batch)
    ctx.num_graphs, ctx.clamp, ctx.inverse = num_graphs, clamp, inverse


def _differentiable_backward(grad_out: Tensor, grad_log_det: Tensor,
                             data: Tensor, s_raw: Tensor,
                             batch: Optional[Tensor], clamp: float,
                             inverse: bool) -> Tuple[Tensor, Tensor]:
    r"""The backward's formulas in PyTorch ops, used when a graph of the
    backward is requested (``create_graph=True``), so that second-order
    gradients are exact. With :math:`s = c \tanh(s_{raw}/c)`,
    :math:`s' = 1 - (s/c)^2` and the per-node log-det gradient
    :math:`\ell_i = \bar{g}_{\mathrm{batch}_i}`: forward mode
    (:math:`\mathbf{x}` = input) :math:`\bar{x} = g e^{s}`,
    :math:`\bar{s}_{raw} = (g x e^{s} + \ell) s'`; inverse mode
    (:math:`\mathbf{x}` = output) :math:`\bar{y} = g e^{-s}`,
    :math:`\bar{s}_{raw} = -(g x + \ell) s'`."""
    s = soft_clamp(s_raw, clamp)
    ds = 1 - (s / clamp).pow(2) if clamp > 0 else torch.ones_like(s)
    node = grad_log_det.index_select(0, batch.long()) if batch is not None \
        else grad_log_det[:1].expand(data.size(0))
    node = node.view(-1, *([1] * (data.dim() - 1)))
    if inverse:
        return grad_out * torch.exp(-s), -(grad_out * data + node) * ds
    scaled = grad_out * torch.exp(s)
    return scaled, (scaled * data + node) * ds


def _backward(ctx, grad_out: Tensor, grad_log_det: Tensor):
    data, s_raw, batch = ctx.saved_tensors
    if torch.is_grad_enabled():  # a graph of the backward is requested
        grad_in, grad_s_raw = _differentiable_backward(
            grad_out, grad_log_det, data, s_raw, batch, ctx.clamp,
            ctx.inverse)
    else:
        grad_in, grad_s_raw = torch.ops.torch_geometric_gnf.\
            affine_coupling_backward(grad_out, data, s_raw, batch,
                                     grad_log_det, ctx.num_graphs, ctx.clamp,
                                     ctx.inverse)
    # t only enters through the output
    grad_t = -grad_in if ctx.inverse else grad_out
    return grad_in, grad_s_raw, grad_t, None, None, None, None


def _register() -> None:
    if not op_registered('affine_coupling_forward'):  # no extension
        return
    torch.library.register_fake(_FORWARD)(_fake_forward)
    torch.library.register_fake(_BACKWARD)(_fake_backward)
    torch.library.register_autograd(_FORWARD, _backward,
                                    setup_context=_setup_context)


_register()


def affine_coupling_reference(
    x: Tensor,
    s_raw: Tensor,
    t: Tensor,
    batch: Optional[Tensor] = None,
    num_graphs: Optional[int] = None,
    clamp: Optional[float] = 2.0,
    inverse: bool = False,
) -> Tuple[Tensor, Tensor]:
    r"""Pure-PyTorch version of :func:`affine_coupling` (same arguments and
    results, differentiated by autograd). Works on any device and dtype."""
    num_graphs = _validate(x, s_raw, t, batch, num_graphs, clamp)
    return _reference(x, s_raw, t, batch, num_graphs, clamp, inverse)


def affine_coupling(
    x: Tensor,
    s_raw: Tensor,
    t: Tensor,
    batch: Optional[Tensor] = None,
    num_graphs: Optional[int] = None,
    clamp: Optional[float] = 2.0,
    inverse: bool = False,
) -> Tuple[Tensor, Tensor]:
    r"""Elementwise affine coupling with a per-graph log-determinant, as used
    in Graph Normalizing Flows (`"Graph Normalizing Flows"
    <https://arxiv.org/abs/1905.13177>`_, built on RealNVP coupling layers).

    With the soft-clamped log-scale :math:`\mathbf{s} = c \tanh(
    \mathbf{s}_{raw} / c)` (or :math:`\mathbf{s} = \mathbf{s}_{raw}` if
    :math:`c \leq 0` or :obj:`None`), the forward direction computes

    .. math::
        \mathbf{y} = \mathbf{x} \odot \exp(\mathbf{s}) + \mathbf{t}, \qquad
        \log |\det J|_g = \sum_{i \,:\, \mathrm{batch}_i = g} \sum_k s_{ik}

    and the inverse direction (:obj:`inverse=True`, input is :math:`\mathbf{y}`)

    .. math::
        \mathbf{x} = (\mathbf{y} - \mathbf{t}) \odot \exp(-\mathbf{s}),
        \qquad \log |\det J|_g = -\sum_{i \,:\, \mathrm{batch}_i = g}
        \sum_k s_{ik}.

    Uses the fused C++/CUDA kernels of :obj:`torch_geometric_gnf._C` when
    built and supported for the inputs (CPU float32/float64; CUDA also
    half/bfloat16), else :func:`affine_coupling_reference`. The fused path
    stores only the coupling's input (forward) or output (inverse) for
    backward. Set ``GNF_DISABLE_EXTENSION=1`` to force the reference path.

    Args:
        x (torch.Tensor): The input of shape :obj:`[N, *]` (nodes on dim 0);
            :math:`\mathbf{y}` if :obj:`inverse=True`.
        s_raw (torch.Tensor): Raw log-scales, same shape and dtype as
            :obj:`x`.
        t (torch.Tensor): Shifts, same shape and dtype as :obj:`x`.
        batch (torch.Tensor, optional): int32/int64 graph index of each node,
            shape :obj:`[N]`. :obj:`None` puts all nodes in graph 0.
            (default: :obj:`None`)
        num_graphs (int, optional): Number of graphs :math:`G`. Defaults to
            :obj:`batch.max() + 1` (a device sync on CUDA; 0 if :obj:`N = 0`)
            or 1 if :obj:`batch` is :obj:`None`. Graphs without nodes get a
            log-determinant of 0. (default: :obj:`None`)
        clamp (float, optional): Soft clamp :math:`c` of the log-scales.
            (default: :obj:`2.0`)
        inverse (bool, optional): Compute the inverse coupling.
            (default: :obj:`False`)

    Returns:
        (torch.Tensor, torch.Tensor): The output (shape of :obj:`x`) and the
        per-graph log-determinant of shape :obj:`[num_graphs]`.

    The C++ ops are registered PyTorch operators (fake kernels, autograd via
    :func:`torch.library.register_autograd`). Inside code traced by
    :func:`torch.compile` the PyTorch reference path runs instead (the
    compiler fuses it), without the input checks (pass :obj:`num_graphs`
    there: inferring it reads :obj:`batch`). When a graph of the backward
    is requested (``create_graph=True``), the backward is autograd through
    the reference formulas, so second-order gradients are exact.
    """
    if torch.compiler.is_compiling():
        # Traced by torch.compile: the PyTorch path, which the compiler fuses
        # (it cannot see into the C++ op), without the value checks.
        return _reference(x, s_raw, t, batch, infer_num_graphs(batch, num_graphs),
                          clamp, inverse)
    num_graphs = _validate(x, s_raw, t, batch, num_graphs, clamp)
    if extension_supports(x):
        c = 0.0 if clamp is None else float(clamp)
        return torch.ops.torch_geometric_gnf.affine_coupling_forward(
            x, s_raw, t, batch, num_graphs, c, bool(inverse))
    return _reference(x, s_raw, t, batch, num_graphs, clamp, inverse)
