r"""Evaluation metrics for graph generative models.

GraphRNN-style MMD² between a reference and a generated set of graphs on
degree, clustering-coefficient and 4-node graphlet-orbit statistics, with
GraphRNN's Gaussian-EMD kernels (default) or GRAN's Gaussian-TV variant, and
our own ORCA-compatible orbit counts. See :mod:`.mmd` for the conventions.
"""
from .graph_statistics import (clustering_coefficients, clustering_histogram,
                               degree_histogram, graph_to_adjacency,
                               to_adjacency_list, to_networkx_graphs)
from .mmd import (clustering_mmd, degree_mmd, emd_1d, graph_mmd_table,
                  histogram_mmd, orbit_mmd)
from .orbits import NUM_ORBITS, mean_orbit_counts, orbit_counts

__all__ = [
    'degree_mmd',
    'clustering_mmd',
    'orbit_mmd',
    'graph_mmd_table',
    'orbit_counts',
    'mean_orbit_counts',
    'NUM_ORBITS',
    'histogram_mmd',
    'emd_1d',
    'degree_histogram',
    'clustering_coefficients',
    'clustering_histogram',
    'graph_to_adjacency',
    'to_adjacency_list',
    'to_networkx_graphs',
]
