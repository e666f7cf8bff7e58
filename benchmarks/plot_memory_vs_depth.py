r"""Plots a table written by ``memory_vs_depth.py --markdown`` (peak memory
and seconds per step versus depth, one line per method).

    python benchmarks/plot_memory_vs_depth.py benchmarks/results/memory_vs_depth_cpu.md \
        benchmarks/results/memory_vs_depth_cpu.png
"""
import argparse
import textwrap
from typing import Dict, List, Optional, Tuple

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

# table column prefix -> legend label (older tables lack the fused column)
LABELS = {
    'GATConv': 'PyG GATConv stack',
    'GroupAddRev': 'PyG GroupAddRev',
    'ours': 'ours (ReversibleMessagePassing)',
    'ours+FusedGATConv': 'ours + FusedGATConv',
}


def read_table(path: str) -> Tuple[str, Dict[str, List[Tuple[int, float, float]]]]:
    r"""Returns the caption line and, per method, (depth, MB, seconds) rows
    of the first table in :obj:`path` (a results file may hold more, e.g. a
    memory table, then a timing one); columns are found by their header
    (``"<method> MB"``, ``"<method> s"``), skipped or unmeasured cells and
    absent columns are :obj:`None`."""
    with open(path) as f:
        lines = [line.strip() for line in f if line.strip()]
    # the table's own caption (a results file may put notes above it)
    caption = next((line for line in lines if line.startswith('Device:')), lines[0])
    header: List[str] = []
    series: Dict[str, List[Tuple[int, float, float]]] = {v: [] for v in LABELS.values()}
    for line in lines:
        if not line.startswith('|'):
            if header:  # the first table has ended
                break
            continue
        cells = [c.strip() for c in line.strip('|').split('|')]
        if cells[0] == 'depth':
            header = cells
            continue
        if not header or not cells[0].isdigit():
            continue
        depth = int(cells[0])
        for prefix, label in LABELS.items():
            if f'{prefix} MB' not in header:
                continue
            mb = _number(cells[header.index(f'{prefix} MB')])
            sec = (_number(cells[header.index(f'{prefix} s')])
                   if f'{prefix} s' in header else None)
            if mb is not None or sec is not None:
                series[label].append((depth, mb, sec))
    return caption, series


def _number(cell: str) -> Optional[float]:
    try:
        return float(cell)
    except ValueError:  # "skipped ...", "-" (not measured)
        return None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('table')
    parser.add_argument('output')
    args = parser.parse_args()
    caption, series = read_table(args.table)
    timed = any(sec is not None for rows in series.values() for _, _, sec in rows)
    fig, axes = plt.subplots(1, 2 if timed else 1, figsize=(11 if timed else 6, 4.2),
                             squeeze=False)
    axes = axes[0]
    for label, rows in series.items():
        for k, ax in enumerate(axes):  # column 1: MB, column 2: seconds
            points = [(row[0], row[1 + k]) for row in rows if row[1 + k] is not None]
            if points:
                ax.plot(*zip(*points), marker='o', label=label)
    for ax, ylabel in zip(axes, ('peak memory of one step (MB)', 'seconds per step')):
        ax.set_xscale('log', base=2)
        ax.set_yscale('log')
        ax.set_xlabel('depth (layers)')
        ax.set_ylabel(ylabel)
        ax.grid(True, which='both', alpha=0.3)
    axes[0].legend()
    title = caption.split(';')[0] + ';' + caption.split(';')[1]
    fig.suptitle(textwrap.fill(title, 80 if timed else 60), fontsize=9)
    fig.tight_layout()
    fig.savefig(args.output, dpi=120)
    print(f'wrote {args.output}')


if __name__ == '__main__':
    main()
