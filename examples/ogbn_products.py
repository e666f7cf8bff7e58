r"""Mini-batch training of a deep reversible GAT on ogbn-products, on one or
many processes (``torch.distributed`` data parallel).

Mini-batches are random node partitions (the scheme of PyG's
``RandomNodeLoader``: the nodes are shuffled and cut into ``--num-parts``
parts, each batch is the subgraph induced by one part); this needs neither
``pyg-lib`` nor ``torch-sparse`` (``NeighborLoader`` needs one of them).
The model is a :class:`~torch_geometric_gnf.models.RevGAT` with
``--layers`` memory-saving reversible steps, so activation memory does not
grow with depth.

Multi-process: ``torchrun --nproc_per_node=N examples/ogbn_products.py ...``.
Every epoch all ranks draw the same partition (shared seed) and rank ``r``
trains on parts ``r, r + N, r + 2N, ...`` (parts that do not divide evenly
are dropped, so all ranks take the same number of steps), and
:class:`~torch.nn.parallel.DistributedDataParallel` averages the gradients.
DDP settings: ``find_unused_parameters=False`` (every parameter gets a
gradient in every step: the memory-saving autograd function receives all
parameters of its F and G as inputs and returns their gradients through the
ordinary autograd graph, so DDP's per-parameter hooks fire once per step,
during the backward pass, as with any module); ``broadcast_buffers`` left on
(the model has no buffers that change); backend ``gloo`` on CPU, ``nccl``
on CUDA.  Rank 0 processes the data set first (the others wait, so they do
not write ``processed/`` at the same time), evaluates and writes the
checkpoint; all ranks resume from it.

Run::

    python examples/ogbn_products.py --device cuda --checkpoint runs/products.pt
    torchrun --nproc_per_node=2 examples/ogbn_products.py --device cpu
    python examples/ogbn_products.py --synthetic 2000 --root /tmp/ogb --epochs 3
"""
import argparse
import json
import os
import os.path as osp
import sys
import time
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.loader import RandomNodeLoader
from tqdm import tqdm

from torch_geometric_gnf.datasets import load_example_dataset
from torch_geometric_gnf.models import RevGAT
from torch_geometric_gnf.utils.training import (append_jsonl, format_memory,
                                                load_checkpoint, peak_memory,
                                                ogb_example_parser,
                                                reset_peak_memory,
                                                resolve_device, save_checkpoint)

NAME = 'ogbn-products'


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = ogb_example_parser(
        __doc__.split('\n')[0], 'ogbn_products', epochs=100, hidden=128,
        heads=4, layers=16, dropout=0.3, lr=0.003,
        device_help='cpu, cuda, cuda:i or auto (with torchrun on CUDA '
        'each rank uses cuda:LOCAL_RANK)')
    p.add_argument('--input-dropout', type=float, default=0.1)
    p.add_argument('--num-parts', type=int, default=50,
                   help='training batches per epoch (all ranks together)')
    p.add_argument('--eval-parts', type=int, default=10,
                   help='partitions for (approximate) evaluation')
    p.add_argument('--eval-every', type=int, default=1)
    args = p.parse_args(argv)
    if args.epochs < 0 or args.num_parts < 1 or args.eval_parts < 1 or args.eval_every < 1:
        p.error('--epochs must be >= 0 and --num-parts/--eval-parts/--eval-every >= 1')
    return args


def rank_parts(num_nodes: int, num_parts: int, rank: int, world_size: int,
               generator: torch.Generator) -> List[Tensor]:
    r"""This rank's share of one random node partition: the nodes are
    shuffled (identically on every rank: same :obj:`generator` seed) and cut
    into :obj:`num_parts` parts; rank :obj:`r` gets parts
    :obj:`r, r + world_size, ...`, all ranks the same number."""
    if num_parts < world_size:
        raise ValueError(f'--num-parts ({num_parts}) must be at least the number '
                         f'of processes ({world_size})')
    perm = torch.randperm(num_nodes, generator=generator)
    parts = list(perm.tensor_split(num_parts))
    per_rank = num_parts // world_size
    return [parts[rank + i * world_size] for i in range(per_rank)]


def train_step(model: torch.nn.Module, batch: Data,
               optimizer: torch.optim.Optimizer) -> Optional[float]:
    r"""One optimisation step on a subgraph; the loss is the mean
    cross-entropy over its training nodes."""
    model.train()
    optimizer.zero_grad()
    out = model(batch.x, batch.edge_index)
    mask = batch.train_mask
    # A batch without training nodes still runs backward (loss 0) so that
    # DDP's gradient all-reduce happens on every rank in every step.
    loss = F.cross_entropy(out[mask], batch.y[mask]) if bool(mask.any()) \
        else out.sum() * 0.0
    loss.backward()
    optimizer.step()
    return float(loss.detach())


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: Data, split: Dict[str, Tensor],
             evaluator: Any, num_parts: int, device: torch.device) -> Dict[str, float]:
    r"""Predicts every node from the subgraph of its random partition (edges
    across parts are not seen: an approximation that keeps memory bounded)."""
    model.eval()
    pred = torch.empty(data.num_nodes, dtype=torch.long)
    for batch in RandomNodeLoader(data, num_parts=num_parts, shuffle=False):
        batch = batch.to(device)
        pred[batch.n_id.cpu()] = model(batch.x, batch.edge_index).argmax(-1).cpu()
    y = data.y.cpu()
    return {f'{part}_acc': evaluator.eval({'y_true': y[idx].unsqueeze(-1),
                                           'y_pred': pred[idx].unsqueeze(-1)})['acc']
            for part, idx in split.items()}


def init_distributed(device_arg: str) -> Dict[str, Any]:
    r"""Reads torchrun's environment (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``); starts the process group when there is more than one
    process."""
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    rank = int(os.environ.get('RANK', '0'))
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    device = resolve_device(device_arg)
    if world_size > 1:
        if device.type == 'cuda':
            device = torch.device('cuda', local_rank)
            torch.cuda.set_device(device)
        dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo')
    return {'rank': rank, 'world_size': world_size, 'device': device}


def load_data(args: argparse.Namespace, rank: int, world_size: int):
    r"""The data set with :obj:`train_mask` and global node ids
    (:obj:`n_id`) that survive :meth:`Data.subgraph`."""
    # Rank 0 writes/processes first so that ranks never race on processed/.
    if rank == 0:
        dataset = load_example_dataset(NAME, args.root, args.synthetic, seed=args.seed)
    if world_size > 1:
        dist.barrier()
    if rank != 0:
        dataset = load_example_dataset(NAME, args.root)
    data = dataset[0]
    data.y = data.y.view(-1)
    split = dataset.get_idx_split()
    data.train_mask = torch.zeros(data.num_nodes, dtype=torch.bool)
    data.train_mask[split['train']] = True
    data.n_id = torch.arange(data.num_nodes)
    return dataset, data, split


def build_model(args: argparse.Namespace, in_channels: int, num_classes: int) -> RevGAT:
    r"""The deep reversible GAT of this example."""
    return RevGAT(in_channels, args.hidden, num_classes, num_layers=args.layers,
                  heads=args.heads, dropout=args.dropout,
                  input_dropout=args.input_dropout,
                  attention_dropout=args.attention_dropout,
                  memory_saving=not args.no_memory_saving)


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    r"""Trains and returns the final results (rank 0; other ranks return
    :obj:`{}`)."""
    from ogb.nodeproppred import Evaluator

    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    ctx = init_distributed(args.device)
    rank, world_size, device = ctx['rank'], ctx['world_size'], ctx['device']
    try:
        return _train(args, rank, world_size, device, Evaluator(NAME))
    finally:
        if world_size > 1:
            dist.destroy_process_group()


def _train(args: argparse.Namespace, rank: int, world_size: int,
           device: torch.device, evaluator: Any) -> Dict[str, Any]:
    dataset, data, split = load_data(args, rank, world_size)
    torch.manual_seed(args.seed)  # same initial weights on every rank
    model = build_model(args, data.x.size(-1), dataset.num_classes).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)

    start_epoch, best = 1, {'valid_acc': -1.0, 'test_acc': -1.0, 'epoch': 0}
    history: List[Dict[str, float]] = []
    if args.checkpoint and osp.exists(args.checkpoint):
        state = load_checkpoint(args.checkpoint, model, optimizer, map_location=device)
        start_epoch = state['epoch'] + 1
        best, history = state['extra']['best'], state['extra']['history']
        if rank == 0:
            print(f'Resumed from {args.checkpoint} after epoch {state["epoch"]}',
                  file=sys.stderr)
    train_model = model
    if world_size > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == 'cuda' else None,
            find_unused_parameters=False)

    if rank == 0:
        print(f'{model}: {sum(p.numel() for p in model.parameters()):,} parameters; '
              f'{data.num_nodes:,} nodes, {data.edge_index.size(1):,} edges; '
              f'{world_size} process(es)', file=sys.stderr)
    for epoch in range(start_epoch, args.epochs + 1):
        torch.manual_seed(args.seed * 100_003 + epoch * 1_009 + rank)  # dropout
        gen = torch.Generator().manual_seed(args.seed * 100_003 + epoch)  # shared
        parts = rank_parts(data.num_nodes, args.num_parts, rank, world_size, gen)
        reset_peak_memory(device)
        tic, cpu_tic = time.perf_counter(), time.process_time()
        losses = []
        for nodes in tqdm(parts, desc=f'epoch {epoch}', disable=rank != 0, leave=False):
            batch = data.subgraph(nodes.sort().values).to(device)
            losses.append(train_step(train_model, batch, optimizer))
        record: Dict[str, Any] = {'epoch': epoch, 'loss': sum(losses) / len(losses),
                                  'train_seconds': time.perf_counter() - tic,
                                  'train_cpu_seconds': time.process_time() - cpu_tic,
                                  'rank': rank, **peak_memory(device)}
        if rank == 0 and (epoch % args.eval_every == 0 or epoch == args.epochs):
            record.update(evaluate(model, data, split, evaluator, args.eval_parts, device))
            if record['valid_acc'] > best['valid_acc']:
                best = {'valid_acc': record['valid_acc'],
                        'test_acc': record['test_acc'], 'epoch': epoch}
        if rank == 0:
            history.append(record)
            append_jsonl(args.log, record)
            accs = (f" train/valid/test acc {record['train_acc']:.4f}/"
                    f"{record['valid_acc']:.4f}/{record['test_acc']:.4f}"
                    if 'valid_acc' in record else '')
            tqdm.write(f"epoch {epoch:3d} loss {record['loss']:.4f}{accs} "
                       f"{record['train_seconds']:.1f}s {format_memory(record)}",
                       file=sys.stderr)
            if args.checkpoint:
                save_checkpoint(args.checkpoint, epoch=epoch, model=model,
                                optimizer=optimizer,
                                extra={'best': best, 'history': history})
        if world_size > 1:
            dist.barrier()  # checkpoint written before anyone moves on

    if rank != 0:
        return {}
    results = {'dataset': NAME, 'epochs': args.epochs, 'world_size': world_size,
               'best': best, 'last': history[-1] if history else None,
               'device': str(device)}
    if args.results:
        with open(args.results, 'w') as f:
            json.dump(results, f, indent=1)
    print(json.dumps(results))
    return results


if __name__ == '__main__':
    main()
