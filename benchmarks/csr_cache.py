r"""Cost of a verified CSR cache hit against the build it replaces.

A hit of :func:`torch_geometric_gnf.ops.cached_csr` compares the graph's
current contents with the snapshot the entry took at build time (exact,
O(E), no O(E) allocation); a miss derives the graph the CSR is of (for
FusedGATConv, the self-looped edge list) and sorts its edges twice
(:func:`~torch_geometric_gnf.ops.build_csr`). This prints both, side by
side in one process, for FusedGATConv's self-looped graph and for a graph
as given, with the bytes a hit allocates:

    python benchmarks/csr_cache.py [--threads 1] [--repeats 5]
"""
import argparse
import time
from typing import Callable, List, Optional

import torch

from torch_geometric_gnf.nn._fused_graph import _dense_csr, looped_edge_index
from torch_geometric_gnf.ops import build_csr, clear_csr_cache

GRAPHS = ((100_000, 1_000_000), (169_343, 1_166_243))


def seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up (and, for the cached path, the one build)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def allocated_by(fn: Callable[[], object]) -> int:
    r"""Bytes of the tensors :obj:`fn` allocates (torch profiler)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                profile_memory=True) as prof:
        fn()
    return sum(e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage > 0)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--repeats', type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print('| nodes | edges | self-looped: build ms | hit ms | hit/build '
          '| as given: build ms | hit ms | hit/build | bytes a hit allocates |')
    print('|---|---|---|---|---|---|---|---|---|')
    for n, e in GRAPHS:
        ei = torch.randint(0, n, (2, e))
        clear_csr_cache()
        row = [f'{n:,}', f'{e:,}']
        for loops in (n, None):
            # what a miss does: derive the graph the CSR is of, sort it
            def derived():
                return ei.int() if loops is None else \
                    looped_edge_index(ei, loops, torch.int32)
            build = seconds(lambda: build_csr(derived(), n, n), args.repeats)
            hit = seconds(lambda: _dense_csr(ei, n, n, loops), args.repeats)
            row += [f'{build * 1e3:.1f}', f'{hit * 1e3:.1f}',
                    f'{hit / build:.2f}']
        row.append(f'{allocated_by(lambda: _dense_csr(ei, n, n, n)):,}')
        print('| ' + ' | '.join(row) + ' |')


if __name__ == '__main__':
    main()
