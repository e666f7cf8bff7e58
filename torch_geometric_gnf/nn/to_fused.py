r"""Swap every PyG :class:`~torch_geometric.nn.GATConv` in a model for a
:class:`FusedGATConv` carrying the same weights."""
import copy

import torch
from torch_geometric.nn import GATConv

from .fused_gat_conv import FusedGATConv

_WEIGHT_MODULES = ('lin', 'lin_src', 'lin_dst', 'lin_edge', 'res')


def fused_from_gat_conv(conv: GATConv) -> FusedGATConv:
    r"""A :class:`FusedGATConv` with :obj:`conv`'s hyper-parameters, weights
    (shared :class:`~torch.nn.Parameter` objects, not copies), training mode,
    device and dtype."""
    if not isinstance(conv, GATConv):
        raise TypeError(f"expected a torch_geometric.nn.GATConv (got "
                        f"{type(conv).__name__})")
    if conv.flow != 'source_to_target' or conv.aggr != 'add':
        raise ValueError(f"FusedGATConv supports flow='source_to_target' and "
                         f"aggr='add' only (the GATConv has flow="
                         f"'{conv.flow}', aggr={conv.aggr!r})")
    fused = FusedGATConv(
        conv.in_channels, conv.out_channels, heads=conv.heads,
        concat=conv.concat, negative_slope=conv.negative_slope,
        dropout=conv.dropout, add_self_loops=conv.add_self_loops,
        edge_dim=conv.edge_dim, fill_value=conv.fill_value,
        bias=conv.bias is not None, residual=conv.res is not None)
    # Re-use the very Parameter objects (same device, dtype, optimizer state
    # keys), including lazily initialised ones.
    for name in _WEIGHT_MODULES:
        module = getattr(conv, name, None)
        if isinstance(module, torch.nn.Module):
            setattr(fused, name, module)
    for name, param in conv.named_parameters(recurse=False):
        setattr(fused, name, param)
    fused.train(conv.training)
    return fused


def to_fused(model: torch.nn.Module, inplace: bool = False) -> torch.nn.Module:
    r"""Returns :obj:`model` with every :class:`torch_geometric.nn.GATConv`
    (at any depth, including the model itself) replaced by a
    :class:`FusedGATConv` with the same hyper-parameters and weights, so the
    outputs are the same (up to floating point rounding, and except for the
    attention dropout masks, which are drawn differently).

    With :obj:`inplace=False` (default) the model is deep-copied first and the
    original is left untouched; the copy owns its own weights. With
    :obj:`inplace=True` the GATConv submodules of :obj:`model` are replaced
    in place and the new layers share the old layers' parameters (an
    optimizer built on :obj:`model.parameters()` keeps working).
    Subclasses of GATConv are left alone (they may override its behaviour).
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"to_fused expects a torch.nn.Module (got "
                        f"{type(model).__name__})")
    if not inplace:
        model = copy.deepcopy(model)
    if type(model) is GATConv:
        return fused_from_gat_conv(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is GATConv:
                setattr(parent, name, fused_from_gat_conv(child))
    return model
