import gc

import pytest
import torch

from torch_geometric_gnf.ops import (CSRGraph, build_csr, cached_csr,
                                     clear_csr_cache)
from torch_geometric_gnf.ops.csr import csr_row, csr_src_row
from torch_geometric_gnf.utils import set_input_checks


def bipartite_graph(num_src, num_dst, num_edges, seed=0, dtype=torch.long):
    gen = torch.Generator().manual_seed(seed)
    src = torch.randint(0, num_src, (num_edges, ), generator=gen)
    dst = torch.randint(0, max(num_dst - 1, 1), (num_edges, ), generator=gen)
    ei = torch.stack([src, dst])
    ei = torch.cat([ei, ei[:, :4]], dim=1)  # duplicates
    return ei.to(dtype)


def check_consistent(csr: CSRGraph, edge_index):
    src, dst = edge_index[0].long(), edge_index[1].long()
    E = src.numel()
    assert csr.rowptr.dtype == torch.long and csr.perm.dtype == torch.long
    assert csr.col.dtype == edge_index.dtype
    assert csr.rowptr.numel() == csr.num_dst + 1 and int(csr.rowptr[-1]) == E
    # perm is a permutation and slots hold the edges it names
    assert torch.equal(torch.sort(csr.perm).values, torch.arange(E))
    assert torch.equal(csr.col.long(), src[csr.perm])
    row = csr_row(csr)
    assert torch.equal(row, dst[csr.perm])
    assert torch.all(row[1:] >= row[:-1])
    # stable: original order within a destination
    same = row[1:] == row[:-1]
    assert torch.all(csr.perm[1:][same] > csr.perm[:-1][same])
    # by-source view: positions sorted by source, covering every slot once
    assert torch.equal(torch.sort(csr.src_slot).values, torch.arange(E))
    by_src = csr.col.long()[csr.src_slot]
    assert torch.all(by_src[1:] >= by_src[:-1])
    counts = torch.bincount(src, minlength=csr.num_src)
    assert torch.equal(csr.src_rowptr[1:] - csr.src_rowptr[:-1], counts)
    assert torch.equal(csr.src_row.long(), row[csr.src_slot])
    assert csr.src_row.dtype == edge_index.dtype


@pytest.mark.parametrize('dtype', [torch.int32, torch.int64])
@pytest.mark.parametrize('sizes', [(10, 10), (7, 13), (13, 4), (1, 1)])
def test_build_csr_consistent(dtype, sizes):
    ei = bipartite_graph(*sizes, 30, dtype=dtype)
    check_consistent(build_csr(ei, *sizes), ei)


def test_build_csr_empty_and_isolated():
    ei = torch.empty(2, 0, dtype=torch.long)
    csr = build_csr(ei, 5, 3)
    assert csr.col.numel() == 0 and torch.equal(csr.rowptr, torch.zeros(4, dtype=torch.long))
    assert torch.equal(csr.src_rowptr, torch.zeros(6, dtype=torch.long))
    csr0 = build_csr(ei, 0, 0)
    assert csr0.rowptr.tolist() == [0] and csr0.num_dst == 0
    ei = torch.tensor([[0, 0, 2], [2, 2, 2]])  # node 1 isolated, duplicates
    csr = build_csr(ei, 3, 3)
    assert csr.rowptr.tolist() == [0, 0, 0, 3]
    assert csr.src_rowptr.tolist() == [0, 2, 2, 3]
    check_consistent(csr, ei)


def test_src_row_rebuilt_when_missing():
    ei = bipartite_graph(6, 9, 25)
    csr = build_csr(ei, 6, 9)
    bare = csr._replace(src_row=None)
    assert torch.equal(csr_src_row(bare), csr.src_row)


def test_build_csr_errors():
    ei = torch.tensor([[0, 1], [1, 2]])
    with pytest.raises(TypeError, match='Tensor'):
        build_csr([[0, 1], [1, 0]], 2, 2)
    with pytest.raises(ValueError, match='int32 or int64'):
        build_csr(ei.float(), 3, 3)
    with pytest.raises(ValueError, match=r'shape \[2, E\]'):
        build_csr(ei[0], 3, 3)
    with pytest.raises(ValueError, match=r'target indices must lie in \[0, 2\)'):
        build_csr(ei, 3, 2)
    with pytest.raises(ValueError, match='source indices'):
        build_csr(torch.tensor([[-1], [0]]), 3, 3)
    with pytest.raises(ValueError, match='>= 0'):
        build_csr(ei, -1, 3)
    with pytest.raises(ValueError, match='edges but'):
        build_csr(ei, 0, 3)
    with pytest.raises(ValueError, match='dense'):
        build_csr(ei.to_sparse(), 3, 3)


@pytest.mark.parametrize('bad', [[[0, 5], [1, 1]], [[0, 1], [-1, 1]],
                                 [[-3, 1], [1, 0]]])
def test_range_check_stays_on_without_input_checks(bad):
    # Index bounds are not a value check the switch may turn off: an
    # out-of-range or negative index would make the kernels read out of
    # bounds (issue 26.2).
    set_input_checks(False)
    try:
        with pytest.raises(ValueError, match="'edge_index'.*indices must lie"):
            build_csr(torch.tensor(bad), 3, 3)
    finally:
        set_input_checks(True)


def test_cached_csr_reuses_and_invalidates():
    clear_csr_cache()
    ei = bipartite_graph(8, 8, 20)
    a = cached_csr(ei, 8, 8)
    assert cached_csr(ei, 8, 8) is a
    assert cached_csr(ei, 8, 9) is not a  # other sizes, other entry
    b = cached_csr(ei.clone(), 8, 8)  # equal content, other tensor
    assert b is not a and torch.equal(b.col, a.col)
    ei[0, 0] = (int(ei[0, 0]) + 1) % 8  # in-place edit bumps the version
    c = cached_csr(ei, 8, 8)
    assert c is not a
    check_consistent(c, ei)
    assert cached_csr(ei, 8, 8) is c


def test_cached_csr_forgets_freed_tensors():
    from torch_geometric_gnf.ops import csr as csr_module
    clear_csr_cache()
    ei = bipartite_graph(8, 8, 20)
    cached_csr(ei, 8, 8)
    assert len(csr_module._cache) == 1
    del ei
    gc.collect()
    assert len(csr_module._cache) == 0
    # a new graph at possibly the same address must not get a stale entry
    for seed in range(20):
        ei = bipartite_graph(8, 8, 20, seed=seed)
        check_consistent(cached_csr(ei, 8, 8), ei)
        del ei
    many = [bipartite_graph(5, 5, 10, seed=s) for s in range(20)]
    for ei in many:
        cached_csr(ei, 5, 5)
    assert len(csr_module._cache) <= csr_module._CACHE_SIZE


# --------------------------------------------------------------------------
# The cache never changes a result (issue 26.1): writes PyTorch's version
# counter does not see must still rebuild the CSR.
# --------------------------------------------------------------------------
def _edit_through_data(ei):
    ei.data[0, :5] = (ei.data[0, :5].flip(0) + 1) % 8


def _edit_through_numpy(ei):
    ei.numpy()[1, :7] = ei.numpy()[1, :7][::-1] % 6


def _refill_numpy_buffer(ei, buffer):
    buffer[:] = bipartite_graph(8, 8, 20, seed=99).numpy()


@pytest.mark.parametrize('edit', ['data', 'numpy', 'from_numpy'])
def test_cached_csr_sees_untracked_writes(edit):
    clear_csr_cache()
    buffer = bipartite_graph(8, 8, 20).numpy().copy()
    ei = torch.from_numpy(buffer)
    first = cached_csr(ei, 8, 8)
    assert cached_csr(ei, 8, 8) is first  # a hit while unchanged
    version = ei._version
    if edit == 'data':
        _edit_through_data(ei)
    elif edit == 'numpy':
        _edit_through_numpy(ei)
    else:
        _refill_numpy_buffer(ei, buffer)
    assert ei._version == version  # invisible to the version counter
    got = cached_csr(ei, 8, 8)
    fresh = build_csr(ei, 8, 8)
    for name in ('rowptr', 'col', 'perm', 'src_rowptr', 'src_slot', 'src_row'):
        assert torch.equal(getattr(got, name), getattr(fresh, name)), name


def test_csr_matches_is_exact():
    from torch_geometric_gnf.ops.csr import csr_matches
    ei = bipartite_graph(8, 8, 30)
    csr = build_csr(ei, 8, 8)
    assert csr_matches(csr, ei)
    assert csr_matches(csr, ei.int()) and not csr_matches(csr, ei[:, 1:])
    # swapping two edges of one destination changes the stable order
    dst = ei[1]
    i, j = [int(k) for k in torch.nonzero(dst == dst[0]).view(-1)[:2]]
    swapped = ei.clone()
    swapped[:, [i, j]] = swapped[:, [j, i]]
    same = torch.equal(ei[:, i], ei[:, j])
    assert csr_matches(csr, swapped) == same
    moved = ei.clone()
    moved[1, 0] = (int(moved[1, 0]) + 1) % 7
    assert not csr_matches(csr, moved)


def test_cached_csr_hit_builds_no_derived_graph(monkeypatch):
    # A hit is verified against the snapshot: the derived graph (tens of
    # bytes an edge) is built once, not in every layer's call.
    from torch_geometric_gnf.ops import csr as csr_module
    clear_csr_cache()
    ei = bipartite_graph(8, 8, 20)
    calls = []

    def derived():
        calls.append(1)
        return ei.flip(0)

    first = cached_csr(ei, 8, 8, variant='flipped', graph=derived)
    monkeypatch.setattr(csr_module, '_VERIFY_CHUNK', 3)  # several chunks
    assert cached_csr(ei, 8, 8, variant='flipped', graph=derived) is first
    assert len(calls) == 1
    ei.data[0, 19] = (int(ei[0, 19]) + 1) % 8  # in the last chunk
    rebuilt = cached_csr(ei, 8, 8, variant='flipped', graph=derived)
    assert len(calls) == 2
    fresh = build_csr(ei.flip(0), 8, 8)
    for name in ('rowptr', 'col', 'perm', 'src_slot'):
        assert torch.equal(getattr(rebuilt, name), getattr(fresh, name)), name


def test_cached_csr_snapshot_compares_in_callers_dtype():
    # The snapshot is int32; a later value that would wrap onto it in int32
    # must not be a hit.
    clear_csr_cache()
    ei = torch.tensor([[0, 1, 2], [1, 2, 0]])
    first = cached_csr(ei, 3, 3)
    ei.data[0, 0] = 2**32  # int32(2**32) == 0
    with pytest.raises(ValueError, match="'edge_index' source indices"):
        cached_csr(ei, 3, 3)
    ei.data[0, 0] = 0
    # the entry still matches the restored contents: a valid hit
    assert cached_csr(ei, 3, 3) is first


def test_fused_conv_checks_int64_indices_before_narrowing():
    # add_self_loops=False: the index used to be cast to int32 before the
    # range check, so 2**32 + 1 wrapped to 1 and ran silently.
    from torch_geometric_gnf.nn import FusedGATConv
    clear_csr_cache()
    conv = FusedGATConv(4, 2, add_self_loops=False)
    ei = torch.tensor([[0, 2**32 + 1], [1, 2]])
    with pytest.raises(ValueError, match="'edge_index' source indices"):
        conv(torch.randn(10, 4), ei)
