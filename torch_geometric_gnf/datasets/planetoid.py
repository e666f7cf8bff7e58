r"""Planetoid citation graphs (Cora, CiteSeer, PubMed) from raw files on disk.

PyG's :class:`~torch_geometric.datasets.Planetoid` downloads its raw files
into ``ROOT/<Name>/raw/``; here they come from a local folder instead (e.g.
``shared/data/planetoid``, which holds ``ind.cora.*`` and ``ind.citeseer.*``)
and are copied into a root of the caller's choice, so the source folder may
be read-only.
"""
import math
import os
import os.path as osp
import shutil

import torch
from torch_geometric.data import Data

PLANETOID_NAMES = {'cora': 'Cora', 'citeseer': 'CiteSeer', 'pubmed': 'PubMed'}
RAW_SUFFIXES = ('x', 'tx', 'allx', 'y', 'ty', 'ally', 'graph', 'test.index')
SPLITS = ('public', 'one_percent')


def planetoid_name(name: str) -> str:
    r"""PyG's spelling of a Planetoid data set name (case-insensitive)."""
    if not isinstance(name, str) or name.lower() not in PLANETOID_NAMES:
        raise ValueError(f"Unknown Planetoid data set {name!r} (use one of "
                         f"{sorted(PLANETOID_NAMES.values())})")
    return PLANETOID_NAMES[name.lower()]


def copy_planetoid_raw(name: str, raw_source: str, root: str) -> str:
    r"""Copies the eight raw files ``ind.<name>.{x,tx,allx,y,ty,ally,graph,
    test.index}`` from :obj:`raw_source` into ``root/<Name>/raw/`` (where
    PyG's :class:`~torch_geometric.datasets.Planetoid` reads them) and returns
    that folder.  Raises :class:`FileNotFoundError` naming the missing files."""
    pyg_name = planetoid_name(name)
    files = [f'ind.{pyg_name.lower()}.{suffix}' for suffix in RAW_SUFFIXES]
    missing = [f for f in files if not osp.isfile(osp.join(raw_source, f))]
    if missing:
        raise FileNotFoundError(
            f"Planetoid raw files for {pyg_name} not found in "
            f"'{raw_source}': missing {', '.join(missing)} (get them from "
            f"https://github.com/kimiyoung/planetoid/tree/master/data)")
    raw_dir = osp.join(root, pyg_name, 'raw')
    os.makedirs(raw_dir, exist_ok=True)
    for f in files:
        shutil.copyfile(osp.join(raw_source, f), osp.join(raw_dir, f))
    return raw_dir


def one_percent_split(data: Data, seed: int, fraction: float = 0.01) -> Data:
    r"""Replaces the training set by :obj:`fraction` of all nodes
    (:math:`\lceil 0.01 N \rceil`, 28 nodes for Cora), drawn uniformly at
    random (with :obj:`seed`) from the nodes outside the public validation
    and test sets, as in the 1% setting of Neumann-RBP (Liao et al., 2018)
    used by the paper's Table 1.  Validation and test sets stay public."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"'fraction' must be in (0, 1) (got {fraction})")
    data = data.clone()
    num_nodes = data.num_nodes
    candidates = (~(data.val_mask | data.test_mask)).nonzero().view(-1)
    count = math.ceil(fraction * num_nodes)
    gen = torch.Generator().manual_seed(seed)
    chosen = candidates[torch.randperm(candidates.numel(), generator=gen)[:count]]
    data.train_mask = torch.zeros(num_nodes, dtype=torch.bool)
    data.train_mask[chosen] = True
    return data


def load_planetoid(name: str, raw_source: str, root: str,
                   split: str = 'public', seed: int = 0,
                   normalize_features: bool = True) -> Data:
    r"""Loads a Planetoid graph from local raw files as one
    :class:`~torch_geometric.data.Data` with :obj:`train_mask`,
    :obj:`val_mask` and :obj:`test_mask`.

    Args:
        name (str): :obj:`"Cora"`, :obj:`"CiteSeer"` or :obj:`"PubMed"`.
        raw_source (str): Folder holding ``ind.<name>.*``.
        root (str): Writable folder to copy them into and process there.
        split (str, optional): :obj:`"public"` (Yang et al.'s 20 labels per
            class, 500 validation, 1000 test) or :obj:`"one_percent"`
            (:func:`one_percent_split`). (default: :obj:`"public"`)
        seed (int, optional): Seed of the 1% training set draw.
        normalize_features (bool, optional): Row-normalise the bag-of-words
            features (as GCN and GAT do). (default: :obj:`True`)
    """
    from torch_geometric.datasets import Planetoid
    from torch_geometric.transforms import NormalizeFeatures

    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r} (use one of {SPLITS})")
    copy_planetoid_raw(name, raw_source, root)
    dataset = Planetoid(root, planetoid_name(name), split='public',
                        transform=NormalizeFeatures() if normalize_features else None)
    data = dataset[0]
    data.num_classes = dataset.num_classes
    if split == 'one_percent':
        data = one_percent_split(data, seed)
    return data
