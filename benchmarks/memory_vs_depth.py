r"""Memory and time of one training step versus depth.

One forward + backward pass on a random graph (default 50,000 nodes,
500,000 edges, 64 channels) for stacks of depth 1, 4, 16 and 64 of:

* ``gatconv``  - a plain PyG stack, ``GATConv(64, 16, heads=4)`` + ELU per layer;
* ``groupaddrev`` - PyG's ``GroupAddRev`` (2 groups) around ``GATConv(32, 8, heads=4)``;
* ``ours``     - ``ReversibleMessagePassing`` with ``GATConv(32, 8, heads=4)`` as
  both F and G (the same two convs per layer as ``groupaddrev``);
* ``fused``    - ``ReversibleMessagePassing`` with ``FusedGATConv(32, 8, heads=4)``
  as F and G (the same weights' shapes; fused attention kernel);
* ``ours_off`` / ``fused_off`` (not run by default) - ``ours`` / ``fused``
  with the library's memory release turned off (``GNF_MEMORY_RELEASE=0``);
* ``ours_keep0`` / ``fused_keep0`` (not run by default) - ``ours`` / ``fused``
  releasing at every check (``GNF_MEMORY_RELEASE_KEEP_MB=0``: the lowest
  peak, slower steps on small graphs);
* ``fusedv2`` (not run by default) - ``ReversibleMessagePassing`` with
  ``FusedGATv2Conv(32, 8, heads=4)`` as F and G (memory only).

CPU: every configuration runs in a fresh process started from this script
(``python memory_vs_depth.py --child ...``) in the default environment
(glibc's default ``malloc``, no ``MALLOC_*`` variables).  The PyG baselines'
processes never import ``torch_geometric_gnf``: they run as PyG's users run
them.  Peak memory is the growth of peak RSS (``VmHWM``) over the first full
step, the median of ``--memory-runs`` such processes (the same step's
resident peak varies by several MB from process to process with where
glibc's heap lands); in the first, ``--repeats`` more steps are timed.  For ``ours`` and ``fused``
the same steps are timed once more in a process with the memory release off
(``GNF_MEMORY_RELEASE=0``): the table's ``s`` column is with the release,
``s (no release)`` without (separate processes, so that no step starts from
a heap the other mode trimmed or left fat; run it on a quiet machine).
``--time-runs K`` alternates K such processes per mode and reports the
medians (process-to-process noise is several per cent).
``--malloc-mmap-threshold`` sets ``MALLOC_MMAP_THRESHOLD_=131072`` for every
process (analysis only: it makes RSS track the live peak, but slows large
steps down).

CUDA: all configurations run in this process (the peak is
``torch.cuda.max_memory_allocated`` after ``torch.cuda.reset_peak_memory_stats``,
independent of what else the process did), one timed step by default.

    python benchmarks/memory_vs_depth.py [--nodes 50000 --edges 500000]
        [--depths 1 4 16 64] [--methods gatconv groupaddrev ours fused]
        [--device cpu] [--markdown out.md]
"""
import argparse
import importlib.util
import json
import os
import os.path as osp
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

import torch
from tqdm import tqdm

# No module-level import of torch_geometric_gnf: the PyG baselines' child
# processes must not load it (nor its extension and memory release).

METHODS = ('gatconv', 'groupaddrev', 'ours', 'fused')
EXTRA_METHODS = ('ours_off', 'fused_off', 'ours_keep0', 'fused_keep0', 'fusedv2')
COLUMNS = {'gatconv': 'GATConv', 'groupaddrev': 'GroupAddRev', 'ours': 'ours',
           'fused': 'ours+FusedGATConv', 'ours_off': 'ours (no release)',
           'fused_off': 'ours+FusedGATConv (no release)',
           'ours_keep0': 'ours (release at every check)',
           'fused_keep0': 'ours+FusedGATConv (release at every check)',
           'fusedv2': 'ours+FusedGATv2Conv'}
OURS = ('ours', 'fused', 'ours_off', 'fused_off', 'ours_keep0', 'fused_keep0', 'fusedv2')
RELEASED = ('ours', 'fused')  # timed with the release on and off
MMAP_THRESHOLD_ENV = {'MALLOC_MMAP_THRESHOLD_': str(128 * 1024)}
RELEASE_OFF_ENV = {'GNF_MEMORY_RELEASE': '0'}
KEEP_NOTHING_ENV = {'GNF_MEMORY_RELEASE_KEEP_MB': '0'}


def _profiling():
    r"""``torch_geometric_gnf/utils/profiling.py`` loaded from its file (it
    needs only torch), so measuring does not import the package."""
    path = osp.join(osp.dirname(osp.abspath(__file__)), '..', 'torch_geometric_gnf',
                    'utils', 'profiling.py')
    if not osp.exists(path):  # an installed package: import it normally
        from torch_geometric_gnf.utils import profiling
        return profiling
    spec = importlib.util.spec_from_file_location('_gnf_profiling', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_model(method: str, depth: int, channels: int, heads: int) -> torch.nn.Module:
    from torch_geometric.nn import GATConv, GroupAddRev

    half = channels // 2
    if method == 'gatconv':
        layers = [GATConv(channels, channels // heads, heads=heads) for _ in range(depth)]
    elif method == 'groupaddrev':
        layers = [GroupAddRev(GATConv(half, half // heads, heads=heads), num_groups=2)
                  for _ in range(depth)]
    elif method in OURS:
        from torch_geometric_gnf.nn import (FusedGATConv, FusedGATv2Conv,
                                            ReversibleMessagePassing)
        conv = (FusedGATv2Conv if method == 'fusedv2' else
                FusedGATConv if method.startswith('fused') else GATConv)
        layers = [ReversibleMessagePassing(conv(half, half // heads, heads=heads),
                                           conv(half, half // heads, heads=heads))
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
    r"""Builds the graph and model, measures the peak memory of one training
    step, then the mean time, page faults and kernel seconds of
    :obj:`repeats` further steps (for our methods also the release calls and
    the time spent in them)."""
    profiling = _profiling()
    torch.manual_seed(seed)
    dev = torch.device(device)
    edge_index = torch.randint(0, nodes, (2, edges), device=dev)
    x = torch.randn(nodes, channels, device=dev)
    model = build_model(method, depth, channels, heads).to(dev)

    def step(x, edge_index) -> float:
        start = time.perf_counter()
        out = forward(method, model, x, edge_index)
        out.pow(2).mean().backward()
        for p in model.parameters():
            p.grad = None
        if dev.type == 'cuda':
            torch.cuda.synchronize(dev)
        return time.perf_counter() - start

    # Warm up on a tiny graph first: the first step also pages in libtorch's
    # kernels and thread pools, a constant that is not activation memory.
    step(torch.randn(64, channels, device=dev),
         torch.randint(0, 64, (2, 256), device=dev))
    base = profiling.memory_baseline(dev)
    first = step(x, edge_index)
    result = {'peak_mb': profiling.step_memory_bytes(dev, base) / 2**20,
              'first_seconds': first,
              'imports_gnf': 'torch_geometric_gnf' in sys.modules}
    if method in OURS:  # what the block cache held back for reuse, at most
        from torch_geometric_gnf.ops import block_cache_stats
        result['cache_waiting_mb'] = block_cache_stats()['peak_waiting_bytes'] / 2**20
    if repeats > 0:
        before, usage = _release_stats(method), resource.getrusage(resource.RUSAGE_SELF)
        result['seconds'] = sum(step(x, edge_index) for _ in range(repeats)) / repeats
        after, used = _release_stats(method), resource.getrusage(resource.RUSAGE_SELF)
        # Page faults (first touch of fresh or released pages) and the
        # kernel time they take: where the memory release costs time.
        result.update(minor_faults_per_step=(used.ru_minflt - usage.ru_minflt) / repeats,
                      system_seconds_per_step=(used.ru_stime - usage.ru_stime) / repeats)
        if after is not None:
            result.update(
                releases_per_step=(after['calls'] - before['calls']) / repeats,
                release_ms_per_step=1e3 * (after['seconds'] - before['seconds']) / repeats)
    return result


def _release_stats(method: str) -> Optional[Dict[str, float]]:
    if method not in OURS:  # the baselines' processes never import us
        return None
    from torch_geometric_gnf.utils.memory import memory_release_stats
    return memory_release_stats()


def measure_in_child(config: Dict[str, Any], env: Dict[str, str]) -> Dict[str, Any]:
    r"""Runs :func:`measure` in a fresh ``python`` process started from this
    file (with :obj:`env` added to the environment)."""
    cmd = [sys.executable, osp.abspath(__file__), '--child', json.dumps(config)]
    proc = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [''])[-1]
        raise RuntimeError(f'exit code {proc.returncode} (out of memory?): {last}')
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_repeatedly(config: Dict[str, Any], env: Dict[str, str],
                       runs: int) -> Dict[str, Any]:
    r""":func:`measure_in_child` in :obj:`runs` fresh processes (timed steps
    only in the first): the peak is their median. Where glibc's heap lands
    in the address space varies from process to process, and with it the
    resident size of the same step by several MB."""
    first = measure_in_child(config, env)
    peaks = [first['peak_mb']] + [
        measure_in_child({**config, 'repeats': 0}, env)['peak_mb']
        for _ in range(runs - 1)]
    return {**first, 'peak_mb': sorted(peaks)[len(peaks) // 2], 'peak_mb_runs': peaks}


def available_mb() -> float:
    with open('/proc/meminfo') as f:
        for line in f:
            if line.startswith('MemAvailable'):
                return int(line.split()[1]) / 1024
    return float('inf')


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--nodes', type=int, default=50_000)
    parser.add_argument('--edges', type=int, default=500_000)
    parser.add_argument('--channels', type=int, default=64)
    parser.add_argument('--heads', type=int, default=4)
    parser.add_argument('--depths', type=int, nargs='+', default=[1, 4, 16, 64])
    parser.add_argument('--methods', nargs='+', default=list(METHODS),
                        choices=METHODS + EXTRA_METHODS)
    parser.add_argument('--repeats', type=int, default=None,
                        help='timed steps per configuration after the measured '
                             'one (default: 2 on CPU, 1 on CUDA); 0: memory only')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--memory-runs', type=int, default=3,
                        help='CPU: fresh processes per configuration; the '
                             'peak memory is their median')
    parser.add_argument('--time-runs', type=int, default=1,
                        help='CPU, ours/fused: timed process pairs, release on '
                             'then off, alternating; times are their medians')
    parser.add_argument('--markdown', default=None, help='also write the table here')
    parser.add_argument('--malloc-mmap-threshold', action='store_true',
                        help='analysis only: MALLOC_MMAP_THRESHOLD_=131072 in '
                             'every measuring process')
    parser.add_argument('--results', default=None,
                        help='JSON file that accumulates results across invocations')
    parser.add_argument('--render-only', action='store_true',
                        help='only print (and write) the table of --results')
    parser.add_argument('--child', default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is None:
        if min(args.depths) < 1 or args.nodes < 1 or args.edges < 1 or \
                args.memory_runs < 1:
            parser.error('--depths, --nodes, --edges and --memory-runs must be '
                         'positive')
        if args.channels % (2 * args.heads) != 0:
            parser.error(f'--channels ({args.channels}) must be divisible by '
                         f'2 * --heads ({2 * args.heads})')
        try:
            args.device = str(torch.device(args.device))
        except RuntimeError as e:
            parser.error(f'--device: {e}')
        is_cuda = args.device.startswith('cuda')
        if args.device != 'cpu' and not is_cuda:
            parser.error(f"--device must be 'cpu' or 'cuda[:N]' (got {args.device})")
        if is_cuda and args.malloc_mmap_threshold:
            parser.error('--malloc-mmap-threshold is a CPU (glibc) setting')
        if args.repeats is None:
            args.repeats = 1 if is_cuda else 2
        if args.time_runs < 1:
            parser.error(f'--time-runs must be >= 1 (got {args.time_runs})')
    return args


def main(argv: Optional[List[str]] = None) -> Dict[tuple, Dict[str, Any]]:
    args = parse_args(argv)
    if args.child is not None:  # a measuring process: print one JSON line
        print(json.dumps(measure(**json.loads(args.child))))
        return {}
    cuda = args.device.startswith('cuda')
    if cuda and not torch.cuda.is_available():
        raise SystemExit(f'--device {args.device}: CUDA is not available')
    env = MMAP_THRESHOLD_ENV if args.malloc_mmap_threshold else {}

    results = load_results(args.results)
    # Configurations run in the order of --depths (e.g. 1 4 64 16 gets the
    # extremes first); the table is rewritten after each one, rows sorted.
    configs = [] if args.render_only else [(m, d) for d in args.depths
                                           for m in args.methods]
    for method, depth in tqdm(configs, desc='configurations'):
        # Skip what cannot fit: extrapolate linearly from the measured depths.
        prev = sorted((d, r['peak_mb']) for (m, d), r in results.items()
                      if m == method and 'peak_mb' in r)
        if len(prev) >= 2 and not cuda:
            predicted = predict_mb(prev, depth)
            if predicted > 0.8 * available_mb():
                results[(method, depth)] = {'skipped': f'~{predicted / 1024:.0f} GB predicted'}
                continue
        config = dict(method=method, depth=depth, nodes=args.nodes, edges=args.edges,
                      channels=args.channels, heads=args.heads, device=args.device,
                      repeats=0 if method in EXTRA_METHODS else args.repeats)
        try:
            if cuda:  # in-process: the CUDA peak counter is reset per config
                results[(method, depth)] = measure(**config)
                torch.cuda.empty_cache()
            else:
                extra = (RELEASE_OFF_ENV if method.endswith('_off') else
                         KEEP_NOTHING_ENV if method.endswith('_keep0') else {})
                results[(method, depth)] = measure_repeatedly(
                    config, {**env, **extra}, args.memory_runs)
                if method in RELEASED and config['repeats'] > 0:
                    results[(method, depth)].update(time_release_on_and_off(
                        results[(method, depth)], config, env, args.time_runs))
        except (RuntimeError, torch.cuda.OutOfMemoryError) as e:
            results[(method, depth)] = {'skipped': str(e).split(':')[0].strip()[:40]}
            if cuda:
                torch.cuda.empty_cache()
        write(render(results, args, env), args.markdown)
        save_results(results, args.results)

    table = render(results, args, env)
    print(table)
    write(table, args.markdown)
    return results


TIMED_KEYS = ('seconds', 'minor_faults_per_step', 'system_seconds_per_step')


def time_release_on_and_off(first: Dict[str, Any], config: Dict[str, Any],
                            env: Dict[str, str], runs: int) -> Dict[str, Any]:
    r"""Times the same steps without the release, each time in a process of
    its own (no step inherits a heap the other mode trimmed); with
    :obj:`runs` > 1 alternates further processes with and without it.  Step
    times vary by several per cent from process to process, so each timed
    figure is the median over :obj:`runs` processes per mode
    (:obj:`first`: the configuration's first process, release on)."""
    on, off = [first], []
    for i in range(runs):
        off.append(measure_in_child({**config, 'method': config['method'] + '_off'},
                                    {**env, **RELEASE_OFF_ENV}))
        if i + 1 < runs:
            on.append(measure_in_child(config, env))
    out = {'peak_mb_no_release': off[0]['peak_mb'], 'time_runs': runs,
           'seconds_runs': [r['seconds'] for r in on],
           'seconds_no_release_runs': [r['seconds'] for r in off]}
    for key in TIMED_KEYS:
        out[key] = statistics.median([r[key] for r in on])
        out[key + '_no_release'] = statistics.median([r[key] for r in off])
    for key in ('releases_per_step', 'release_ms_per_step'):
        if key in first:
            out[key] = statistics.median([r[key] for r in on])
    return out


def load_results(path: Optional[str]) -> Dict[tuple, Dict[str, Any]]:
    if not path or not osp.exists(path):
        return {}
    with open(path) as f:
        stored = json.load(f)
    return {(k.split('|')[0], int(k.split('|')[1])): v for k, v in stored.items()}


def save_results(results: Dict[tuple, Dict[str, Any]], path: Optional[str]) -> None:
    if path:
        with open(path, 'w') as f:
            json.dump({f'{m}|{d}': r for (m, d), r in results.items()}, f, indent=1)


def write(table: str, path: Optional[str]) -> None:
    if path:
        with open(path, 'w') as f:
            f.write(table + '\n')


def predict_mb(prev: List[tuple], depth: int) -> float:
    r"""Peak memory at :obj:`depth` extrapolated linearly through the two
    deepest of at least two (depth, MB) points."""
    (d0, mb0), (d1, mb1) = prev[-2:]
    slope = max((mb1 - mb0) / (d1 - d0), 0.0)
    return mb1 + slope * (depth - d1)


def render(results: Dict[tuple, Dict[str, Any]], args: argparse.Namespace,
           env: Dict[str, str]) -> str:
    r"""The markdown table of everything measured so far (rows by depth)."""
    depths = sorted(set(args.depths))
    methods = [m for m in METHODS + EXTRA_METHODS if m in args.methods]
    timed = [m for m in methods if m not in EXTRA_METHODS and args.repeats > 0]
    released = [m for m in RELEASED if m in timed and not args.device.startswith('cuda')]
    if args.device.startswith('cuda'):
        how = 'torch.cuda.max_memory_allocated, all configurations in one process'
    else:
        runs = [r['peak_mb_runs'] for r in results.values() if 'peak_mb_runs' in r]
        spread = max((max(p) - min(p) for p in runs), default=0.0)
        how = ('peak RSS growth (VmHWM), the median of '
               f'{max((len(p) for p in runs), default=1)} fresh processes per '
               f'configuration (largest spread between them: {spread:.0f} MB); '
               'MALLOC_MMAP_THRESHOLD_=' + env.get('MALLOC_MMAP_THRESHOLD_', "unset (glibc's default malloc)"))
    lines = [f'Device: {args.device}, {torch.get_num_threads()} threads, torch '
             f'{torch.__version__}; graph: {args.nodes:,} nodes, {args.edges:,} '
             f'edges, {args.channels} channels, GAT heads={args.heads}; memory: '
             f'{how}; time: ' +
             (f'mean of {args.repeats} step(s) after the measured step, same process'
              + ('; "no release": the same steps in a process with '
                 'GNF_MEMORY_RELEASE=0' if released else '')
              + (f'; times, faults and kernel seconds: the median of {args.time_runs} '
                 'processes per mode, release on and off alternating'
                 if released and args.time_runs > 1 else '') + '.'
              if args.repeats > 0 else 'not measured.'), '']
    ratios = [(a, b, key, f'{a}/{b} {"mem" if key == "peak_mb" else "time"}')
              for a in ('ours', 'fused') if a in methods
              for b, key in (('groupaddrev', 'peak_mb'), ('groupaddrev', 'seconds'),
                             ('gatconv', 'peak_mb'))
              if b in methods and (key == 'peak_mb' or b in timed)]
    cached = [m for m in methods if any(
        'cache_waiting_mb' in r for (m2, _), r in results.items() if m2 == m)]
    header = ([f'{COLUMNS[m]} MB' for m in methods]
              + [f'{COLUMNS[m]}: block cache MB waiting (peak)' for m in cached]
              + [f'{COLUMNS[m]} s' for m in timed]
              + [f'{COLUMNS[m]} s (no release)' for m in released]
              + [name for *_, name in ratios]
              + [f'{m} time release on/off' for m in released]
              + [f'{m} releases per step (ms in checks and releases)' for m in released]
              + [f'{m} page faults per step, release on / off' for m in released]
              + [f'{m} kernel s per step, release on / off' for m in released])
    lines += ['| depth | ' + ' | '.join(header) + ' |', '|---' * (1 + len(header)) + '|']

    def cell(method, depth, key, fmt):
        r = results.get((method, depth), {})
        return fmt.format(r[key]) if key in r else r.get('skipped', '-')

    def ratio(a, b, depth, key_a, key_b=None):
        ra, rb = results.get((a, depth), {}), results.get((b, depth), {})
        key_b = key_b or key_a
        ok = key_a in ra and key_b in rb and rb[key_b] > 0
        return f'{ra[key_a] / rb[key_b]:.2f}' if ok else '-'

    def releases(method, depth):
        r = results.get((method, depth), {})
        if 'releases_per_step' not in r:
            return '-'
        return f'{r["releases_per_step"]:.1f} ({r["release_ms_per_step"]:.1f})'

    def pair(method, depth, key, fmt):
        r = results.get((method, depth), {})
        ok = key in r and key + '_no_release' in r
        return f'{fmt(r[key])} / {fmt(r[key + "_no_release"])}' if ok else '-'

    for d in depths:
        lines.append('| ' + ' | '.join([
            str(d),
            *(cell(m, d, 'peak_mb', '{:.0f}') for m in methods),
            *(cell(m, d, 'cache_waiting_mb', '{:.0f}') for m in cached),
            *(cell(m, d, 'seconds', '{:.2f}') for m in timed),
            *(cell(m, d, 'seconds_no_release', '{:.2f}') for m in released),
            *(ratio(a, b, d, key) for a, b, key, _ in ratios),
            *(ratio(m, m, d, 'seconds', 'seconds_no_release') for m in released),
            *(releases(m, d) for m in released),
            *(pair(m, d, 'minor_faults_per_step', lambda v: f'{v / 1e6:.2f}M')
              for m in released),
            *(pair(m, d, 'system_seconds_per_step', '{:.2f}'.format) for m in released),
        ]) + ' |')
    lo, hi = min(depths), max(depths)
    notes = []
    for method in methods:
        r_lo, r_hi = results.get((method, lo), {}), results.get((method, hi), {})
        if method in OURS and 'peak_mb' in r_lo and 'peak_mb' in r_hi and hi > lo:
            notes.append(f'{COLUMNS[method]} depth {hi} / depth {lo} peak memory: '
                         f'{r_hi["peak_mb"] / r_lo["peak_mb"]:.2f}')
    baseline_imports = [m for (m, _), r in results.items()
                        if m in ('gatconv', 'groupaddrev') and r.get('imports_gnf')]
    if baseline_imports and not args.device.startswith('cuda'):
        notes.append('warning: a PyG baseline process imported torch_geometric_gnf')
    if notes:
        lines += [''] + [note + '  ' for note in notes]
    return '\n'.join(lines)


if __name__ == '__main__':
    main()
