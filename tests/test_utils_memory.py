r"""utils.memory: freed CPU memory handed back after reversible steps."""
import platform

import pytest
import torch
from torch_geometric.nn import GATConv

from torch_geometric_gnf.nn import ReversibleMessagePassing
from torch_geometric_gnf.utils import (memory_release, memory_release_available,
                                       memory_release_block_cache,
                                       memory_release_enabled,
                                       memory_release_keep_bytes, set_memory_release)
from torch_geometric_gnf.utils import memory

from conftest import random_graph


@pytest.fixture(autouse=True)
def fresh_state(monkeypatch):
    # Every test starts from the defaults and leaves no global setting behind.
    monkeypatch.setattr(memory, '_enabled', None)
    monkeypatch.setattr(memory, '_min_bytes', memory.DEFAULT_MIN_BYTES)
    monkeypatch.setattr(memory, '_keep_bytes', None)
    monkeypatch.setattr(memory, '_block_cache', None)
    monkeypatch.setattr(memory, '_rest_bytes', None)
    monkeypatch.delenv(memory.ENV_VAR, raising=False)
    monkeypatch.delenv(memory.KEEP_ENV_VAR, raising=False)
    monkeypatch.delenv(memory.BLOCK_CACHE_ENV_VAR, raising=False)


@pytest.fixture
def trims(monkeypatch):
    calls = []
    monkeypatch.setattr(memory, '_trim_fn', lambda pad: calls.append(pad) or 1)
    return calls


def stack(depth=3, seed=0):
    torch.manual_seed(seed)
    return torch.nn.ModuleList([
        ReversibleMessagePassing(GATConv(4, 2, heads=2, dropout=0.3),
                                 GATConv(4, 2, heads=2, dropout=0.3))
        for _ in range(depth)])


def step_grads(model, x, edge_index):
    x = x.clone().requires_grad_()
    torch.manual_seed(1)  # same dropout masks in every run
    h = x
    for layer in model:
        h = layer(h, edge_index)
    h.pow(2).sum().backward()
    grads = [x.grad] + [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    return grads


def test_release_runs_after_each_forward_and_backward(trims):
    model, x, ei = stack(3), torch.randn(14, 8), random_graph()
    with memory_release(True, min_bytes=0, keep_bytes=0):
        h = x.requires_grad_()
        for layer in model:
            h = layer(h, ei)
        assert len(trims) == 3  # one per step's forward
        h.sum().backward()
    # and two per half-step in backward (after its recomputed forward and
    # after its gradients)
    assert len(trims) == 3 + 3 * 2 * 2 and set(trims) == {0}


def test_small_steps_and_inference_skip_the_release(trims):
    model, x, ei = stack(2), torch.randn(14, 8), random_graph()
    step_grads(model, x, ei)  # 14 x 8 floats: below the 1 MiB default
    with torch.no_grad(), memory_release(True, min_bytes=0):
        model[0](x, ei)  # no memory-saving function without autograd
    assert trims == []


def test_release_can_be_turned_off(trims, monkeypatch):
    model, x, ei = stack(2), torch.randn(14, 8), random_graph()
    set_memory_release(False, min_bytes=0, keep_bytes=0)
    assert not memory_release_enabled()
    step_grads(model, x, ei)
    with memory_release(True):  # context manager restores the setting
        assert memory_release_enabled()
        step_grads(model, x, ei)
    assert len(trims) == 10 and not memory_release_enabled()  # 2 steps x 5

    set_memory_release(True)
    monkeypatch.setattr(memory, '_enabled', None)  # environment decides
    monkeypatch.setenv(memory.ENV_VAR, '0')
    assert not memory_release_enabled()
    step_grads(model, x, ei)
    assert len(trims) == 10
    monkeypatch.setenv(memory.ENV_VAR, '1')
    assert memory_release_enabled()


def test_gradients_unchanged_by_the_release():
    model, x, ei = stack(3), torch.randn(14, 8), random_graph()
    with memory_release(False):
        off = step_grads(model, x, ei)
    before = memory.memory_release_stats()['calls']
    with memory_release(True, min_bytes=0, keep_bytes=0):
        on = step_grads(model, x, ei)
    if memory_release_available():
        assert memory.memory_release_stats()['calls'] == before + 15  # really trimmed
    for a, b in zip(off, on):
        assert torch.equal(a, b)


@pytest.mark.skipif(platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc',
                    reason='glibc only')
def test_available_on_glibc(monkeypatch):
    monkeypatch.setattr(memory, '_trim_fn', memory._UNLOADED)
    assert memory_release_available()
    assert memory.release_freed_memory(torch.empty(1 << 19))  # 2 MiB


@pytest.mark.parametrize('loader', ['oserror', 'not_glibc'])
def test_noop_without_glibc(monkeypatch, loader):
    class Musl:  # a C library with malloc_trim but no gnu_get_libc_version
        def malloc_trim(self, pad):
            raise AssertionError('must not be called')

    def load():
        if loader == 'oserror':
            raise OSError('no libc.so.6')
        return Musl()

    monkeypatch.setattr(memory, '_trim_fn', memory._UNLOADED)
    monkeypatch.setattr(memory, '_load_libc', load)
    assert not memory_release_available()
    with memory_release(True, min_bytes=0):
        assert not memory.release_freed_memory(torch.empty(8))
        model, x, ei = stack(1), torch.randn(14, 8), random_graph()
        step_grads(model, x, ei)  # runs normally


def test_noop_on_non_cpu_tensors(trims):
    with memory_release(True, min_bytes=0):
        assert not memory.release_freed_memory(torch.empty(1 << 20, device='meta'))
    assert trims == []


def test_bad_arguments():
    with pytest.raises(TypeError, match="'enabled'"):
        set_memory_release(1)
    with pytest.raises(ValueError, match="'min_bytes'"):
        set_memory_release(True, min_bytes=-1)
    with pytest.raises(ValueError, match="'keep_bytes'"):
        set_memory_release(True, keep_bytes=-1)
    with pytest.raises(ValueError, match="'keep_bytes'"):
        memory_release(True, keep_bytes=1.5).__enter__()
    with pytest.raises(TypeError, match="'block_cache'"):
        set_memory_release(True, block_cache='yes')


def test_block_cache_setting_from_code_or_environment(monkeypatch):
    assert memory_release_block_cache()  # on by default
    monkeypatch.setenv(memory.BLOCK_CACHE_ENV_VAR, 'off')
    assert not memory_release_block_cache()
    with memory_release(True, block_cache=True):  # code wins over the environment
        assert memory_release_block_cache()
    assert not memory_release_block_cache()
    monkeypatch.delenv(memory.BLOCK_CACHE_ENV_VAR)
    with memory_release(False):  # part of the release: off with it
        assert not memory_release_block_cache()
    assert memory_release_block_cache()


class FakeProcess:
    r"""Resident size and malloc's live bytes, set by the test."""
    def __init__(self, monkeypatch, resident=1000, in_use=400):
        self.resident, self.in_use = resident, in_use
        monkeypatch.setattr(memory, '_resident_bytes', lambda: self.resident)
        monkeypatch.setattr(memory, '_heap_in_use', lambda: self.in_use)


def test_release_waits_until_keep_bytes_of_freed_memory_are_resident(trims, monkeypatch):
    proc = FakeProcess(monkeypatch)
    like = torch.empty(16)
    with memory_release(True, min_bytes=0, keep_bytes=100):
        assert memory.release_freed_memory(like)  # no reference yet: release
        assert memory._rest_bytes == 600  # resident outside live blocks
        proc.resident, proc.in_use = 1500, 800  # +400 live, +100 freed
        assert not memory.release_freed_memory(like)
        proc.resident = 1501  # 101 bytes freed but resident: over the limit
        assert memory.release_freed_memory(like)
        assert memory._rest_bytes == 701  # the new reference
        assert not memory.release_freed_memory(like)
    assert len(trims) == 2


def test_keep_bytes_from_code_or_environment(monkeypatch):
    assert memory_release_keep_bytes() == 256 * 2**20
    monkeypatch.setenv(memory.KEEP_ENV_VAR, '0')
    assert memory_release_keep_bytes() == 0
    monkeypatch.setenv(memory.KEEP_ENV_VAR, '1.5')
    assert memory_release_keep_bytes() == 3 * 2**19
    with memory_release(True, keep_bytes=7):  # code wins over the environment
        assert memory_release_keep_bytes() == 7
    assert memory_release_keep_bytes() == 3 * 2**19
    for bad in ('-1', 'lots', 'nan', 'inf'):
        monkeypatch.setenv(memory.KEEP_ENV_VAR, bad)
        with pytest.raises(ValueError, match=memory.KEEP_ENV_VAR):
            memory_release_keep_bytes()


def test_release_at_every_check_without_statistics(trims, monkeypatch):
    monkeypatch.setattr(memory, '_heap_in_use', lambda: None)  # no mallinfo2
    for _ in range(3):
        with memory_release(True, min_bytes=0):
            assert memory.release_freed_memory(torch.empty(16))
    assert len(trims) == 3 and memory._rest_bytes is None


@pytest.mark.skipif(platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc',
                    reason='glibc only')
def test_statistics_of_this_process():
    in_use, resident = memory._heap_in_use(), memory._resident_bytes()
    assert in_use is not None and resident is not None
    block = torch.ones(1 << 22)  # 16 MiB, written: live and resident
    assert memory._heap_in_use() >= in_use + block.numel() * 4
    assert memory._resident_bytes() >= resident + block.numel() * 2
