r"""Full-batch deep RevGAT on a graph of ogbn-products' size, on CPU.

A synthetic graph with ogbn-products' size and shape (2,449,029 nodes,
61,859,140 undirected edges stored in both directions: 123,718,280 directed
edges, as PyG's ``to_undirected`` gives; 100 input features; 47 classes) and
a skewed degree distribution (Chung-Lu: edge endpoints drawn with
probability proportional to a power-law weight, seeded, written with torch
ops).  Model: :class:`~torch_geometric_gnf.models.RevGAT` with
:class:`~torch_geometric_gnf.nn.FusedGATConv`, hidden 128, 4 heads.

For each depth, in a fresh process each: the peak RSS (``VmHWM``) and the
seconds of one full-batch training step (forward, cross-entropy, backward,
Adam step), and of full-batch inference (``torch.no_grad``, eval mode).  The
graph is generated once and cached in a temporary file, which every
measuring process loads; the peak RSS is that of the whole process
(libtorch, the loaded graph, features, model, the step), and the growth
column is the step alone (peak minus the RSS after loading).

Beside it, the PyG ``GATConv`` stack of the same width (RevGAT's plain
residual layout with ``reversible=False`` and PyG's ``GATConv``), which
stores every layer's activations and per-edge messages; it does not fit at
full size, so it is measured on a smaller graph (``--baseline-scale``) of
the same shape and its step's growth is scaled linearly in the graph size.

    python benchmarks/products_scale.py [--scale 1.0] [--depths 1 4 16]
        [--results products.json] [--markdown products.md]

Separate invocations (e.g. one per depth) accumulate into ``--results``;
the table shows everything measured there.
"""
import argparse
import json
import os
import os.path as osp
import tempfile
import time
from typing import Any, Dict, List, Optional, Tuple

import torch
from tqdm import tqdm

from torch_geometric_gnf.utils import run_in_fresh_process

PRODUCTS = dict(nodes=2_449_029, undirected_edges=61_859_140, features=100,
                classes=47)
HIDDEN, HEADS = 128, 4
# Chung-Lu weights w_i = (i + offset)^-EXPONENT; the offset (a fraction of
# the nodes) caps the largest expected degree near ogbn-products' (~17k).
EXPONENT, OFFSET_FRACTION = 0.6, 0.00002
MODES = ('train', 'infer')


def graph_size(scale: float) -> Tuple[int, int]:
    r"""Nodes and undirected edges of the graph at :obj:`scale` (a fraction
    of ogbn-products' size; at least a few nodes per edge set)."""
    if not 0.0 < scale <= 1.0:
        raise ValueError(f"'scale' must be in (0, 1] (got {scale})")
    nodes = max(int(round(PRODUCTS['nodes'] * scale)), 16)
    edges = max(int(round(PRODUCTS['undirected_edges'] * scale)), 16)
    return nodes, min(edges, nodes * (nodes - 1) // 4)


def chung_lu_edges(num_nodes: int, num_edges: int, seed: int = 0,
                   chunk: int = 1 << 23) -> torch.Tensor:
    r"""Exactly :obj:`num_edges` distinct undirected edges without
    self-loops, endpoints drawn proportional to power-law weights (nodes
    relabelled at random so hubs are spread over the index range), stored in
    both directions and sorted by source, then target (as
    ``torch_geometric.utils.to_undirected`` returns them).  Returns an int64
    :obj:`[2, 2 * num_edges]` tensor."""
    gen = torch.Generator().manual_seed(seed)
    offset = max(OFFSET_FRACTION * num_nodes, 1.0)
    weight = (torch.arange(num_nodes, dtype=torch.float64) + offset).pow(-EXPONENT)
    cdf = weight.cumsum(0)
    cdf /= cdf[-1].clone()
    keys = torch.empty(0, dtype=torch.int64)
    while keys.numel() < num_edges:
        # Duplicates and self-loops are dropped: draw ~10 % more than missing.
        missing = num_edges - keys.numel()
        parts = [keys]
        for start in range(0, int(missing * 1.1) + 1, chunk):
            n = min(chunk, int(missing * 1.1) + 1 - start)
            u = torch.searchsorted(cdf, torch.rand(n, generator=gen, dtype=torch.float64))
            v = torch.searchsorted(cdf, torch.rand(n, generator=gen, dtype=torch.float64))
            u, v = u.clamp_(max=num_nodes - 1), v.clamp_(max=num_nodes - 1)
            keep = u != v
            lo, hi = torch.minimum(u, v)[keep], torch.maximum(u, v)[keep]
            parts.append(lo * num_nodes + hi)
        keys = torch.unique(torch.cat(parts))
        del parts
    if keys.numel() > num_edges:
        keys = keys[torch.randperm(keys.numel(), generator=gen)[:num_edges]]
    relabel = torch.randperm(num_nodes, generator=gen)
    row, col = relabel[keys // num_nodes], relabel[keys % num_nodes]
    del keys
    directed = torch.cat([row * num_nodes + col, col * num_nodes + row])
    del row, col
    directed = torch.sort(directed).values
    return torch.stack([directed // num_nodes, directed % num_nodes])


def prepare_graph(scale: float, seed: int, cache_dir: Optional[str]) -> Dict[str, Any]:
    r"""Generates the graph once (unless cached) into the file every
    measuring process loads; returns its path, size and degree statistics.
    Runs in a fresh process of its own, so the generator's memory never
    stays in the parent."""
    nodes, edges = graph_size(scale)
    folder = cache_dir or tempfile.gettempdir()
    path = osp.join(folder, f'gnf_products_scale_{nodes}_{edges}_seed{seed}_'
                            f'cl{EXPONENT}_{OFFSET_FRACTION}.pt')
    if osp.exists(path):
        edge_index = torch.load(path)
    else:
        edge_index = chung_lu_edges(nodes, edges, seed).to(torch.int32)
        tmp = path + f'.{os.getpid()}.tmp'
        torch.save(edge_index, tmp)  # int32 halves the file; int64 on load
        os.replace(tmp, path)
    deg = torch.bincount(edge_index[1].long(), minlength=nodes).double()
    return {'path': path, 'nodes': nodes, 'directed_edges': edge_index.size(1),
            'mean': deg.mean().item(), 'median': deg.median().item(),
            'max': deg.max().item(), 'isolated': int((deg == 0).sum())}


def build_model(depth: int, baseline: bool) -> torch.nn.Module:
    from torch_geometric.nn import GATConv

    from torch_geometric_gnf.models import RevGAT
    from torch_geometric_gnf.nn import FusedGATConv

    if baseline:  # PyG's GATConv, every layer's activations stored
        return RevGAT(PRODUCTS['features'], HIDDEN, PRODUCTS['classes'], depth, HEADS,
                      conv_cls=GATConv, reversible=False, memory_saving=False)
    return RevGAT(PRODUCTS['features'], HIDDEN, PRODUCTS['classes'], depth, HEADS,
                  conv_cls=FusedGATConv)


def measure(path: str, num_nodes: int, depth: int, mode: str, baseline: bool,
            seed: int = 0) -> Dict[str, Any]:
    r"""Runs in a fresh process: loads the cached graph, builds random
    features and labels and the model, then runs one training step
    (:obj:`mode="train"`) or full-batch inference (:obj:`"infer"`)."""
    import torch.nn.functional as F

    from torch_geometric_gnf.utils import memory_release_enabled
    from torch_geometric_gnf.utils.profiling import current_rss_bytes, peak_rss_bytes

    torch.manual_seed(seed)
    edge_index = torch.load(path).long()  # int64, as a PyG Data object holds it
    x = torch.randn(num_nodes, PRODUCTS['features'])
    y = torch.randint(0, PRODUCTS['classes'], (num_nodes, ))
    model = build_model(depth, baseline)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loaded = current_rss_bytes()
    start = time.perf_counter()
    if mode == 'train':
        model.train()
        loss = F.cross_entropy(model(x, edge_index), y)
        loss.backward()
        optimizer.step()
        finite = bool(torch.isfinite(loss))
    else:
        model.eval()
        with torch.no_grad():
            finite = bool(torch.isfinite(model(x, edge_index)).all())
    seconds = time.perf_counter() - start
    peak = peak_rss_bytes()
    return {'peak_gib': peak / 2**30, 'loaded_gib': loaded / 2**30,
            'growth_gib': (peak - loaded) / 2**30, 'seconds': seconds,
            'finite': finite, 'threads': torch.get_num_threads(),
            'memory_release': memory_release_enabled()}


def config_key(scale: float, depth: int, mode: str, baseline: bool) -> str:
    return f"{'gatconv' if baseline else 'ours'}|{scale:g}|{depth}|{mode}"


def main(argv: Optional[List[str]] = None) -> Dict[str, Dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--scale', type=float, default=1.0,
                        help="fraction of ogbn-products' nodes and edges")
    parser.add_argument('--depths', type=int, nargs='+', default=[1, 4, 16])
    parser.add_argument('--modes', nargs='+', default=list(MODES), choices=MODES)
    parser.add_argument('--baseline-scale', type=float, default=0.01,
                        help='graph size (fraction) for the GATConv stack; 0: skip it')
    parser.add_argument('--baseline-depths', type=int, nargs='*', default=[1, 4])
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--cache-dir', default=None,
                        help='where the generated graph is cached (default: temp dir)')
    parser.add_argument('--results', default=None,
                        help='JSON file that accumulates results across invocations')
    parser.add_argument('--markdown', default=None, help='also write the table here')
    args = parser.parse_args(argv)
    for name in ('depths', 'baseline_depths'):
        if any(d < 0 for d in getattr(args, name)):
            parser.error(f"--{name.replace('_', '-')} must be non-negative")
    for name in ('scale', 'baseline_scale'):
        value = getattr(args, name)
        if not (0.0 < value <= 1.0 or (name == 'baseline_scale' and value == 0.0)):
            parser.error(f"--{name.replace('_', '-')} must be in (0, 1] (got {value})")

    results: Dict[str, Dict[str, Any]] = {}
    if args.results and osp.exists(args.results):
        with open(args.results) as f:
            results = json.load(f)
    configs = [(args.scale, d, m, False) for d in args.depths for m in args.modes]
    if args.baseline_scale > 0:
        configs += [(args.baseline_scale, d, m, b) for d in args.baseline_depths
                    for m in args.modes for b in (True, False)]
    configs = list(dict.fromkeys(configs))  # ours may appear twice
    graphs: Dict[float, Dict[str, Any]] = {}
    for scale, depth, mode, baseline in tqdm(configs, desc='configurations'):
        if scale not in graphs:
            start = time.perf_counter()
            graphs[scale] = run_in_fresh_process(prepare_graph, scale=scale,
                                                 seed=args.seed, cache_dir=args.cache_dir)
            results[f'graph|{scale:g}'] = {
                **graphs[scale], 'prepare_seconds': time.perf_counter() - start}
        try:
            result = run_in_fresh_process(
                measure, path=graphs[scale]['path'], num_nodes=graphs[scale]['nodes'],
                depth=depth, mode=mode, baseline=baseline, seed=args.seed)
        except RuntimeError as e:
            result = {'error': str(e).split(':')[-1].strip()[:60]}
        results[config_key(scale, depth, mode, baseline)] = result
        save(results, args)
    print(render(results))
    return results


def save(results: Dict[str, Dict[str, Any]], args: argparse.Namespace) -> None:
    if args.results:
        with open(args.results, 'w') as f:
            json.dump(results, f, indent=1, sort_keys=True)
    if args.markdown:
        with open(args.markdown, 'w') as f:
            f.write(render(results) + '\n')


def _parse(key: str) -> Tuple[str, float, int, str]:
    method, scale, depth, mode = key.split('|')
    return method, float(scale), int(depth), mode


def render(results: Dict[str, Dict[str, Any]]) -> str:
    r"""The markdown tables of everything in :obj:`results`: ours per scale
    and depth, then the GATConv stack beside ours on its smaller graph."""
    runs = {_parse(k): v for k, v in results.items() if not k.startswith('graph|')}
    lines = [f'torch {torch.__version__}; '
             f'RevGAT(FusedGATConv), hidden {HIDDEN}, {HEADS} heads; one fresh '
             f'process per cell; peak = VmHWM of the whole process (includes the '
             f'loaded graph, features and model); growth = peak minus RSS after '
             f'loading; seconds = the one step (the first: includes building the '
             f'cached CSR of the graph).', '']
    for key, g in sorted((k, v) for k, v in results.items() if k.startswith('graph|')):
        lines.append(f"Graph at scale {key.split('|')[1]}: {g['nodes']:,} nodes, "
                     f"{g['directed_edges']:,} directed edges, degree mean "
                     f"{g['mean']:.1f} / median {g['median']:.0f} / max {g['max']:.0f}, "
                     f"{g['isolated']:,} isolated nodes.  ")
    lines += ['', '| scale | depth | threads | train peak GiB | train growth GiB | train s '
              '| infer peak GiB | infer growth GiB | infer s | train peak / shallowest train peak |',
              '|---' * 10 + '|']
    ours = sorted({(s, d) for (m, s, d, _) in runs if m == 'ours'})
    for scale, depth in ours:
        train = runs.get(('ours', scale, depth, 'train'), {})
        infer = runs.get(('ours', scale, depth, 'infer'), {})
        first = runs.get(('ours', scale, min(d for s, d in ours if s == scale), 'train'), {})
        lines.append('| ' + ' | '.join([
            f'{scale:g}', str(depth), str(train.get('threads', infer.get('threads', '-'))),
            _cell(train, 'peak_gib', '{:.2f}'),
            _cell(train, 'growth_gib', '{:.2f}'), _cell(train, 'seconds', '{:.1f}'),
            _cell(infer, 'peak_gib', '{:.2f}'), _cell(infer, 'growth_gib', '{:.2f}'),
            _cell(infer, 'seconds', '{:.1f}'), _ratio(train, first, 'peak_gib')]) + ' |')
    base = sorted({(s, d) for (m, s, d, _) in runs if m == 'gatconv'})
    if base:
        lines += ['', 'PyG GATConv stack (same width, residual, all activations stored) '
                  'beside ours on the smaller graph; "scaled" = its train-step growth '
                  'times (full size / this size), an estimate, not a measurement.', '',
                  '| scale | depth | GATConv train growth GiB | ours train growth GiB '
                  '| GATConv / ours | GATConv s | ours s | GATConv growth scaled to full size GiB |',
                  '|---' * 8 + '|']
        for scale, depth in base:
            gat = runs.get(('gatconv', scale, depth, 'train'), {})
            our = runs.get(('ours', scale, depth, 'train'), {})
            scaled = (f"{gat['growth_gib'] / scale:.0f}" if 'growth_gib' in gat else '-')
            lines.append('| ' + ' | '.join([
                f'{scale:g}', str(depth), _cell(gat, 'growth_gib', '{:.2f}'),
                _cell(our, 'growth_gib', '{:.2f}'), _ratio(gat, our, 'growth_gib'),
                _cell(gat, 'seconds', '{:.1f}'), _cell(our, 'seconds', '{:.1f}'),
                scaled]) + ' |')
    return '\n'.join(lines)


def _cell(result: Dict[str, Any], key: str, fmt: str) -> str:
    if key in result:
        return fmt.format(result[key])
    return result.get('error', '-')


def _ratio(a: Dict[str, Any], b: Dict[str, Any], key: str) -> str:
    if key in a and key in b and b[key] > 0:
        return f'{a[key] / b[key]:.2f}'
    return '-'


if __name__ == '__main__':
    main()
