r"""A reversible GAT with edge features on ogbn-proteins (112 binary tasks,
ROC-AUC with OGB's ``Evaluator``).

ogbn-proteins has no node features but 8-dimensional edge features (the
strength of 8 kinds of protein association).  As in PyG's and DGL's
examples, a node's input features are the mean of its incoming edges'
features; the edge features also enter every attention layer of the
:class:`~torch_geometric_gnf.models.RevGAT` through ``edge_dim``
(``GATConv``/``FusedGATConv`` project them into the attention logits).
The graph is dense (about 79 M directed edges for 132 K nodes), so training
and evaluation use random node partitions (PyG's ``RandomNodeLoader``):
each batch is the subgraph induced by one part; evaluation predicts every
node once from its part (edges across parts are not seen, as in PyG's
example).

Run::

    python examples/ogbn_proteins.py --device cuda --checkpoint runs/proteins.pt
    python examples/ogbn_proteins.py --synthetic 500 --root /tmp/ogb --epochs 3
"""
import argparse
import json
import os.path as osp
import sys
import time
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch_geometric.data import Data
from torch_geometric.loader import RandomNodeLoader
from torch_geometric.utils import scatter
from tqdm import tqdm

from torch_geometric_gnf.datasets import load_example_dataset
from torch_geometric_gnf.models import RevGAT
from torch_geometric_gnf.utils.training import (append_jsonl, format_memory,
                                                load_checkpoint, peak_memory,
                                                ogb_example_parser,
                                                reset_peak_memory,
                                                resolve_device, save_checkpoint)

NAME = 'ogbn-proteins'


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = ogb_example_parser(
        __doc__.split('\n')[0], 'ogbn_proteins', epochs=500, hidden=64,
        heads=2, layers=28, dropout=0.1, lr=0.005)
    p.add_argument('--num-parts', type=int, default=40, help='training batches per epoch')
    p.add_argument('--eval-parts', type=int, default=10)
    p.add_argument('--eval-every', type=int, default=5)
    args = p.parse_args(argv)
    if args.epochs < 0 or args.num_parts < 1 or args.eval_parts < 1 or args.eval_every < 1:
        p.error('--epochs must be >= 0 and --num-parts/--eval-parts/--eval-every >= 1')
    return args


def load_data(args: argparse.Namespace):
    r"""The data set with node features from edge features, float targets,
    :obj:`train_mask` and global node ids (:obj:`n_id`)."""
    dataset = load_example_dataset(NAME, args.root, args.synthetic, seed=args.seed)
    data = dataset[0]
    # Node features: mean of the incoming edges' features.
    data.x = scatter(data.edge_attr, data.edge_index[1], dim=0,
                     dim_size=data.num_nodes, reduce='mean')
    data.y = data.y.float()
    split = dataset.get_idx_split()
    data.train_mask = torch.zeros(data.num_nodes, dtype=torch.bool)
    data.train_mask[split['train']] = True
    data.n_id = torch.arange(data.num_nodes)
    del data.node_species
    return dataset, data, split


def train_epoch(model: RevGAT, loader: RandomNodeLoader,
                optimizer: torch.optim.Optimizer, device: torch.device,
                epoch: int) -> float:
    r"""One pass over random-partition batches; returns the mean BCE loss
    over the training nodes."""
    model.train()
    total, count = 0.0, 0
    for batch in tqdm(loader, desc=f'epoch {epoch}', leave=False):
        batch = batch.to(device)
        if not bool(batch.train_mask.any()):
            continue
        optimizer.zero_grad()
        out = model(batch.x, batch.edge_index, batch.edge_attr)
        mask = batch.train_mask
        loss = F.binary_cross_entropy_with_logits(out[mask], batch.y[mask])
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * int(mask.sum())
        count += int(mask.sum())
    return total / max(count, 1)


@torch.no_grad()
def evaluate(model: RevGAT, data: Data, split: Dict[str, torch.Tensor],
             evaluator: Any, num_parts: int, device: torch.device) -> Dict[str, float]:
    r"""ROC-AUC (OGB's evaluator) per split, each node predicted from the
    subgraph of its random partition."""
    model.eval()
    y_pred = torch.empty(data.num_nodes, data.y.size(-1))
    for batch in RandomNodeLoader(data, num_parts=num_parts, shuffle=False):
        batch = batch.to(device)
        y_pred[batch.n_id.cpu()] = model(batch.x, batch.edge_index,
                                         batch.edge_attr).cpu()
    return {f'{part}_rocauc': evaluator.eval({'y_true': data.y[idx],
                                              'y_pred': y_pred[idx]})['rocauc']
            for part, idx in split.items()}


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    r"""Trains and returns the final results (also printed as JSON)."""
    from ogb.nodeproppred import Evaluator

    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dataset, data, split = load_data(args)
    evaluator = Evaluator(NAME)

    torch.manual_seed(args.seed)
    model = RevGAT(data.x.size(-1), args.hidden, data.y.size(-1),
                   num_layers=args.layers, heads=args.heads, dropout=args.dropout,
                   attention_dropout=args.attention_dropout,
                   edge_dim=data.edge_attr.size(-1),
                   memory_saving=not args.no_memory_saving).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)

    start_epoch, best = 1, {'valid_rocauc': -1.0, 'test_rocauc': -1.0, 'epoch': 0}
    history: List[Dict[str, float]] = []
    if args.checkpoint and osp.exists(args.checkpoint):
        state = load_checkpoint(args.checkpoint, model, optimizer, map_location=device)
        start_epoch = state['epoch'] + 1
        best, history = state['extra']['best'], state['extra']['history']
        print(f'Resumed from {args.checkpoint} after epoch {state["epoch"]}',
              file=sys.stderr)

    print(f'{model}: {sum(p.numel() for p in model.parameters()):,} parameters; '
          f'{data.num_nodes:,} nodes, {data.edge_index.size(1):,} edges',
          file=sys.stderr)
    for epoch in range(start_epoch, args.epochs + 1):
        torch.manual_seed(args.seed * 100_003 + epoch)  # exact resume
        loader = RandomNodeLoader(data, num_parts=args.num_parts, shuffle=True)
        reset_peak_memory(device)
        tic, cpu_tic = time.perf_counter(), time.process_time()
        loss = train_epoch(model, loader, optimizer, device, epoch)
        record: Dict[str, Any] = {'epoch': epoch, 'loss': loss,
                                  'train_seconds': time.perf_counter() - tic,
                                  'train_cpu_seconds': time.process_time() - cpu_tic}
        if epoch % args.eval_every == 0 or epoch == args.epochs:
            record.update(evaluate(model, data, split, evaluator, args.eval_parts, device))
            if record['valid_rocauc'] > best['valid_rocauc']:
                best = {'valid_rocauc': record['valid_rocauc'],
                        'test_rocauc': record['test_rocauc'], 'epoch': epoch}
        record.update(peak_memory(device))
        history.append(record)
        append_jsonl(args.log, record)
        aucs = (f" train/valid/test ROC-AUC {record['train_rocauc']:.4f}/"
                f"{record['valid_rocauc']:.4f}/{record['test_rocauc']:.4f}"
                if 'valid_rocauc' in record else '')
        tqdm.write(f"epoch {epoch:3d} loss {loss:.4f}{aucs} "
                   f"{record['train_seconds']:.1f}s {format_memory(record)}",
                   file=sys.stderr)
        if args.checkpoint:
            save_checkpoint(args.checkpoint, epoch=epoch, model=model,
                            optimizer=optimizer, extra={'best': best, 'history': history})

    results = {'dataset': NAME, 'epochs': args.epochs, 'best': best,
               'last': history[-1] if history else None, 'device': str(device)}
    if args.results:
        with open(args.results, 'w') as f:
            json.dump(results, f, indent=1)
    print(json.dumps(results))
    return results


if __name__ == '__main__':
    main()
