r"""The OGB-format writer read back through the real ``ogb`` 1.3.6 loaders,
and the narrow ``weights_only`` fix of :mod:`torch_geometric_gnf.datasets.ogb`."""
import gzip
import os.path as osp
import pickle

import numpy as np
import pytest
import torch
from ogb.nodeproppred import Evaluator, PygNodePropPredDataset

import ogb.nodeproppred.dataset_pyg as ogb_dataset_pyg
from torch_geometric.data import Data
from torch_geometric_gnf.datasets import (OGB_PROCESSED_GLOBALS,
                                          load_node_prop_pred_dataset,
                                          ogb_safe_globals, ogbn_dir_name,
                                          write_ogbn_dataset)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    r"""Any attempt of ogb to download or to ask whether to update fails."""
    def refuse(*args, **kwargs):
        raise AssertionError(f'ogb tried to download / prompt: {args}')
    monkeypatch.setattr(ogb_dataset_pyg, 'decide_download', refuse)
    monkeypatch.setattr(ogb_dataset_pyg, 'download_url', refuse)
    monkeypatch.setattr('builtins.input', refuse)


def read_csv_gz(path):
    with gzip.open(path, 'rt') as f:
        return np.loadtxt(f, delimiter=',', ndmin=2)


def check_split(split, num_nodes):
    parts = [split[k] for k in ('train', 'valid', 'test')]
    assert all(p.dtype == torch.long and p.numel() > 0 for p in parts)
    everything = torch.cat(parts)
    assert everything.unique().numel() == everything.numel()  # disjoint
    assert int(everything.min()) >= 0 and int(everything.max()) < num_nodes


def test_arxiv_round_trip(tmp_path):
    folder = write_ogbn_dataset(str(tmp_path), 'ogbn-arxiv', num_nodes=200,
                                num_edges=700, seed=1)
    assert folder == osp.join(str(tmp_path), 'ogbn_arxiv')
    dataset = load_node_prop_pred_dataset('ogbn-arxiv', str(tmp_path))
    data = dataset[0]
    assert dataset.num_classes == 40 and data.num_nodes == 200
    assert data.x.shape == (200, 128) and data.x.dtype == torch.float32
    assert data.y.shape == (200, 1) and data.y.dtype == torch.long
    assert int(data.y.min()) >= 0 and int(data.y.max()) < 40
    # Directed (no inverse edges added), exactly the edges in the file.
    written = read_csv_gz(osp.join(folder, 'raw', 'edge.csv.gz')).astype(np.int64).T
    assert torch.equal(data.edge_index, torch.from_numpy(written))
    assert data.edge_index.size(1) == 700
    assert bool((data.edge_index[0] != data.edge_index[1]).all())
    split = dataset.get_idx_split()
    check_split(split, 200)
    year = data.node_year.view(-1)
    assert bool((year[split['train']] <= 2017).all())
    assert bool((year[split['valid']] == 2018).all())
    assert bool((year[split['test']] == 2019).all())
    assert sum(v.numel() for v in split.values()) == 200


def test_products_round_trip_adds_inverse_edges(tmp_path):
    folder = write_ogbn_dataset(str(tmp_path), 'ogbn-products', num_nodes=150,
                                seed=2)
    stored = read_csv_gz(osp.join(folder, 'raw', 'edge.csv.gz')).astype(np.int64)
    dataset = load_node_prop_pred_dataset('ogbn-products', str(tmp_path))
    data = dataset[0]
    assert dataset.num_classes == 47 and data.x.shape == (150, 100)
    assert data.edge_index.size(1) == 2 * len(stored)
    # ogb interleaves each stored edge with its reverse.
    assert torch.equal(data.edge_index[:, 0::2], torch.from_numpy(stored.T))
    assert torch.equal(data.edge_index[:, 1::2], torch.from_numpy(stored.T).flip(0))
    check_split(dataset.get_idx_split(), 150)


def test_proteins_round_trip_and_rocauc(tmp_path):
    write_ogbn_dataset(str(tmp_path), 'ogbn-proteins', num_nodes=120, seed=3)
    dataset = load_node_prop_pred_dataset('ogbn-proteins', str(tmp_path))
    data = dataset[0]
    assert data.x is None and dataset.num_tasks == 112
    assert data.edge_attr.shape == (data.edge_index.size(1), 8)
    assert data.y.shape == (120, 112)
    assert set(data.y.unique().tolist()) == {0, 1}
    split = dataset.get_idx_split()
    check_split(split, 120)
    species = data.node_species.view(-1)
    train_species = set(species[split['train']].tolist())
    assert not train_species & set(species[split['valid']].tolist())
    assert not train_species & set(species[split['test']].tolist())
    evaluator = Evaluator('ogbn-proteins')
    for part, idx in split.items():
        y = data.y[idx]
        perfect = evaluator.eval({'y_true': y, 'y_pred': y.float()})['rocauc']
        inverted = evaluator.eval({'y_true': y, 'y_pred': -y.float()})['rocauc']
        assert perfect == pytest.approx(1.0) and inverted == pytest.approx(0.0), part


def test_evaluator_accuracy_on_written_labels(tmp_path):
    write_ogbn_dataset(str(tmp_path), 'ogbn-arxiv', num_nodes=100, seed=4)
    dataset = load_node_prop_pred_dataset('ogbn-arxiv', str(tmp_path))
    y = dataset[0].y
    evaluator = Evaluator('ogbn-arxiv')
    assert evaluator.eval({'y_true': y, 'y_pred': y})['acc'] == 1.0
    wrong = (y + 1) % 40
    assert evaluator.eval({'y_true': y, 'y_pred': wrong})['acc'] == 0.0


def test_second_load_reads_processed_file(tmp_path, monkeypatch):
    write_ogbn_dataset(str(tmp_path), 'ogbn-arxiv', num_nodes=60, seed=5)
    first = load_node_prop_pred_dataset('ogbn-arxiv', str(tmp_path))[0]

    def no_process(self):
        raise AssertionError('processed again')
    monkeypatch.setattr(PygNodePropPredDataset, 'process', no_process)
    second = load_node_prop_pred_dataset('ogbn-arxiv', str(tmp_path))[0]
    assert torch.equal(first.x, second.x)
    assert torch.equal(first.edge_index, second.edge_index)


def test_plain_ogb_load_fails_and_fix_is_narrow(tmp_path):
    write_ogbn_dataset(str(tmp_path), 'ogbn-arxiv', num_nodes=60, seed=6)
    before = set(torch.serialization.get_safe_globals())
    assert Data in before  # PyG registers Data itself; we must not remove it
    # What the fix is for: ogb's own constructor fails with torch >= 2.6 ...
    with pytest.raises(pickle.UnpicklingError, match='DataEdgeAttr|GlobalStorage|DataTensorAttr'):
        PygNodePropPredDataset('ogbn-arxiv', str(tmp_path))
    # ... and passes inside the context manager.
    with ogb_safe_globals():
        during = set(torch.serialization.get_safe_globals())
        PygNodePropPredDataset('ogbn-arxiv', str(tmp_path))
    assert during - before == set(OGB_PROCESSED_GLOBALS) - before
    # Global state is exactly what it was, and a plain load still refuses.
    assert set(torch.serialization.get_safe_globals()) == before
    processed = osp.join(str(tmp_path), 'ogbn_arxiv', 'processed',
                         'geometric_data_processed.pt')
    with pytest.raises(pickle.UnpicklingError):
        torch.load(processed)
    load_node_prop_pred_dataset('ogbn-arxiv', str(tmp_path))
    assert set(torch.serialization.get_safe_globals()) == before


class NotAllowListed:
    def __init__(self):
        self.value = 1


def test_other_globals_are_still_refused(tmp_path):
    r"""weights_only stays on: a processed file with any other class fails
    with a clear error, inside the context manager too."""
    path = str(tmp_path / 'evil.pt')
    torch.save({'payload': NotAllowListed()}, path)
    with ogb_safe_globals(), pytest.raises(pickle.UnpicklingError):
        torch.load(path)

    write_ogbn_dataset(str(tmp_path), 'ogbn-arxiv', num_nodes=60, seed=7)
    load_node_prop_pred_dataset('ogbn-arxiv', str(tmp_path))
    processed = osp.join(str(tmp_path), 'ogbn_arxiv', 'processed',
                         'geometric_data_processed.pt')
    torch.save(({'x': NotAllowListed()}, None), processed)
    with pytest.raises(RuntimeError, match='delete .*processed'):
        load_node_prop_pred_dataset('ogbn-arxiv', str(tmp_path))


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match='Unknown data set'):
        write_ogbn_dataset(str(tmp_path), 'ogbn-cora')
    with pytest.raises(ValueError, match='num_nodes'):
        write_ogbn_dataset(str(tmp_path), 'ogbn-arxiv', num_nodes=5)
    with pytest.raises(ValueError, match='num_edges'):
        write_ogbn_dataset(str(tmp_path), 'ogbn-arxiv', num_nodes=40, num_edges=0)
    with pytest.raises(ValueError, match='112 binary'):
        write_ogbn_dataset(str(tmp_path), 'ogbn-proteins', num_features=3)
    with pytest.raises(ValueError, match='homophily'):
        write_ogbn_dataset(str(tmp_path), 'ogbn-arxiv', homophily=1.5)
    with pytest.raises(ValueError, match='Unknown OGB'):
        load_node_prop_pred_dataset('ogbn-cora', str(tmp_path))
    with pytest.raises(TypeError, match='root'):
        load_node_prop_pred_dataset('ogbn-arxiv', None)

    write_ogbn_dataset(str(tmp_path), 'ogbn-arxiv', num_nodes=40)
    with pytest.raises(FileExistsError):
        write_ogbn_dataset(str(tmp_path), 'ogbn-arxiv', num_nodes=40)
    load_node_prop_pred_dataset('ogbn-arxiv', str(tmp_path))
    # overwrite also removes the stale processed/ cache
    write_ogbn_dataset(str(tmp_path), 'ogbn-arxiv', num_nodes=50, overwrite=True)
    assert not osp.exists(osp.join(str(tmp_path), ogbn_dir_name('ogbn-arxiv'), 'processed'))
    assert load_node_prop_pred_dataset('ogbn-arxiv', str(tmp_path))[0].num_nodes == 50


def test_custom_sizes(tmp_path):
    write_ogbn_dataset(str(tmp_path), 'ogbn-products', num_nodes=80,
                       num_features=7, num_classes=3, seed=8)
    data = load_node_prop_pred_dataset('ogbn-products', str(tmp_path))[0]
    assert data.x.shape == (80, 7)
    assert set(data.y.view(-1).tolist()) <= {0, 1, 2}
