r"""Memory and time of one training step versus depth.

One forward + backward pass on a random graph (default 50,000 nodes,
500,000 edges, 64 channels) for stacks of depth 1, 4, 16 and 64 of:

* ``gatconv``  - a plain PyG stack, ``GATConv(64, 16, heads=4)`` + ELU per layer;
* ``groupaddrev`` - PyG's ``GroupAddRev`` (2 groups) around ``GATConv(32, 8, heads=4)``;
* ``ours``     - ``ReversibleMessagePassing`` with ``GATConv(32, 8, heads=4)`` as
  both F and G (the same two convs per layer as ``groupaddrev``);
* ``fused``    - ``ReversibleMessagePassing`` with ``FusedGATConv(32, 8, heads=4)``
  as F and G (the same weights' shapes; fused attention kernel).

Every configuration runs in a fresh process; peak memory is the growth of
peak RSS (``VmHWM``: ``ru_maxrss`` of the process itself) over the step
(CPU) or ``torch.cuda.max_memory_allocated``
(CUDA).  Time is the mean of ``--repeats`` steps after a warm-up step, in a
separate fresh process that keeps glibc's default allocator settings.

    python benchmarks/memory_vs_depth.py [--nodes 50000 --edges 500000]
        [--depths 1 4 16 64] [--methods gatconv groupaddrev ours fused]
        [--device cpu] [--markdown out.md]
"""
import argparse
import time
from typing import Any, Dict, List

import torch
from tqdm import tqdm

from torch_geometric_gnf.utils import run_in_fresh_process
from torch_geometric_gnf.utils.profiling import LIVE_PEAK_MALLOC_ENV

METHODS = ('gatconv', 'groupaddrev', 'ours', 'fused')
COLUMNS = {'gatconv': 'GATConv', 'groupaddrev': 'GroupAddRev', 'ours': 'ours',
           'fused': 'ours+FusedGATConv'}


def build_model(method: str, depth: int, channels: int, heads: int) -> torch.nn.Module:
    from torch_geometric.nn import GATConv, GroupAddRev

    from torch_geometric_gnf.nn import FusedGATConv, ReversibleMessagePassing

    half = channels // 2
    if method == 'gatconv':
        layers = [GATConv(channels, channels // heads, heads=heads) for _ in range(depth)]
    elif method == 'groupaddrev':
        layers = [GroupAddRev(GATConv(half, half // heads, heads=heads), num_groups=2)
                  for _ in range(depth)]
    elif method == 'ours':
        layers = [ReversibleMessagePassing(GATConv(half, half // heads, heads=heads),
                                           GATConv(half, half // heads, heads=heads))
                  for _ in range(depth)]
    elif method == 'fused':
        layers = [ReversibleMessagePassing(FusedGATConv(half, half // heads, heads=heads),
                                           FusedGATConv(half, half // heads, heads=heads))
                  for _ in range(depth)]
    else:
        raise ValueError(method)
    return torch.nn.ModuleList(layers)


def forward(method: str, layers: torch.nn.ModuleList, x: torch.Tensor,
            edge_index: torch.Tensor) -> torch.Tensor:
    for layer in layers:
        x = layer(x, edge_index)
        if method == 'gatconv':
            x = torch.nn.functional.elu(x)
    return x


def measure(method: str, depth: int, nodes: int, edges: int, channels: int,
            heads: int, repeats: int, device: str, seed: int = 0) -> Dict[str, Any]:
    r"""Runs in a fresh process: builds the graph and model, then measures
    the peak memory of one training step (:obj:`repeats=0`) or the mean time
    of :obj:`repeats` steps after a warm-up step."""
    from torch_geometric_gnf.utils import memory_baseline, step_memory_bytes

    torch.manual_seed(seed)
    dev = torch.device(device)
    edge_index = torch.randint(0, nodes, (2, edges), device=dev)
    x = torch.randn(nodes, channels, device=dev)
    model = build_model(method, depth, channels, heads).to(dev)

    def step(x, edge_index):
        out = forward(method, model, x, edge_index)
        out.pow(2).mean().backward()
        for p in model.parameters():
            p.grad = None
        if dev.type == 'cuda':
            torch.cuda.synchronize(dev)

    if repeats > 0:
        step(x, edge_index)  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            step(x, edge_index)
        return {'seconds': (time.perf_counter() - start) / repeats}

    # Warm up on a tiny graph first: the first step also pages in libtorch's
    # kernels and thread pools, a constant that is not activation memory.
    step(torch.randn(64, channels, device=dev),
         torch.randint(0, 64, (2, 256), device=dev))
    base = memory_baseline(dev)
    step(x, edge_index)
    return {'peak_mb': step_memory_bytes(dev, base) / 2**20}


def available_mb() -> float:
    with open('/proc/meminfo') as f:
        for line in f:
            if line.startswith('MemAvailable'):
                return int(line.split()[1]) / 1024
    return float('inf')


def main(argv: List[str] = None) -> List[Dict[str, Any]]:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--nodes', type=int, default=50_000)
    parser.add_argument('--edges', type=int, default=500_000)
    parser.add_argument('--channels', type=int, default=64)
    parser.add_argument('--heads', type=int, default=4)
    parser.add_argument('--depths', type=int, nargs='+', default=[1, 4, 16, 64])
    parser.add_argument('--methods', nargs='+', default=list(METHODS), choices=METHODS)
    parser.add_argument('--repeats', type=int, default=3,
                        help='timed steps per configuration; 0: memory only')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--markdown', default=None, help='also write the table here')
    parser.add_argument('--malloc-default', action='store_true',
                        help="keep glibc's adaptive mmap threshold (see below)")
    args = parser.parse_args(argv)
    # Memory runs fix glibc's mmap threshold (see LIVE_PEAK_MALLOC_ENV);
    # timing runs keep glibc's default (fewer page faults, real speed).
    memory_env = {} if args.malloc_default else LIVE_PEAK_MALLOC_ENV

    results: Dict[tuple, Dict[str, Any]] = {}
    # Configurations run in the order of --depths (e.g. 1 4 64 16 gets the
    # extremes first); the table is rewritten after each one, rows sorted.
    configs = [(m, d) for d in args.depths for m in args.methods]
    for method, depth in tqdm(configs, desc='configurations'):
        # Skip what cannot fit: extrapolate linearly from the measured depths.
        prev = sorted((d, r['peak_mb']) for (m, d), r in results.items()
                      if m == method and 'peak_mb' in r)
        if prev and args.device == 'cpu':
            predicted = predict_mb(prev, depth)
            if predicted > 0.8 * available_mb():
                results[(method, depth)] = {'skipped': f'~{predicted / 1024:.0f} GB predicted'}
                continue
        common = dict(method=method, depth=depth, nodes=args.nodes,
                      edges=args.edges, channels=args.channels, heads=args.heads,
                      device=args.device)
        try:
            result = run_in_fresh_process(measure, env=memory_env, repeats=0,
                                          **common)
            if args.repeats > 0:
                result.update(run_in_fresh_process(measure, repeats=args.repeats,
                                                   **common))
            results[(method, depth)] = result
        except RuntimeError as e:
            results[(method, depth)] = {'skipped': str(e).split(':')[-1].strip()[:40]}
        table = render(results, args, memory_env)
        if args.markdown:
            with open(args.markdown, 'w') as f:
                f.write(table + '\n')

    table = render(results, args, memory_env)
    print(table)
    if args.markdown:
        with open(args.markdown, 'w') as f:
            f.write(table + '\n')
    return list(results.values())


def predict_mb(prev: List[tuple], depth: int) -> float:
    r"""Peak memory at :obj:`depth` extrapolated linearly from (depth, MB)
    points: through the two deepest ones, or proportionally from one."""
    if len(prev) == 1:
        (d, mb), = prev
        return mb * depth / d
    (d0, mb0), (d1, mb1) = prev[-2:]
    slope = max((mb1 - mb0) / (d1 - d0), 0.0)
    return mb1 + slope * (depth - d1)


def render(results: Dict[tuple, Dict[str, Any]], args: argparse.Namespace,
           memory_env: Dict[str, str]) -> str:
    r"""The markdown table of everything measured so far (rows by depth)."""
    depths = sorted(set(args.depths))
    malloc = memory_env.get('MALLOC_MMAP_THRESHOLD_', 'glibc default')
    lines = [f'Device: {args.device}, {torch.get_num_threads()} threads, torch '
             f'{torch.__version__}; graph: {args.nodes:,} nodes, {args.edges:,} '
             f'edges, {args.channels} channels, GAT heads={args.heads}; memory '
             f'runs: MALLOC_MMAP_THRESHOLD_={malloc}; time: ' +
             (f'mean of {args.repeats} step(s) after a warm-up step, separate process.'
              if args.repeats > 0 else 'not measured.'), '',
             '| depth | ' + ' | '.join(f'{COLUMNS[m]} MB' for m in METHODS) + ' | '
             + ' | '.join(f'{COLUMNS[m]} s' for m in METHODS) +
             ' | ours/GroupAddRev mem | ours/GroupAddRev time | ours/GATConv mem '
             '| fused/GroupAddRev mem | fused/GroupAddRev time | fused/ours mem |',
             '|---' * (1 + 2 * len(METHODS) + 6) + '|']

    def cell(method, depth, key, fmt):
        r = results.get((method, depth), {})
        return fmt.format(r[key]) if key in r else r.get('skipped', '-')

    def ratio(a, b, depth, key):
        ra, rb = results.get((a, depth), {}), results.get((b, depth), {})
        return f'{ra[key] / rb[key]:.2f}' if key in ra and key in rb and rb[key] > 0 else '-'

    for d in depths:
        lines.append('| ' + ' | '.join([
            str(d),
            *(cell(m, d, 'peak_mb', '{:.0f}') for m in METHODS),
            *(cell(m, d, 'seconds', '{:.2f}') for m in METHODS),
            ratio('ours', 'groupaddrev', d, 'peak_mb'),
            ratio('ours', 'groupaddrev', d, 'seconds'),
            ratio('ours', 'gatconv', d, 'peak_mb'),
            ratio('fused', 'groupaddrev', d, 'peak_mb'),
            ratio('fused', 'groupaddrev', d, 'seconds'),
            ratio('fused', 'ours', d, 'peak_mb'),
        ]) + ' |')
    lo, hi = min(depths), max(depths)
    notes = []
    for method in ('ours', 'fused'):
        r_lo, r_hi = results.get((method, lo), {}), results.get((method, hi), {})
        if 'peak_mb' in r_lo and 'peak_mb' in r_hi:
            notes.append(f'{COLUMNS[method]} depth {hi} / depth {lo} peak memory: '
                         f'{r_hi["peak_mb"] / r_lo["peak_mb"]:.2f}')
    fused_hi, rev_hi = results.get(('fused', hi), {}), results.get(('groupaddrev', hi), {})
    if 'peak_mb' in fused_hi and 'peak_mb' in rev_hi:
        notes.append(f'{COLUMNS["fused"]} at depth {hi} / GroupAddRev(GATConv) at depth '
                     f'{hi} peak memory: {fused_hi["peak_mb"] / rev_hi["peak_mb"]:.2f}')
    if notes:
        lines += [''] + [note + '  ' for note in notes]
    return '\n'.join(lines)


if __name__ == '__main__':
    main()
