r"""Handing freed CPU memory back to the operating system.

glibc's ``malloc`` raises its mmap threshold adaptively: once a large block
has been freed, blocks of that size come from the heap instead of ``mmap``,
and what is freed there stays in the process (fragmented between live
blocks) instead of going back to the system.  A deep memory-saving
reversible stack frees one step's intermediates (per-edge attention,
messages) at the end of every step's forward and backward pass; with the
default allocator the resident memory then grows by a few per cent of a
step's transients per layer, although the live memory stays flat.

Two mechanisms keep it flat, both part of the memory release and switched
with it:

* **The block cache** (``ops.block_cache``, with the compiled extension):
  while a memory-saving step runs its forward or backward pass, CPU blocks
  of at least 1 MiB come from a cache of mmapped blocks by size class, so
  each layer's intermediates reuse the previous layer's pages (no heap
  fragmentation, no page faults).  Freed blocks wait for reuse up to
  :obj:`keep_bytes` (default 256 MiB) in all; one freed beyond it is
  unmapped at once.  After a chain's backward pass the blocks that pass did
  not reuse are unmapped; those a training loop reuses stay mapped from one
  training step to the next; ``ops.release_block_cache()`` hands them
  back.  Turn the cache alone off with ``set_memory_release(True,
  block_cache=False)`` or ``GNF_MEMORY_RELEASE_BLOCK_CACHE=0``.
* **A release of the heap** (everything else, or everything where the
  extension is not built), described next.

After each memory-saving reversible step's forward pass, and twice per
half-step in its backward pass (after the recomputed forward and after the
gradients), the library therefore checks how much freed heap memory is
still resident: the process's resident size (``/proc/self/statm``) minus
what ``malloc`` has in use (``mallinfo2``) minus the rest of the process as
measured at the previous release.  Once that exceeds :obj:`keep_bytes`
(default 256 MiB), it calls glibc's ``malloc_trim(0)``, which returns the
freed whole pages of every arena to the system (``madvise``).  Freed memory
the next steps reuse (a step's own transients, which recur at the same
sizes) thus stays in the process and costs nothing, while what piles up
between live blocks over many layers is handed back: the resident peak of a
step is at most its live peak plus :obj:`keep_bytes` plus what the heap
touches between two checks, whatever the depth.  With ``keep_bytes=0``
every check releases (least memory; each release's pages are faulted in
again when reused, which costs time on small graphs).  A check reads
``/proc/self/statm`` and calls ``mallinfo2``, which walks malloc's free
lists: tens of microseconds to about a millisecond with a fragmented heap.
``benchmarks/memory_vs_depth.py`` reports the releases per step, the time
spent in checks and releases and the step time with the release on and
off.  Neither mechanism changes a ``malloc`` setting or does anything at
import time; the block cache stands in for PyTorch's CPU allocator only
while a memory-saving step runs (and only if PyTorch's default allocator is
installed), so code outside the reversible steps allocates exactly as
before.  Both are no-ops

* on CUDA tensors (GPU memory belongs to PyTorch's caching allocator),
* where the C library is not glibc (macOS, musl) or cannot be loaded (the
  heap release; the block cache needs only the extension and ``mmap``),
* while :func:`torch.compile` traces,
* after a step whose tensors are small (:obj:`min_bytes`): the heap it can
  leave behind is too small to matter and the check would be pure overhead.

Where ``mallinfo2`` (glibc < 2.33) or ``/proc/self/statm`` is missing, every
check releases, as with ``keep_bytes=0``.

Turn both off with :func:`set_memory_release` (``False``), for a block of
code with the :func:`memory_release` context manager, or for the whole
process with the environment variable ``GNF_MEMORY_RELEASE=0``; set
:obj:`keep_bytes` there or with ``GNF_MEMORY_RELEASE_KEEP_MB``.
"""
import contextlib
import ctypes
import ctypes.util
import os
import time
from typing import Callable, Dict, Iterator, Optional

import torch

ENV_VAR = 'GNF_MEMORY_RELEASE'
KEEP_ENV_VAR = 'GNF_MEMORY_RELEASE_KEEP_MB'
BLOCK_CACHE_ENV_VAR = 'GNF_MEMORY_RELEASE_BLOCK_CACHE'
# A step whose feature matrix is below this many bytes skips the trim: its
# transients are a few times its features, so at most a few MB can linger.
DEFAULT_MIN_BYTES = 1 << 20
# Freed memory kept resident for reuse (in the heap before a release, in the
# block cache): room for the transients that the next steps reuse at the
# same sizes (a few hundred MB for GATConv at 50k nodes / 500k edges), small
# next to the live memory of large graphs.
DEFAULT_KEEP_BYTES = 256 << 20

_enabled: Optional[bool] = None  # None: not set in code, the env var decides
_min_bytes = DEFAULT_MIN_BYTES
_keep_bytes: Optional[int] = None  # None: not set in code, KEEP_ENV_VAR or the default
_block_cache: Optional[bool] = None  # None: not set in code, BLOCK_CACHE_ENV_VAR decides
_UNLOADED = object()
_trim_fn = _UNLOADED  # the loaded malloc_trim, or None where unavailable
_mallinfo_fn = _UNLOADED  # the loaded mallinfo2, or None where unavailable
# Resident bytes that are not malloc's live blocks, measured right after the
# last release (the interpreter, libraries, pages malloc cannot release).
_rest_bytes: Optional[int] = None
_PAGE_SIZE = os.sysconf('SC_PAGE_SIZE') if hasattr(os, 'sysconf') else 4096
# Checks and releases run in this process, and the time spent in both.
_checks, _calls, _seconds = 0, 0, 0.0


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


class _MallInfo2(ctypes.Structure):
    # struct mallinfo2 (glibc >= 2.33): the same fields as mallinfo, size_t.
    _fields_ = [(name, ctypes.c_size_t) for name in (
        'arena', 'ordblks', 'smblks', 'hblks', 'hblkhd', 'usmblks', 'fsmblks',
        'uordblks', 'fordblks', 'keepcost')]


def _mallinfo2() -> Optional[Callable[[], _MallInfo2]]:
    r"""glibc's ``mallinfo2``, or :obj:`None` where unavailable."""
    global _mallinfo_fn
    if _mallinfo_fn is _UNLOADED:
        try:
            fn = _load_libc().mallinfo2
            fn.argtypes, fn.restype = [], _MallInfo2
            _mallinfo_fn = fn
        except (OSError, AttributeError):
            _mallinfo_fn = None
    return _mallinfo_fn


def _resident_bytes() -> Optional[int]:
    r"""The process's resident set size, or :obj:`None` where unknown."""
    try:
        with open('/proc/self/statm', 'rb') as f:
            return int(f.read().split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return None


def _heap_in_use() -> Optional[int]:
    r"""Bytes in live ``malloc`` blocks (arenas and mmapped), or :obj:`None`."""
    info = _mallinfo2()
    if info is None:
        return None
    stats = info()
    return stats.uordblks + stats.hblkhd


def _resident_rest() -> Optional[int]:
    r"""Resident bytes outside malloc's live blocks, or :obj:`None`."""
    in_use, resident = _heap_in_use(), _resident_bytes()
    if in_use is None or resident is None:
        return None
    return resident - in_use


def memory_release_available() -> bool:
    r"""Whether this platform has glibc's ``malloc_trim`` (Linux with glibc)."""
    return _malloc_trim() is not None


def _env_flag(name: str) -> bool:
    return os.environ.get(name, '1').strip().lower() not in ('0', 'false', 'no', 'off')


def memory_release_enabled() -> bool:
    r"""Whether reversible steps release freed CPU memory (see the module
    doc): :func:`set_memory_release` if called, else the environment
    variable ``GNF_MEMORY_RELEASE`` (``0``/``false``/``off`` disable it)."""
    if _enabled is not None:
        return _enabled
    return _env_flag(ENV_VAR)


def memory_release_block_cache() -> bool:
    r"""Whether memory-saving reversible steps take their large CPU blocks
    from the block cache (``ops.block_cache``; needs the compiled extension):
    only while the release is enabled, then :func:`set_memory_release`'s
    :obj:`block_cache` if given, else the environment variable
    ``GNF_MEMORY_RELEASE_BLOCK_CACHE`` (``0`` disables it)."""
    if not memory_release_enabled():
        return False
    if _block_cache is not None:
        return _block_cache
    return _env_flag(BLOCK_CACHE_ENV_VAR)


def memory_release_applies(like: torch.Tensor, num_bytes: Optional[int] = None) -> bool:
    r"""Whether the release (and block cache) acts around work on tensors
    like :obj:`like` (of :obj:`num_bytes`, default its own size): enabled,
    on CPU, at least :obj:`min_bytes` and not while :func:`torch.compile`
    traces."""
    if num_bytes is None:
        num_bytes = like.numel() * like.element_size()
    return (like.device.type == 'cpu' and not torch.compiler.is_compiling()
            and num_bytes >= _min_bytes and memory_release_enabled())


def memory_release_keep_bytes() -> int:
    r"""Freed memory kept resident for reuse, in the heap before a release
    and in the block cache (see the module doc): :func:`set_memory_release`'s
    :obj:`keep_bytes` if given, else the environment variable
    ``GNF_MEMORY_RELEASE_KEEP_MB`` (MiB), else 256 MiB."""
    if _keep_bytes is not None:
        return _keep_bytes
    value = os.environ.get(KEEP_ENV_VAR, '').strip()
    if not value:
        return DEFAULT_KEEP_BYTES
    try:
        mb = float(value)
    except ValueError:
        mb = -1.0
    if not 0 <= mb < float('inf'):
        raise ValueError(f"the environment variable {KEEP_ENV_VAR} must be a "
                         f"non-negative number of MiB (got {value!r})")
    return int(mb * 2**20)


def check_bytes(name: str, value: Optional[int]) -> None:
    r"""Raises a :class:`ValueError` naming :obj:`name` unless :obj:`value`
    is :obj:`None` or a non-negative integer (a byte count)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or value < 0):
        raise ValueError(f"'{name}' must be a non-negative integer (got {value!r})")


def set_memory_release(enabled: bool, min_bytes: Optional[int] = None,
                       keep_bytes: Optional[int] = None,
                       block_cache: Optional[bool] = None) -> None:
    r"""Globally enables or disables the release of freed CPU memory after
    each memory-saving reversible step (overrides ``GNF_MEMORY_RELEASE``).

    Args:
        enabled (bool): Whether to release.
        min_bytes (int, optional): Steps whose feature matrix has fewer bytes
            skip the release. (default: unchanged, initially 1 MiB)
        keep_bytes (int, optional): Freed memory that may stay resident for
            reuse: in the heap before a release hands it back (``0``
            releases at every check), and in the block cache.
            (default: unchanged, initially ``GNF_MEMORY_RELEASE_KEEP_MB`` or
            256 MiB)
        block_cache (bool, optional): Whether the steps' large CPU blocks
            come from the block cache where the extension is built.
            (default: unchanged, initially ``GNF_MEMORY_RELEASE_BLOCK_CACHE``
            or :obj:`True`)
    """
    global _enabled, _min_bytes, _keep_bytes, _block_cache
    if not isinstance(enabled, bool):
        raise TypeError(f"'enabled' must be a bool (got {type(enabled).__name__})")
    if block_cache is not None and not isinstance(block_cache, bool):
        raise TypeError(f"'block_cache' must be a bool (got {type(block_cache).__name__})")
    check_bytes('min_bytes', min_bytes)
    check_bytes('keep_bytes', keep_bytes)
    if min_bytes is not None:
        _min_bytes = min_bytes
    if keep_bytes is not None:
        _keep_bytes = keep_bytes
    if block_cache is not None:
        _block_cache = block_cache
    _enabled = enabled


@contextlib.contextmanager
def memory_release(enabled: bool = True, min_bytes: Optional[int] = None,
                   keep_bytes: Optional[int] = None,
                   block_cache: Optional[bool] = None) -> Iterator[None]:
    r"""Context manager form of :func:`set_memory_release`; restores the
    previous setting on exit."""
    previous = (_enabled, _min_bytes, _keep_bytes, _block_cache)
    set_memory_release(enabled, min_bytes, keep_bytes, block_cache)
    try:
        yield
    finally:
        _restore(*previous)


def _restore(enabled: Optional[bool], min_bytes: int, keep_bytes: Optional[int],
             block_cache: Optional[bool]) -> None:
    global _enabled, _min_bytes, _keep_bytes, _block_cache
    _enabled, _min_bytes, _keep_bytes, _block_cache = (enabled, min_bytes, keep_bytes,
                                                       block_cache)


def _worth_releasing() -> bool:
    r"""Whether more than :obj:`keep_bytes` of freed heap memory is resident
    (always true without the statistics or a first measurement)."""
    keep = memory_release_keep_bytes()
    if keep == 0 or _rest_bytes is None:
        return True
    rest = _resident_rest()
    return rest is None or rest - _rest_bytes > keep


def release_freed_memory(like: torch.Tensor) -> bool:
    r"""Returns freed CPU heap memory to the operating system if enabled and
    useful after work on tensors like :obj:`like` (more than
    :obj:`keep_bytes` of it resident); returns whether it did."""
    global _checks, _calls, _seconds, _rest_bytes
    if not memory_release_applies(like):
        return False
    trim = _malloc_trim()
    if trim is None:
        return False
    start = time.perf_counter()
    released = _worth_releasing()
    if released:
        trim(0)
        # What stays resident is the reference for the next checks.
        _rest_bytes = _resident_rest()
        _calls += 1
    _checks += 1
    _seconds += time.perf_counter() - start
    return released


def memory_release_stats() -> Dict[str, float]:
    r"""How many checks and releases (``calls``) ran in this process and the
    seconds spent in both (for tests and benchmarks)."""
    return {'checks': _checks, 'calls': _calls, 'seconds': _seconds}
