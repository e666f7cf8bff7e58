r"""ops.block_cache: the scoped cache of large CPU blocks used by
memory-saving reversible steps."""
import threading

import pytest
import torch
from torch_geometric.nn import GATConv

from torch_geometric_gnf.nn import ReversibleMessagePassing
from torch_geometric_gnf.ops import (block_cache, block_cache_available,
                                     block_cache_min_bytes, block_cache_stats,
                                     release_block_cache)
from torch_geometric_gnf.ops import _extension
from torch_geometric_gnf.ops.block_cache import end_block_cache_pass
from torch_geometric_gnf.utils import memory_release

needs_cache = pytest.mark.skipif(not block_cache_available(),
                                 reason='needs the compiled extension')
MB = 2**20


@pytest.fixture(autouse=True)
def empty_cache():
    # Each test starts and ends with nothing waiting in the process-wide cache.
    release_block_cache()
    yield
    release_block_cache()


def floats(num_bytes: int) -> torch.Tensor:
    return torch.empty(num_bytes // 4, dtype=torch.float32)


@needs_cache
def test_size_classes():
    size_class = _extension._C.block_cache_size_class
    page, previous = 4096, 0
    for n in [MB, MB + 1, 3 * MB - 5, 5 * MB + 12345, 2**30 + 7, 10**10]:
        c = size_class(n)
        rounded = -(-n // page) * page
        assert c % page == 0 and rounded <= c <= rounded * 1.125 + page
        assert c >= previous
        previous = c
    assert size_class(3 * MB) == size_class(3 * MB - 4096)  # one class
    with pytest.raises(RuntimeError, match='n must be >= 0'):
        size_class(-1)


@needs_cache
def test_a_freed_block_serves_the_next_request_of_its_class():
    before = block_cache_stats()
    with block_cache() as installed:
        assert installed and block_cache_stats()['depth'] == 1
        a = floats(4 * MB)
        a.fill_(1.0)
        ptr = a.data_ptr()
        del a
        assert block_cache_stats()['waiting_bytes'] >= 4 * MB
        b = floats(4 * MB - 1000)  # same class
        assert b.data_ptr() == ptr
        b.fill_(2.0)
        assert torch.all(b == 2.0)
        c = floats(4 * MB)  # nothing waiting: a fresh block
        assert c.data_ptr() != ptr
    after = block_cache_stats()
    assert after['reused'] == before['reused'] + 1
    assert after['mapped'] == before['mapped'] + 2
    assert after['depth'] == 0
    del b, c  # blocks live with their tensors, wherever they are freed
    assert block_cache_stats()['live_bytes'] == before['live_bytes']


@needs_cache
def test_small_requests_and_code_outside_scopes_are_untouched():
    before = block_cache_stats()
    with block_cache():
        small = floats(block_cache_min_bytes() - 4)  # below: PyTorch's allocator
        assert block_cache_stats()['live_bytes'] == before['live_bytes']
    big = floats(8 * MB)  # outside every scope: PyTorch's allocator again
    assert block_cache_stats() == before
    del small, big


@needs_cache
def test_scopes_nest_and_restore_the_allocator():
    before = block_cache_stats()['mapped']
    with block_cache():
        with block_cache() as inner:
            assert inner and block_cache_stats()['depth'] == 2
        assert block_cache_stats()['depth'] == 1
        a = floats(2 * MB)  # still inside the outer scope
    assert block_cache_stats()['depth'] == 0
    assert block_cache_stats()['mapped'] == before + 1
    b = floats(2 * MB)  # the default allocator is back
    assert block_cache_stats()['mapped'] == before + 1
    del a, b


@needs_cache
def test_waiting_blocks_stay_within_keep_bytes():
    before = block_cache_stats()
    with block_cache(keep_bytes=6 * MB):
        a, b = floats(4 * MB), floats(4 * MB)
        del a  # waits: 4 MiB <= 6 MiB
        del b  # would make 8 MiB: unmapped at once
        stats = block_cache_stats()
        assert stats['waiting_bytes'] == 4 * MB
        assert stats['released_bytes'] == before['released_bytes'] + 4 * MB
    with block_cache(keep_bytes=0):  # nothing waits
        a = floats(4 * MB)  # takes the waiting block
        del a
        assert block_cache_stats()['waiting_bytes'] == 0
    for bad in (-1, 1.5, True, '1'):
        with pytest.raises(ValueError, match="'keep_bytes'"):
            with block_cache(keep_bytes=bad):
                pass
    assert block_cache_stats()['depth'] == 0


@needs_cache
def test_scope_left_by_an_exception():
    with pytest.raises(ValueError):
        with block_cache():
            raise ValueError('inside')
    assert block_cache_stats()['depth'] == 0


@needs_cache
def test_end_of_pass_releases_only_blocks_it_did_not_reuse():
    with block_cache():
        a = floats(4 * MB)
        b = floats(16 * MB)
        del a, b  # freed during this pass: kept for the next
    end_block_cache_pass()
    waiting = block_cache_stats()['waiting_bytes']
    assert waiting >= 20 * MB
    with block_cache():
        a = floats(4 * MB)  # reuses the 4 MB block; the 16 MB one waits unused
        del a
    assert end_block_cache_pass() >= 16 * MB
    stats = block_cache_stats()
    assert 4 * MB <= stats['waiting_bytes'] < 16 * MB
    # the 4 MB block is not reused in the next pass
    assert end_block_cache_pass() >= 4 * MB
    assert block_cache_stats()['waiting_bytes'] == 0
    # release_block_cache hands back everything at once
    with block_cache():
        floats(4 * MB)  # freed at once
    assert release_block_cache() >= 4 * MB
    assert block_cache_stats()['waiting_bytes'] == 0


@needs_cache
def test_results_and_resizes_of_cached_blocks():
    torch.manual_seed(0)
    x = torch.randn(700, 700, dtype=torch.float64)
    expected = (x @ x).relu() @ x
    with block_cache():
        for _ in range(3):  # the later rounds run on reused blocks
            got = (x @ x).relu() @ x
            assert torch.equal(got, expected)
        t = torch.arange(MB // 8 * 3, dtype=torch.float64)  # 3 MiB, cached
    # A storage keeps its allocator: growing it after the scope still works
    # and keeps the data.
    t.resize_(MB // 8 * 10)
    assert torch.equal(t[:MB // 8 * 3], torch.arange(MB // 8 * 3, dtype=torch.float64))
    t[-1] = 5.0
    assert t[-1] == 5.0


@needs_cache
def test_threads_allocate_and_free_concurrently():
    before = block_cache_stats()['live_bytes']
    errors = []

    def work(seed):
        try:
            g = torch.Generator().manual_seed(seed)
            for i in range(20):
                a = torch.rand(1 + (i % 3), MB // 4, generator=g)
                b = a * 2  # large results from intra-op threads too
                if not torch.equal(b / 2, a):
                    errors.append(seed)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    with block_cache():
        threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    assert block_cache_stats()['live_bytes'] == before


def test_noop_without_the_extension(monkeypatch):
    monkeypatch.setenv('GNF_DISABLE_EXTENSION', '1')
    assert not block_cache_available()
    with block_cache() as installed:
        assert not installed
        floats(4 * MB)  # freed at once
    assert release_block_cache() == 0 and end_block_cache_pass() == 0
    assert block_cache_min_bytes() == 0
    assert set(block_cache_stats().values()) == {0}


def rev_stack(depth, channels=64):
    torch.manual_seed(0)
    half = channels // 2
    return torch.nn.ModuleList([
        ReversibleMessagePassing(GATConv(half, half // 2, heads=2, dropout=0.2),
                                 GATConv(half, half // 2, heads=2, dropout=0.2))
        for _ in range(depth)])


def train_step(model, x, edge_index):
    x = x.clone().requires_grad_()
    torch.manual_seed(1)
    h = x
    for layer in model:
        h = layer(h, edge_index)
    h.pow(2).mean().backward()
    grads = [x.grad.clone()] + [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    return grads


@needs_cache
def test_memory_saving_steps_use_the_cache_with_unchanged_gradients():
    torch.manual_seed(0)
    n = 6000  # 64 channels: 1.5 MB features, 48k edges x 2 heads x 16
    x, edge_index = torch.randn(n, 64), torch.randint(0, n, (2, 48_000))
    model = rev_stack(3)
    with memory_release(True, block_cache=False):
        before = block_cache_stats()
        off = train_step(model, x, edge_index)
        assert block_cache_stats()['reused'] == before['reused']
        assert block_cache_stats()['passes'] == before['passes'] + 1  # ended anyway
    with memory_release(True, block_cache=True):
        before = block_cache_stats()
        on = train_step(model, x, edge_index)
        stats = block_cache_stats()
        assert stats['reused'] > before['reused']  # layers reused blocks
        assert stats['passes'] == before['passes'] + 1  # one backward pass
        assert stats['depth'] == 0
        again = train_step(model, x, edge_index)
        # a steady loop reuses its blocks: nothing new mapped
        assert block_cache_stats()['mapped'] == stats['mapped']
    for a, b, c in zip(off, on, again):
        assert torch.equal(a, b) and torch.equal(a, c)
    with memory_release(True, keep_bytes=0):  # no block waits for reuse
        release_block_cache()
        before = block_cache_stats()
        assert torch.equal(train_step(model, x, edge_index)[0], off[0])
        stats = block_cache_stats()
        assert stats['reused'] == before['reused'] and stats['waiting_bytes'] == 0
        assert stats['mapped'] > before['mapped']  # the cache still served the steps
    with memory_release(False):
        before = block_cache_stats()
        train_step(model, x, edge_index)
        assert block_cache_stats()['reused'] == before['reused']
