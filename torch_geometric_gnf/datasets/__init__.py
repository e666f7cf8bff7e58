r"""Data sets: synthetic graphs and point sets generated from a seed, the
GraphRNN graph lists, and loaders for Planetoid and OGB files on disk."""
from .synthetic import community_node_classification
from .density import (HalfMoons6, MixtureOfGaussians, MixtureOfGaussiansRing,
                      PointSetDataset, moons_positions)
from .graphrnn import CommunitySmall, EgoSmall, graphrnn_split, read_graph_json
from .planetoid import copy_planetoid_raw, load_planetoid, one_percent_split
from .ogb import (OGB_PROCESSED_GLOBALS, OGBDataUnavailableError,
                  load_example_dataset, load_node_prop_pred_dataset,
                  ogb_safe_globals)
from .ogb_format import ogbn_dir_name, write_ogbn_dataset

__all__ = [
    'community_node_classification',
    'MixtureOfGaussians',
    'MixtureOfGaussiansRing',
    'HalfMoons6',
    'PointSetDataset',
    'moons_positions',
    'CommunitySmall',
    'EgoSmall',
    'graphrnn_split',
    'read_graph_json',
    'copy_planetoid_raw',
    'load_planetoid',
    'one_percent_split',
    'load_node_prop_pred_dataset',
    'OGBDataUnavailableError',
    'load_example_dataset',
    'ogb_safe_globals',
    'OGB_PROCESSED_GLOBALS',
    'ogbn_dir_name',
    'write_ogbn_dataset',
]
