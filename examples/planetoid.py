r"""Semi-supervised node classification on Planetoid (paper Table 1).

Four models with the same layout per family (see ``build_model``):

* ``gnn``         - vanilla residual GNN, 4 message passing steps (GCNConv);
* ``grevnet``     - GRevNet, 4 reversible steps with GCNConv as F and G;
* ``gat``         - vanilla residual deep GAT, 8 steps (RevGAT(reversible=False));
* ``gat_grevnet`` - GAT-GRevNet, 8 reversible steps with GATConv as F and G (RevGAT).

Raw files ``ind.<name>.*`` are copied from ``--raw-dir`` (default:
``shared/data/planetoid`` next to the repository) into a temporary root (or
``--root``).  Every seed trains full-batch with Adam, evaluates every epoch
and stops after ``--patience`` epochs without a better validation accuracy
(ties: lower validation loss); the test accuracy at the best validation epoch
is reported, then mean +- std over seeds.  ``--shared-weights`` ties the
steps (one F and one G applied at every step, the paper's "steps of MP" with
one message function; the parameter count no longer depends on ``--steps``).

    python examples/planetoid.py --dataset Cora --model gat_grevnet --seeds 5
    python examples/planetoid.py --dataset Cora --model grevnet --split one_percent
    python examples/planetoid.py --dataset Cora --model grevnet --shared-weights
"""
import argparse
import os
import os.path as osp
import statistics
import tempfile
import time
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from tqdm import tqdm

from torch_geometric_gnf.datasets import load_planetoid
from torch_geometric_gnf.models import GRevNet, RevGAT

DEFAULT_RAW_DIR = osp.join(osp.dirname(osp.abspath(__file__)), '..', '..',
                           'shared', 'data', 'planetoid')
MODELS = ('gnn', 'grevnet', 'gat', 'gat_grevnet')

# Starting points from the papers (GCN: Kipf & Welling; GAT: Velickovic et
# al., 8 heads x 8 hidden, dropout 0.6, lr 0.005, wd 5e-4); the step counts
# are Table 1's (4 for GNN/GRevNet, 8 for GAT/GAT-GRevNet). Any flag given on
# the command line overrides these.
PRESETS: Dict[str, Dict[str, Any]] = {
    'gnn': dict(hidden=64, steps=4, heads=1, lr=0.01, weight_decay=5e-4,
                dropout=0.5, input_dropout=0.5, attention_dropout=0.0,
                shared_weights=False),
    'gat': dict(hidden=64, steps=8, heads=8, lr=0.005, weight_decay=5e-4,
                dropout=0.6, input_dropout=0.6, attention_dropout=0.6, gate=False, norm=True,
                shared_weights=False),
}
PRESETS['grevnet'] = PRESETS['gnn']
# GAT-GRevNet: the GAT preset with zero-initialised step gates, the best
# validation accuracy of every configuration tried on Cora (tied or untied
# steps, LayerNorm on or off, width, dropout, weight decay, lr, heads; see
# examples/results/planetoid.md).
PRESETS['gat_grevnet'] = dict(PRESETS['gat'], gate=True)


def build_model(name: str, in_channels: int, out_channels: int,
                cfg: Dict[str, Any]) -> torch.nn.Module:
    if name in ('gnn', 'grevnet'):
        return GRevNet(in_channels, cfg['hidden'], out_channels, cfg['steps'],
                       conv='gcn', dropout=cfg['dropout'],
                       reversible=name == 'grevnet',
                       shared_weights=cfg['shared_weights'],
                       memory_saving=cfg.get('memory_saving', True))
    if name in ('gat', 'gat_grevnet'):
        return RevGAT(in_channels, cfg['hidden'], out_channels, cfg['steps'],
                      cfg['heads'], dropout=cfg['dropout'],
                      input_dropout=cfg['input_dropout'],
                      attention_dropout=cfg['attention_dropout'],
                      reversible=name == 'gat_grevnet', gate=cfg['gate'],
                      norm=cfg['norm'], shared_weights=cfg['shared_weights'],
                      memory_saving=cfg.get('memory_saving', True))
    raise ValueError(f"Unknown model {name!r} (use one of {MODELS})")


def train_one_seed(model: torch.nn.Module, data: Any, cfg: Dict[str, Any],
                   epochs: int, patience: int, desc: str,
                   select: str = 'acc') -> Dict[str, float]:
    r"""Full-batch training with early stopping on the validation set;
    returns the validation and test accuracy at the best epoch: the highest
    validation accuracy (ties: lower validation loss) with
    :obj:`select='acc'`, the lowest validation loss with :obj:`select='loss'`."""
    opt = torch.optim.Adam(model.parameters(), lr=cfg['lr'],
                           weight_decay=cfg['weight_decay'])
    best = {'val_acc': -1.0, 'val_loss': float('inf'), 'test_acc': 0.0, 'epoch': 0}
    bar = tqdm(range(1, epochs + 1), desc=desc, leave=False)
    for epoch in bar:
        model.train()
        opt.zero_grad()
        out = model(data.x, data.edge_index)
        loss = F.cross_entropy(out[data.train_mask], data.y[data.train_mask])
        loss.backward()
        opt.step()

        model.eval()
        with torch.no_grad():
            out = model(data.x, data.edge_index)
        pred = out.argmax(-1)
        val_loss = float(F.cross_entropy(out[data.val_mask], data.y[data.val_mask]))
        val_acc = float((pred[data.val_mask] == data.y[data.val_mask]).float().mean())
        if select == 'loss':
            better = val_loss < best['val_loss']
        else:
            better = (val_acc > best['val_acc']
                      or (val_acc == best['val_acc'] and val_loss < best['val_loss']))
        if better:
            test_acc = float((pred[data.test_mask] == data.y[data.test_mask]).float().mean())
            best = {'val_acc': val_acc, 'val_loss': val_loss, 'test_acc': test_acc,
                    'epoch': epoch}
        bar.set_postfix(loss=f'{loss.item():.3f}', val=f"{best['val_acc']:.3f}")
        if epoch - best['epoch'] >= patience:
            break
    best['epochs_run'] = epoch
    return best


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--dataset', default='Cora',
                        help='Cora, CiteSeer or PubMed (case-insensitive)')
    parser.add_argument('--model', default='gat_grevnet', choices=MODELS)
    parser.add_argument('--split', default='public', choices=('public', 'one_percent'))
    parser.add_argument('--seeds', type=int, default=5)
    parser.add_argument('--epochs', type=int, default=1000, help='maximum epochs')
    parser.add_argument('--patience', type=int, default=100)
    parser.add_argument('--raw-dir', default=DEFAULT_RAW_DIR,
                        help='folder with the raw ind.<name>.* files')
    parser.add_argument('--root', default=None,
                        help='where to copy and process them (default: a temp dir)')
    for key, kind in (('hidden', int), ('steps', int), ('heads', int), ('lr', float),
                      ('weight_decay', float), ('dropout', float),
                      ('input_dropout', float), ('attention_dropout', float)):
        parser.add_argument('--' + key.replace('_', '-'), type=kind, default=None,
                            help='overrides the model preset')
    parser.add_argument('--select', default='acc', choices=('acc', 'loss'),
                        help='early stopping / model selection on validation '
                             'accuracy (ties: loss) or validation loss')
    parser.add_argument('--gate', type=int, choices=(0, 1), default=None,
                        help='RevGAT steps gated by a zero-initialised scalar (ReZero)')
    parser.add_argument('--norm', type=int, choices=(0, 1), default=None,
                        help='RevGAT: LayerNorm in every step and before the '
                             'output layer (default 1)')
    parser.add_argument('--shared-weights', action=argparse.BooleanOptionalAction,
                        default=None,
                        help='one F and one G applied at every step (weight '
                             'tying; parameters independent of --steps)')
    parser.add_argument('--no-memory-saving', action='store_true',
                        help='plain autograd through the reversible steps (same '
                             'model and gradients, faster, more memory)')
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--markdown', default=None,
                        help='append a result row to this markdown file')
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.epochs < 1 or args.patience < 1:
        parser.error('--seeds, --epochs and --patience must be positive')
    return args


def run(args: argparse.Namespace) -> Dict[str, Any]:
    torch.set_num_threads(args.threads)
    cfg = dict(PRESETS[args.model])
    cfg.update({k: type(cfg[k])(getattr(args, k)) for k in cfg
                if getattr(args, k) is not None})
    if args.model in ('grevnet', 'gat_grevnet'):
        cfg['memory_saving'] = not args.no_memory_saving

    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or tmp
        data = load_planetoid(args.dataset, args.raw_dir, root)
        runs = []
        start = time.perf_counter()
        for seed in tqdm(range(args.seeds), desc=f'{args.dataset} {args.model}'):
            seed_data = data
            if args.split == 'one_percent':
                seed_data = load_planetoid(args.dataset, args.raw_dir, root,
                                           split='one_percent', seed=seed)
            torch.manual_seed(seed)
            model = build_model(args.model, data.num_features, data.num_classes, cfg)
            runs.append(train_one_seed(model, seed_data, cfg, args.epochs,
                                       args.patience, desc=f'seed {seed}',
                                       select=args.select))
        seconds = time.perf_counter() - start

    tests = [100 * r['test_acc'] for r in runs]
    vals = [100 * r['val_acc'] for r in runs]
    result = {
        'dataset': args.dataset, 'model': args.model, 'split': args.split,
        'config': cfg, 'select': args.select, 'runs': runs, 'seconds': seconds,
        'parameters': sum(p.numel() for p in model.parameters()),
        'test_mean': statistics.mean(tests),
        'test_std': statistics.stdev(tests) if len(tests) > 1 else 0.0,
        'val_mean': statistics.mean(vals),
    }
    for seed, r in enumerate(runs):
        print(f"seed {seed}: val {100 * r['val_acc']:.1f}  test {100 * r['test_acc']:.1f}"
              f"  (best epoch {r['epoch']} of {r['epochs_run']})")
    summary = (f"{args.dataset} ({args.split}) {args.model}: test accuracy "
               f"{result['test_mean']:.1f} +- {result['test_std']:.1f} "
               f"(val {result['val_mean']:.1f}) over {args.seeds} seeds, "
               f"{result['parameters']:,} parameters, {seconds:.0f} s")
    print(summary)
    if args.markdown:
        new = not osp.exists(args.markdown)
        os.makedirs(osp.dirname(osp.abspath(args.markdown)), exist_ok=True)
        with open(args.markdown, 'a') as f:
            if new:
                f.write('| dataset | split | model | test acc (mean +- std) | val acc '
                        '| seeds | parameters | config |\n|---|---|---|---|---|---|---|---|\n')
            config = ', '.join(f'{k}={v}' for k, v in cfg.items())
            f.write(f"| {args.dataset} | {args.split} | {args.model} | "
                    f"{result['test_mean']:.1f} +- {result['test_std']:.1f} | "
                    f"{result['val_mean']:.1f} | {args.seeds} | "
                    f"{result['parameters']:,} | {config} |\n")
    return result


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    return run(parse_args(argv))


if __name__ == '__main__':
    main()
