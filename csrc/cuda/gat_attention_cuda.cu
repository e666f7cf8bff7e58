// CUDA kernels of the fused GAT attention op (see csrc/gat_attention.cpp).
//
// One warp per (destination node, head).
// forward: lanes split the incoming edges for the row max and the softmax
//   denominator (warp reductions), then split the C channels for the
//   weighted sum (coalesced reads of x[j, h, :]); float accumulation for
//   half/bfloat16/float, double for double.
// backward: D = <g_i, out_i> and each edge's <g_i, x_j> by warp reduction,
//   grad alpha_dst and grad alpha_edge written by the owning warp, grad x and
//   grad alpha_src scattered with atomics into opmath-typed buffers (the
//   by-source CSR is not needed here).
// Dropout uses the counter hash of gat_attention_math.h, the same bits as
// the CPU kernel and the Python reference.

#include "cuda/gat_attention_cuda.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/Atomic.cuh>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
// Same function as at::cuda::getCurrentCUDAStream(), without pulling in
// the cuBLAS/cuSPARSE headers of ATen/cuda/CUDAContext.h.
#include <c10/cuda/CUDAStream.h>

#include <cmath>

#include "cuda/warp_utils.cuh"
#include "gat_attention.h"
#include "gat_attention_math.h"

namespace gnf {
namespace {

using namespace cuda;  // warp_utils.cuh

template <typename scalar_t, typename acc_t, typename index_t>
__device__ __forceinline__ acc_t raw_score(const scalar_t* a_src,
                                           acc_t ad, const scalar_t* a_edge,
                                           index_t j, int64_t e, int64_t H,
                                           int64_t h) {
  acc_t raw = static_cast<acc_t>(a_src[static_cast<int64_t>(j) * H + h]) + ad;
  if (a_edge != nullptr) raw += static_cast<acc_t>(a_edge[e * H + h]);
  return raw;
}

// VEC channels per lane per chunk (chunks of 32 * VEC channels).
template <typename scalar_t, typename index_t, int VEC>
__global__ void forward_kernel(const scalar_t* __restrict__ x,
                               const scalar_t* __restrict__ a_src,
                               const scalar_t* __restrict__ a_dst,
                               const scalar_t* __restrict__ a_edge,
                               const int64_t* __restrict__ rowptr,
                               const index_t* __restrict__ col,
                               const int64_t* __restrict__ perm,
                               scalar_t* __restrict__ out,
                               scalar_t* __restrict__ lse, int64_t num_dst,
                               int64_t num_src, int64_t E, int64_t H,
                               int64_t C,
                               at::opmath_type<scalar_t> slope,
                               DropoutArgs<at::opmath_type<scalar_t>> drop) {
  using acc_t = at::opmath_type<scalar_t>;
  const int lane = threadIdx.x % kWarpSize;
  const int64_t warp =
      static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarpSize;
  if (warp >= num_dst * H) return;  // whole warp exits together
  const int64_t i = warp / H, h = warp % H;
  const int64_t r0 = gat_clamp_offset(rowptr[i], 0, E);
  const int64_t r1 = gat_clamp_offset(rowptr[i + 1], r0, E);
  scalar_t* out_ih = out + warp * C;
  if (r0 == r1) {  // no incoming edge: exact zero
    for (int64_t c = lane; c < C; c += kWarpSize) out_ih[c] = scalar_t(0);
    if (lane == 0) lse[warp] = scalar_t(0);
    return;
  }
  const acc_t ad = static_cast<acc_t>(a_dst[warp]);
  acc_t m = -static_cast<acc_t>(INFINITY);
  for (int64_t s = r0 + lane; s < r1; s += kWarpSize) {
    if (!gat_edge_in_range(col[s], perm[s], num_src, E)) continue;
    m = fmax(m, gat_leaky_relu(raw_score(a_src, ad, a_edge, col[s], perm[s],
                                         H, h), slope));
  }
  m = warp_max(m);
  acc_t l = 0;
  for (int64_t s = r0 + lane; s < r1; s += kWarpSize) {
    if (!gat_edge_in_range(col[s], perm[s], num_src, E)) continue;
    l += dev_exp(gat_leaky_relu(raw_score(a_src, ad, a_edge, col[s], perm[s],
                                          H, h), slope) - m);
  }
  l = warp_sum(l);
  const acc_t inv = acc_t(1) / l;
  for (int64_t c0 = 0; c0 < C; c0 += kWarpSize * VEC) {
    acc_t acc[VEC];
#pragma unroll
    for (int v = 0; v < VEC; ++v) acc[v] = 0;
    for (int64_t s = r0; s < r1; ++s) {  // same score in every lane
      const int64_t j = static_cast<int64_t>(col[s]);
      const int64_t e = perm[s];
      if (!gat_edge_in_range(j, e, num_src, E)) continue;  // warp-uniform
      acc_t w = dev_exp(gat_leaky_relu(raw_score(a_src, ad, a_edge, col[s], e,
                                                 H, h), slope) - m);
      if (drop.active)
        w = gat_keep(drop.key, e, H, h, drop.threshold) ? w * drop.scale
                                                        : acc_t(0);
      if (w == acc_t(0)) continue;
      const scalar_t* xj = x + (j * H + h) * C;
#pragma unroll
      for (int v = 0; v < VEC; ++v) {
        const int64_t c = c0 + v * kWarpSize + lane;
        if (c < C) acc[v] += w * static_cast<acc_t>(xj[c]);
      }
    }
#pragma unroll
    for (int v = 0; v < VEC; ++v) {
      const int64_t c = c0 + v * kWarpSize + lane;
      if (c < C) out_ih[c] = static_cast<scalar_t>(acc[v] * inv);
    }
  }
  if (lane == 0) lse[warp] = static_cast<scalar_t>(m + dev_log(l));
}

template <typename scalar_t, typename index_t>
__global__ void backward_kernel(
    const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ x,
    const scalar_t* __restrict__ a_src, const scalar_t* __restrict__ a_dst,
    const scalar_t* __restrict__ a_edge, const scalar_t* __restrict__ out,
    const scalar_t* __restrict__ lse, const int64_t* __restrict__ rowptr,
    const index_t* __restrict__ col, const int64_t* __restrict__ perm,
    at::opmath_type<scalar_t>* __restrict__ grad_x,
    at::opmath_type<scalar_t>* __restrict__ grad_a_src,
    scalar_t* __restrict__ grad_a_dst, scalar_t* __restrict__ grad_a_edge,
    int64_t num_dst, int64_t num_src, int64_t E, int64_t H, int64_t C,
    at::opmath_type<scalar_t> slope,
    DropoutArgs<at::opmath_type<scalar_t>> drop) {
  using acc_t = at::opmath_type<scalar_t>;
  const int lane = threadIdx.x % kWarpSize;
  const int64_t warp =
      static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarpSize;
  if (warp >= num_dst * H) return;
  const int64_t i = warp / H, h = warp % H;
  const int64_t r0 = gat_clamp_offset(rowptr[i], 0, E);
  const int64_t r1 = gat_clamp_offset(rowptr[i + 1], r0, E);
  if (r0 == r1) {
    if (lane == 0) grad_a_dst[warp] = scalar_t(0);
    return;
  }
  const scalar_t* g_ih = grad_out + warp * C;
  const scalar_t* o_ih = out + warp * C;
  acc_t D = 0;
  for (int64_t c = lane; c < C; c += kWarpSize)
    D += static_cast<acc_t>(g_ih[c]) * static_cast<acc_t>(o_ih[c]);
  D = warp_sum(D);
  const acc_t ad = static_cast<acc_t>(a_dst[warp]);
  const acc_t l = static_cast<acc_t>(lse[warp]);
  acc_t g_dst = 0;
  for (int64_t s = r0; s < r1; ++s) {
    const int64_t j = static_cast<int64_t>(col[s]);
    const int64_t e = perm[s];
    if (!gat_edge_in_range(j, e, num_src, E)) continue;  // warp-uniform
    const acc_t raw = raw_score(a_src, ad, a_edge, col[s], e, H, h);
    const acc_t a = dev_exp(gat_leaky_relu(raw, slope) - l);
    acc_t k = 1;
    if (drop.active)
      k = gat_keep(drop.key, e, H, h, drop.threshold) ? drop.scale : acc_t(0);
    const scalar_t* xj = x + (j * H + h) * C;
    acc_t dot = 0;
    if (k != acc_t(0)) {  // uniform across the warp
      for (int64_t c = lane; c < C; c += kWarpSize)
        dot += static_cast<acc_t>(g_ih[c]) * static_cast<acc_t>(xj[c]);
      dot = warp_sum(dot);
    }
    const acc_t g_raw = gat_grad_raw(a, k, dot, D, raw, slope);
    g_dst += g_raw;
    if (lane == 0) {
      gpuAtomicAdd(grad_a_src + j * H + h, g_raw);
      if (grad_a_edge != nullptr)
        grad_a_edge[e * H + h] = static_cast<scalar_t>(g_raw);
    }
    const acc_t w = a * k;
    if (w != acc_t(0)) {
      acc_t* gx = grad_x + (j * H + h) * C;
      for (int64_t c = lane; c < C; c += kWarpSize)
        gpuAtomicAdd(gx + c, w * static_cast<acc_t>(g_ih[c]));
    }
  }
  if (lane == 0) grad_a_dst[warp] = static_cast<scalar_t>(g_dst);
}

// Channels per lane per chunk: 1, 2 or 4 (chunks of up to 128 channels).
template <typename scalar_t, typename index_t>
void launch_forward(unsigned int blocks, cudaStream_t stream,
                    const scalar_t* x, const scalar_t* a_src,
                    const scalar_t* a_dst, const scalar_t* a_edge,
                    const int64_t* rowptr, const index_t* col,
                    const int64_t* perm, scalar_t* out, scalar_t* lse,
                    int64_t num_dst, int64_t num_src, int64_t E, int64_t H,
                    int64_t C,
                    at::opmath_type<scalar_t> slope,
                    DropoutArgs<at::opmath_type<scalar_t>> drop) {
  if (C <= kWarpSize)
    forward_kernel<scalar_t, index_t, 1><<<blocks, kThreads, 0, stream>>>(
        x, a_src, a_dst, a_edge, rowptr, col, perm, out, lse, num_dst, num_src,
        E, H, C, slope, drop);
  else if (C <= 2 * kWarpSize)
    forward_kernel<scalar_t, index_t, 2><<<blocks, kThreads, 0, stream>>>(
        x, a_src, a_dst, a_edge, rowptr, col, perm, out, lse, num_dst, num_src,
        E, H, C, slope, drop);
  else
    forward_kernel<scalar_t, index_t, 4><<<blocks, kThreads, 0, stream>>>(
        x, a_src, a_dst, a_edge, rowptr, col, perm, out, lse, num_dst, num_src,
        E, H, C, slope, drop);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> gat_attention_forward_cuda(
    const at::Tensor& x_in, const at::Tensor& alpha_src_in,
    const at::Tensor& alpha_dst_in,
    const std::optional<at::Tensor>& alpha_edge_in,
    const at::Tensor& rowptr_in, const at::Tensor& col_in,
    const at::Tensor& perm_in, const at::Tensor& src_rowptr,
    const at::Tensor& src_slot, const at::Tensor& src_row,
    double negative_slope, double dropout, int64_t seed) {
  check_gat_attention_inputs(x_in, alpha_src_in, alpha_dst_in, alpha_edge_in,
                             rowptr_in, col_in, perm_in, src_rowptr, src_slot,
                             src_row, dropout);
  TORCH_CHECK(x_in.is_cuda(), "gat_attention_forward_cuda: CUDA only");
  const c10::cuda::CUDAGuard device_guard(x_in.device());
  const auto x = x_in.contiguous();
  const auto alpha_src = alpha_src_in.contiguous();
  const auto alpha_dst = alpha_dst_in.contiguous();
  const auto rowptr = rowptr_in.contiguous();
  const auto col = col_in.contiguous();
  const auto perm = perm_in.contiguous();
  at::Tensor alpha_edge;
  if (alpha_edge_in.has_value()) alpha_edge = alpha_edge_in->contiguous();
  const int64_t num_dst = alpha_dst.size(0), H = x.size(1), C = x.size(2);
  auto out = at::empty({num_dst, H, C}, x.options());
  auto lse = at::empty({num_dst, H}, x.options());
  const int64_t warps = num_dst * H;
  if (warps == 0) return {out, lse};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "gat_attention_forward_cuda",
      [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const auto drop = make_dropout<acc_t>(dropout, seed);
        AT_DISPATCH_INDEX_TYPES(col.scalar_type(), "gat_attention_forward_cuda",
                                [&] {
          launch_forward<scalar_t, index_t>(
              num_blocks(warps), stream, x.data_ptr<scalar_t>(),
              alpha_src.data_ptr<scalar_t>(), alpha_dst.data_ptr<scalar_t>(),
              alpha_edge.defined() ? alpha_edge.data_ptr<scalar_t>() : nullptr,
              rowptr.data_ptr<int64_t>(), col.data_ptr<index_t>(),
              perm.data_ptr<int64_t>(), out.data_ptr<scalar_t>(),
              lse.data_ptr<scalar_t>(), num_dst, x.size(0), col.size(0), H,
              C, static_cast<acc_t>(negative_slope), drop);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>
gat_attention_backward_cuda(
    const at::Tensor& grad_out_in, const at::Tensor& x_in,
    const at::Tensor& alpha_src_in, const at::Tensor& alpha_dst_in,
    const std::optional<at::Tensor>& alpha_edge_in, const at::Tensor& out_in,
    const at::Tensor& lse_in, const at::Tensor& rowptr_in,
    const at::Tensor& col_in, const at::Tensor& perm_in,
    const at::Tensor& src_rowptr, const at::Tensor& src_slot,
    const at::Tensor& src_row, double negative_slope, double dropout,
    int64_t seed) {
  check_gat_attention_inputs(x_in, alpha_src_in, alpha_dst_in, alpha_edge_in,
                             rowptr_in, col_in, perm_in, src_rowptr, src_slot,
                             src_row, dropout);
  check_gat_attention_backward(grad_out_in, out_in, lse_in, x_in,
                               alpha_dst_in);
  TORCH_CHECK(x_in.is_cuda(), "gat_attention_backward_cuda: CUDA only");
  const c10::cuda::CUDAGuard device_guard(x_in.device());
  const auto grad_out = grad_out_in.contiguous();
  const auto x = x_in.contiguous();
  const auto alpha_src = alpha_src_in.contiguous();
  const auto alpha_dst = alpha_dst_in.contiguous();
  const auto out = out_in.contiguous();
  const auto lse = lse_in.contiguous();
  const auto rowptr = rowptr_in.contiguous();
  const auto col = col_in.contiguous();
  const auto perm = perm_in.contiguous();
  at::Tensor alpha_edge;
  if (alpha_edge_in.has_value()) alpha_edge = alpha_edge_in->contiguous();
  const int64_t num_dst = alpha_dst.size(0), H = x.size(1), C = x.size(2);
  const auto acc_type = at::toOpMathType(x.scalar_type());
  // Atomics accumulate in the op-math type (float for half/bfloat16).
  auto grad_x_acc = at::zeros(x.sizes(), x.options().dtype(acc_type));
  auto grad_src_acc = at::zeros(alpha_src.sizes(), x.options().dtype(acc_type));
  auto grad_alpha_dst = at::empty_like(alpha_dst);
  // zeros: an edge a bad graph leaves unvisited gets a defined gradient
  auto grad_alpha_edge = alpha_edge.defined() ? at::zeros_like(alpha_edge)
                                              : at::empty({0}, x.options());
  const int64_t warps = num_dst * H;
  if (warps > 0) {
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, x.scalar_type(),
        "gat_attention_backward_cuda", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          const auto drop = make_dropout<acc_t>(dropout, seed);
          AT_DISPATCH_INDEX_TYPES(
              col.scalar_type(), "gat_attention_backward_cuda", [&] {
                backward_kernel<scalar_t, index_t>
                    <<<num_blocks(warps), kThreads, 0, stream>>>(
                        grad_out.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
                        alpha_src.data_ptr<scalar_t>(),
                        alpha_dst.data_ptr<scalar_t>(),
                        alpha_edge.defined() ? alpha_edge.data_ptr<scalar_t>()
                                             : nullptr,
                        out.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>(),
                        rowptr.data_ptr<int64_t>(), col.data_ptr<index_t>(),
                        perm.data_ptr<int64_t>(), grad_x_acc.data_ptr<acc_t>(),
                        grad_src_acc.data_ptr<acc_t>(),
                        grad_alpha_dst.data_ptr<scalar_t>(),
                        alpha_edge.defined()
                            ? grad_alpha_edge.data_ptr<scalar_t>()
                            : nullptr,
                        num_dst, x.size(0), col.size(0), H, C,
                        static_cast<acc_t>(negative_slope), drop);
                C10_CUDA_KERNEL_LAUNCH_CHECK();
              });
        });
  }
  return {grad_x_acc.to(x.scalar_type()), grad_src_acc.to(x.scalar_type()),
          grad_alpha_dst, grad_alpha_edge};
}

}  // namespace gnf
