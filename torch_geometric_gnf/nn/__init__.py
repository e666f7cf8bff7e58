r"""Reversible message passing layers and graph normalizing flows."""
from .reversible_message_passing import ReversibleMessagePassing
from .graph_affine_coupling import GraphAffineCoupling
from .graph_normalizing_flow import GraphNormalizingFlow
from .invertible_linear import InvertibleLinear
from .dense_attention import (DenseAttentionBlock, DenseAttentionCoupling,
                              DenseLayout, DenseSelfAttention)
from .fused_gat_conv import FusedGATConv
from .fused_gatv2_conv import FusedGATv2Conv
from .to_fused import to_fused
from .convert_to_reversible import ReversibleGATStack, convert_to_reversible

__all__ = [
    'ReversibleMessagePassing',
    'GraphAffineCoupling',
    'GraphNormalizingFlow',
    'InvertibleLinear',
    'DenseSelfAttention',
    'DenseAttentionBlock',
    'DenseAttentionCoupling',
    'DenseLayout',
    'FusedGATConv',
    'FusedGATv2Conv',
    'to_fused',
    'convert_to_reversible',
    'ReversibleGATStack',
]
