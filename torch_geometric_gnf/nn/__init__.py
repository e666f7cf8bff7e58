r"""Reversible message passing layers and graph normalizing flows."""
from .reversible_message_passing import ReversibleMessagePassing
from .graph_affine_coupling import GraphAffineCoupling
from .graph_normalizing_flow import GraphNormalizingFlow

__all__ = [
    'ReversibleMessagePassing',
    'GraphAffineCoupling',
    'GraphNormalizingFlow',
]
