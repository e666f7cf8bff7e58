r"""Peak-memory measurement in a fresh process.

A process's peak resident set size (``VmHWM``, or ``ru_maxrss``) only ever
grows, so each configuration must run in its own process to be measured
fairly.  The child
imports the target function by module path (``spawn`` start method: no state
inherited from the parent), records its resident memory before calling it
and reports the peak growth (CPU) or ``torch.cuda.max_memory_allocated``
(CUDA) afterwards.
"""
import importlib
import multiprocessing as mp
import os
import resource
import sys
from typing import Any, Callable, Dict, Optional

import torch


# glibc raises its mmap threshold adaptively; after that, freed large blocks
# stay in the heap and ru_maxrss measures allocator caching and fragmentation
# rather than what the work needs. A fixed threshold (set for the child
# process, all configurations alike) makes the peak RSS track the live peak.
LIVE_PEAK_MALLOC_ENV = {'MALLOC_MMAP_THRESHOLD_': str(128 * 1024)}


def current_rss_bytes() -> int:
    r"""Resident set size of this process right now (Linux), in bytes."""
    with open('/proc/self/statm') as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf('SC_PAGE_SIZE')


def peak_rss_bytes() -> int:
    r"""Peak resident set size of this process so far, in bytes.

    On Linux this is ``VmHWM`` of ``/proc/self/status``, the peak of this
    process's own address space.  ``ru_maxrss`` is the same peak, except
    that Linux carries it across ``execve``: a child started by fork + exec
    (multiprocessing's ``spawn``) reports at least the parent's resident
    size at the fork, so a large parent (one that has run
    :func:`torch.compile`, say) would hide the child's own peak."""
    if sys.platform.startswith('linux'):
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1]) * 1024  # kB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == 'darwin' else peak * 1024  # Linux: KiB


def _child(module: str, name: str, kwargs: Dict[str, Any], queue: Any,
           sys_path: list) -> None:
    try:
        sys.path[:0] = [p for p in sys_path if p not in sys.path]
        fn = getattr(importlib.import_module(module), name)
        queue.put(('ok', fn(**kwargs)))
    except BaseException as e:  # report, never hang the parent
        queue.put(('error', f'{type(e).__name__}: {e}'))


def run_in_fresh_process(fn: Callable[..., Dict[str, Any]],
                         env: Optional[Dict[str, str]] = None,
                         **kwargs: Any) -> Dict[str, Any]:
    r"""Runs the module-level function :obj:`fn(**kwargs)` in a new Python
    process and returns the dictionary it returns.  The function should
    measure its own memory with :func:`current_rss_bytes` /
    :func:`peak_rss_bytes` (or the CUDA counters) around the work of interest.
    Raises :class:`RuntimeError` with the child's error if it failed, or if
    it died (e.g. killed for running out of memory).  :obj:`env` holds extra
    environment variables for the child only (e.g. ``MALLOC_*`` settings,
    which glibc reads at process start)."""
    ctx = mp.get_context('spawn')
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(fn.__module__, fn.__name__, kwargs,
                                            queue, list(sys.path)))
    saved = dict(os.environ)
    os.environ.update(env or {})
    try:
        proc.start()  # the child inherits the environment at start
    finally:
        os.environ.clear()
        os.environ.update(saved)
    result = None
    while result is None:
        try:
            result = queue.get(timeout=1.0)
        except Exception:  # queue.Empty: still running?
            if not proc.is_alive():
                proc.join()
                raise RuntimeError(f'{fn.__name__}{kwargs} died with exit code '
                                   f'{proc.exitcode} (out of memory?)')
    proc.join()
    status, value = result
    if status != 'ok':
        raise RuntimeError(f'{fn.__name__}{kwargs} failed: {value}')
    return value


def step_memory_bytes(device: torch.device, rss_before: int) -> int:
    r"""Peak memory growth of the work done since :obj:`rss_before` was taken
    (CPU: ``ru_maxrss`` minus the RSS before; CUDA: peak allocated bytes since
    the last ``torch.cuda.reset_peak_memory_stats``)."""
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated(device) - rss_before
    return peak_rss_bytes() - rss_before


def memory_baseline(device: torch.device) -> int:
    r"""The reference point for :func:`step_memory_bytes`."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    return current_rss_bytes()
