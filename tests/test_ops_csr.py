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


def test_range_check_can_be_disabled():
    set_input_checks(False)
    try:  # no range check (no error); the caller vouches for the indices
        build_csr(torch.tensor([[0, 1], [1, 1]]), 2, 2)
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
