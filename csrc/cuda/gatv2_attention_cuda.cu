// CUDA kernels of the fused GATv2 attention op (see csrc/gatv2_attention.cpp).
//
// One warp per (destination node, head); lanes split the C channels, in
// chunks of 32 * VEC channels (VEC = 1, 2, 4 by C).
// forward: per edge, the score sum_c att_c leaky(z_c) by a warp reduction
//   (all C channels), then an online softmax (running max, rescaled sum and
//   accumulator) and the weighted sum of x_src[j, h, chunk]; one pass over
//   the edges per chunk, so only C > 128 recomputes scores.
// backward: D = <g_i, out_i>; per edge the score, a, k, <g_i, x_j> and
//   ds = a (k <g_i, x_j> - D) (warp reductions), d z = ds att leaky'(z).
//   grad x_dst is owned by the warp (plain stores); grad x_src, grad att,
//   grad edge_attr and grad W_e are scattered with atomics into opmath-typed
//   buffers (grad att once per warp, from register partial sums).
// Dropout uses the counter hash of gat_attention_math.h: the same bits as
// the CPU kernel, the Python reference and the GAT op.

#include "cuda/gatv2_attention_cuda.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/Atomic.cuh>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cmath>
#include <type_traits>

#include "cuda/warp_utils.cuh"
#include "gatv2_attention.h"
#include "gatv2_attention_math.h"

namespace gnf {
namespace {

using namespace cuda;  // warp_utils.cuh

template <typename acc_t>
__device__ __forceinline__ acc_t keep_factor(const DropoutArgs<acc_t>& drop,
                                             int64_t e, int64_t H,
                                             int64_t h) {
  if (!drop.active) return acc_t(1);
  return gat_keep(drop.key, e, H, h, drop.threshold) ? drop.scale : acc_t(0);
}

// The inputs of one (edge, head) term, with pointers already offset.
template <typename scalar_t>
struct EdgeRows {
  const scalar_t* xs;  // x_src[j, h, :]
  const scalar_t* xd;  // x_dst[i, h, :]
  const scalar_t* att;  // att[h, :]
  const scalar_t* w;   // W_e[h * C, :] or nullptr
  const scalar_t* ea;  // edge_attr[e, :] or nullptr
};

template <typename scalar_t>
__device__ __forceinline__ EdgeRows<scalar_t> edge_rows(
    const scalar_t* x_src, const scalar_t* x_dst, const scalar_t* att,
    const scalar_t* edge_attr, const scalar_t* weight, int64_t j, int64_t i,
    int64_t e, int64_t H, int64_t h, int64_t C, int64_t D) {
  EdgeRows<scalar_t> r;
  r.xs = x_src + (j * H + h) * C;
  r.xd = x_dst + (i * H + h) * C;
  r.att = att + h * C;
  r.w = edge_attr != nullptr ? weight + h * C * D : nullptr;
  r.ea = edge_attr != nullptr ? edge_attr + e * D : nullptr;
  return r;
}

template <typename acc_t, typename scalar_t>
__device__ __forceinline__ acc_t channel_z(const EdgeRows<scalar_t>& r,
                                           int64_t c, int64_t D) {
  return gatv2_z<acc_t>(r.xs, r.xd, r.w != nullptr ? r.w + c * D : nullptr,
                        r.ea, D, c);
}

// Score of an edge/head over all C channels (lane-strided + warp sum).
template <typename acc_t, typename scalar_t>
__device__ __forceinline__ acc_t warp_score(const EdgeRows<scalar_t>& r,
                                            int64_t C, int64_t D,
                                            acc_t slope, int lane) {
  acc_t s = 0;
  for (int64_t c = lane; c < C; c += kWarpSize)
    s += static_cast<acc_t>(r.att[c]) *
         gat_leaky_relu(channel_z<acc_t>(r, c, D), slope);
  return warp_sum(s);
}

template <typename acc_t, typename scalar_t>
__device__ __forceinline__ acc_t warp_dot(const scalar_t* a,
                                          const scalar_t* b, int64_t C,
                                          int lane) {
  acc_t s = 0;
  for (int64_t c = lane; c < C; c += kWarpSize)
    s += static_cast<acc_t>(a[c]) * static_cast<acc_t>(b[c]);
  return warp_sum(s);
}

template <typename scalar_t, typename index_t, int VEC>
__global__ void forward_kernel(
    const scalar_t* __restrict__ x_src, const scalar_t* __restrict__ x_dst,
    const scalar_t* __restrict__ att, const scalar_t* __restrict__ edge_attr,
    const scalar_t* __restrict__ weight, const int64_t* __restrict__ rowptr,
    const index_t* __restrict__ col, const int64_t* __restrict__ perm,
    scalar_t* __restrict__ out, scalar_t* __restrict__ lse, int64_t num_dst,
    int64_t H, int64_t C, int64_t D, at::opmath_type<scalar_t> slope,
    DropoutArgs<at::opmath_type<scalar_t>> drop) {
  using acc_t = at::opmath_type<scalar_t>;
  const int lane = threadIdx.x % kWarpSize;
  const int64_t warp = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock +
                       threadIdx.x / kWarpSize;
  if (warp >= num_dst * H) return;  // whole warp exits together
  const int64_t i = warp / H, h = warp % H;
  const int64_t r0 = rowptr[i], r1 = rowptr[i + 1];
  scalar_t* out_ih = out + warp * C;
  if (r0 == r1) {  // no incoming edge: exact zero
    for (int64_t c = lane; c < C; c += kWarpSize) out_ih[c] = scalar_t(0);
    if (lane == 0) lse[warp] = scalar_t(0);
    return;
  }
  for (int64_t c0 = 0; c0 < C; c0 += kWarpSize * VEC) {
    acc_t m = -static_cast<acc_t>(INFINITY), l = 0, acc[VEC];
#pragma unroll
    for (int v = 0; v < VEC; ++v) acc[v] = 0;
    for (int64_t s = r0; s < r1; ++s) {
      const int64_t j = static_cast<int64_t>(col[s]);
      const int64_t e = perm[s];
      const auto r = edge_rows(x_src, x_dst, att, edge_attr, weight, j, i, e,
                               H, h, C, D);
      const acc_t sc = warp_score(r, C, D, slope, lane);  // same in all lanes
      if (sc > m) {  // online softmax: rescale what was summed so far
        const acc_t f = dev_exp(m - sc);
        l *= f;
#pragma unroll
        for (int v = 0; v < VEC; ++v) acc[v] *= f;
        m = sc;
      }
      const acc_t p = dev_exp(sc - m);
      l += p;
      const acc_t w = p * keep_factor(drop, e, H, h);
      if (w == acc_t(0)) continue;
#pragma unroll
      for (int v = 0; v < VEC; ++v) {
        const int64_t c = c0 + v * kWarpSize + lane;
        if (c < C) acc[v] += w * static_cast<acc_t>(r.xs[c]);
      }
    }
    const acc_t inv = acc_t(1) / l;
#pragma unroll
    for (int v = 0; v < VEC; ++v) {
      const int64_t c = c0 + v * kWarpSize + lane;
      if (c < C) out_ih[c] = static_cast<scalar_t>(acc[v] * inv);
    }
    if (c0 == 0 && lane == 0) lse[warp] = static_cast<scalar_t>(m + dev_log(l));
  }
}

template <typename scalar_t, typename index_t, int VEC>
__global__ void backward_kernel(
    const scalar_t* __restrict__ grad_out, const scalar_t* __restrict__ x_src,
    const scalar_t* __restrict__ x_dst, const scalar_t* __restrict__ att,
    const scalar_t* __restrict__ edge_attr,
    const scalar_t* __restrict__ weight, const scalar_t* __restrict__ out,
    const scalar_t* __restrict__ lse, const int64_t* __restrict__ rowptr,
    const index_t* __restrict__ col, const int64_t* __restrict__ perm,
    at::opmath_type<scalar_t>* __restrict__ grad_x_src,
    scalar_t* __restrict__ grad_x_dst,
    at::opmath_type<scalar_t>* __restrict__ grad_att,
    at::opmath_type<scalar_t>* __restrict__ grad_edge_attr,
    at::opmath_type<scalar_t>* __restrict__ grad_weight, int64_t num_dst,
    int64_t H, int64_t C, int64_t D, at::opmath_type<scalar_t> slope,
    DropoutArgs<at::opmath_type<scalar_t>> drop) {
  using acc_t = at::opmath_type<scalar_t>;
  const int lane = threadIdx.x % kWarpSize;
  const int64_t warp = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock +
                       threadIdx.x / kWarpSize;
  if (warp >= num_dst * H) return;
  const int64_t i = warp / H, h = warp % H;
  const int64_t r0 = rowptr[i], r1 = rowptr[i + 1];
  scalar_t* gxd_ih = grad_x_dst + warp * C;
  if (r0 == r1) {
    for (int64_t c = lane; c < C; c += kWarpSize) gxd_ih[c] = scalar_t(0);
    return;
  }
  const scalar_t* g_ih = grad_out + warp * C;
  const acc_t Di = warp_dot<acc_t>(g_ih, out + warp * C, C, lane);
  const acc_t l = static_cast<acc_t>(lse[warp]);
  for (int64_t c0 = 0; c0 < C; c0 += kWarpSize * VEC) {
    acc_t g_xd[VEC], g_att[VEC];
#pragma unroll
    for (int v = 0; v < VEC; ++v) g_xd[v] = g_att[v] = 0;
    for (int64_t s = r0; s < r1; ++s) {
      const int64_t j = static_cast<int64_t>(col[s]);
      const int64_t e = perm[s];
      const auto r = edge_rows(x_src, x_dst, att, edge_attr, weight, j, i, e,
                               H, h, C, D);
      const acc_t a = dev_exp(warp_score(r, C, D, slope, lane) - l);
      const acc_t k = keep_factor(drop, e, H, h);
      const acc_t dot =
          k != acc_t(0) ? warp_dot<acc_t>(g_ih, r.xs, C, lane) : acc_t(0);
      const acc_t ds = gat_grad_score(a, k, dot, Di);
      const acc_t w = a * k;
      acc_t dz[VEC];
#pragma unroll
      for (int v = 0; v < VEC; ++v) {
        const int64_t c = c0 + v * kWarpSize + lane;
        dz[v] = 0;
        if (c >= C) continue;
        const acc_t z = channel_z<acc_t>(r, c, D);
        dz[v] = ds * static_cast<acc_t>(r.att[c]) *
                gat_leaky_relu_grad(z, slope);
        g_xd[v] += dz[v];
        g_att[v] += ds * gat_leaky_relu(z, slope);
        const acc_t gs = dz[v] + w * static_cast<acc_t>(g_ih[c]);
        if (gs != acc_t(0)) gpuAtomicAdd(grad_x_src + (j * H + h) * C + c, gs);
        if (r.ea != nullptr)
          for (int64_t d = 0; d < D; ++d)
            gpuAtomicAdd(grad_weight + (h * C + c) * D + d,
                         dz[v] * static_cast<acc_t>(r.ea[d]));
      }
      if (r.ea != nullptr) {  // grad edge_attr[e, d]: sum over channels
        for (int64_t d = 0; d < D; ++d) {
          acc_t part = 0;
#pragma unroll
          for (int v = 0; v < VEC; ++v) {
            const int64_t c = c0 + v * kWarpSize + lane;
            if (c < C) part += dz[v] * static_cast<acc_t>(r.w[c * D + d]);
          }
          part = warp_sum(part);
          if (lane == 0) gpuAtomicAdd(grad_edge_attr + e * D + d, part);
        }
      }
    }
#pragma unroll
    for (int v = 0; v < VEC; ++v) {
      const int64_t c = c0 + v * kWarpSize + lane;
      if (c >= C) continue;
      gxd_ih[c] = static_cast<scalar_t>(g_xd[v]);
      gpuAtomicAdd(grad_att + h * C + c, g_att[v]);
    }
  }
}

// Calls fn(std::integral_constant<int, VEC>) with 1, 2 or 4 channels per
// lane per chunk (chunks of up to 128 channels).
template <typename F>
void dispatch_vec(int64_t C, const F& fn) {
  if (C <= kWarpSize)
    fn(std::integral_constant<int, 1>());
  else if (C <= 2 * kWarpSize)
    fn(std::integral_constant<int, 2>());
  else
    fn(std::integral_constant<int, 4>());
}

template <typename scalar_t>
const scalar_t* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<scalar_t>() : nullptr;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> gatv2_attention_forward_cuda(
    const at::Tensor& x_src_in, const at::Tensor& x_dst_in,
    const at::Tensor& att_in, const std::optional<at::Tensor>& edge_attr_in,
    const std::optional<at::Tensor>& edge_weight_in,
    const at::Tensor& rowptr_in, const at::Tensor& col_in,
    const at::Tensor& perm_in, const at::Tensor& src_rowptr,
    const at::Tensor& src_slot, const at::Tensor& src_row,
    double negative_slope, double dropout, int64_t seed) {
  TORCH_CHECK(x_src_in.is_cuda(), "gatv2_attention_forward_cuda: CUDA only");
  const c10::cuda::CUDAGuard device_guard(x_src_in.device());
  check_gatv2_attention_inputs(x_src_in, x_dst_in, att_in, edge_attr_in,
                               edge_weight_in, rowptr_in, col_in, perm_in,
                               src_rowptr, src_slot, src_row, dropout,
                               /*backward=*/false);
  const auto x_src = x_src_in.contiguous(), x_dst = x_dst_in.contiguous();
  const auto att = att_in.contiguous();
  const auto edge_attr = contiguous_or_undefined(edge_attr_in);
  const auto weight = contiguous_or_undefined(edge_weight_in);
  const auto rowptr = rowptr_in.contiguous(), col = col_in.contiguous();
  const auto perm = perm_in.contiguous();
  const int64_t num_dst = x_dst.size(0), H = x_src.size(1), C = x_src.size(2);
  const int64_t D = edge_attr.defined() ? edge_attr.size(1) : 0;
  auto out = at::empty({num_dst, H, C}, x_src.options());
  auto lse = at::empty({num_dst, H}, x_src.options());
  const int64_t warps = num_dst * H;
  if (warps == 0 || C == 0) {
    out.zero_();
    lse.zero_();
    return {out, lse};
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x_src.scalar_type(),
      "gatv2_attention_forward_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const auto drop = make_dropout<acc_t>(dropout, seed);
        AT_DISPATCH_INDEX_TYPES(
            col.scalar_type(), "gatv2_attention_forward_cuda", [&] {
              dispatch_vec(C, [&](auto vec) {
                forward_kernel<scalar_t, index_t, decltype(vec)::value>
                    <<<num_blocks(warps), kThreads, 0, stream>>>(
                        x_src.data_ptr<scalar_t>(), x_dst.data_ptr<scalar_t>(),
                        att.data_ptr<scalar_t>(),
                        ptr_or_null<scalar_t>(edge_attr),
                        ptr_or_null<scalar_t>(weight),
                        rowptr.data_ptr<int64_t>(), col.data_ptr<index_t>(),
                        perm.data_ptr<int64_t>(), out.data_ptr<scalar_t>(),
                        lse.data_ptr<scalar_t>(), num_dst, H, C, D,
                        static_cast<acc_t>(negative_slope), drop);
                C10_CUDA_KERNEL_LAUNCH_CHECK();
              });
            });
      });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
gatv2_attention_backward_cuda(
    const at::Tensor& grad_out_in, const at::Tensor& x_src_in,
    const at::Tensor& x_dst_in, const at::Tensor& att_in,
    const std::optional<at::Tensor>& edge_attr_in,
    const std::optional<at::Tensor>& edge_weight_in, const at::Tensor& out_in,
    const at::Tensor& lse_in, const at::Tensor& rowptr_in,
    const at::Tensor& col_in, const at::Tensor& perm_in,
    const at::Tensor& src_rowptr, const at::Tensor& src_slot,
    const at::Tensor& src_row, double negative_slope, double dropout,
    int64_t seed) {
  TORCH_CHECK(x_src_in.is_cuda(), "gatv2_attention_backward_cuda: CUDA only");
  const c10::cuda::CUDAGuard device_guard(x_src_in.device());
  // The CUDA backward does not read the by-source view; it is checked all
  // the same, like on CPU.
  check_gatv2_attention_inputs(x_src_in, x_dst_in, att_in, edge_attr_in,
                               edge_weight_in, rowptr_in, col_in, perm_in,
                               src_rowptr, src_slot, src_row, dropout,
                               /*backward=*/true);
  check_gatv2_attention_backward(grad_out_in, out_in, lse_in, x_dst_in);
  const auto grad_out = grad_out_in.contiguous();
  const auto x_src = x_src_in.contiguous(), x_dst = x_dst_in.contiguous();
  const auto att = att_in.contiguous();
  const auto edge_attr = contiguous_or_undefined(edge_attr_in);
  const auto weight = contiguous_or_undefined(edge_weight_in);
  const auto out = out_in.contiguous(), lse = lse_in.contiguous();
  const auto rowptr = rowptr_in.contiguous(), col = col_in.contiguous();
  const auto perm = perm_in.contiguous();
  const int64_t num_dst = x_dst.size(0), H = x_src.size(1), C = x_src.size(2);
  const int64_t D = edge_attr.defined() ? edge_attr.size(1) : 0;
  const auto acc_opts = x_src.options().dtype(at::toOpMathType(x_src.scalar_type()));
  // Atomics accumulate in the op-math type (float for half/bfloat16).
  auto grad_x_src = at::zeros(x_src.sizes(), acc_opts);
  auto grad_x_dst = at::zeros_like(x_dst);
  auto grad_att = at::zeros(att.sizes(), acc_opts);
  auto grad_edge_attr = edge_attr.defined() ? at::zeros(edge_attr.sizes(), acc_opts)
                                            : at::empty({0}, x_src.options());
  auto grad_weight = edge_attr.defined() ? at::zeros(weight.sizes(), acc_opts)
                                         : at::empty({0}, x_src.options());
  const int64_t warps = num_dst * H;
  if (warps > 0 && C > 0) {
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, x_src.scalar_type(),
        "gatv2_attention_backward_cuda", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          const auto drop = make_dropout<acc_t>(dropout, seed);
          AT_DISPATCH_INDEX_TYPES(
              col.scalar_type(), "gatv2_attention_backward_cuda", [&] {
                dispatch_vec(C, [&](auto vec) {
                  backward_kernel<scalar_t, index_t, decltype(vec)::value>
                      <<<num_blocks(warps), kThreads, 0, stream>>>(
                          grad_out.data_ptr<scalar_t>(),
                          x_src.data_ptr<scalar_t>(),
                          x_dst.data_ptr<scalar_t>(), att.data_ptr<scalar_t>(),
                          ptr_or_null<scalar_t>(edge_attr),
                          ptr_or_null<scalar_t>(weight),
                          out.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>(),
                          rowptr.data_ptr<int64_t>(), col.data_ptr<index_t>(),
                          perm.data_ptr<int64_t>(),
                          grad_x_src.data_ptr<acc_t>(),
                          grad_x_dst.data_ptr<scalar_t>(),
                          grad_att.data_ptr<acc_t>(),
                          edge_attr.defined() ? grad_edge_attr.data_ptr<acc_t>()
                                              : nullptr,
                          edge_attr.defined() ? grad_weight.data_ptr<acc_t>()
                                              : nullptr,
                          num_dst, H, C, D, static_cast<acc_t>(negative_slope),
                          drop);
                  C10_CUDA_KERNEL_LAUNCH_CHECK();
                });
              });
        });
  }
  const auto dtype = x_src.scalar_type();
  return {grad_x_src.to(dtype), grad_x_dst, grad_att.to(dtype),
          grad_edge_attr.to(dtype), grad_weight.to(dtype)};
}

}  // namespace gnf
