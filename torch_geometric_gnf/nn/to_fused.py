r"""Swap every PyG :class:`~torch_geometric.nn.GATConv` /
:class:`~torch_geometric.nn.GATv2Conv` in a model for a
:class:`FusedGATConv` / :class:`FusedGATv2Conv` carrying the same weights."""
import copy
from typing import Tuple

import torch
from torch_geometric.nn import GATConv, GATv2Conv

from .fused_gat_conv import FusedGATConv
from .fused_gatv2_conv import FusedGATv2Conv

_GAT_MODULES = ('lin', 'lin_src', 'lin_dst', 'lin_edge', 'res')
_GATV2_MODULES = ('lin_l', 'lin_r', 'lin_edge', 'res')


def _check_flow(conv: torch.nn.Module, fused_name: str) -> None:
    # 'add' (GATConv's default) and 'sum' (GATv2Conv's) are the same.
    if conv.flow != 'source_to_target' or conv.aggr not in ('add', 'sum'):
        raise ValueError(f"{fused_name} supports flow='source_to_target' and "
                         f"aggr='add' only (the {type(conv).__name__} has "
                         f"flow='{conv.flow}', aggr={conv.aggr!r})")


def _adopt_weights(conv: torch.nn.Module, fused: torch.nn.Module,
                   modules: Tuple[str, ...]) -> torch.nn.Module:
    r"""Makes :obj:`fused` use the very modules and Parameter objects of
    :obj:`conv` (same device, dtype, optimizer state keys, lazily initialised
    ones included) and its training mode."""
    for name in modules:
        module = getattr(conv, name, None)
        if isinstance(module, torch.nn.Module):
            setattr(fused, name, module)
    for name, param in conv.named_parameters(recurse=False):
        setattr(fused, name, param)
    fused.train(conv.training)
    return fused


def fused_from_gat_conv(conv: GATConv) -> FusedGATConv:
    r"""A :class:`FusedGATConv` with :obj:`conv`'s hyper-parameters, weights
    (shared :class:`~torch.nn.Parameter` objects, not copies), training mode,
    device and dtype."""
    if not isinstance(conv, GATConv):
        raise TypeError(f"expected a torch_geometric.nn.GATConv (got "
                        f"{type(conv).__name__})")
    _check_flow(conv, 'FusedGATConv')
    fused = FusedGATConv(
        conv.in_channels, conv.out_channels, heads=conv.heads,
        concat=conv.concat, negative_slope=conv.negative_slope,
        dropout=conv.dropout, add_self_loops=conv.add_self_loops,
        edge_dim=conv.edge_dim, fill_value=conv.fill_value,
        bias=conv.bias is not None, residual=conv.res is not None)
    return _adopt_weights(conv, fused, _GAT_MODULES)


def fused_from_gatv2_conv(conv: GATv2Conv) -> FusedGATv2Conv:
    r"""A :class:`FusedGATv2Conv` with :obj:`conv`'s hyper-parameters,
    weights (shared :class:`~torch.nn.Parameter` objects, not copies),
    training mode, device and dtype."""
    if not isinstance(conv, GATv2Conv):
        raise TypeError(f"expected a torch_geometric.nn.GATv2Conv (got "
                        f"{type(conv).__name__})")
    _check_flow(conv, 'FusedGATv2Conv')
    fused = FusedGATv2Conv(
        conv.in_channels, conv.out_channels, heads=conv.heads,
        concat=conv.concat, negative_slope=conv.negative_slope,
        dropout=conv.dropout, add_self_loops=conv.add_self_loops,
        edge_dim=conv.edge_dim, fill_value=conv.fill_value,
        bias=conv.bias is not None, share_weights=conv.share_weights,
        residual=conv.res is not None)
    return _adopt_weights(conv, fused, _GATV2_MODULES)


# Exact types only: subclasses may override the conv's behaviour.
_CONVERTERS = {GATConv: fused_from_gat_conv, GATv2Conv: fused_from_gatv2_conv}


def to_fused(model: torch.nn.Module, inplace: bool = False) -> torch.nn.Module:
    r"""Returns :obj:`model` with every :class:`torch_geometric.nn.GATConv`
    and :class:`torch_geometric.nn.GATv2Conv` (at any depth, including the
    model itself) replaced by a :class:`FusedGATConv` /
    :class:`FusedGATv2Conv` with the same hyper-parameters and weights, so
    the outputs are the same (up to floating point rounding, and except for
    the attention dropout masks, which are drawn differently).

    With :obj:`inplace=False` (default) the model is deep-copied first and the
    original is left untouched; the copy owns its own weights. With
    :obj:`inplace=True` the convs of :obj:`model` are replaced in place and
    the new layers share the old layers' parameters (an optimizer built on
    :obj:`model.parameters()` keeps working).
    Subclasses of GATConv / GATv2Conv are left alone (they may override
    their behaviour).
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"to_fused expects a torch.nn.Module (got "
                        f"{type(model).__name__})")
    if not inplace:
        model = copy.deepcopy(model)
    if type(model) in _CONVERTERS:
        return _CONVERTERS[type(model)](model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) in _CONVERTERS:
                setattr(parent, name, _CONVERTERS[type(child)](child))
    return model
