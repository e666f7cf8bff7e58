// CPU kernels of the fused GATv2 attention op (see csrc/gatv2_attention.cpp).
//
// forward: parallel over destination nodes. Per node, pass 1 computes each
//   incoming edge's score (the C-long GATv2 term) into a per-thread
//   [degree, H] buffer and the row max; pass 2 does exp / sum / weighted sum
//   of x_src[j] into a per-thread accumulator. No atomics.
// backward, pass 1 (parallel over destinations): D_i = <g_i, out_i> into a
//   transient [num_dst, H] buffer; per edge and head the score gradient ds
//   and d z = ds * att * leaky'(z), giving grad x_dst_i, grad edge_attr_e and
//   per-task partial sums of grad att and grad W_e (summed in task order
//   afterwards, so the result is deterministic).
// backward, pass 2 (parallel over sources, by-source CSR): recomputes z, the
//   weight a*k and ds of every edge; grad x_src_j = sum (d z + a k g_i).
// Scratch besides the outputs: O(num_dst * H + tasks * H * C * (1 + D)).

#include "cpu/gatv2_attention_cpu.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu/kernel_utils.h"
#include "gatv2_attention.h"
#include "gatv2_attention_math.h"

namespace gnf {
namespace {

using namespace cpu;  // kernel_utils.h

template <typename scalar_t>
struct V2Inputs {
  const scalar_t* x_src;      // [num_src, H, C]
  const scalar_t* x_dst;      // [num_dst, H, C]
  const scalar_t* att;        // [H, C]
  const scalar_t* edge_attr;  // [E, D] or nullptr
  const scalar_t* weight;     // [H * C, D] or nullptr
  int64_t H, C, D;
};

// Score s of edge (j -> i, original id e) and head h; fills z[0, C). The
// score is a sum over C channels with 8 independent partial sums, so the
// compiler can vectorise it without -ffast-math (as dot()).
template <typename acc_t, typename scalar_t>
inline acc_t edge_score(const V2Inputs<scalar_t>& in, int64_t j, int64_t i,
                        int64_t e, int64_t h, acc_t slope,
                        acc_t* __restrict__ z) {
  const int64_t C = in.C, D = in.D;
  const scalar_t* __restrict__ xs = in.x_src + (j * in.H + h) * C;
  const scalar_t* __restrict__ xd = in.x_dst + (i * in.H + h) * C;
  const scalar_t* __restrict__ a = in.att + h * C;
  if (in.edge_attr == nullptr) {
    for (int64_t c = 0; c < C; ++c)
      z[c] = static_cast<acc_t>(xs[c]) + static_cast<acc_t>(xd[c]);
  } else {
    const scalar_t* ea = in.edge_attr + e * D;
    const scalar_t* w = in.weight + h * C * D;
    for (int64_t c = 0; c < C; ++c)
      z[c] = gatv2_z<acc_t>(xs, xd, w + c * D, ea, D, c);
  }
  acc_t part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t c = 0;
  for (; c + 8 <= C; c += 8)
    for (int k = 0; k < 8; ++k)
      part[k] += static_cast<acc_t>(a[c + k]) * gat_leaky_relu(z[c + k], slope);
  acc_t s = ((part[0] + part[4]) + (part[1] + part[5])) +
            ((part[2] + part[6]) + (part[3] + part[7]));
  for (; c < C; ++c) s += static_cast<acc_t>(a[c]) * gat_leaky_relu(z[c], slope);
  return s;
}

// The weight a and dropout factor k (0 or 1 / (1 - p); 1 without dropout)
// of an edge/head from its score and the saved log-sum-exp, and the score
// gradient ds = a (k <g_i, x_j> - D_i).
template <typename acc_t>
struct EdgeGrad {
  acc_t a, k, ds;
};

template <typename acc_t, typename scalar_t>
inline EdgeGrad<acc_t> edge_grad(acc_t score, acc_t lse_ih,
                                 const DropoutParams& drop, acc_t scale,
                                 int64_t e, int64_t H, int64_t h,
                                 const scalar_t* g_ih, const scalar_t* x_jh,
                                 int64_t C, acc_t D) {
  EdgeGrad<acc_t> t;
  t.a = std::exp(score - lse_ih);
  t.k = 1;
  if (drop.active)
    t.k = gat_keep(drop.key, e, H, h, drop.threshold) ? scale : acc_t(0);
  const acc_t gx = t.k != acc_t(0) ? dot<acc_t>(g_ih, x_jh, C) : acc_t(0);
  t.ds = gat_grad_score(t.a, t.k, gx, D);
  return t;
}

template <typename scalar_t, typename index_t>
void forward_kernel(const V2Inputs<scalar_t>& in, const int64_t* rowptr,
                    const index_t* col, const int64_t* perm, scalar_t* out,
                    scalar_t* lse, int64_t num_dst, double slope_d,
                    const DropoutParams& drop) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t slope = static_cast<acc_t>(slope_d);
  const acc_t scale = static_cast<acc_t>(drop.scale);
  const int64_t H = in.H, C = in.C, HC = H * C;
  parallel_over_nodes(rowptr, num_dst, HC, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(HC), row_max(H), row_sum(H), z(C), score;
    for (int64_t i = begin; i < end; ++i) {
      const int64_t r0 = rowptr[i], r1 = rowptr[i + 1];
      scalar_t* out_i = out + i * HC;
      if (r0 == r1) {  // no incoming edge: exact zero, no 0/0
        std::fill(out_i, out_i + HC, scalar_t(0));
        std::fill(lse + i * H, lse + (i + 1) * H, scalar_t(0));
        continue;
      }
      score.resize((r1 - r0) * H);
      std::fill(row_max.begin(), row_max.end(),
                -std::numeric_limits<acc_t>::infinity());
      for (int64_t s = r0; s < r1; ++s) {  // pass 1: scores and row max
        const int64_t j = static_cast<int64_t>(col[s]);
        for (int64_t h = 0; h < H; ++h) {
          const acc_t sc = edge_score(in, j, i, perm[s], h, slope, z.data());
          score[(s - r0) * H + h] = sc;
          row_max[h] = std::max(row_max[h], sc);
        }
      }
      std::fill(acc.begin(), acc.end(), acc_t(0));
      std::fill(row_sum.begin(), row_sum.end(), acc_t(0));
      for (int64_t s = r0; s < r1; ++s) {  // pass 2: exp, sum, weighted sum
        if (s + kPrefetchAhead < r1)
          prefetch_row(
              in.x_src + static_cast<int64_t>(col[s + kPrefetchAhead]) * HC,
              HC * static_cast<int64_t>(sizeof(scalar_t)));
        const int64_t e = perm[s];
        const scalar_t* xj = in.x_src + static_cast<int64_t>(col[s]) * HC;
        for (int64_t h = 0; h < H; ++h) {
          const acc_t p = std::exp(score[(s - r0) * H + h] - row_max[h]);
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

// Pass 1 of the backward, parallel over destinations (see the file comment).
// g_att_tasks: [tasks, H*C], g_weight_tasks: [tasks, H*C*D] (or nullptr).
template <typename scalar_t, typename index_t>
void backward_dst_kernel(const V2Inputs<scalar_t>& in,
                         const scalar_t* grad_out, const scalar_t* out,
                         const scalar_t* lse, const int64_t* rowptr,
                         const index_t* col, const int64_t* perm,
                         scalar_t* grad_x_dst, scalar_t* grad_edge_attr,
                         at::opmath_type<scalar_t>* D_out,
                         at::opmath_type<scalar_t>* g_att_tasks,
                         at::opmath_type<scalar_t>* g_weight_tasks,
                         int64_t tasks, int64_t num_dst, double slope_d,
                         const DropoutParams& drop) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t slope = static_cast<acc_t>(slope_d);
  const acc_t scale = static_cast<acc_t>(drop.scale);
  const int64_t H = in.H, C = in.C, D = in.D, HC = H * C;
  parallel_over_node_tasks(rowptr, num_dst, tasks,
                           [&](int64_t task, int64_t begin, int64_t end) {
    acc_t* g_att = g_att_tasks + task * HC;
    acc_t* g_w = g_weight_tasks ? g_weight_tasks + task * HC * D : nullptr;
    std::vector<acc_t> z(C), g_xd(HC), g_ea(D);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t r0 = rowptr[i], r1 = rowptr[i + 1];
      const scalar_t* g_i = grad_out + i * HC;
      acc_t* Di = D_out + i * H;
      for (int64_t h = 0; h < H; ++h)
        Di[h] = r0 == r1 ? acc_t(0)
                         : dot<acc_t>(g_i + h * C, out + i * HC + h * C, C);
      std::fill(g_xd.begin(), g_xd.end(), acc_t(0));
      for (int64_t s = r0; s < r1; ++s) {
        if (s + kPrefetchAhead < r1)
          prefetch_row(
              in.x_src + static_cast<int64_t>(col[s + kPrefetchAhead]) * HC,
              HC * static_cast<int64_t>(sizeof(scalar_t)));
        const int64_t j = static_cast<int64_t>(col[s]);
        const int64_t e = perm[s];
        const scalar_t* xj = in.x_src + j * HC;
        const scalar_t* ea = in.edge_attr ? in.edge_attr + e * D : nullptr;
        std::fill(g_ea.begin(), g_ea.end(), acc_t(0));
        for (int64_t h = 0; h < H; ++h) {
          const acc_t sc = edge_score(in, j, i, e, h, slope, z.data());
          const EdgeGrad<acc_t> t = edge_grad<acc_t>(
              sc, static_cast<acc_t>(lse[i * H + h]), drop, scale, e, H, h,
              g_i + h * C, xj + h * C, C, Di[h]);
          if (t.ds == acc_t(0)) continue;
          const scalar_t* att_h = in.att + h * C;
          acc_t* g_xd_h = g_xd.data() + h * C;
          acc_t* g_att_h = g_att + h * C;
          for (int64_t c = 0; c < C; ++c) {  // z[c] becomes d z_c
            const acc_t zc = z[c];
            g_att_h[c] += t.ds * gat_leaky_relu(zc, slope);
            z[c] = t.ds * static_cast<acc_t>(att_h[c]) *
                   gat_leaky_relu_grad(zc, slope);
            g_xd_h[c] += z[c];
          }
          if (ea) {
            for (int64_t c = 0; c < C; ++c) {
              const scalar_t* w_row = in.weight + (h * C + c) * D;
              acc_t* gw_row = g_w + (h * C + c) * D;
              for (int64_t d = 0; d < D; ++d) {
                g_ea[d] += z[c] * static_cast<acc_t>(w_row[d]);
                gw_row[d] += z[c] * static_cast<acc_t>(ea[d]);
              }
            }
          }
        }
        if (ea)
          for (int64_t d = 0; d < D; ++d)
            grad_edge_attr[e * D + d] = static_cast<scalar_t>(g_ea[d]);
      }
      for (int64_t f = 0; f < HC; ++f)
        grad_x_dst[i * HC + f] = static_cast<scalar_t>(g_xd[f]);
    }
  });
}

// Pass 2 of the backward, parallel over sources (by-source CSR): for each
// incoming position k (slot src_slot[k], destination src_row[k]) it
// recomputes the edge's z, weight and ds from the inputs, lse_i and D_i.
template <typename scalar_t, typename index_t>
void backward_src_kernel(const V2Inputs<scalar_t>& in,
                         const scalar_t* grad_out, const scalar_t* lse,
                         const at::opmath_type<scalar_t>* D_in,
                         const int64_t* perm, const int64_t* src_rowptr,
                         const int64_t* src_slot, const index_t* src_row,
                         scalar_t* grad_x_src, int64_t num_src,
                         double slope_d, const DropoutParams& drop) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t slope = static_cast<acc_t>(slope_d);
  const acc_t scale = static_cast<acc_t>(drop.scale);
  const int64_t H = in.H, C = in.C, HC = H * C;
  parallel_over_nodes(src_rowptr, num_src, HC,
                      [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(HC), z(C);
    for (int64_t j = begin; j < end; ++j) {
      std::fill(acc.begin(), acc.end(), acc_t(0));
      const scalar_t* xj = in.x_src + j * HC;
      const int64_t k1 = src_rowptr[j + 1];
      for (int64_t k = src_rowptr[j]; k < k1; ++k) {
        if (k + kPrefetchAhead < k1) {
          const int64_t i_next =
              static_cast<int64_t>(src_row[k + kPrefetchAhead]);
          prefetch_row(grad_out + i_next * HC,
                       HC * static_cast<int64_t>(sizeof(scalar_t)));
          prefetch_row(in.x_dst + i_next * HC,
                       HC * static_cast<int64_t>(sizeof(scalar_t)));
        }
        const int64_t i = static_cast<int64_t>(src_row[k]);
        const int64_t e = perm[src_slot[k]];
        const scalar_t* g_i = grad_out + i * HC;
        for (int64_t h = 0; h < H; ++h) {
          const acc_t sc = edge_score(in, j, i, e, h, slope, z.data());
          const EdgeGrad<acc_t> t = edge_grad<acc_t>(
              sc, static_cast<acc_t>(lse[i * H + h]), drop, scale, e, H, h,
              g_i + h * C, xj + h * C, C, D_in[i * H + h]);
          acc_t* acc_h = acc.data() + h * C;
          const acc_t w = t.a * t.k;
          if (w != acc_t(0)) axpy(acc_h, w, g_i + h * C, C);
          if (t.ds == acc_t(0)) continue;
          const scalar_t* att_h = in.att + h * C;
          for (int64_t c = 0; c < C; ++c)
            acc_h[c] += t.ds * static_cast<acc_t>(att_h[c]) *
                        gat_leaky_relu_grad(z[c], slope);
        }
      }
      for (int64_t f = 0; f < HC; ++f)
        grad_x_src[j * HC + f] = static_cast<scalar_t>(acc[f]);
    }
  });
}

template <typename scalar_t>
V2Inputs<scalar_t> make_inputs(const at::Tensor& x_src,
                               const at::Tensor& x_dst, const at::Tensor& att,
                               const at::Tensor& edge_attr,
                               const at::Tensor& weight) {
  V2Inputs<scalar_t> in;
  in.x_src = x_src.data_ptr<scalar_t>();
  in.x_dst = x_dst.data_ptr<scalar_t>();
  in.att = att.data_ptr<scalar_t>();
  in.edge_attr = edge_attr.defined() ? edge_attr.data_ptr<scalar_t>() : nullptr;
  in.weight = edge_attr.defined() ? weight.data_ptr<scalar_t>() : nullptr;
  in.H = x_src.size(1);
  in.C = x_src.size(2);
  in.D = edge_attr.defined() ? edge_attr.size(1) : 0;
  return in;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> gatv2_attention_forward_cpu(
    const at::Tensor& x_src_in, const at::Tensor& x_dst_in,
    const at::Tensor& att_in, const std::optional<at::Tensor>& edge_attr_in,
    const std::optional<at::Tensor>& edge_weight_in,
    const at::Tensor& rowptr_in, const at::Tensor& col_in,
    const at::Tensor& perm_in, const at::Tensor& src_rowptr,
    const at::Tensor& src_slot, const at::Tensor& src_row,
    double negative_slope, double dropout, int64_t seed) {
  check_gatv2_attention_inputs(x_src_in, x_dst_in, att_in, edge_attr_in,
                               edge_weight_in, rowptr_in, col_in, perm_in,
                               src_rowptr, src_slot, src_row, dropout,
                               /*backward=*/false);
  TORCH_CHECK(x_src_in.device().is_cpu(),
              "gatv2_attention_forward_cpu: CPU only");
  const auto x_src = x_src_in.contiguous(), x_dst = x_dst_in.contiguous();
  const auto att = att_in.contiguous();
  const auto edge_attr = contiguous_or_undefined(edge_attr_in);
  const auto weight = contiguous_or_undefined(edge_weight_in);
  const auto rowptr = rowptr_in.contiguous(), col = col_in.contiguous();
  const auto perm = perm_in.contiguous();
  const int64_t num_dst = x_dst.size(0), H = x_src.size(1), C = x_src.size(2);
  auto out = at::empty({num_dst, H, C}, x_src.options());
  auto lse = at::empty({num_dst, H}, x_src.options());
  const DropoutParams drop = make_dropout(dropout, seed);
  AT_DISPATCH_FLOATING_TYPES(x_src.scalar_type(), "gatv2_attention_forward_cpu", [&] {
    const auto in = make_inputs<scalar_t>(x_src, x_dst, att, edge_attr, weight);
    AT_DISPATCH_INDEX_TYPES(col.scalar_type(), "gatv2_attention_forward_cpu", [&] {
      forward_kernel<scalar_t, index_t>(
          in, rowptr.data_ptr<int64_t>(), col.data_ptr<index_t>(),
          perm.data_ptr<int64_t>(), out.data_ptr<scalar_t>(),
          lse.data_ptr<scalar_t>(), num_dst, negative_slope, drop);
    });
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
gatv2_attention_backward_cpu(
    const at::Tensor& grad_out_in, const at::Tensor& x_src_in,
    const at::Tensor& x_dst_in, const at::Tensor& att_in,
    const std::optional<at::Tensor>& edge_attr_in,
    const std::optional<at::Tensor>& edge_weight_in, const at::Tensor& out_in,
    const at::Tensor& lse_in, const at::Tensor& rowptr_in,
    const at::Tensor& col_in, const at::Tensor& perm_in,
    const at::Tensor& src_rowptr_in, const at::Tensor& src_slot_in,
    const at::Tensor& src_row_in, double negative_slope, double dropout,
    int64_t seed) {
  check_gatv2_attention_inputs(x_src_in, x_dst_in, att_in, edge_attr_in,
                               edge_weight_in, rowptr_in, col_in, perm_in,
                               src_rowptr_in, src_slot_in, src_row_in,
                               dropout, /*backward=*/true);
  check_gatv2_attention_backward(grad_out_in, out_in, lse_in, x_dst_in);
  TORCH_CHECK(x_src_in.device().is_cpu(),
              "gatv2_attention_backward_cpu: CPU only");
  const auto grad_out = grad_out_in.contiguous();
  const auto x_src = x_src_in.contiguous(), x_dst = x_dst_in.contiguous();
  const auto att = att_in.contiguous();
  const auto edge_attr = contiguous_or_undefined(edge_attr_in);
  const auto weight = contiguous_or_undefined(edge_weight_in);
  const auto out = out_in.contiguous(), lse = lse_in.contiguous();
  const auto rowptr = rowptr_in.contiguous(), col = col_in.contiguous();
  const auto perm = perm_in.contiguous();
  const auto src_rowptr = src_rowptr_in.contiguous();
  const auto src_slot = src_slot_in.contiguous();
  const auto src_row = src_row_in.contiguous();
  const int64_t num_src = x_src.size(0), num_dst = x_dst.size(0);
  const int64_t H = x_src.size(1), C = x_src.size(2), HC = H * C;
  const int64_t D = edge_attr.defined() ? edge_attr.size(1) : 0;
  auto grad_x_src = at::empty_like(x_src);
  auto grad_x_dst = at::empty_like(x_dst);
  // zeros: an edge id that perm misses (never from build_csr) reads as 0.
  auto grad_edge_attr = edge_attr.defined() ? at::zeros_like(edge_attr)
                                            : at::empty({0}, x_src.options());
  at::Tensor grad_att, grad_weight = at::empty({0}, x_src.options());
  const DropoutParams drop = make_dropout(dropout, seed);
  const int64_t tasks = node_tasks(rowptr.data_ptr<int64_t>(), num_dst, HC);
  AT_DISPATCH_FLOATING_TYPES(x_src.scalar_type(), "gatv2_attention_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_opts =
        x_src.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
    // D_i = <g_i, out_i> per destination and head, and the per-task partial
    // sums of the parameter gradients: the only scratch.
    auto Dbuf = at::empty({num_dst, H}, acc_opts);
    auto g_att_tasks = at::zeros({tasks, H, C}, acc_opts);
    auto g_w_tasks = edge_attr.defined() ? at::zeros({tasks, HC, D}, acc_opts)
                                         : at::Tensor();
    const auto in = make_inputs<scalar_t>(x_src, x_dst, att, edge_attr, weight);
    AT_DISPATCH_INDEX_TYPES(col.scalar_type(), "gatv2_attention_backward_cpu", [&] {
      backward_dst_kernel<scalar_t, index_t>(
          in, grad_out.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
          lse.data_ptr<scalar_t>(), rowptr.data_ptr<int64_t>(),
          col.data_ptr<index_t>(), perm.data_ptr<int64_t>(),
          grad_x_dst.data_ptr<scalar_t>(),
          edge_attr.defined() ? grad_edge_attr.data_ptr<scalar_t>() : nullptr,
          Dbuf.data_ptr<acc_t>(), g_att_tasks.data_ptr<acc_t>(),
          edge_attr.defined() ? g_w_tasks.data_ptr<acc_t>() : nullptr, tasks,
          num_dst, negative_slope, drop);
      backward_src_kernel<scalar_t, index_t>(
          in, grad_out.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>(),
          Dbuf.data_ptr<acc_t>(), perm.data_ptr<int64_t>(),
          src_rowptr.data_ptr<int64_t>(), src_slot.data_ptr<int64_t>(),
          src_row.data_ptr<index_t>(), grad_x_src.data_ptr<scalar_t>(),
          num_src, negative_slope, drop);
    });
    grad_att = g_att_tasks.sum(0).to(x_src.scalar_type());
    if (edge_attr.defined())
      grad_weight = g_w_tasks.sum(0).to(x_src.scalar_type());
  });
  return {grad_x_src, grad_x_dst, grad_att, grad_edge_attr, grad_weight};
}

}  // namespace gnf
