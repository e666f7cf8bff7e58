"""Input validation with clear messages.

Bad input must fail loudly and early, naming the problem, instead of crashing
deep inside a kernel or silently producing garbage.  The checks cost one pass
over ``x`` and ``edge_index``; :func:`set_input_checks` turns the value checks
(finiteness, index range) off for production runs, shape/dtype/device checks
always stay on because they are free.

Inside code that :func:`torch.compile` traces, the value checks are skipped:
they read tensor values, which would split the compiled graph at every
check.  Check the inputs once before the compiled region instead (e.g.
:class:`~torch_geometric_gnf.nn.GraphNormalizingFlow` checks its node
features and batch vector before calling compiled couplings).
"""
from typing import Any, Optional

import torch
from torch import Tensor

_VALUE_CHECKS = True


def set_input_checks(enabled: bool) -> None:
    r"""Globally enable or disable the value checks (NaN/Inf in features,
    out-of-range indices).  Shape, dtype and device checks are always on."""
    global _VALUE_CHECKS
    _VALUE_CHECKS = bool(enabled)


def input_checks_enabled() -> bool:
    r"""Whether value checks (NaN/Inf, index range) are enabled (never while
    :func:`torch.compile`, :func:`torch.export` or :func:`torch.jit.trace`
    traces)."""
    return _VALUE_CHECKS and not torch.compiler.is_compiling() and \
        not torch.jit.is_tracing()


def check_node_features(x: Any, name: str = 'x') -> None:
    r"""Checks that :obj:`x` is a floating point node-feature tensor of shape
    :obj:`[num_nodes, *]` with only finite values."""
    if not isinstance(x, Tensor):
        raise TypeError(f"'{name}' must be a torch.Tensor (got {type(x).__name__})")
    if x.dim() < 2:
        raise ValueError(f"'{name}' must have shape [num_nodes, channels] "
                         f"(got shape {tuple(x.shape)})")
    if not x.is_floating_point():
        raise ValueError(f"'{name}' must be a floating point tensor (got {x.dtype})")
    if input_checks_enabled() and x.numel() > 0 and not all_finite(x):
        num_nan = int(torch.isnan(x).sum())
        num_inf = int(torch.isinf(x).sum())
        raise ValueError(f"'{name}' contains non-finite values ({num_nan} NaN, "
                         f"{num_inf} Inf)")


@torch.no_grad()  # a check must never enter the autograd graph
def all_finite(x: Tensor) -> bool:
    r"""Whether every element of :obj:`x` is finite (no NaN/Inf)."""
    # A finite sum implies every element is finite (NaN/Inf propagate); the
    # one reduction is much cheaper than a full mask. Only an overflowing sum
    # of finite values needs the exact element-wise check.
    if not (x.is_floating_point() or x.is_complex()):
        return True
    return bool(torch.isfinite(x.sum())) or bool(torch.isfinite(x).all())


def _check_index_tensor(index: Tensor, device: torch.device, name: str) -> None:
    if index.device != device:
        raise RuntimeError(f"'{name}' is on {index.device} but the node "
                           f"features are on {device}")
    if index.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"'{name}' must have dtype torch.int64 or torch.int32 "
                         f"(got {index.dtype})")


def check_edge_index(edge_index: Any, num_nodes: int, device: torch.device,
                     name: str = 'edge_index') -> None:
    r"""Checks a dense :obj:`edge_index` of shape :obj:`[2, num_edges]`:
    integer dtype, same device as the node features and indices in
    :obj:`[0, num_nodes)`.  Sparse adjacency formats (``SparseTensor``,
    ``torch.sparse``) are checked for their size only."""
    if edge_index is None:
        return
    if isinstance(edge_index, Tensor) and not edge_index.is_sparse and \
            edge_index.layout == torch.strided:
        _check_index_tensor(edge_index, device, name)
        if edge_index.dim() != 2 or edge_index.size(0) != 2:
            raise ValueError(f"'{name}' must have shape [2, num_edges] "
                             f"(got shape {tuple(edge_index.shape)})")
        if input_checks_enabled() and edge_index.numel() > 0:
            lo, hi = int(edge_index.min()), int(edge_index.max())
            if lo < 0 or hi >= num_nodes:
                raise ValueError(f"'{name}' contains out-of-range node indices "
                                 f"(found range [{lo}, {hi}], but there are "
                                 f"only {num_nodes} nodes)")
        return
    sizes = None
    if hasattr(edge_index, 'sparse_sizes'):  # torch_sparse.SparseTensor
        sizes = edge_index.sparse_sizes()
    elif isinstance(edge_index, Tensor):  # torch.sparse layouts
        sizes = tuple(edge_index.shape)
    if sizes is not None:
        dev = edge_index.device
        dev = dev() if callable(dev) else dev  # SparseTensor.device() is a method
        if dev != device:
            raise RuntimeError(f"'{name}' is on a different device than the node "
                               f"features ({device})")
        if sizes[-1] != num_nodes:
            raise ValueError(f"'{name}' is a sparse adjacency of size "
                             f"{tuple(sizes)} but there are {num_nodes} nodes")


def check_batch(batch: Optional[Tensor], num_nodes: int,
                device: torch.device) -> None:
    r"""Checks a :obj:`batch` vector (graph id per node)."""
    if batch is None:
        return
    if not isinstance(batch, Tensor):
        raise TypeError(f"'batch' must be a torch.Tensor (got {type(batch).__name__})")
    _check_index_tensor(batch, device, 'batch')
    if batch.dim() != 1 or batch.numel() != num_nodes:
        raise ValueError(f"'batch' must have shape [num_nodes={num_nodes}] "
                         f"(got shape {tuple(batch.shape)})")
    if input_checks_enabled() and batch.numel() > 0 and int(batch.min()) < 0:
        raise ValueError("'batch' contains negative graph indices")
