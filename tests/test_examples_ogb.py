r"""The OGB examples end to end on tiny data sets written in OGB's format and
read by the real ``ogb`` loaders: two epochs, per-epoch logs with peak
memory, checkpoint/resume equal to an uninterrupted run, bad arguments."""
import importlib.util
import json
import os.path as osp
import sys

import pytest
import torch

from torch_geometric_gnf.datasets import write_ogbn_dataset

EXAMPLES = osp.join(osp.dirname(__file__), '..', 'examples')


def load_example(name):
    spec = importlib.util.spec_from_file_location(
        f'example_{name}', osp.join(EXAMPLES, f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    # PyG's conv inspector looks classes' modules up in sys.modules.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


SMALL = ['--device', 'cpu', '--hidden', '16', '--heads', '2', '--layers', '2']
CASES = {
    'ogbn_arxiv': ('ogbn-arxiv', 120, ['--warmup', '1'], 'acc'),
    'ogbn_products': ('ogbn-products', 200, ['--num-parts', '3', '--eval-parts', '2'], 'acc'),
    'ogbn_proteins': ('ogbn-proteins', 120, ['--num-parts', '2', '--eval-parts', '2',
                                             '--eval-every', '1'], 'rocauc'),
}


@pytest.fixture(scope='module')
def ogb_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('ogb')
    for name, (ogb_name, num_nodes, _, _) in CASES.items():
        write_ogbn_dataset(str(root), ogb_name, num_nodes=num_nodes, seed=0)
    return str(root)


def read_log(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize('name', list(CASES))
def test_two_epochs_then_resume_equals_uninterrupted(name, ogb_root, tmp_path):
    module = load_example(name)
    _, _, extra, metric = CASES[name]
    base = ['--root', ogb_root, *SMALL, *extra]

    straight = module.main(base + ['--epochs', '2', '--log', str(tmp_path / 'a.jsonl'),
                                   '--results', str(tmp_path / 'a.json')])
    log = read_log(tmp_path / 'a.jsonl')
    assert [r['epoch'] for r in log] == [1, 2]
    for record in log:
        assert record['cpu_peak_rss_mb'] > 50  # a real process peak, in MB
        assert record['loss'] > 0 and torch.isfinite(torch.tensor(record['loss']))
    last = log[-1]
    for part in ('train', 'valid', 'test'):
        assert 0.0 <= last[f'{part}_{metric}'] <= 1.0
    with open(tmp_path / 'a.json') as f:
        assert json.load(f)['last']['epoch'] == 2
    assert straight['last']['loss'] == pytest.approx(last['loss'])

    ckpt = str(tmp_path / 'run.pt')
    module.main(base + ['--epochs', '1', '--checkpoint', ckpt])
    assert osp.isfile(ckpt)
    resumed = module.main(base + ['--epochs', '2', '--checkpoint', ckpt,
                                  '--log', str(tmp_path / 'b.jsonl')])
    assert [r['epoch'] for r in read_log(tmp_path / 'b.jsonl')] == [2]  # only the new one
    # Same model, optimizer and per-epoch seeds: the resumed epoch is the
    # uninterrupted run's epoch 2.
    for key in ('loss', f'valid_{metric}', f'test_{metric}'):
        assert resumed['last'][key] == pytest.approx(straight['last'][key], rel=1e-5, abs=1e-6)
    assert len(torch.load(ckpt, weights_only=True)['extra']['history']) == 2

    # A checkpoint of another architecture is refused with a clear message.
    bad = base + ['--epochs', '3', '--checkpoint', ckpt]
    bad[bad.index('--hidden') + 1] = '24'
    with pytest.raises(ValueError, match='does not match the model'):
        module.main(bad)


def test_arxiv_learns_on_synthetic_graph(ogb_root):
    r"""The full recipe path (label reuse, edge drop, loge loss) learns: the
    synthetic classes are communities; 12 epochs reach 0.4 validation accuracy
    here, far above the 1/40 chance level."""
    module = load_example('ogbn_arxiv')
    out = module.main(['--root', ogb_root, '--device', 'cpu', '--hidden', '16',
                       '--heads', '2', '--layers', '2', '--epochs', '12',
                       '--warmup', '1', '--lr', '0.02', '--dropout', '0.2'])
    assert out['best']['valid_acc'] > 0.2  # 8x chance (1/40)


def test_bad_arguments(ogb_root):
    arxiv = load_example('ogbn_arxiv')
    with pytest.raises(SystemExit):
        arxiv.parse_args(['--dropout', '1.5'])
    with pytest.raises(SystemExit):
        arxiv.parse_args(['--mask-rate', '0'])
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match='CUDA is not available'):
            arxiv.main(['--root', ogb_root, '--device', 'cuda', '--epochs', '1'])
    with pytest.raises(ValueError, match='--device'):
        arxiv.main(['--root', ogb_root, '--device', 'tpu', '--epochs', '1'])
    products = load_example('ogbn_products')
    with pytest.raises(SystemExit):
        products.parse_args(['--num-parts', '0'])
    with pytest.raises(ValueError, match='number of processes'):
        products.rank_parts(10, 1, 0, 2, torch.Generator())


def test_rank_parts_cover_each_node_at_most_once():
    products = load_example('ogbn_products')
    seen = []
    for rank in range(3):
        parts = products.rank_parts(100, 8, rank, 3, torch.Generator().manual_seed(5))
        assert len(parts) == 2  # 8 // 3 parts each; the rest is dropped
        seen.extend(parts)
    nodes = torch.cat(seen)
    assert nodes.unique().numel() == nodes.numel()
    single = products.rank_parts(100, 8, 0, 1, torch.Generator().manual_seed(5))
    assert torch.cat(single).sort().values.equal(torch.arange(100))


def test_checkpoint_helpers(tmp_path):
    from torch_geometric_gnf.utils.training import load_checkpoint, save_checkpoint
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    path = str(tmp_path / 'sub' / 'c.pt')
    torch.manual_seed(3)
    save_checkpoint(path, epoch=4, model=model, optimizer=opt, extra={'best': 0.5})
    expected = torch.rand(3)  # the draw right after saving

    other, other_opt = torch.nn.Linear(3, 2), None
    other_opt = torch.optim.Adam(other.parameters())
    torch.manual_seed(99)
    state = load_checkpoint(path, other, other_opt)
    assert state == {'epoch': 4, 'extra': {'best': 0.5}}
    assert torch.equal(other.weight, model.weight)
    assert other_opt.state_dict()['state'][0]['step'] == 1
    assert torch.equal(torch.rand(3), expected)  # RNG state restored

    with pytest.raises(FileNotFoundError):
        load_checkpoint(str(tmp_path / 'missing.pt'), other)
    torch.save({'weights': torch.zeros(1)}, tmp_path / 'foreign.pt')
    with pytest.raises(ValueError, match='not a checkpoint'):
        load_checkpoint(str(tmp_path / 'foreign.pt'), other)
    (tmp_path / 'junk.pt').write_bytes(b'not a zip file')
    with pytest.raises(ValueError, match='not a readable checkpoint'):
        load_checkpoint(str(tmp_path / 'junk.pt'), other)
    with pytest.raises(ValueError, match='epoch'):
        save_checkpoint(path, epoch=-1, model=model)
