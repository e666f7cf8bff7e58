r"""examples/planetoid.py end to end on a tiny data set written in Planetoid's
raw format (``ind.<name>.{x,tx,allx,y,ty,ally,graph,test.index}``, the
pickled scipy / numpy / dict objects PyG's ``read_planetoid_data`` reads)."""
import importlib.util
import math
import os
import os.path as osp
import pickle

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from torch_geometric_gnf.datasets import (copy_planetoid_raw, load_planetoid,
                                          one_percent_split)

from conftest import SHARED

EXAMPLES = osp.join(osp.dirname(__file__), '..', 'examples')
NUM_TRAIN, NUM_ALLX, NUM_TEST, FEATURES, CLASSES = 21, 560, 100, 24, 3


def load_example():
    spec = importlib.util.spec_from_file_location(
        'planetoid_example', osp.join(EXAMPLES, 'planetoid.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_tiny_planetoid(folder: str, name: str = 'cora', seed: int = 0) -> None:
    r"""Nodes 0..559 are 'allx' (the first 21 labelled for training), nodes
    560..659 the test nodes, stored in shuffled order as Planetoid does.
    Features are noisy class indicators; edges mostly join same-class nodes."""
    rng = np.random.default_rng(seed)
    n = NUM_ALLX + NUM_TEST
    labels = rng.integers(0, CLASSES, n)
    feats = (rng.random((n, FEATURES)) < 0.1).astype(np.float32)
    feats[np.arange(n), labels] += 2.0  # class indicator, above the 0/1 noise
    onehot = np.eye(CLASSES, dtype=np.int64)[labels]
    graph = {i: [] for i in range(n)}
    for _ in range(3 * n):
        a = int(rng.integers(0, n))
        same = np.flatnonzero(labels == labels[a])
        b = int(rng.choice(same)) if rng.random() < 0.8 else int(rng.integers(0, n))
        graph[a].append(b)
        graph[b].append(a)
    test_index = NUM_ALLX + rng.permutation(NUM_TEST)  # file order of tx rows
    objects = {
        'x': sp.csr_matrix(feats[:NUM_TRAIN]),
        'allx': sp.csr_matrix(feats[:NUM_ALLX]),
        'tx': sp.csr_matrix(feats[test_index]),
        'y': onehot[:NUM_TRAIN], 'ally': onehot[:NUM_ALLX], 'ty': onehot[test_index],
        'graph': graph,
    }
    os.makedirs(folder, exist_ok=True)
    for key, obj in objects.items():
        with open(osp.join(folder, f'ind.{name}.{key}'), 'wb') as f:
            pickle.dump(obj, f)
    with open(osp.join(folder, f'ind.{name}.test.index'), 'w') as f:
        f.write('\n'.join(str(int(i)) for i in test_index) + '\n')


@pytest.fixture(scope='module')
def raw_dir(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp('planetoid_raw'))
    write_tiny_planetoid(folder)
    return folder


def test_load_planetoid_from_raw_files(raw_dir, tmp_path):
    data = load_planetoid('cora', raw_dir, str(tmp_path))
    assert data.num_nodes == NUM_ALLX + NUM_TEST
    assert int(data.train_mask.sum()) == NUM_TRAIN
    assert int(data.val_mask.sum()) == 500
    assert int(data.test_mask.sum()) == NUM_TEST
    assert data.num_classes == CLASSES
    # the class indicator sits in the right row after PyG's test reordering
    assert torch.equal(data.x[:, :CLASSES].argmax(-1), data.y)
    assert osp.isfile(osp.join(str(tmp_path), 'Cora', 'raw', 'ind.cora.graph'))

    split = one_percent_split(data, seed=1)
    assert int(split.train_mask.sum()) == math.ceil(0.01 * data.num_nodes)
    assert not (split.train_mask & (split.val_mask | split.test_mask)).any()
    assert torch.equal(split.test_mask, data.test_mask)
    other = one_percent_split(data, seed=2)
    assert not torch.equal(split.train_mask, other.train_mask)


def test_missing_files_and_bad_names(raw_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match='ind.citeseer.x'):
        copy_planetoid_raw('CiteSeer', raw_dir, str(tmp_path))
    with pytest.raises(FileNotFoundError, match='PubMed'):
        load_planetoid('pubmed', str(tmp_path), str(tmp_path))
    with pytest.raises(ValueError, match='Unknown Planetoid'):
        load_planetoid('reddit', raw_dir, str(tmp_path))
    with pytest.raises(ValueError, match='Unknown split'):
        load_planetoid('cora', raw_dir, str(tmp_path), split='full')


@pytest.mark.parametrize('model,split', [('gnn', 'public'), ('grevnet', 'one_percent'),
                                         ('gat', 'public'), ('gat_grevnet', 'public')])
def test_example_runs_end_to_end(raw_dir, tmp_path, model, split):
    example = load_example()
    md = str(tmp_path / 'results.md')
    result = example.main(['--dataset', 'Cora', '--model', model, '--split', split,
                           '--seeds', '2', '--epochs', '2', '--raw-dir', raw_dir,
                           '--hidden', '16', '--steps', '2', '--heads', '2',
                           '--markdown', md])
    assert len(result['runs']) == 2
    for run in result['runs']:
        assert 0.0 <= run['test_acc'] <= 1.0 and 1 <= run['epoch'] <= 2
    assert 0.0 <= result['test_mean'] <= 100.0
    rows = open(md).read().strip().split('\n')
    assert len(rows) == 3 and f'| {model} |' in rows[-1]


def test_example_learns_the_tiny_graph(raw_dir):
    # Class indicators in the features: a few dozen epochs must beat chance.
    result = load_example().main(['--dataset', 'cora', '--model', 'grevnet',
                                  '--seeds', '1', '--epochs', '30', '--raw-dir',
                                  raw_dir, '--hidden', '16', '--steps', '2',
                                  '--dropout', '0.1'])
    assert result['test_mean'] > 60.0  # chance is 33%


def test_example_rejects_bad_arguments(raw_dir):
    example = load_example()
    with pytest.raises(SystemExit):
        example.main(['--model', 'mlp'])
    with pytest.raises(SystemExit):
        example.main(['--seeds', '0', '--raw-dir', raw_dir])


@pytest.mark.skipif(not osp.isfile(osp.join(SHARED, 'data', 'planetoid', 'ind.cora.x')),
                    reason='shared Planetoid data not available')
def test_real_cora_files_load(tmp_path):
    data = load_planetoid('Cora', osp.join(SHARED, 'data', 'planetoid'), str(tmp_path))
    assert data.num_nodes == 2708 and data.num_classes == 7
    assert int(data.train_mask.sum()) == 140 and int(data.test_mask.sum()) == 1000


def test_example_norm_and_selection_options(raw_dir):
    example = load_example()
    common = ['--dataset', 'cora', '--model', 'gat_grevnet', '--seeds', '1',
              '--epochs', '6', '--raw-dir', raw_dir, '--hidden', '16',
              '--steps', '2', '--heads', '2', '--gate', '1', '--norm', '0']
    by_acc = example.main(common + ['--select', 'acc'])
    by_loss = example.main(common + ['--select', 'loss'])
    assert by_acc['config']['norm'] is False and by_loss['select'] == 'loss'
    # Same seed, same training run: only the chosen epoch differs.
    assert by_loss['runs'][0]['val_loss'] <= by_acc['runs'][0]['val_loss']
    assert by_acc['runs'][0]['val_acc'] >= by_loss['runs'][0]['val_acc']
    with pytest.raises(SystemExit):
        example.main(common + ['--select', 'f1'])


@pytest.mark.parametrize('model', ['grevnet', 'gat_grevnet'])
def test_example_shared_weights_flag(raw_dir, model):
    example = load_example()
    common = ['--dataset', 'cora', '--model', model, '--seeds', '1', '--epochs',
              '2', '--raw-dir', raw_dir, '--hidden', '16', '--heads', '2']
    tied = {steps: example.main(common + ['--steps', str(steps), '--shared-weights'])
            for steps in (1, 3)}
    untied = example.main(common + ['--steps', '3', '--no-shared-weights'])
    assert tied[3]['config']['shared_weights'] is True
    assert untied['config']['shared_weights'] is False
    # one F and one G whatever the depth
    assert tied[1]['parameters'] == tied[3]['parameters'] < untied['parameters']


@pytest.mark.skipif(not osp.isfile(osp.join(SHARED, 'data', 'planetoid', 'ind.cora.x')),
                    reason='shared Planetoid data not available')
def test_real_cora_short_run_with_shared_weights(tmp_path):
    md = str(tmp_path / 'rows.md')
    result = load_example().main([
        '--dataset', 'Cora', '--model', 'gat_grevnet', '--seeds', '1',
        '--epochs', '3', '--raw-dir', osp.join(SHARED, 'data', 'planetoid'),
        '--root', str(tmp_path / 'data'), '--hidden', '16', '--heads', '2',
        '--steps', '4', '--shared-weights', '--markdown', md])
    assert result['config']['shared_weights'] is True
    assert 'shared_weights=True' in open(md).read()
    run = result['runs'][0]
    assert math.isfinite(run['val_loss']) and 0.0 <= run['test_acc'] <= 1.0
