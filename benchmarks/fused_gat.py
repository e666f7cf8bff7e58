r"""Peak memory and time of one GAT training step: PyG ``GATConv`` versus
``FusedGATConv`` (or, with ``--conv gatv2``, ``GATv2Conv`` versus
``FusedGATv2Conv``).

One forward + backward pass of a single layer ``(in_channels -> heads x 64)``
with 4 heads on random graphs, loss ``(out * upstream).sum()`` with a fixed
random ``upstream`` gradient (allocated before the measurement, like the
input features and the graph):

* ``100k``: 100,000 nodes, 1,000,000 edges, 64 input features;
* ``arxiv``: 169,343 nodes, 1,166,243 edges, 128 input features (ogbn-arxiv's
  size);
* ``10M``: 100,000 nodes, 10,000,000 edges, 64 input features (skipped with a
  printed reason when the predicted peak does not fit in memory).

Every configuration runs in a fresh process. Peak memory is the growth of
peak RSS (``VmHWM``: ``ru_maxrss`` of the process itself) during the first
step on the graph (CPU; after a warm-up step on a tiny graph, in the default
environment: glibc's default allocator, no ``MALLOC_*`` variables;
``--malloc-mmap-threshold`` fixes glibc's mmap threshold so that RSS follows
the live peak, for analysis only) or ``torch.cuda.max_memory_allocated``
(CUDA). This first step includes
building the fused layer's self-looped graph and CSR. Time is the mean of
``--repeats`` steps after a warm-up step, in a separate fresh process with
glibc's default allocator (the CSR is cached by then, as in training on a
fixed graph; the warm-up step's time, which includes building it, is reported
too).

    python benchmarks/fused_gat.py [--graphs 100k arxiv 10M] [--device cpu]
        [--threads 2] [--repeats 3] [--markdown benchmarks/results/fused_gat_cpu.md]
        [--plot benchmarks/results/fused_gat_cpu.png] [--conv gat|gatv2]

``--compile`` measures every layer twice, eager and wrapped in
``torch.compile(layer, dynamic=True)`` (default inductor backend), and prints
one table of both (time per step, peak memory, compiled/eager ratios). The
compilation happens in the warm-up step on the tiny graph (dynamic shapes, so
the measured graph reuses it); its time is not in the step times. Memory runs
use the default allocator environment here. E.g.

    python benchmarks/fused_gat.py --compile --graphs 20k \
        --markdown benchmarks/results/fused_gat_compile_cpu.md

``--conv gatv2`` measures memory in the default environment (no allocator
environment variables).
"""
import argparse
import time
from typing import Any, Dict, List, Optional

import torch
from tqdm import tqdm

from torch_geometric_gnf.utils import run_in_fresh_process
from torch_geometric_gnf.utils.profiling import LIVE_PEAK_MALLOC_ENV

METHODS = ('gatconv', 'fused')
LABELS = {'gatconv': 'GATConv', 'fused': 'FusedGATConv'}
LABELS_V2 = {'gatconv': 'GATv2Conv', 'fused': 'FusedGATv2Conv'}
GRAPHS = {  # name: (nodes, edges, input features)
    '100k': (100_000, 1_000_000, 64),
    'arxiv': (169_343, 1_166_243, 128),
    '10M': (100_000, 10_000_000, 64),
    '20k': (20_000, 200_000, 64),  # modest size for the --compile table
    'tiny': (500, 4_000, 16),  # for the tests
}


def build_layer(method: str, in_channels: int, channels: int,
                heads: int, conv: str = 'gat') -> torch.nn.Module:
    if conv == 'gatv2':
        from torch_geometric.nn import GATv2Conv

        from torch_geometric_gnf.nn import FusedGATv2Conv
        cls = GATv2Conv if method == 'gatconv' else FusedGATv2Conv
        return cls(in_channels, channels, heads=heads)
    if method == 'gatconv':
        from torch_geometric.nn import GATConv
        return GATConv(in_channels, channels, heads=heads)
    if method == 'fused':
        from torch_geometric_gnf.nn import FusedGATConv
        return FusedGATConv(in_channels, channels, heads=heads)
    raise ValueError(f'unknown method {method!r}')


def measure(method: str, nodes: int, edges: int, in_channels: int,
            channels: int, heads: int, repeats: int, device: str,
            threads: int, seed: int = 0, compile: bool = False,
            conv: str = 'gat') -> Dict[str, Any]:
    r"""Runs in a fresh process: the peak memory of one training step
    (:obj:`repeats=0`), or the time of a warm-up step and the mean time of
    :obj:`repeats` further steps."""
    from torch_geometric_gnf.utils import memory_baseline, step_memory_bytes

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    dev = torch.device(device)
    layer = build_layer(method, in_channels, channels, heads, conv).to(dev)
    if compile:
        layer = torch.compile(layer, dynamic=True)

    def graph(n, e):
        return (torch.randn(n, in_channels, device=dev),
                torch.randint(0, n, (2, e), device=dev))

    def step(x, edge_index, upstream):
        out = layer(x, edge_index)
        # `upstream` plays the gradient a downstream layer would send back
        # (allocated up front, like x): the loss adds no temporaries of its
        # own, so the peak is the layer's.
        (out * upstream).sum().backward()
        for p in layer.parameters():
            p.grad = None
        if dev.type == 'cuda':
            torch.cuda.synchronize(dev)

    # The first step pages in libtorch's kernels and thread pools: a
    # constant that is not the layer's memory.
    step(*graph(64, 256), torch.randn(64, heads * channels, device=dev))
    x, edge_index = graph(nodes, edges)
    upstream = torch.randn(nodes, heads * channels, device=dev)
    if repeats == 0:
        base = memory_baseline(dev)
        step(x, edge_index, upstream)
        return {'peak_mb': step_memory_bytes(dev, base) / 2**20}
    start = time.perf_counter()
    step(x, edge_index, upstream)
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(repeats):
        step(x, edge_index, upstream)
    return {'seconds': (time.perf_counter() - start) / repeats,
            'first_seconds': first}


def available_mb(device: str) -> float:
    if device.startswith('cuda'):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return free / 2**20
    with open('/proc/meminfo') as f:
        for line in f:
            if line.startswith('MemAvailable'):
                return int(line.split()[1]) / 1024
    return float('inf')


def fused_path(conv: str = 'gat') -> str:
    from torch_geometric_gnf import ops
    if not ops.extension_available():
        return 'pure-PyTorch reference (extension not available)'
    if conv == 'gatv2':
        import torch_geometric_gnf.ops.gatv2_attention as gat_attention
    else:
        import torch_geometric_gnf.ops.gat_attention as gat_attention
    kernel = getattr(gat_attention, '_has_kernel', lambda: False)()
    return 'C++ kernel' if kernel else 'pure-PyTorch reference (no fused kernel in the extension)'


def format_table(results: Dict[tuple, Dict[str, Any]], graphs: List[str],
                 caption: str, labels: Dict[str, str] = LABELS) -> str:
    ref, ours = labels['gatconv'], labels['fused']
    lines = [caption, '',
             f'| graph | nodes | edges | in | {ref} MB | {ours} MB | '
             f'fused/{ref} mem | {ref} s | {ours} s | fused/{ref} time '
             f'| fused first step s |',
             '|---|---|---|---|---|---|---|---|---|---|---|']

    def cell(method, g, key, fmt):
        r = results.get((method, g), {})
        return fmt.format(r[key]) if key in r else r.get('skipped', '-')

    def ratio(g, key):
        a, b = results.get(('fused', g), {}), results.get(('gatconv', g), {})
        return f'{a[key] / b[key]:.2f}' if key in a and key in b and b[key] > 0 else '-'

    for g in graphs:
        n, e, f = GRAPHS[g]
        lines.append('| ' + ' | '.join([
            g, f'{n:,}', f'{e:,}', str(f),
            cell('gatconv', g, 'peak_mb', '{:.0f}'), cell('fused', g, 'peak_mb', '{:.0f}'),
            ratio(g, 'peak_mb'),
            cell('gatconv', g, 'seconds', '{:.2f}'), cell('fused', g, 'seconds', '{:.2f}'),
            ratio(g, 'seconds'), cell('fused', g, 'first_seconds', '{:.2f}'),
        ]) + ' |')
    return '\n'.join(lines)


def plot(results: Dict[tuple, Dict[str, Any]], graphs: List[str], path: str,
         title: str, labels: Dict[str, str] = LABELS) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    width = 0.38
    for ax, key, ylabel in zip(axes, ('peak_mb', 'seconds'),
                               ('peak memory of one step (MB)', 'seconds per step')):
        for k, method in enumerate(METHODS):
            xs, ys = [], []
            for i, g in enumerate(graphs):
                r = results.get((method, g), {})
                if key in r:
                    xs.append(i + (k - 0.5) * width)
                    ys.append(r[key])
            ax.bar(xs, ys, width, label=labels[method])
        ax.set_xticks(range(len(graphs)))
        ax.set_xticklabels([f'{g}\n{GRAPHS[g][1]:,} edges' for g in graphs], fontsize=8)
        ax.set_ylabel(ylabel)
        ax.grid(True, axis='y', alpha=0.3)
    axes[0].legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f'wrote {path}')


def format_compile_table(results: Dict[tuple, Dict[str, Any]],
                         graphs: List[str], methods: List[str],
                         caption: str, labels: Dict[str, str] = LABELS) -> str:
    r"""Eager vs ``torch.compile`` per layer and graph, side by side."""
    lines = [caption, '',
             '| graph | layer | eager s | compiled s | compiled/eager time | '
             'eager MB | compiled MB | compiled/eager mem |',
             '|---|---|---|---|---|---|---|---|']

    def get(method, g, compiled, key):
        return results.get((method, g, compiled), {}).get(key)

    for g in graphs:
        for method in methods:
            row = [g, labels[method]]
            for key, fmt in (('seconds', '{:.3f}'), ('peak_mb', '{:.0f}')):
                a, b = get(method, g, False, key), get(method, g, True, key)
                row += [fmt.format(a) if a is not None else '-',
                        fmt.format(b) if b is not None else '-',
                        f'{b / a:.2f}' if a and b is not None else '-']
            lines.append('| ' + ' | '.join(row) + ' |')
    return '\n'.join(lines)


def run_compile_comparison(args) -> Dict[tuple, Dict[str, Any]]:
    r"""``--compile``: every (graph, layer) eager and compiled, each
    measurement in a fresh process."""
    results: Dict[tuple, Dict[str, Any]] = {}
    labels = LABELS_V2 if args.conv == 'gatv2' else LABELS
    configs = [(m, g, c) for g in args.graphs for m in args.methods
               for c in (False, True)]
    for method, g, compiled in tqdm(configs, desc='configurations'):
        nodes, edges, in_channels = GRAPHS[g]
        common = dict(method=method, nodes=nodes, edges=edges,
                      in_channels=in_channels, channels=args.channels,
                      heads=args.heads, device=args.device,
                      threads=args.threads, compile=compiled, conv=args.conv)
        try:
            result = run_in_fresh_process(measure, repeats=0, **common)
            if not args.skip_time:
                result.update(run_in_fresh_process(
                    measure, repeats=args.repeats, **common))
        except RuntimeError as e:
            result = {'skipped': f'failed: {str(e).splitlines()[-1][:80]}'}
            print(f'{labels[method]} on {g} (compile={compiled}): '
                  f'{result["skipped"]}')
        results[(method, g, compiled)] = result
    device = (torch.cuda.get_device_name() if args.device == 'cuda'
              else f'cpu, {args.threads} threads')
    caption = (f'Device: {device}, torch {torch.__version__}; one layer, '
               f'heads={args.heads}, {args.channels} channels per head; '
               f'fused path: {fused_path()}; compiled: torch.compile(layer, '
               f'dynamic=True), inductor, compiled in a warm-up step; time: '
               f'mean of {args.repeats} step(s) after a warm-up step; peak '
               f'memory: growth of VmHWM during one step, default allocator '
               f'environment; every number from a fresh process.')
    table = format_compile_table(results, args.graphs, args.methods, caption,
                                 labels)
    print(table)
    if args.markdown:
        with open(args.markdown, 'w') as f:
            f.write(table + '\n')
    return results


def main(argv: Optional[List[str]] = None) -> Dict[tuple, Dict[str, Any]]:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--graphs', nargs='+', default=['100k', 'arxiv', '10M'],
                        choices=list(GRAPHS))
    parser.add_argument('--methods', nargs='+', default=list(METHODS), choices=METHODS)
    parser.add_argument('--heads', type=int, default=4)
    parser.add_argument('--channels', type=int, default=64, help='per head')
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    parser.add_argument('--skip-time', action='store_true', help='memory only')
    parser.add_argument('--markdown', default=None, help='also write the table here')
    parser.add_argument('--plot', default=None, help='also draw a bar chart here (PNG)')
    parser.add_argument('--compile', action='store_true',
                        help='eager vs torch.compile for every layer, one table')
    parser.add_argument('--conv', default='gat', choices=['gat', 'gatv2'],
                        help='GATConv vs FusedGATConv, or GATv2Conv vs FusedGATv2Conv')
    parser.add_argument('--malloc-mmap-threshold', action='store_true',
                        help="analysis only: memory runs with glibc's mmap "
                             "threshold fixed (RSS follows the live peak)")
    args = parser.parse_args(argv)
    if args.malloc_mmap_threshold and args.device != 'cpu':
        parser.error('--malloc-mmap-threshold is a CPU (glibc) setting')
    labels = LABELS_V2 if args.conv == 'gatv2' else LABELS
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda but CUDA is not available')
    if args.compile:
        return run_compile_comparison(args)
    memory_env = LIVE_PEAK_MALLOC_ENV if args.malloc_mmap_threshold else {}

    results: Dict[tuple, Dict[str, Any]] = {}
    configs = [(m, g) for g in args.graphs for m in args.methods]
    for method, g in tqdm(configs, desc='configurations'):
        nodes, edges, in_channels = GRAPHS[g]
        # Skip what cannot fit: scale the same method's peak on the largest
        # graph measured so far by (nodes + edges).
        prev = [(GRAPHS[pg], r['peak_mb']) for (m, pg), r in results.items()
                if m == method and 'peak_mb' in r]
        if prev:
            (pn, pe, _), pmb = max(prev, key=lambda t: t[0][1])
            predicted = pmb * max(edges / pe, nodes / pn)
            if predicted > 0.8 * available_mb(args.device):
                reason = (f'skipped: ~{predicted / 1024:.0f} GB predicted, '
                          f'{available_mb(args.device) / 1024:.0f} GB available')
                print(f'{labels[method]} on {g}: {reason}')
                results[(method, g)] = {'skipped': reason}
                continue
        common = dict(method=method, nodes=nodes, edges=edges,
                      in_channels=in_channels, channels=args.channels,
                      heads=args.heads, device=args.device, threads=args.threads,
                      conv=args.conv)
        try:
            result = run_in_fresh_process(measure, env=memory_env, repeats=0, **common)
            if not args.skip_time:
                result.update(run_in_fresh_process(measure, repeats=args.repeats, **common))
        except RuntimeError as e:
            result = {'skipped': f'failed: {str(e).split(":")[-1].strip()[:60]}'}
            print(f'{labels[method]} on {g}: {result["skipped"]}')
        results[(method, g)] = result

    device = (torch.cuda.get_device_name() if args.device == 'cuda'
              else f'cpu, {args.threads} threads')
    malloc = memory_env.get('MALLOC_MMAP_THRESHOLD_', "unset (glibc's default malloc)")
    caption = (f'Device: {device}, torch {torch.__version__}; one layer, heads='
               f'{args.heads}, {args.channels} channels per head; fused path: '
               f'{fused_path(args.conv)}; memory runs: MALLOC_MMAP_THRESHOLD_={malloc}; '
               f'time: mean of {args.repeats} step(s) after a warm-up step, '
               f'separate process.')
    table = format_table(results, args.graphs, caption, labels)
    print(table)
    if args.markdown:
        with open(args.markdown, 'w') as f:
            f.write(table + '\n')
    if args.plot:
        plot(results, args.graphs, args.plot, caption.split(';')[0] + '; ' +
             caption.split(';')[1], labels)
    return results


if __name__ == '__main__':
    main()
