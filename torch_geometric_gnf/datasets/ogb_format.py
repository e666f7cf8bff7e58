r"""Writes small synthetic node-property data sets in OGB's on-disk layout.

OGB data cannot always be downloaded (offline CI, air-gapped clusters).  The
files written here are read by the *real* loaders of ``ogb`` 1.3.6
(:class:`ogb.nodeproppred.PygNodePropPredDataset`), so tests and users' smoke
runs go through exactly the code path of the real data sets::

    <root>/<ogbn_name with '_'>/
        RELEASE_v1.txt                      # version marker: no update prompt
        raw/edge.csv.gz                     # one "src,dst" row per edge
        raw/num-node-list.csv.gz            # one graph: its node count
        raw/num-edge-list.csv.gz            # one graph: its (stored) edge count
        raw/node-feat.csv.gz                # arxiv, products: float features
        raw/edge-feat.csv.gz                # proteins: 8 float edge features
        raw/node-label.csv.gz               # one row per node
        raw/node_year.csv.gz                # arxiv: publication year
        raw/node_species.csv.gz             # proteins: species id
        split/<split type>/{train,valid,test}.csv.gz

``ogb`` decides to download only when a file of ``raw_file_names``
(``edge.csv.gz`` and the feature files) is missing, and asks to re-download
when ``RELEASE_v<version>.txt`` is missing; both are written, so nothing
touches the network.

The graphs are planted partitions: every node has a community, most edges
stay inside a community, and features and labels depend on it, so a model
can learn something on them (they are smoke-test data, not benchmarks).
"""
import gzip
import math
import os
import os.path as osp
import shutil
from typing import Dict, Optional, Tuple

import numpy as np

from torch_geometric_gnf.utils import check_real

# Per data set: what ogb's master.csv says about the on-disk format.
OGBN_FORMATS: Dict[str, Dict] = {
    'ogbn-arxiv': dict(num_features=128, num_classes=40, num_tasks=1,
                       split='time', edge_features=0, directed=True),
    'ogbn-products': dict(num_features=100, num_classes=47, num_tasks=1,
                          split='sales_ranking', edge_features=0,
                          directed=False),
    'ogbn-proteins': dict(num_features=0, num_classes=2, num_tasks=112,
                          split='species', edge_features=8, directed=False),
}

# Real ogbn-arxiv: train <= 2017, valid 2018, test 2019.
_ARXIV_YEARS = np.arange(2008, 2020)
# Real ogbn-proteins species ids (8 species; the last ones are valid / test).
_PROTEIN_SPECIES = np.array([3702, 4932, 6239, 7227, 7955, 9606, 10090, 511145])


def ogbn_dir_name(name: str) -> str:
    r"""The folder ``ogb`` uses for :obj:`name`, e.g. ``ogbn_arxiv``."""
    return '_'.join(name.split('-'))


def _write_csv_gz(path: str, array: np.ndarray, fmt: str) -> None:
    array = np.asarray(array)
    if array.ndim == 1:
        array = array[:, None]
    # compresslevel 1: these are throw-away files, writing speed matters more.
    with gzip.open(path, 'wt', compresslevel=1) as f:
        if array.size > 0:
            np.savetxt(f, array, fmt=fmt, delimiter=',')


def _planted_partition(num_nodes: int, num_edges: int, num_communities: int,
                       homophily: float, rng: np.random.Generator
                       ) -> Tuple[np.ndarray, np.ndarray]:
    r"""Community of every node and :obj:`num_edges` distinct directed edges
    without self-loops (a fraction :obj:`homophily` inside a community)."""
    community = rng.integers(0, num_communities, num_nodes)
    order = np.argsort(community, kind='stable')
    counts = np.bincount(community, minlength=num_communities)
    start = np.cumsum(counts) - counts
    edges = np.empty((0, 2), dtype=np.int64)
    max_edges = num_nodes * (num_nodes - 1)
    while len(edges) < num_edges:
        m = int((num_edges - len(edges)) * 1.1) + 16
        src = rng.integers(0, num_nodes, m)
        same = rng.random(m) < homophily
        pick = (rng.random(m) * counts[community[src]]).astype(np.int64)
        dst = np.where(same, order[start[community[src]] + pick],
                       rng.integers(0, num_nodes, m))
        new = np.stack([src, dst], axis=1)[src != dst]
        # np.unique sorts; keep the first occurrences in generation order.
        both = np.concatenate([edges, new])
        _, first = np.unique(both[:, 0] * num_nodes + both[:, 1],
                             return_index=True)
        edges = both[np.sort(first)]
        if len(edges) >= max_edges:
            break
    return community, edges[:num_edges]


def write_ogbn_dataset(root: str, name: str, num_nodes: int = 300,
                       num_edges: Optional[int] = None,
                       num_features: Optional[int] = None,
                       num_classes: Optional[int] = None,
                       homophily: float = 0.8, feature_noise: float = 1.0,
                       seed: int = 0, overwrite: bool = False) -> str:
    r"""Writes a synthetic :obj:`name` (``"ogbn-arxiv"``, ``"ogbn-products"``
    or ``"ogbn-proteins"``) in OGB's raw format under :obj:`root` and returns
    the data set folder.  Load it with
    :func:`~torch_geometric_gnf.datasets.load_node_prop_pred_dataset`
    (or ``PygNodePropPredDataset(name, root)``).

    Node/edge feature sizes, number of classes / tasks and split type follow
    the real data set (``num_features`` / ``num_classes`` may be changed for
    arxiv and products; the loaders accept any, but OGB's evaluator checks
    only the number of tasks).  Splits follow the real split's logic: arxiv
    by year (train <= 2017, valid 2018, test 2019), proteins by species, and
    products by a random "sales rank" (top 8% train, next 2% valid, rest
    test, roughly the real proportions).

    Args:
        root (str): Folder that will hold ``<ogbn_name>/``.
        name (str): OGB node property prediction data set name.
        num_nodes (int, optional): Number of nodes (>= 30). (default: :obj:`300`)
        num_edges (int, optional): Edges written to ``edge.csv.gz``
            (``ogb`` adds the reverse edges for products and proteins; there
            an edge and its reverse count once, so a few fewer than
            :obj:`num_edges` may be written). (default: :obj:`4 * num_nodes`)
        num_features (int, optional): Node feature size (arxiv, products).
        num_classes (int, optional): Number of classes (arxiv, products).
        homophily (float, optional): Fraction of edges inside a community.
        feature_noise (float, optional): Std of the noise added to the
            community centroid of each node's features.
        seed (int, optional): Random seed. (default: :obj:`0`)
        overwrite (bool, optional): Replace an existing folder (including
            its ``processed/`` cache). (default: :obj:`False`)
    """
    if name not in OGBN_FORMATS:
        raise ValueError(f"Unknown data set '{name}' (supported: "
                         f"{', '.join(OGBN_FORMATS)})")
    fmt = dict(OGBN_FORMATS[name])
    if not isinstance(num_nodes, int) or num_nodes < 30:
        raise ValueError(f"'num_nodes' must be an int >= 30 so that every split "
                         f"gets nodes (got {num_nodes!r})")
    num_edges = 4 * num_nodes if num_edges is None else num_edges
    if not isinstance(num_edges, int) or not 1 <= num_edges <= num_nodes * (num_nodes - 1) // 2:
        raise ValueError(f"'num_edges' must be an int in [1, num_nodes * "
                         f"(num_nodes - 1) / 2] (got {num_edges!r})")
    if name == 'ogbn-proteins' and (num_features is not None or num_classes is not None):
        raise ValueError("ogbn-proteins has no node features and 112 binary "
                         "tasks; 'num_features'/'num_classes' do not apply")
    for key, value in (('num_features', num_features), ('num_classes', num_classes)):
        if value is not None:
            if not isinstance(value, int) or value < (2 if key == 'num_classes' else 1):
                raise ValueError(f"'{key}' must be a positive int (>= 2 for "
                                 f"classes), got {value!r}")
            fmt[key] = value
    check_real(homophily, 'homophily', 0.0, 1.0)
    check_real(feature_noise, 'feature_noise', 0.0, math.inf, high_open=True)

    folder = osp.join(root, ogbn_dir_name(name))
    if osp.exists(folder) or osp.exists(folder + '_pyg'):
        if not overwrite:
            raise FileExistsError(f"'{folder}' already exists (pass "
                                  f"overwrite=True to replace it)")
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(folder + '_pyg', ignore_errors=True)
    raw, split = osp.join(folder, 'raw'), osp.join(folder, 'split', fmt['split'])
    os.makedirs(raw)
    os.makedirs(split)

    rng = np.random.default_rng(seed)
    num_communities = fmt['num_classes'] if fmt['num_tasks'] == 1 else 8
    community, edges = _planted_partition(num_nodes, num_edges, num_communities,
                                          homophily, rng)
    if not fmt['directed']:  # stored once; ogb adds the reverse direction
        edges = edges[edges[:, 0] != edges[:, 1]]
        key = np.minimum(edges[:, 0], edges[:, 1]) * num_nodes + \
            np.maximum(edges[:, 0], edges[:, 1])
        _, first = np.unique(key, return_index=True)
        edges = edges[np.sort(first)]
    _write_csv_gz(osp.join(raw, 'edge.csv.gz'), edges, '%d')
    _write_csv_gz(osp.join(raw, 'num-node-list.csv.gz'), np.array([num_nodes]), '%d')
    _write_csv_gz(osp.join(raw, 'num-edge-list.csv.gz'), np.array([len(edges)]), '%d')

    if fmt['num_features'] > 0:
        centroids = rng.standard_normal((num_communities, fmt['num_features']))
        x = centroids[community] + feature_noise * rng.standard_normal(
            (num_nodes, fmt['num_features']))
        # '%.4f' always has a decimal point: ogb parses the column as float.
        _write_csv_gz(osp.join(raw, 'node-feat.csv.gz'), x, '%.4f')
    if fmt['edge_features'] > 0:
        edge_attr = rng.random((len(edges), fmt['edge_features'])) * 0.5
        edge_attr[:, 0] += 0.5 * (community[edges[:, 0]] == community[edges[:, 1]])
        _write_csv_gz(osp.join(raw, 'edge-feat.csv.gz'), edge_attr, '%.3f')

    if fmt['num_tasks'] == 1:
        labels = community  # the class is the community
    else:  # proteins: each task is positive with a community-dependent rate
        rate = rng.uniform(0.1, 0.9, (num_communities, fmt['num_tasks']))
        labels = (rng.random((num_nodes, fmt['num_tasks'])) < rate[community])
        labels = labels.astype(np.int64)

    if name == 'ogbn-arxiv':
        years = rng.choice(_ARXIV_YEARS, num_nodes,
                           p=_normalised(np.linspace(1, 4, len(_ARXIV_YEARS))))
        years[:3] = [2017, 2018, 2019]  # every split non-empty
        _write_csv_gz(osp.join(raw, 'node_year.csv.gz'), years, '%d')
        idx = {'train': np.flatnonzero(years <= 2017),
               'valid': np.flatnonzero(years == 2018),
               'test': np.flatnonzero(years == 2019)}
    elif name == 'ogbn-proteins':
        species_of = rng.integers(0, len(_PROTEIN_SPECIES) - 2, num_nodes)
        held_out = rng.permutation(num_nodes)[:num_nodes * 3 // 10]
        species_of[held_out[:len(held_out) // 2]] = len(_PROTEIN_SPECIES) - 2
        species_of[held_out[len(held_out) // 2:]] = len(_PROTEIN_SPECIES) - 1
        _write_csv_gz(osp.join(raw, 'node_species.csv.gz'),
                      _PROTEIN_SPECIES[species_of], '%d')
        idx = {'train': np.flatnonzero(species_of < len(_PROTEIN_SPECIES) - 2),
               'valid': np.flatnonzero(species_of == len(_PROTEIN_SPECIES) - 2),
               'test': np.flatnonzero(species_of == len(_PROTEIN_SPECIES) - 1)}
        for part in idx.values():  # ROC-AUC needs both labels in every task
            labels[part[0]], labels[part[1]] = 1, 0
    else:  # products: nodes sorted by a random sales rank
        rank = rng.permutation(num_nodes)
        n_train, n_valid = max(1, num_nodes * 8 // 100), max(1, num_nodes * 2 // 100)
        idx = {'train': np.sort(rank[:n_train]),
               'valid': np.sort(rank[n_train:n_train + n_valid]),
               'test': np.sort(rank[n_train + n_valid:])}
    _write_csv_gz(osp.join(raw, 'node-label.csv.gz'), labels, '%d')
    for part, nodes in idx.items():
        _write_csv_gz(osp.join(split, f'{part}.csv.gz'), nodes, '%d')

    with open(osp.join(folder, 'RELEASE_v1.txt'), 'w') as f:
        f.write('synthetic data in OGB format, written by '
                'torch_geometric_gnf.datasets.write_ogbn_dataset\n')
    return folder


def _normalised(weights: np.ndarray) -> np.ndarray:
    return weights / weights.sum()
