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

Without network access, :func:`load_node_prop_pred_dataset` raises
:class:`OGBDataUnavailableError` with one line that says where the data are
expected and how to get them, and removes the folders the failed download
created; it never lets ``ogb`` ask a question on stdin (``ogb`` asks whether
to update a data set folder without a release marker, and whether to
download more than 1 GB).
"""
import contextlib
import os
import os.path as osp
import pickle
import shutil
from typing import Any, Callable, Iterator, List, Optional

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


class OGBDataUnavailableError(RuntimeError):
    r"""The data set is not on disk and could not be downloaded."""


def _ogb_meta(name: str) -> Any:
    import pandas as pd
    import ogb.nodeproppred

    master = osp.join(osp.dirname(ogb.nodeproppred.__file__), 'master.csv')
    return pd.read_csv(master, index_col=0, keep_default_na=False)[name]


@contextlib.contextmanager
def _download_without_prompts(name: str, folder: str) -> Iterator[None]:
    r"""Lets ``ogb`` download without asking (no ``input()``), and turns a
    failed download into :class:`OGBDataUnavailableError`."""
    import ogb.nodeproppred.dataset_pyg as dataset_pyg

    download_url = dataset_pyg.download_url

    def no_prompt(url: str) -> bool:
        return True  # the caller asked for this data set; ogb would ask on stdin

    def download(url: str, *args: Any, **kwargs: Any) -> str:
        try:
            return download_url(url, *args, **kwargs)
        except Exception as e:  # URLError, interrupted transfer, full disk
            raise OGBDataUnavailableError(
                f"{name}: no data in '{folder}' and downloading {url} failed "
                f"({type(e).__name__}: {e}). Download it where there is network "
                f"access (python -c \"from ogb.nodeproppred import "
                f"PygNodePropPredDataset as D; D('{name}', root='DIR')\"), copy "
                f"DIR here and pass it as the root folder") from None

    saved = dataset_pyg.decide_download
    dataset_pyg.decide_download, dataset_pyg.download_url = no_prompt, download
    try:
        yield
    finally:
        dataset_pyg.decide_download, dataset_pyg.download_url = saved, download_url


def _new_folders(path: str) -> List[str]:
    r"""The folders that creating :obj:`path` would create, deepest first."""
    new = []
    path = osp.abspath(path)
    while not osp.exists(path):
        new.append(path)
        path = osp.dirname(path)
    return new


def _remove_created(folder: Optional[str], archive: Optional[str],
                    new_roots: List[str]) -> None:
    r"""Removes what a failed download created: the data set folder, the
    archive (each :obj:`None` if it existed before) and the root folders
    that did not exist before (if empty)."""
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)
    if archive is not None and osp.isfile(archive):
        os.remove(archive)
    for path in new_roots:
        if osp.isdir(path) and not os.listdir(path):
            os.rmdir(path)


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
            ``processed/`` folder to rebuild it. Also if the data set folder
            has no ``RELEASE_v<version>.txt`` (an incomplete copy, where
            ``ogb`` would ask whether to update it).
        OGBDataUnavailableError: If the data are not on disk and the
            download fails (no network); the folders it created are removed.
    """
    from ogb.nodeproppred import PygNodePropPredDataset

    if name not in OGBN_NAMES:
        raise ValueError(f"Unknown OGB node property prediction data set "
                         f"'{name}' (one of {', '.join(OGBN_NAMES)})")
    if not isinstance(root, str) or not root:
        raise TypeError(f"'root' must be a non-empty path string (got {root!r})")
    meta = _ogb_meta(name)
    folder = osp.join(root, '_'.join(name.split('-')))
    if osp.isdir(folder + '_pyg'):  # ogb prefers an older download's folder
        folder += '_pyg'
    release = osp.join(folder, f"RELEASE_v{meta['version']}.txt")
    if osp.isdir(folder) and not osp.exists(release):
        raise RuntimeError(
            f"'{folder}' has no {osp.basename(release)}: it is an incomplete "
            f"copy or another release of {name}. Delete it (or point the root "
            f"folder elsewhere) and rerun")
    archive = osp.join(root, meta['url'].rpartition('/')[2])
    had_data, had_archive = osp.exists(folder), osp.exists(archive)
    new_roots = _new_folders(root)
    try:
        with ogb_safe_globals(), _download_without_prompts(name, folder):
            return PygNodePropPredDataset(name=name, root=root, **kwargs)
    except OGBDataUnavailableError:
        _remove_created(None if had_data else folder,
                        None if had_archive else archive, new_roots)
        raise
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


def load_example_dataset(name: str, root: str, synthetic: Optional[int] = None,
                         **write_kwargs: Any):
    r"""The data set of an OGB example: with :obj:`synthetic` (the example's
    ``--synthetic NUM_NODES``), a generated graph in OGB format is written
    under :obj:`root` first (if absent, see
    :func:`~torch_geometric_gnf.datasets.write_ogbn_dataset`); then it is
    loaded with :func:`load_node_prop_pred_dataset`.

    Raises:
        SystemExit: With one line (where the data are expected, how to get
            them, ``--root`` and ``--synthetic``) when the data are not on
            disk and cannot be downloaded.
    """
    from .ogb_format import ogbn_dir_name, write_ogbn_dataset

    if synthetic is not None and not osp.isdir(osp.join(root, ogbn_dir_name(name))):
        write_ogbn_dataset(root, name, num_nodes=synthetic, **write_kwargs)
    try:
        return load_node_prop_pred_dataset(name, root)
    except OGBDataUnavailableError as e:
        raise SystemExit(f'{e} (--root DIR); or run the example on generated '
                         f'OGB-format data with --synthetic NUM_NODES') from None
