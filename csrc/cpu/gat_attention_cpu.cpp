// CPU kernels of the fused GAT attention op (see csrc/gat_attention.cpp).
//
// forward: parallel over destination nodes, two passes over the incoming
//   edges of a node (row max of the scores, then exp / sum / weighted sum of
//   x[j] into a per-thread accumulator); no atomics, no per-edge storage.
// backward, pass 1 (parallel over destinations): D_i = <g_i, out_i> into a
//   transient [num_dst, H] buffer, the score gradient of each edge, grad
//   alpha_dst and grad alpha_edge.
// backward, pass 2 (parallel over sources, by-source CSR): recomputes each
//   edge's score, weight a*k, dropout bit and score gradient
//   a * (k <g_i, x_j> - D_i), then grad x_j = sum a*k * g_i and
//   grad alpha_src_j = sum of score gradients; no atomics and no per-edge
//   scratch (only O(N*H) buffers besides the outputs).
// Inner loops run over the C channels of one head (contiguous [N, H, C]).

#include "cpu/gat_attention_cpu.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu/kernel_utils.h"
#include "gat_attention.h"
#include "gat_attention_math.h"

namespace gnf {
namespace {

using namespace cpu;  // kernel_utils.h

template <typename scalar_t, typename index_t>
void forward_kernel(const scalar_t* x, const scalar_t* a_src,
                    const scalar_t* a_dst, const scalar_t* a_edge,
                    const int64_t* rowptr, const index_t* col,
                    const int64_t* perm, scalar_t* out, scalar_t* lse,
                    int64_t num_dst, int64_t H, int64_t C,
                    double slope_d, const DropoutParams& drop) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t slope = static_cast<acc_t>(slope_d);
  const acc_t scale = static_cast<acc_t>(drop.scale);
  const int64_t HC = H * C;
  parallel_over_nodes(rowptr, num_dst, HC, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(HC), row_max(H), row_sum(H);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t r0 = rowptr[i], r1 = rowptr[i + 1];
      scalar_t* out_i = out + i * HC;
      if (r0 == r1) {  // no incoming edge: exact zero, no 0/0
        std::fill(out_i, out_i + HC, scalar_t(0));
        std::fill(lse + i * H, lse + (i + 1) * H, scalar_t(0));
        continue;
      }
      const scalar_t* ad = a_dst + i * H;
      std::fill(row_max.begin(), row_max.end(),
                -std::numeric_limits<acc_t>::infinity());
      for (int64_t s = r0; s < r1; ++s) {  // pass 1: row max per head
        const scalar_t* as = a_src + static_cast<int64_t>(col[s]) * H;
        const scalar_t* ae = a_edge ? a_edge + perm[s] * H : nullptr;
        for (int64_t h = 0; h < H; ++h) {
          acc_t raw = static_cast<acc_t>(as[h]) + static_cast<acc_t>(ad[h]);
          if (ae) raw += static_cast<acc_t>(ae[h]);
          row_max[h] = std::max(row_max[h], gat_leaky_relu(raw, slope));
        }
      }
      std::fill(acc.begin(), acc.end(), acc_t(0));
      std::fill(row_sum.begin(), row_sum.end(), acc_t(0));
      for (int64_t s = r0; s < r1; ++s) {  // pass 2: exp, sum, weighted sum
        if (s + kPrefetchAhead < r1)
          prefetch_row(x + static_cast<int64_t>(col[s + kPrefetchAhead]) * HC,
                       HC * static_cast<int64_t>(sizeof(scalar_t)));
        const int64_t j = static_cast<int64_t>(col[s]);
        const int64_t e = perm[s];
        const scalar_t* as = a_src + j * H;
        const scalar_t* ae = a_edge ? a_edge + e * H : nullptr;
        const scalar_t* xj = x + j * HC;
        for (int64_t h = 0; h < H; ++h) {
          acc_t raw = static_cast<acc_t>(as[h]) + static_cast<acc_t>(ad[h]);
          if (ae) raw += static_cast<acc_t>(ae[h]);
          const acc_t p = std::exp(gat_leaky_relu(raw, slope) - row_max[h]);
          row_sum[h] += p;
          acc_t w = p;
          if (drop.active)
            w = gat_keep(drop.key, e, H, h, drop.threshold) ? p * scale
                                                            : acc_t(0);
          if (w != acc_t(0)) axpy(acc.data() + h * C, w, xj + h * C, C);
        }
      }
      for (int64_t h = 0; h < H; ++h) {
        const acc_t inv = acc_t(1) / row_sum[h];
        for (int64_t c = 0; c < C; ++c)
          out_i[h * C + c] = static_cast<scalar_t>(acc[h * C + c] * inv);
        lse[i * H + h] = static_cast<scalar_t>(row_max[h] +
                                               std::log(row_sum[h]));
      }
    }
  });
}

// Pre-activation score alpha_src[j,h] + alpha_dst[i,h] (+ alpha_edge[e,h]) of
// one edge. Both backward passes call this (in the forward's order of
// additions), so they see bit-identical scores.
template <typename acc_t, typename scalar_t>
inline acc_t edge_raw(const scalar_t* as, const scalar_t* ad,
                      const scalar_t* ae, int64_t h) {
  acc_t raw = static_cast<acc_t>(as[h]) + static_cast<acc_t>(ad[h]);
  if (ae) raw += static_cast<acc_t>(ae[h]);
  return raw;
}

// The per-edge, per-head terms both backward passes need, recomputed from
// the saved log-sum-exp: the softmax weight a, the dropout factor k (0 or
// 1 / (1 - p); 1 without dropout) and d loss / d raw score.
template <typename acc_t>
struct EdgeGrad {
  acc_t a, k, g_raw;
};

template <typename acc_t, typename scalar_t, typename lse_t>
inline EdgeGrad<acc_t> edge_grad(acc_t raw, lse_t lse_ih,
                                 const DropoutParams& drop, acc_t scale,
                                 int64_t e, int64_t H, int64_t h,
                                 const scalar_t* g_ih, const scalar_t* x_jh,
                                 int64_t C, acc_t D, acc_t slope) {
  EdgeGrad<acc_t> t;
  t.a = std::exp(gat_leaky_relu(raw, slope) - static_cast<acc_t>(lse_ih));
  t.k = 1;
  if (drop.active)
    t.k = gat_keep(drop.key, e, H, h, drop.threshold) ? scale : acc_t(0);
  const acc_t gx = t.k != acc_t(0) ? dot<acc_t>(g_ih, x_jh, C) : acc_t(0);
  t.g_raw = gat_grad_raw(t.a, t.k, gx, D, raw, slope);
  return t;
}

// Pass 1 of the backward, parallel over destinations: D_i = <g_i, out_i>
// (kept, [num_dst, H]), grad alpha_dst and grad alpha_edge.
template <typename scalar_t, typename index_t>
void backward_dst_kernel(const scalar_t* grad_out, const scalar_t* x,
                         const scalar_t* a_src, const scalar_t* a_dst,
                         const scalar_t* a_edge, const scalar_t* out,
                         const scalar_t* lse, const int64_t* rowptr,
                         const index_t* col, const int64_t* perm,
                         scalar_t* grad_a_dst, scalar_t* grad_a_edge,
                         at::opmath_type<scalar_t>* D_out, int64_t num_dst,
                         int64_t H, int64_t C, double slope_d,
                         const DropoutParams& drop) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t slope = static_cast<acc_t>(slope_d);
  const acc_t scale = static_cast<acc_t>(drop.scale);
  const int64_t HC = H * C;
  parallel_over_nodes(rowptr, num_dst, HC, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> g_dst(H);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t r0 = rowptr[i], r1 = rowptr[i + 1];
      const scalar_t* g_i = grad_out + i * HC;
      const scalar_t* ad = a_dst + i * H;
      acc_t* D = D_out + i * H;
      for (int64_t h = 0; h < H; ++h) {
        D[h] = r0 == r1 ? acc_t(0)
                        : dot<acc_t>(g_i + h * C, out + i * HC + h * C, C);
        g_dst[h] = 0;
      }
      for (int64_t s = r0; s < r1; ++s) {
        if (s + kPrefetchAhead < r1)
          prefetch_row(x + static_cast<int64_t>(col[s + kPrefetchAhead]) * HC,
                       HC * static_cast<int64_t>(sizeof(scalar_t)));
        const int64_t j = static_cast<int64_t>(col[s]);
        const int64_t e = perm[s];
        const scalar_t* as = a_src + j * H;
        const scalar_t* ae = a_edge ? a_edge + e * H : nullptr;
        const scalar_t* xj = x + j * HC;
        for (int64_t h = 0; h < H; ++h) {
          const EdgeGrad<acc_t> t = edge_grad<acc_t>(
              edge_raw<acc_t>(as, ad, ae, h), lse[i * H + h], drop, scale, e,
              H, h, g_i + h * C, xj + h * C, C, D[h], slope);
          g_dst[h] += t.g_raw;
          if (grad_a_edge) grad_a_edge[e * H + h] = static_cast<scalar_t>(t.g_raw);
        }
      }
      for (int64_t h = 0; h < H; ++h)
        grad_a_dst[i * H + h] = static_cast<scalar_t>(g_dst[h]);
    }
  });
}

// Pass 2 of the backward, parallel over sources (by-source CSR). For each
// incoming position k (slot s = src_slot[k], destination i = src_row[k],
// edge e = perm[s]) it recomputes the weight a*k and the score gradient from
// the inputs, lse_i and D_i (one extra C-length dot per edge/head), so no
// per-edge state is carried over from pass 1. (Reading the score gradient
// back from grad_alpha_edge instead of the dot measured no faster: it is one
// more random gather per edge.)
template <typename scalar_t, typename index_t>
void backward_src_kernel(const scalar_t* grad_out, const scalar_t* x,
                         const scalar_t* a_src, const scalar_t* a_dst,
                         const scalar_t* a_edge, const scalar_t* lse,
                         const at::opmath_type<scalar_t>* D_in,
                         const int64_t* perm,
                         const int64_t* src_rowptr, const int64_t* src_slot,
                         const index_t* src_row, scalar_t* grad_x,
                         scalar_t* grad_a_src, int64_t num_src, int64_t H,
                         int64_t C, double slope_d, const DropoutParams& drop) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t slope = static_cast<acc_t>(slope_d);
  const acc_t scale = static_cast<acc_t>(drop.scale);
  const int64_t HC = H * C;
  parallel_over_nodes(src_rowptr, num_src, HC,
                      [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(HC), g_src(H);
    for (int64_t j = begin; j < end; ++j) {
      std::fill(acc.begin(), acc.end(), acc_t(0));
      std::fill(g_src.begin(), g_src.end(), acc_t(0));
      const scalar_t* as = a_src + j * H;
      const scalar_t* xj = x + j * HC;
      const int64_t k1 = src_rowptr[j + 1];
      for (int64_t k = src_rowptr[j]; k < k1; ++k) {
        if (k + kPrefetchAhead < k1) {
          prefetch_row(
              grad_out + static_cast<int64_t>(src_row[k + kPrefetchAhead]) * HC,
              HC * static_cast<int64_t>(sizeof(scalar_t)));
          // the edge id is two dependent gathers away: fetch perm a further
          // step ahead, then the alpha_edge row of an edge whose id is in.
          if (k + 2 * kPrefetchAhead < k1)
            prefetch_row(perm + src_slot[k + 2 * kPrefetchAhead],
                         static_cast<int64_t>(sizeof(int64_t)));
          if (a_edge)
            prefetch_row(a_edge + perm[src_slot[k + kPrefetchAhead]] * H,
                         H * static_cast<int64_t>(sizeof(scalar_t)));
        }
        const int64_t i = static_cast<int64_t>(src_row[k]);
        const int64_t e = perm[src_slot[k]];
        const scalar_t* ad = a_dst + i * H;
        const scalar_t* ae = a_edge ? a_edge + e * H : nullptr;
        const scalar_t* g_i = grad_out + i * HC;
        const acc_t* D = D_in + i * H;
        for (int64_t h = 0; h < H; ++h) {
          const EdgeGrad<acc_t> t = edge_grad<acc_t>(
              edge_raw<acc_t>(as, ad, ae, h), lse[i * H + h], drop, scale, e,
              H, h, g_i + h * C, xj + h * C, C, D[h], slope);
          g_src[h] += t.g_raw;
          const acc_t w = t.a * t.k;
          if (w != acc_t(0)) axpy(acc.data() + h * C, w, g_i + h * C, C);
        }
      }
      for (int64_t f = 0; f < HC; ++f)
        grad_x[j * HC + f] = static_cast<scalar_t>(acc[f]);
      for (int64_t h = 0; h < H; ++h)
        grad_a_src[j * H + h] = static_cast<scalar_t>(g_src[h]);
    }
  });
}


// Validates every index the kernels follow, so that a hand-made or corrupted
// graph raises a ValueError instead of reading out of bounds (always on; a
// few O(E + N) passes, small next to the O(E * H * C) kernels):
//   rowptr / src_rowptr start at 0, never decrease and end at E;
//   col in [0, num_src); perm and src_slot are permutations of [0, E);
//   by-source position k of source j points at a slot s = src_slot[k] with
//   col[s] == j, whose destination i = src_row[k] satisfies
//   rowptr[i] <= s < rowptr[i + 1] (so both views describe one graph).
void check_offsets(const int64_t* ptr, int64_t n, int64_t E,
                   const char* name) {
  TORCH_CHECK_VALUE(ptr[0] == 0, "gat_attention: invalid CSRGraph: csr.",
                    name, "[0] must be 0, got ", ptr[0],
                    " (build graphs with torch_geometric_gnf.ops.build_csr)");
  for (int64_t i = 0; i < n; ++i)
    TORCH_CHECK_VALUE(ptr[i + 1] >= ptr[i], "gat_attention: invalid "
                      "CSRGraph: csr.", name, " decreases at position ", i);
  TORCH_CHECK_VALUE(ptr[n] == E, "gat_attention: invalid CSRGraph: csr.",
                    name, "[-1] must equal the number of edges ", E, ", got ",
                    ptr[n]);
}

void check_permutation(const int64_t* p, int64_t E, const char* name) {
  std::vector<char> seen(E, 0);
  for (int64_t s = 0; s < E; ++s) {
    const int64_t v = p[s];
    TORCH_CHECK_VALUE(v >= 0 && v < E && !seen[v], "gat_attention: invalid "
                      "CSRGraph: csr.", name, " must be a permutation of [0, ",
                      E, "), found ", v, " at position ", s);
    seen[v] = 1;
  }
}

template <typename index_t>
void validate_csr(const int64_t* rowptr, const index_t* col,
                  const int64_t* perm, const int64_t* src_rowptr,
                  const int64_t* src_slot, const index_t* src_row,
                  int64_t num_src, int64_t num_dst, int64_t E) {
  check_offsets(rowptr, num_dst, E, "rowptr");
  check_offsets(src_rowptr, num_src, E, "src_rowptr");
  for (int64_t s = 0; s < E; ++s) {
    const int64_t j = static_cast<int64_t>(col[s]);
    TORCH_CHECK_VALUE(j >= 0 && j < num_src, "gat_attention: invalid "
                      "CSRGraph: csr.col[", s, "] = ", j, " is not a source "
                      "node in [0, ", num_src, ")");
  }
  check_permutation(perm, E, "perm");
  check_permutation(src_slot, E, "src_slot");
  for (int64_t j = 0; j < num_src; ++j) {
    for (int64_t k = src_rowptr[j]; k < src_rowptr[j + 1]; ++k) {
      const int64_t s = src_slot[k];
      const int64_t i = static_cast<int64_t>(src_row[k]);
      TORCH_CHECK_VALUE(static_cast<int64_t>(col[s]) == j && i >= 0 &&
                            i < num_dst && rowptr[i] <= s &&
                            s < rowptr[i + 1],
                        "gat_attention: invalid CSRGraph: the by-source view "
                        "(src_rowptr, src_slot, src_row) at position ", k,
                        " does not match rowptr/col");
    }
  }
}

void validate_csr(const at::Tensor& rowptr, const at::Tensor& col,
                  const at::Tensor& perm, const at::Tensor& src_rowptr,
                  const at::Tensor& src_slot, const at::Tensor& src_row,
                  int64_t num_src, int64_t num_dst) {
  AT_DISPATCH_INDEX_TYPES(col.scalar_type(), "gat_attention_validate_csr", [&] {
    validate_csr<index_t>(rowptr.data_ptr<int64_t>(), col.data_ptr<index_t>(),
                          perm.data_ptr<int64_t>(),
                          src_rowptr.data_ptr<int64_t>(),
                          src_slot.data_ptr<int64_t>(),
                          src_row.data_ptr<index_t>(), num_src, num_dst,
                          col.size(0));
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> gat_attention_forward_cpu(
    const at::Tensor& x_in, const at::Tensor& alpha_src_in,
    const at::Tensor& alpha_dst_in,
    const std::optional<at::Tensor>& alpha_edge_in,
    const at::Tensor& rowptr_in, const at::Tensor& col_in,
    const at::Tensor& perm_in, const at::Tensor& src_rowptr_in,
    const at::Tensor& src_slot_in, const at::Tensor& src_row_in,
    double negative_slope, double dropout, int64_t seed) {
  check_gat_attention_inputs(x_in, alpha_src_in, alpha_dst_in, alpha_edge_in,
                             rowptr_in, col_in, perm_in, src_rowptr_in,
                             src_slot_in, src_row_in, dropout);
  TORCH_CHECK(x_in.device().is_cpu(), "gat_attention_forward_cpu: CPU only");
  const auto x = x_in.contiguous();
  const auto alpha_src = alpha_src_in.contiguous();
  const auto alpha_dst = alpha_dst_in.contiguous();
  const auto rowptr = rowptr_in.contiguous();
  const auto col = col_in.contiguous();
  const auto perm = perm_in.contiguous();
  validate_csr(rowptr, col, perm, src_rowptr_in.contiguous(),
               src_slot_in.contiguous(), src_row_in.contiguous(), x.size(0),
               alpha_dst.size(0));
  at::Tensor alpha_edge;
  if (alpha_edge_in.has_value()) alpha_edge = alpha_edge_in->contiguous();
  const int64_t num_dst = alpha_dst.size(0), H = x.size(1), C = x.size(2);
  auto out = at::empty({num_dst, H, C}, x.options());
  auto lse = at::empty({num_dst, H}, x.options());
  const DropoutParams drop = make_dropout(dropout, seed);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gat_attention_forward_cpu", [&] {
    AT_DISPATCH_INDEX_TYPES(col.scalar_type(), "gat_attention_forward_cpu", [&] {
      forward_kernel<scalar_t, index_t>(
          x.data_ptr<scalar_t>(), alpha_src.data_ptr<scalar_t>(),
          alpha_dst.data_ptr<scalar_t>(),
          alpha_edge.defined() ? alpha_edge.data_ptr<scalar_t>() : nullptr,
          rowptr.data_ptr<int64_t>(), col.data_ptr<index_t>(),
          perm.data_ptr<int64_t>(), out.data_ptr<scalar_t>(),
          lse.data_ptr<scalar_t>(), num_dst, H, C, negative_slope, drop);
    });
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>
gat_attention_backward_cpu(
    const at::Tensor& grad_out_in, const at::Tensor& x_in,
    const at::Tensor& alpha_src_in, const at::Tensor& alpha_dst_in,
    const std::optional<at::Tensor>& alpha_edge_in, const at::Tensor& out_in,
    const at::Tensor& lse_in, const at::Tensor& rowptr_in,
    const at::Tensor& col_in, const at::Tensor& perm_in,
    const at::Tensor& src_rowptr_in, const at::Tensor& src_slot_in,
    const at::Tensor& src_row_in, double negative_slope, double dropout,
    int64_t seed) {
  check_gat_attention_inputs(x_in, alpha_src_in, alpha_dst_in, alpha_edge_in,
                             rowptr_in, col_in, perm_in, src_rowptr_in,
                             src_slot_in, src_row_in, dropout);
  check_gat_attention_backward(grad_out_in, out_in, lse_in, x_in,
                               alpha_dst_in);
  TORCH_CHECK(x_in.device().is_cpu(), "gat_attention_backward_cpu: CPU only");
  const auto grad_out = grad_out_in.contiguous();
  const auto x = x_in.contiguous();
  const auto alpha_src = alpha_src_in.contiguous();
  const auto alpha_dst = alpha_dst_in.contiguous();
  const auto out = out_in.contiguous();
  const auto lse = lse_in.contiguous();
  const auto rowptr = rowptr_in.contiguous();
  const auto col = col_in.contiguous();
  const auto perm = perm_in.contiguous();
  const auto src_rowptr = src_rowptr_in.contiguous();
  const auto src_slot = src_slot_in.contiguous();
  const auto src_row = src_row_in.contiguous();
  validate_csr(rowptr, col, perm, src_rowptr, src_slot, src_row, x.size(0),
               alpha_dst.size(0));
  at::Tensor alpha_edge;
  if (alpha_edge_in.has_value()) alpha_edge = alpha_edge_in->contiguous();
  const int64_t num_src = x.size(0), num_dst = alpha_dst.size(0);
  const int64_t H = x.size(1), C = x.size(2);
  auto grad_x = at::empty_like(x);
  auto grad_alpha_src = at::empty_like(alpha_src);
  auto grad_alpha_dst = at::empty_like(alpha_dst);
  auto grad_alpha_edge = alpha_edge.defined() ? at::empty_like(alpha_edge)
                                              : at::empty({0}, x.options());
  const DropoutParams drop = make_dropout(dropout, seed);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gat_attention_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    // D_i = <g_i, out_i> per destination and head: the only scratch, O(N*H).
    auto D = at::empty({num_dst, H},
                       x.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    const scalar_t* a_edge_p =
        alpha_edge.defined() ? alpha_edge.data_ptr<scalar_t>() : nullptr;
    scalar_t* g_edge_p =
        alpha_edge.defined() ? grad_alpha_edge.data_ptr<scalar_t>() : nullptr;
    AT_DISPATCH_INDEX_TYPES(col.scalar_type(), "gat_attention_backward_cpu", [&] {
      backward_dst_kernel<scalar_t, index_t>(
          grad_out.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
          alpha_src.data_ptr<scalar_t>(), alpha_dst.data_ptr<scalar_t>(),
          a_edge_p, out.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>(),
          rowptr.data_ptr<int64_t>(), col.data_ptr<index_t>(),
          perm.data_ptr<int64_t>(), grad_alpha_dst.data_ptr<scalar_t>(),
          g_edge_p, D.data_ptr<acc_t>(), num_dst, H, C, negative_slope, drop);
      backward_src_kernel<scalar_t, index_t>(
          grad_out.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
          alpha_src.data_ptr<scalar_t>(), alpha_dst.data_ptr<scalar_t>(),
          a_edge_p, lse.data_ptr<scalar_t>(), D.data_ptr<acc_t>(),
          perm.data_ptr<int64_t>(), src_rowptr.data_ptr<int64_t>(),
          src_slot.data_ptr<int64_t>(), src_row.data_ptr<index_t>(),
          grad_x.data_ptr<scalar_t>(), grad_alpha_src.data_ptr<scalar_t>(),
          num_src, H, C, negative_slope, drop);
    });
  });
  return {grad_x, grad_alpha_src, grad_alpha_dst, grad_alpha_edge};
}

}  // namespace gnf
