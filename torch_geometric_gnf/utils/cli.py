r"""Command-line helpers shared by the examples and benchmarks: where they
write their tables, figures and logs, and how ``--help`` shows defaults.

An example writes into the repository only when given an explicit path
(``--out PATH``); by default every run gets a fresh folder
``runs/<example>/<UTC time>/`` under the current directory (``runs/`` is
git-ignored), so a smoke run never overwrites recorded results.
"""
import argparse
import datetime
import os
import os.path as osp
from typing import Optional

RUNS_ROOT = 'runs'


def new_run_folder(example: str, root: str = RUNS_ROOT) -> str:
    r"""Creates and returns ``<root>/<example>/<UTC time>/`` (a numbered
    suffix is added when two runs start within the same second)."""
    if not example or osp.sep in example:
        raise ValueError(f"'example' must be a plain name (got {example!r})")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime('%Y%m%dT%H%M%SZ')
    base = osp.join(root, example, stamp)
    path, n = base, 1
    while True:
        try:
            os.makedirs(path)
            return path
        except FileExistsError:
            n += 1
            path = f'{base}_{n}'


def resolve_out(out: Optional[str], example: str) -> str:
    r"""Returns :obj:`out` (created if missing) when the user gave one, else a
    new run folder for :obj:`example` (see :func:`new_run_folder`)."""
    if out is None:
        return new_run_folder(example)
    os.makedirs(out, exist_ok=True)
    return out


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter,
                    argparse.RawDescriptionHelpFormatter):
    r"""``--help`` shows every option's default and keeps the description's
    line breaks (module docstrings with command lines)."""
