r"""Plots a table written by ``memory_vs_depth.py --markdown`` (peak memory
and seconds per step versus depth, one line per method).

    python benchmarks/plot_memory_vs_depth.py benchmarks/results/memory_vs_depth_cpu.md \
        benchmarks/results/memory_vs_depth_cpu.png
"""
import argparse
from typing import Dict, List, Tuple

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

LABELS = ('PyG GATConv stack', 'PyG GroupAddRev', 'ours (ReversibleMessagePassing)')


def read_table(path: str) -> Tuple[str, Dict[str, List[Tuple[int, float, float]]]]:
    r"""Returns the caption line and, per method, (depth, MB, seconds) rows;
    skipped cells are left out."""
    with open(path) as f:
        lines = [line.strip() for line in f if line.strip()]
    caption = lines[0]
    series: Dict[str, List[Tuple[int, float, float]]] = {k: [] for k in LABELS}
    for line in lines:
        cells = [c.strip() for c in line.strip('|').split('|')]
        if len(cells) < 7 or not cells[0].isdigit():
            continue
        depth = int(cells[0])
        for i, label in enumerate(LABELS):
            try:
                series[label].append((depth, float(cells[1 + i]), float(cells[4 + i])))
            except ValueError:  # "skipped" cell
                pass
    return caption, series


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('table')
    parser.add_argument('output')
    args = parser.parse_args()
    caption, series = read_table(args.table)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, rows in series.items():
        if not rows:
            continue
        depths, mb, sec = zip(*rows)
        axes[0].plot(depths, mb, marker='o', label=label)
        axes[1].plot(depths, sec, marker='o', label=label)
    for ax, ylabel in zip(axes, ('peak memory of one step (MB)', 'seconds per step')):
        ax.set_xscale('log', base=2)
        ax.set_yscale('log')
        ax.set_xlabel('depth (layers)')
        ax.set_ylabel(ylabel)
        ax.grid(True, which='both', alpha=0.3)
    axes[0].legend()
    fig.suptitle(caption.split(';')[0] + ';' + caption.split(';')[1], fontsize=9)
    fig.tight_layout()
    fig.savefig(args.output, dpi=120)
    print(f'wrote {args.output}')


if __name__ == '__main__':
    main()
