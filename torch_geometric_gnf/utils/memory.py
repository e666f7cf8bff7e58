r"""Handing freed CPU memory back to the operating system.

glibc's ``malloc`` raises its mmap threshold adaptively: once a large block
has been freed, blocks of that size come from the heap instead of ``mmap``,
and what is freed there stays in the process (fragmented between live
blocks) instead of going back to the system.  A deep memory-saving
reversible stack frees one step's intermediates (per-edge attention,
messages) at the end of every step's forward and backward pass; with the
default allocator the resident memory then grows by a few per cent of a
step's transients per layer, although the live memory stays flat.

After each memory-saving reversible step's forward pass, and twice per
half-step in its backward pass (after the recomputed forward and after the
gradients), the library therefore calls glibc's ``malloc_trim(0)``, which
returns the freed whole pages of every arena to the system (``madvise``).
The resident peak of a step is then about the live peak plus what the heap
touches between two calls, whatever the depth.  The cost is the call (it
walks the free lists) and the page faults when released pages are used
again; ``benchmarks/memory_vs_depth.py`` reports the time spent in the call
and the step time with the release on and off.  It changes no
allocator setting: nothing happens at import time, and code outside the
reversible steps allocates exactly as before.  It is a no-op

* on CUDA tensors (GPU memory belongs to PyTorch's caching allocator),
* where the C library is not glibc (macOS, musl) or cannot be loaded,
* while :func:`torch.compile` traces,
* after a step whose tensors are small (:obj:`min_bytes`): the heap it can
  leave behind is too small to matter and the call would be pure overhead.

Turn it off with :func:`set_memory_release` (``False``), for a block of code
with the :func:`memory_release` context manager, or for the whole process
with the environment variable ``GNF_MEMORY_RELEASE=0``.
"""
import contextlib
import ctypes
import ctypes.util
import os
import time
from typing import Callable, Dict, Iterator, Optional

import torch

ENV_VAR = 'GNF_MEMORY_RELEASE'
# A step whose feature matrix is below this many bytes skips the trim: its
# transients are a few times its features, so at most a few MB can linger.
DEFAULT_MIN_BYTES = 1 << 20

_enabled: Optional[bool] = None  # None: not set in code, the env var decides
_min_bytes = DEFAULT_MIN_BYTES
_UNLOADED = object()
_trim_fn = _UNLOADED  # the loaded malloc_trim, or None where unavailable
_calls, _seconds = 0, 0.0  # releases run in this process, time spent in them


def _load_libc() -> Optional[ctypes.CDLL]:
    r"""The process's C library (separate so tests can simulate its absence)."""
    name = ctypes.util.find_library('c') or 'libc.so.6'
    return ctypes.CDLL(name)


def _malloc_trim() -> Optional[Callable[[int], int]]:
    r"""glibc's ``malloc_trim``, or :obj:`None` where the C library is not
    glibc (``gnu_get_libc_version`` identifies glibc; musl has a
    ``malloc_trim`` stub that does nothing)."""
    global _trim_fn
    if _trim_fn is _UNLOADED:
        try:
            libc = _load_libc()
            libc.gnu_get_libc_version  # AttributeError unless glibc
            trim = libc.malloc_trim
            trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
            _trim_fn = trim
        except (OSError, AttributeError):
            _trim_fn = None
    return _trim_fn


def memory_release_available() -> bool:
    r"""Whether this platform has glibc's ``malloc_trim`` (Linux with glibc)."""
    return _malloc_trim() is not None


def memory_release_enabled() -> bool:
    r"""Whether reversible steps release freed CPU memory (see the module
    doc): :func:`set_memory_release` if called, else the environment
    variable ``GNF_MEMORY_RELEASE`` (``0``/``false``/``off`` disable it)."""
    if _enabled is not None:
        return _enabled
    return os.environ.get(ENV_VAR, '1').strip().lower() not in ('0', 'false', 'no', 'off')


def set_memory_release(enabled: bool, min_bytes: Optional[int] = None) -> None:
    r"""Globally enables or disables the release of freed CPU memory after
    each memory-saving reversible step (overrides ``GNF_MEMORY_RELEASE``).

    Args:
        enabled (bool): Whether to release.
        min_bytes (int, optional): Steps whose feature matrix has fewer bytes
            skip the release. (default: unchanged, initially 1 MiB)
    """
    global _enabled, _min_bytes
    if not isinstance(enabled, bool):
        raise TypeError(f"'enabled' must be a bool (got {type(enabled).__name__})")
    if min_bytes is not None:
        if not isinstance(min_bytes, int) or min_bytes < 0:
            raise ValueError(f"'min_bytes' must be a non-negative integer "
                             f"(got {min_bytes!r})")
        _min_bytes = min_bytes
    _enabled = enabled


@contextlib.contextmanager
def memory_release(enabled: bool = True, min_bytes: Optional[int] = None) -> Iterator[None]:
    r"""Context manager form of :func:`set_memory_release`; restores the
    previous setting on exit."""
    previous = (_enabled, _min_bytes)
    set_memory_release(enabled, min_bytes)
    try:
        yield
    finally:
        _restore(*previous)


def _restore(enabled: Optional[bool], min_bytes: int) -> None:
    global _enabled, _min_bytes
    _enabled, _min_bytes = enabled, min_bytes


def release_freed_memory(like: torch.Tensor) -> bool:
    r"""Returns freed CPU heap memory to the operating system if enabled and
    useful after work on tensors like :obj:`like`; returns whether it did."""
    global _calls, _seconds
    if (like.device.type != 'cpu' or torch.compiler.is_compiling()
            or like.numel() * like.element_size() < _min_bytes
            or not memory_release_enabled()):
        return False
    trim = _malloc_trim()
    if trim is None:
        return False
    start = time.perf_counter()
    trim(0)
    _seconds += time.perf_counter() - start
    _calls += 1
    return True


def memory_release_stats() -> Dict[str, float]:
    r"""How many releases ran in this process and the seconds spent in
    them (for tests and benchmarks)."""
    return {'calls': _calls, 'seconds': _seconds}
