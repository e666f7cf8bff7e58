// Building blocks of the CPU attention kernels (GAT and GATv2): balanced
// parallel loops over CSR rows, small vector primitives, prefetching and the
// dropout parameters of the counter-based mask (gat_attention_math.h).
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

#include "gat_attention_math.h"

namespace gnf {
namespace cpu {

// Node ranges that carry about the same work, measured as edges + nodes
// (rowptr[i] + i), so that high-degree nodes on real (power-law) graphs do
// not leave one thread with most of the edges. The split depends only on
// the graph, the row width and the thread count, so a per-task reduction
// (summed in task order afterwards) is deterministic.
inline int64_t node_tasks(const int64_t* rowptr, int64_t num_nodes,
                          int64_t row_width) {
  if (num_nodes == 0) return 0;
  const int64_t total = rowptr[num_nodes] + num_nodes;  // >= num_nodes >= 1
  const int64_t by_work = std::max<int64_t>(
      1, total * std::max<int64_t>(1, row_width) / at::internal::GRAIN_SIZE);
  return std::min<int64_t>(
      std::min<int64_t>(by_work, num_nodes),
      at::get_num_threads() > 1 ? 4 * at::get_num_threads() : 1);
}

// Runs fn(task, begin, end) for the `tasks` node ranges of node_tasks().
template <typename F>
void parallel_over_node_tasks(const int64_t* rowptr, int64_t num_nodes,
                              int64_t tasks, const F& fn) {
  if (num_nodes == 0 || tasks == 0) return;
  const int64_t total = rowptr[num_nodes] + num_nodes;
  // First node whose cumulative work reaches `target`.
  auto node_at = [&](int64_t target) {
    int64_t lo = 0, hi = num_nodes;
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (rowptr[mid] + mid < target) lo = mid + 1; else hi = mid;
    }
    return lo;
  };
  at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t begin = t == 0 ? 0 : node_at(t * total / tasks);
      const int64_t end =
          t + 1 == tasks ? num_nodes : node_at((t + 1) * total / tasks);
      if (begin < end) fn(t, begin, end);
    }
  });
}

// Runs fn(begin, end) over balanced node ranges (see node_tasks).
template <typename F>
void parallel_over_nodes(const int64_t* rowptr, int64_t num_nodes,
                         int64_t row_width, const F& fn) {
  parallel_over_node_tasks(
      rowptr, num_nodes, node_tasks(rowptr, num_nodes, row_width),
      [&](int64_t, int64_t begin, int64_t end) { fn(begin, end); });
}

// acc[c] += w * v[c]
template <typename acc_t, typename scalar_t>
inline void axpy(acc_t* __restrict__ acc, acc_t w,
                 const scalar_t* __restrict__ v, int64_t C) {
  for (int64_t c = 0; c < C; ++c) acc[c] += w * static_cast<acc_t>(v[c]);
}

// <a, b> with 8 independent partial sums, so the compiler can vectorise the
// reduction without -ffast-math.
template <typename acc_t, typename scalar_t>
inline acc_t dot(const scalar_t* __restrict__ a,
                 const scalar_t* __restrict__ b, int64_t C) {
  acc_t part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t c = 0;
  for (; c + 8 <= C; c += 8)
    for (int k = 0; k < 8; ++k)
      part[k] += static_cast<acc_t>(a[c + k]) * static_cast<acc_t>(b[c + k]);
  acc_t s = ((part[0] + part[4]) + (part[1] + part[5])) +
            ((part[2] + part[6]) + (part[3] + part[7]));
  for (; c < C; ++c) s += static_cast<acc_t>(a[c]) * static_cast<acc_t>(b[c]);
  return s;
}

// Feature rows of neighbours are gathered at random; fetching a row a few
// edges ahead hides most of the memory latency.
constexpr int64_t kPrefetchAhead = 4;

inline void prefetch_row(const void* p, int64_t bytes) {
#if defined(__GNUC__) || defined(__clang__)
  const char* c = static_cast<const char*>(p);
  for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch(c + o, 0, 1);
#else
  (void)p;
  (void)bytes;
#endif
}

struct DropoutParams {
  bool active;
  uint32_t key;
  uint64_t threshold;
  double scale;  // 1 / (1 - p), 0 for p = 1
};

inline DropoutParams make_dropout(double p, int64_t seed) {
  DropoutParams d;
  d.active = p > 0;
  d.key = gat_dropout_key(seed);
  d.threshold = gat_keep_threshold(p);
  d.scale = p < 1 ? 1.0 / (1.0 - p) : 0.0;
  return d;
}

}  // namespace cpu
}  // namespace gnf
