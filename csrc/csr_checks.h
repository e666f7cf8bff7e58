// Validation of the index VALUES a CSR attention kernel reads through, so
// that a kernel never reads or writes out of bounds, whatever the Python-side
// input-check switch says (a malformed CSRGraph raises instead). ATen ops
// only, so CPU and CUDA share it (on CUDA each check is one small reduction).
#pragma once

#include <ATen/ATen.h>

namespace gnf {

// ptr is non-decreasing, starts at 0 and ends at num_edges.
inline void check_csr_offsets(const at::Tensor& ptr, int64_t num_edges,
                              const char* op, const char* name) {
  TORCH_CHECK(ptr.dim() == 1 && ptr.numel() >= 1, op, ": ", name,
              " must be a non-empty 1-D tensor");
  const auto ends = at::stack({ptr.select(0, 0), ptr.select(0, -1)}).cpu();
  const int64_t first = ends[0].item<int64_t>(), last = ends[1].item<int64_t>();
  TORCH_CHECK(first == 0 && last == num_edges, op, ": ", name,
              " must run from 0 to E = ", num_edges, ", got [", first, ", ",
              last, "] (build the graph with build_csr)");
  if (ptr.numel() > 1)
    TORCH_CHECK(!(ptr.diff() < 0).any().item<bool>(), op, ": ", name,
                " must be non-decreasing (build the graph with build_csr)");
}

// Every entry of idx lies in [0, n).
inline void check_index_range(const at::Tensor& idx, int64_t n,
                              const char* op, const char* name) {
  if (idx.numel() == 0) return;
  const auto range = at::aminmax(idx);
  const int64_t lo = std::get<0>(range).item<int64_t>();
  const int64_t hi = std::get<1>(range).item<int64_t>();
  TORCH_CHECK(lo >= 0 && hi < n, op, ": ", name, " must lie in [0, ", n,
              "), found range [", lo, ", ", hi,
              "] (build the graph with build_csr)");
}

}  // namespace gnf
