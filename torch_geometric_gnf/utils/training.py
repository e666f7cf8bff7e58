r"""Helpers shared by the training examples: checkpoint/resume, peak-memory
logging and ``torch.distributed`` set-up.

Checkpoints hold only tensors and plain Python values (state dicts, epoch,
RNG states, a small ``extra`` dict), so :func:`load_checkpoint` reads them
with ``torch.load(..., weights_only=True)``: resuming from a file never runs
pickled code.  :func:`atomic_save` writes them so that a process killed at
any point (SIGKILL, the OOM killer, a power cut) leaves either the previous
checkpoint or the new one, never a torn file; :func:`fault_point` lets the
crash-recovery tests kill a run at a chosen point.
"""
import argparse
import glob
import io
import json
import os
import os.path as osp
import random
import signal
from typing import Any, Dict, Optional

import numpy as np
import torch

from .profiling import peak_rss_bytes


def save_checkpoint(path: str, *, epoch: int, model: torch.nn.Module,
                    optimizer: Optional[torch.optim.Optimizer] = None,
                    extra: Optional[Dict[str, Any]] = None) -> None:
    r"""Writes a training checkpoint to :obj:`path` atomically (a temporary
    file renamed over the old one, so an interrupted save never leaves a
    truncated checkpoint).

    Args:
        path (str): Destination file.
        epoch (int): The last *completed* epoch; training resumes at
            :obj:`epoch + 1`.
        model (torch.nn.Module): Its :meth:`state_dict` is saved (a
            :class:`~torch.nn.parallel.DistributedDataParallel` wrapper is
            unwrapped, so the checkpoint loads with or without DDP).
        optimizer (torch.optim.Optimizer, optional): Its state is saved.
        extra (dict, optional): Plain values (numbers, strings, lists, dicts,
            tensors) to restore with the checkpoint, e.g. the best
            validation score so far.
    """
    if not isinstance(epoch, int) or epoch < 0:
        raise ValueError(f"'epoch' must be a non-negative int (got {epoch!r})")
    state = {
        'epoch': epoch,
        'model': _unwrap(model).state_dict(),
        'optimizer': optimizer.state_dict() if optimizer is not None else None,
        'extra': dict(extra or {}),
        'rng': rng_states(),
    }
    atomic_save(state, path)


FAULT_ENV = 'GNF_FAULT_AT'
_fault_calls: Dict[str, int] = {}


def fault_point(name: str) -> None:
    r"""A test hook for crash recovery.  When the environment variable
    :obj:`GNF_FAULT_AT` is :obj:`"NAME:K"`, the :obj:`K`-th call of
    :obj:`fault_point(NAME)` in this process kills the process with SIGKILL
    (no clean-up handlers, no flushing: as the OOM killer or a lost machine
    would).  The examples :obj:`ogbn_arxiv.py` and
    :obj:`density_estimation.py` call :obj:`fault_point("train_step")`
    between a step's backward pass and its optimizer update, and
    :func:`atomic_save` calls :obj:`fault_point("checkpoint_write")` half way
    through writing a checkpoint.  Without the variable it costs one
    environment lookup."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    target, _, count = spec.rpartition(':')
    if target != name:
        return
    _fault_calls[name] = _fault_calls.get(name, 0) + 1
    if _fault_calls[name] == int(count):
        os.kill(os.getpid(), signal.SIGKILL)


def atomic_save(state: Any, path: str) -> None:
    r""":func:`torch.save` of :obj:`state` to :obj:`path` that survives a
    crash at any point: the bytes go to a temporary file next to
    :obj:`path`, are flushed to disk (:func:`os.fsync`), and the file is
    then renamed over :obj:`path` (atomic on POSIX), and the folder entry is
    flushed too.  A process killed before the rename leaves the old
    :obj:`path` untouched (and a stray temporary, removed by the next save
    once its writer is gone).  The state is serialised in memory first
    (one extra copy of the checkpoint's size)."""
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getbuffer()
    tmp = f'{path}.tmp{os.getpid()}'
    with open(tmp, 'wb') as f:
        f.write(data[:len(data) // 2])
        f.flush()
        fault_point('checkpoint_write')  # a kill here leaves a torn temporary
        f.write(data[len(data) // 2:])
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_folder(folder)
    _remove_stale_temporaries(path)


def _fsync_folder(folder: str) -> None:
    # Makes the rename itself durable; not every platform opens folders.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_stale_temporaries(path: str) -> None:
    r"""Deletes :obj:`path.tmp<pid>` files whose writer process is gone
    (left by a writer killed mid-save)."""
    for tmp in glob.glob(glob.escape(path) + '.tmp*'):
        suffix = tmp[len(path) + 4:]
        if not suffix.isdigit() or int(suffix) == os.getpid():
            continue
        try:
            os.kill(int(suffix), 0)  # signal 0: only asks whether it exists
        except ProcessLookupError:
            try:
                os.remove(tmp)
            except OSError:
                pass
        except OSError:  # exists but is not ours: leave it alone
            pass


def read_checkpoint(path: str, map_location: Any = 'cpu') -> Dict[str, Any]:
    r"""The raw content of a checkpoint file written by :func:`atomic_save`
    (read with :obj:`weights_only=True`: no pickled code runs).

    Raises:
        FileNotFoundError: If :obj:`path` does not exist.
        ValueError: If the file is not readable as such a checkpoint.
    """
    if not osp.isfile(path):
        raise FileNotFoundError(f"No checkpoint at '{path}'")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated / foreign file
        raise ValueError(f"'{path}' is not a readable checkpoint: {e}") from e
    if not isinstance(state, dict):
        raise ValueError(f"'{path}' is not a checkpoint (it holds a "
                         f"{type(state).__name__})")
    return state


def rng_states() -> Dict[str, Any]:
    r"""The torch/CUDA/NumPy/Python RNG states as checkpointable values."""
    return {
        'torch': torch.get_rng_state(),
        'cuda': (torch.cuda.get_rng_state_all()
                 if torch.cuda.is_available() else []),
        'numpy': _numpy_state_to_plain(np.random.get_state()),
        'python': _python_state_to_plain(random.getstate()),
    }


def restore_rng_states(rng: Dict[str, Any]) -> None:
    r"""Puts back RNG states taken by :func:`rng_states`."""
    torch.set_rng_state(rng['torch'].cpu())
    if torch.cuda.is_available() and len(rng['cuda']) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in rng['cuda']])
    np.random.set_state(_plain_to_numpy_state(rng['numpy']))
    random.setstate(_plain_to_python_state(rng['python']))


def load_checkpoint(path: str, model: torch.nn.Module,
                    optimizer: Optional[torch.optim.Optimizer] = None,
                    map_location: Any = 'cpu',
                    restore_rng: bool = True) -> Dict[str, Any]:
    r"""Restores :obj:`model` (and :obj:`optimizer`) from a checkpoint
    written by :func:`save_checkpoint` and returns
    :obj:`{'epoch': last completed epoch, 'extra': {...}}`.
    With :obj:`restore_rng`, the torch/CUDA/NumPy/Python RNG states are
    restored too, so a resumed run draws the same dropout masks and
    mini-batches as an uninterrupted one.

    Raises:
        FileNotFoundError: If :obj:`path` does not exist.
        ValueError: If the file is not such a checkpoint or does not match
            the model.
    """
    state = read_checkpoint(path, map_location)
    if not {'epoch', 'model'} <= set(state):
        raise ValueError(f"'{path}' is not a checkpoint written by "
                         f"save_checkpoint (keys: {sorted(state)})")
    try:
        _unwrap(model).load_state_dict(state['model'])
    except RuntimeError as e:
        raise ValueError(f"Checkpoint '{path}' does not match the model "
                         f"(was it written with other hyper-parameters?): {e}") from e
    if optimizer is not None:
        if state.get('optimizer') is None:
            raise ValueError(f"Checkpoint '{path}' holds no optimizer state")
        optimizer.load_state_dict(state['optimizer'])
    if restore_rng and 'rng' in state:
        restore_rng_states(state['rng'])
    return {'epoch': int(state['epoch']), 'extra': state.get('extra', {})}


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, 'module') and isinstance(
        model, torch.nn.parallel.DistributedDataParallel) else model


# RNG states as tensors/plain values: loadable with weights_only=True.
def _numpy_state_to_plain(state: tuple) -> Dict[str, Any]:
    return {'keys': torch.from_numpy(state[1].astype(np.int64)), 'pos': int(state[2]),
            'has_gauss': int(state[3]), 'gauss': float(state[4])}


def _plain_to_numpy_state(plain: Dict[str, Any]) -> tuple:
    return ('MT19937', plain['keys'].numpy().astype(np.uint32), plain['pos'],
            plain['has_gauss'], plain['gauss'])


def _python_state_to_plain(state: tuple) -> Dict[str, Any]:
    return {'version': state[0], 'internal': list(state[1]),
            'gauss': state[2]}


def _plain_to_python_state(plain: Dict[str, Any]) -> tuple:
    return (plain['version'], tuple(plain['internal']), plain['gauss'])


def reset_peak_memory(device: torch.device) -> None:
    r"""Starts a new peak-memory window on CUDA devices (the CPU peak RSS of
    a process cannot be reset: it only grows)."""
    device = torch.device(device)
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> Dict[str, float]:
    r"""Peak memory in MiB: ``cpu_peak_rss_mb`` (``ru_maxrss`` of this
    process since it started) and, on CUDA devices,
    ``gpu_max_allocated_mb`` (``torch.cuda.max_memory_allocated`` since the
    last :func:`reset_peak_memory`)."""
    device = torch.device(device)
    out = {'cpu_peak_rss_mb': peak_rss_bytes() / 2**20}
    if device.type == 'cuda':
        out['gpu_max_allocated_mb'] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def format_memory(memory: Dict[str, float]) -> str:
    r"""A short human-readable form of :func:`peak_memory`'s result."""
    parts = [f"CPU peak RSS {memory['cpu_peak_rss_mb']:.0f} MB"]
    if 'gpu_max_allocated_mb' in memory:
        parts.append(f"GPU max allocated {memory['gpu_max_allocated_mb']:.0f} MB")
    return ', '.join(parts)


def append_jsonl(path: Optional[str], record: Dict[str, Any]) -> None:
    r"""Appends :obj:`record` as one JSON line to :obj:`path` (no-op for
    :obj:`None`); the per-epoch logs of the examples."""
    if path is None:
        return
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with open(path, 'a') as f:
        f.write(json.dumps(record, sort_keys=True) + '\n')


def resolve_device(name: str) -> torch.device:
    r"""Parses :obj:`--device` (``cpu``, ``cuda``, ``cuda:1``, ``auto``) and
    fails with a clear message if CUDA is asked for but unavailable."""
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"Invalid --device '{name}': {e}") from e
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError(f"--device {name} requested but CUDA is not available "
                         f"(use --device cpu)")
    if device.type not in ('cpu', 'cuda'):
        raise ValueError(f"--device must be cpu, cuda[:i] or auto (got '{name}')")
    return device


def ogb_example_parser(description: str, dataset_dir: str, *, epochs: int,
                       hidden: int, heads: int, layers: int, dropout: float,
                       lr: float, hidden_help: Optional[str] = None,
                       device_help: str = 'cpu, cuda, cuda:i or auto',
                       ) -> argparse.ArgumentParser:
    r"""The command-line options the OGB examples share (data and device,
    run bookkeeping, the reversible GAT's size and training rate, synthetic
    data); each example adds its own on the returned parser."""
    p = argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--root', default='data/ogb',
                   help=f'folder holding {dataset_dir}/')
    p.add_argument('--device', default='auto', help=device_help)
    p.add_argument('--epochs', type=int, default=epochs)
    p.add_argument('--checkpoint', default=None,
                   help='save here after every epoch; resume from it if it exists')
    p.add_argument('--log', default=None, help='per-epoch JSON lines log')
    p.add_argument('--results', default=None,
                   help='write the final results (JSON) here')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--hidden', type=int, default=hidden, help=hidden_help)
    p.add_argument('--heads', type=int, default=heads)
    p.add_argument('--layers', type=int, default=layers, help='reversible steps')
    p.add_argument('--dropout', type=float, default=dropout)
    p.add_argument('--attention-dropout', type=float, default=0.0)
    p.add_argument('--lr', type=float, default=lr)
    p.add_argument('--no-memory-saving', action='store_true')
    p.add_argument('--threads', type=int, default=None,
                   help='torch CPU threads (per process)')
    p.add_argument('--synthetic', type=int, default=None, metavar='NUM_NODES',
                   help='write a synthetic graph in OGB format first (if absent)')
    return p
