r"""Memory footprint of a GNN versus a GRevNet/GNF at Pubmed size (paper 4.2).

The paper's setting: N = 19,717 nodes, d = 500 features, K = 5 message
passing steps, a parameter-free aggregation that sums over neighbours.

* GNN step: :math:`\mathbf{H} \mapsto \mathbf{A}\,\phi(\mathbf{H})` with
  :math:`\phi` = FC(500 -> 750) -> ReLU -> FC(750 -> 500) -> ReLU (weights
  500 x 750 + 750 x 500, as the paper counts them);
* GNF step: an additive reversible step on halves of 250 whose two
  functions (the paper's :math:`F_1, F_2`) are
  :math:`\mathbf{H} \mapsto \mathbf{A}\,\psi(\mathbf{H})` with :math:`\psi` =
  FC(250 -> 750) -> ReLU -> FC(750 -> 250), so its weights are exactly the
  paper's :math:`W_{GNF} = 2 (250 \cdot 750 + 750 \cdot 250)` (bias aside);
* :math:`\mathbf{A}`: a random graph with Pubmed's 88,648 (directed) edges,
  row-normalised (mean aggregation, so 80 steps stay finite), as a
  ``torch.sparse_csr`` matrix; a linear head to 3 classes and cross entropy.

Printed: the paper's formula (weights + K N d intermediate values for the
GNN, weights + N d for the GNF; 945.9 M and 80.2 M in the paper), and the
measured peak memory of one training step (forward + backward) of both, each
in a fresh process (peak RSS (``VmHWM``: ``ru_maxrss`` of the process
itself) growth over the step, after a warm-up step
on a tiny graph; CUDA: ``max_memory_allocated``), for K = 5, 20, 80.

    python benchmarks/pubmed_memory.py [--depths 5 20 80] [--markdown out.md]
        [--plot out.png]
"""
import argparse
import os.path as osp
from typing import Any, Dict, List, Optional

import torch
from tqdm import tqdm

from torch_geometric_gnf.utils import run_in_fresh_process
from torch_geometric_gnf.utils.profiling import LIVE_PEAK_MALLOC_ENV

METHODS = ('gnn', 'gnf')
LABELS = {'gnn': 'GNN', 'gnf': 'GNF (GRevNet)'}


def paper_formula(nodes: int, dim: int, hidden: int, depth: int) -> Dict[str, Any]:
    r"""Section 4.2's count of values to store, and the same in MiB of
    float64 (8 bytes, 2^20 bytes per MiB) - the unit in which the paper's
    945.9 M comes out exactly:

    .. math::
        W_{GNN} = d h + h d, \quad W_{GNF} = 2 (\tfrac{d}{2} h + h \tfrac{d}{2}),
        \quad M_{GNN} = W_{GNN} + K N (d + h), \quad M_{GNF} = W_{GNF} + N d.

    The classifier weights :math:`C` are left out, as in the paper."""
    half = dim // 2
    w_gnn = dim * hidden + hidden * dim
    w_gnf = 2 * (half * hidden + hidden * half)
    gnn = w_gnn + depth * nodes * (dim + hidden)
    gnf = w_gnf + nodes * dim
    return {'gnn_values': gnn, 'gnf_values': gnf,
            'gnn_mib64': gnn * 8 / 2**20, 'gnf_mib64': gnf * 8 / 2**20,
            'ratio': gnn / gnf}


class MLPMessagePassing(torch.nn.Module):
    r""":math:`\mathbf{H} \mapsto \mathbf{A}\,\mathrm{MLP}(\mathbf{H})`: a
    node-wise MLP, then parameter-free aggregation by the (sparse) adjacency
    :math:`\mathbf{A}` passed as :obj:`edge_index`."""
    def __init__(self, widths: List[int], last_relu: bool):
        super().__init__()
        layers: List[torch.nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(torch.nn.Linear(a, b))
            if i < len(widths) - 2 or last_relu:
                layers.append(torch.nn.ReLU())
        self.mlp = torch.nn.Sequential(*layers)

    def reset_parameters(self):
        for m in self.mlp:
            if hasattr(m, 'reset_parameters'):
                m.reset_parameters()

    def forward(self, h: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        return torch.sparse.mm(adj, self.mlp(h))


def build_model(method: str, depth: int, dim: int, hidden: int,
                classes: int) -> torch.nn.Module:
    from torch_geometric_gnf.nn import ReversibleMessagePassing

    half = dim // 2
    if method == 'gnn':
        steps = [MLPMessagePassing([dim, hidden, dim], last_relu=True)
                 for _ in range(depth)]
    elif method == 'gnf':
        def fn():
            return MLPMessagePassing([half, hidden, half], last_relu=False)
        steps = [ReversibleMessagePassing(fn(), fn()) for _ in range(depth)]
    else:
        raise ValueError(f"Unknown method {method!r} (use one of {METHODS})")
    return torch.nn.ModuleDict({'steps': torch.nn.ModuleList(steps),
                                'head': torch.nn.Linear(dim, classes)})


def random_adjacency(nodes: int, edges: int, device: torch.device,
                     seed: int = 0) -> torch.Tensor:
    r"""Row-normalised adjacency of a uniformly random directed graph with
    :obj:`edges` edges (duplicates merged), as ``torch.sparse_csr``."""
    gen = torch.Generator().manual_seed(seed)
    index = torch.randint(0, nodes, (2, edges), generator=gen)
    adj = torch.sparse_coo_tensor(index, torch.ones(edges), (nodes, nodes),
                                  check_invariants=True).coalesce()
    row = adj.indices()[0]
    deg = torch.zeros(nodes).index_add_(0, row, adj.values()).clamp_(min=1)
    adj = torch.sparse_coo_tensor(adj.indices(), adj.values() / deg[row],
                                  (nodes, nodes), check_invariants=True)
    return adj.to_sparse_csr().to(device)


def measure(method: str, depth: int, nodes: int, edges: int, dim: int, hidden: int,
            classes: int, device: str, seed: int = 0) -> Dict[str, Any]:
    r"""Runs in a fresh process: the peak memory of one training step."""
    import torch.nn.functional as F

    from torch_geometric_gnf.utils import memory_baseline, step_memory_bytes

    torch.manual_seed(seed)
    dev = torch.device(device)
    model = build_model(method, depth, dim, hidden, classes).to(dev)

    def step(x, adj, y):
        h = x
        for block in model['steps']:
            h = block(h, adj)
        loss = F.cross_entropy(model['head'](h), y)
        loss.backward()
        for p in model.parameters():
            p.grad = None
        return float(loss.detach())

    # Warm-up on a tiny graph pages in the kernels (a constant, not activations).
    step(torch.randn(64, dim, device=dev), random_adjacency(64, 256, dev),
         torch.randint(0, classes, (64, ), device=dev))
    x = torch.randn(nodes, dim, device=dev)
    adj = random_adjacency(nodes, edges, dev, seed)
    y = torch.randint(0, classes, (nodes, ), device=dev)
    base = memory_baseline(dev)
    loss = step(x, adj, y)
    peak_mb = step_memory_bytes(dev, base) / 2**20
    # Parameter gradients grow with K for both models (the paper's formula
    # ignores them); what is left is activation memory.
    grad_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    return {'peak_mb': peak_mb, 'loss': loss, 'grad_mb': grad_mb,
            'activation_mb': peak_mb - grad_mb,
            'parameters': sum(p.numel() for p in model.parameters())}


def available_mb() -> float:
    with open('/proc/meminfo') as f:
        for line in f:
            if line.startswith('MemAvailable'):
                return int(line.split()[1]) / 1024
    return float('inf')


def plot(results: Dict[tuple, Dict[str, Any]], depths: List[int], path: str,
         title: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for method, marker in (('gnn', 'o'), ('gnf', 's')):
        pts = [(d, results[(method, d)]['peak_mb']) for d in depths
               if 'peak_mb' in results.get((method, d), {})]
        if pts:
            ax.plot(*zip(*pts), marker=marker, label=f'{LABELS[method]} (measured)')
        skipped = [(d, results[(method, d)]['predicted_mb']) for d in depths
                   if 'predicted_mb' in results.get((method, d), {})]
        if skipped and pts:
            ax.plot([pts[-1][0]] + [d for d, _ in skipped],
                    [pts[-1][1]] + [m for _, m in skipped], linestyle=':',
                    marker='x', color=ax.lines[-1].get_color(),
                    label=f'{LABELS[method]} (linear extrapolation, not run)')
    ax.set_xlabel('message passing steps K')
    ax.set_ylabel('peak memory of one training step (MiB)')
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> Dict[tuple, Dict[str, Any]]:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--nodes', type=int, default=19_717)
    parser.add_argument('--edges', type=int, default=88_648)
    parser.add_argument('--dim', type=int, default=500)
    parser.add_argument('--hidden', type=int, default=750)
    parser.add_argument('--classes', type=int, default=3)
    parser.add_argument('--depths', type=int, nargs='+', default=[5, 20, 80])
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--max-fraction', type=float, default=0.5,
                        help='skip a run predicted to need more than this '
                             'fraction of the available memory')
    parser.add_argument('--markdown', default=None, help='also write the report here')
    parser.add_argument('--plot', default=None, help='PNG of memory versus K')
    args = parser.parse_args(argv)
    if args.dim % 2 != 0:
        parser.error('--dim must be even (the GNF splits it in halves)')
    if any(d < 1 for d in args.depths):
        parser.error('--depths must be positive')

    depths = sorted(args.depths)
    results: Dict[tuple, Dict[str, Any]] = {}
    for depth in tqdm(depths, desc='depths'):
        for method in METHODS:
            prev = [(d, r['peak_mb']) for (m, d), r in results.items()
                    if m == method and 'peak_mb' in r]
            if prev and args.device == 'cpu':
                # Linear growth in K (what we are measuring) bounds the next run.
                (d0, m0), (d1, m1) = (prev[0], prev[-1]) if len(prev) > 1 else \
                    ((0, 0.0), prev[-1])
                slope = (m1 - m0) / (d1 - d0) if d1 != d0 else 0.0
                predicted = m1 + slope * (depth - d1)
                if predicted > args.max_fraction * available_mb():
                    results[(method, depth)] = {'predicted_mb': predicted}
                    continue
            try:
                results[(method, depth)] = run_in_fresh_process(
                    measure, env=LIVE_PEAK_MALLOC_ENV, method=method, depth=depth,
                    nodes=args.nodes, edges=args.edges, dim=args.dim,
                    hidden=args.hidden, classes=args.classes, device=args.device)
            except RuntimeError as e:
                results[(method, depth)] = {'error': str(e)[-80:]}
            tqdm.write(f'{method} K={depth}: {results[(method, depth)]}')

    lines = [f'Device: {args.device}, {torch.get_num_threads()} threads, torch '
             f'{torch.__version__}; N = {args.nodes:,} nodes, {args.edges:,} random '
             f'edges, d = {args.dim}, hidden {args.hidden}, {args.classes} classes; '
             f'memory runs: MALLOC_MMAP_THRESHOLD_='
             f'{LIVE_PEAK_MALLOC_ENV["MALLOC_MMAP_THRESHOLD_"]}.', '',
             '| K | paper formula GNN (M values / MiB f64) | paper formula GNF '
             '(M values / MiB f64) | formula ratio | measured GNN MiB | '
             'measured GNF MiB | measured ratio | GNN / GNF MiB without parameter '
             'gradients |',
             '|---|---|---|---|---|---|---|---|']

    def cell(method: str, depth: int, key: str = 'peak_mb') -> str:
        r = results[(method, depth)]
        if key in r:
            return f"{r[key]:.0f}"
        if 'predicted_mb' in r:
            return f"not run (~{r['predicted_mb']:.0f} predicted)"
        return f"failed: {r.get('error', '?')}"

    for depth in depths:
        f = paper_formula(args.nodes, args.dim, args.hidden, depth)
        gnn, gnf = results[('gnn', depth)], results[('gnf', depth)]
        ratio = (f"{gnn['peak_mb'] / gnf['peak_mb']:.1f}x"
                 if 'peak_mb' in gnn and 'peak_mb' in gnf and gnf['peak_mb'] > 0 else '-')
        lines.append(f"| {depth} | {f['gnn_values'] / 1e6:.1f} M / {f['gnn_mib64']:.1f} | "
                     f"{f['gnf_values'] / 1e6:.1f} M / {f['gnf_mib64']:.1f} | "
                     f"{f['ratio']:.1f}x | {cell('gnn', depth)} | {cell('gnf', depth)} "
                     f"| {ratio} | {cell('gnn', depth, 'activation_mb')} / "
                     f"{cell('gnf', depth, 'activation_mb')} |")
    gnf_runs = [results[('gnf', d)] for d in depths if 'peak_mb' in results[('gnf', d)]]
    if len(gnf_runs) > 1:
        first, last = gnf_runs[0], gnf_runs[-1]
        lines += ['', f"GNF at the largest / smallest K: peak "
                      f"{last['peak_mb'] / first['peak_mb']:.2f}x, without parameter "
                      f"gradients {last['activation_mb'] / first['activation_mb']:.2f}x"]
    report = '\n'.join(lines)
    print(report)
    if args.markdown:
        with open(args.markdown, 'w') as fh:
            fh.write(report + '\n')
    if args.plot:
        plot(results, depths, args.plot,
             f'one training step, N={args.nodes:,}, d={args.dim}, {args.device}')
        print(f'plot written to {osp.abspath(args.plot)}')
    return results


if __name__ == '__main__':
    main()
