r"""Loading OGB node property prediction data sets with torch >= 2.6.

``ogb`` 1.3.6 ends :class:`ogb.nodeproppred.PygNodePropPredDataset`'s
constructor with ``torch.load(processed_paths[0])``.  Since torch 2.6,
``torch.load`` defaults to ``weights_only=True``, which refuses the pickled
PyG storage classes in that file::

    WeightsUnpickler error: Unsupported global: GLOBAL
    torch_geometric.data.data.DataEdgeAttr was not an allowed global by default

We do **not** turn ``weights_only`` off (neither globally through
``TORCH_FORCE_WEIGHTS_ONLY_LOAD=0`` nor for that call): a processed file is
just a file on disk, and unpickling it with ``weights_only=False`` could run
arbitrary code.  Instead, :func:`ogb_safe_globals` allow-lists exactly the
four PyG data-container classes that ``ogb``'s processed files contain
(:class:`~torch_geometric.data.Data`, its ``GlobalStorage`` and the two
attribute-key dataclasses ``DataEdgeAttr``/``DataTensorAttr``), only while the
data set is constructed.  These classes hold tensors and plain values; they
run no user-controlled code when unpickled.  Every other global is still
refused, so ``weights_only=True`` keeps its guarantee, and after the ``with``
block the allow list is exactly what it was before (classes that PyG itself
registered globally, such as ``Data``, stay registered).
"""
import contextlib
import os.path as osp
import pickle
from typing import Any, Callable, Iterator, List

import torch
from torch_geometric.data import Data
from torch_geometric.data.data import DataEdgeAttr, DataTensorAttr
from torch_geometric.data.storage import GlobalStorage

OGBN_NAMES = ('ogbn-arxiv', 'ogbn-products', 'ogbn-proteins', 'ogbn-mag',
              'ogbn-papers100M')

# What `PygNodePropPredDataset.process` pickles (`InMemoryDataset.collate`):
# a Data object (its GlobalStorage) plus the slice dictionary, whose keys
# and PyG's attribute bookkeeping use these dataclasses.
OGB_PROCESSED_GLOBALS: List[Callable] = [Data, GlobalStorage, DataEdgeAttr,
                                         DataTensorAttr]


@contextlib.contextmanager
def ogb_safe_globals() -> Iterator[None]:
    r"""Context manager that lets ``torch.load(..., weights_only=True)`` read
    ``ogb``'s processed PyG files by allow-listing exactly
    :obj:`OGB_PROCESSED_GLOBALS`.  Classes already on the allow list are not
    added again, so leaving the block does not remove what others (e.g. PyG
    at import time) registered."""
    already = set(torch.serialization.get_safe_globals())
    missing = [g for g in OGB_PROCESSED_GLOBALS if g not in already]
    with torch.serialization.safe_globals(missing):
        yield


def load_node_prop_pred_dataset(name: str, root: str = 'dataset',
                                **kwargs: Any):
    r"""Returns ``ogb.nodeproppred.PygNodePropPredDataset(name, root)``,
    constructed inside :func:`ogb_safe_globals` so that it loads with torch
    >= 2.6 without turning off ``weights_only``.

    The first call processes ``<root>/<name>/raw`` (downloaded by ``ogb``,
    or written by :func:`~torch_geometric_gnf.datasets.write_ogbn_dataset`)
    into ``processed/``; later calls read the processed file.

    Args:
        name (str): e.g. :obj:`"ogbn-arxiv"`, :obj:`"ogbn-products"`,
            :obj:`"ogbn-proteins"`.
        root (str, optional): Folder that holds the data set folder.
        **kwargs: ``transform``/``pre_transform`` for ``ogb``.

    Raises:
        ValueError: For an unknown name.
        RuntimeError: If the processed file contains other globals (e.g. it
            was written by an incompatible PyG version); delete the
            ``processed/`` folder to rebuild it.
    """
    from ogb.nodeproppred import PygNodePropPredDataset

    if name not in OGBN_NAMES:
        raise ValueError(f"Unknown OGB node property prediction data set "
                         f"'{name}' (one of {', '.join(OGBN_NAMES)})")
    if not isinstance(root, str) or not root:
        raise TypeError(f"'root' must be a non-empty path string (got {root!r})")
    try:
        with ogb_safe_globals():
            return PygNodePropPredDataset(name=name, root=root, **kwargs)
    except pickle.UnpicklingError as e:
        folder = osp.join(root, '_'.join(name.split('-')), 'processed')
        raise RuntimeError(
            f"Could not read the processed '{name}' file with "
            f"weights_only=True: it contains classes beyond "
            f"{[g.__name__ for g in OGB_PROCESSED_GLOBALS]}. If you trust it, "
            f"delete '{folder}' so that ogb rebuilds it from raw/. "
            f"Original error: {_unsupported_global_line(e)}") from e


def _unsupported_global_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines()]
    named = [line for line in lines if 'Unsupported global' in line]
    return named[0] if named else (lines[0] if lines else repr(error))
