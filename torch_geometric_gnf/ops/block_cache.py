r"""A scoped cache of large CPU blocks for memory-saving reversible steps
(``csrc/cpu/block_cache.h``).

With glibc's default ``malloc``, a deep memory-saving stack that frees and
re-allocates one step's intermediates (per-edge attention, messages) at
every layer leaves part of them resident in the heap, fragmented between
live blocks, so the resident peak grows with depth although the live memory
is flat; blocks above glibc's mmap threshold are mapped afresh at every
layer and their pages faulted in each time.  Inside :func:`block_cache`,
CPU tensors of at least :func:`block_cache_min_bytes` bytes get a block of
their size class (whole pages, then eight classes per power of two) that
the cache maps once and hands to the next request of the same class when
it is freed: the next layer's intermediates of the same shapes reuse the
same pages, without page faults and without fragmenting the heap.  Smaller
requests go to PyTorch's allocator unchanged.  Freed blocks wait for reuse
up to a budget (``keep_bytes``); one freed beyond it is unmapped at once
(as ``malloc`` unmaps its mmapped blocks), so the budget bounds what the
cache adds to the resident memory.  :func:`end_block_cache_pass` (called
when a memory-saving chain's backward pass is complete) unmaps the blocks
that waited through the whole pass without being reused: a steady training loop
keeps the blocks its steps reuse (about one step's intermediates) from one
training step to the next, blocks of sizes no longer requested go back.
:func:`release_block_cache` unmaps every waiting block (e.g. before
memory-hungry work outside the reversible steps).

The scope replaces the process's CPU allocator (``c10::SetCPUAllocator``)
only while it is entered and only if PyTorch's default allocator is
installed (a custom one is left alone); blocks live as long as their
tensors, whichever scope allocated them.  Data is never read or written:
a block is reused as ``malloc`` reuses memory (``torch.empty`` semantics).
:mod:`torch.profiler`'s memory records do not see the cache's blocks (use
:func:`block_cache_stats`).  Needs the compiled extension (Linux or macOS);
elsewhere the scope is a no-op.
"""
import contextlib
from typing import Dict, Iterator, Optional

from torch_geometric_gnf.ops import _extension
from torch_geometric_gnf.utils.memory import check_bytes


def block_cache_available() -> bool:
    r"""Whether the block cache is built (the compiled extension loaded and
    not disabled with ``GNF_DISABLE_EXTENSION``)."""
    return (_extension.extension_available()
            and hasattr(_extension._C, 'block_cache_enter'))


@contextlib.contextmanager
def block_cache(keep_bytes: Optional[int] = None) -> Iterator[bool]:
    r"""Serves large CPU allocations from the block cache while entered
    (scopes nest); yields whether the cache is the CPU allocator (:obj:`False`
    where unavailable or a custom CPU allocator is installed).

    Args:
        keep_bytes (int, optional): Most bytes of freed blocks that wait for
            reuse (from now on, also after the scope); a block freed beyond
            it is unmapped at once. (default: :obj:`None`, no limit)
    """
    check_bytes('keep_bytes', keep_bytes)
    if not block_cache_available():
        yield False
        return
    installed = _extension._C.block_cache_enter(
        keep_bytes=-1 if keep_bytes is None else keep_bytes)
    try:
        yield installed
    finally:
        _extension._C.block_cache_exit()


def release_block_cache() -> int:
    r"""Unmaps the blocks waiting in the cache; returns their bytes."""
    return int(_extension._C.block_cache_release()) if block_cache_available() else 0


def end_block_cache_pass() -> int:
    r"""Ends a pass: unmaps the waiting blocks that were not reused since the
    previous pass ended; returns their bytes."""
    return int(_extension._C.block_cache_end_pass()) if block_cache_available() else 0


def block_cache_stats() -> Dict[str, int]:
    r"""The cache's counters: ``waiting_bytes`` (freed blocks kept for
    reuse), ``live_bytes`` (blocks in use), ``peak_waiting_bytes``,
    ``mapped`` (blocks mapped), ``reused`` (requests served from the cache),
    ``released_bytes``, ``passes`` (ended) and ``depth`` (scopes entered).
    Zeros where unavailable."""
    if not block_cache_available():
        return dict.fromkeys(('waiting_bytes', 'live_bytes', 'peak_waiting_bytes',
                              'mapped', 'reused', 'released_bytes', 'passes',
                              'depth'), 0)
    return dict(_extension._C.block_cache_stats())


def block_cache_min_bytes() -> int:
    r"""Requests below this many bytes bypass the cache (1 MiB)."""
    return int(_extension._C.block_cache_min_bytes) if block_cache_available() else 0
