r"""Data sets: built-in synthetic graphs that need no download."""
from .synthetic import community_node_classification

__all__ = ['community_node_classification']
