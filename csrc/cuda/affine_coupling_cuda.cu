#include "cuda/affine_coupling_cuda.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
// Same function as at::cuda::getCurrentCUDAStream(), without pulling in
// the cuBLAS/cuSPARSE headers of ATen/cuda/CUDAContext.h.
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <limits>

#include "affine_coupling.h"
#include "affine_coupling_math.h"

namespace gnf {
namespace {

constexpr int kWarpSize = 32;
constexpr int kRowsPerBlock = 8;  // one warp per row (node)
constexpr int kThreads = 256;     // backward: plain elementwise kernel

// exp/tanh for the shared element math (affine_coupling_math.h). Explicit
// float/double overloads: never silently compute in double.
struct DeviceMath {
  static __device__ __forceinline__ float exp(float v) { return ::expf(v); }
  static __device__ __forceinline__ double exp(double v) { return ::exp(v); }
  static __device__ __forceinline__ float tanh(float v) { return ::tanhf(v); }
  static __device__ __forceinline__ double tanh(double v) {
    return ::tanh(v);
  }
};

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2)
    v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// blockDim = (32, kRowsPerBlock): warp threadIdx.y handles one row.
template <typename scalar_t, typename acc_t>
__global__ void forward_kernel(const scalar_t* __restrict__ x,
                               const scalar_t* __restrict__ s_raw,
                               const scalar_t* __restrict__ t,
                               scalar_t* __restrict__ out,
                               acc_t* __restrict__ row_sum, int64_t N,
                               int64_t F, acc_t c, bool inverse) {
  const int64_t row =
      static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.y;
  if (row >= N) return;  // uniform per warp, so the shuffle below is safe
  const int64_t base = row * F;
  const bool use_clamp = c > acc_t(0);
  acc_t acc = 0;
  for (int64_t j = threadIdx.x; j < F; j += kWarpSize) {
    const acc_t s = soft_clamp<DeviceMath>(
        static_cast<acc_t>(s_raw[base + j]), c, use_clamp).s;
    acc += s;
    out[base + j] = static_cast<scalar_t>(affine_apply<DeviceMath>(
        static_cast<acc_t>(x[base + j]), s, static_cast<acc_t>(t[base + j]),
        inverse));
  }
  acc = warp_sum(acc);
  if (threadIdx.x == 0) row_sum[row] = inverse ? -acc : acc;
}

// grad_out and g_node may be null (undefined upstream gradients are zero).
template <typename scalar_t, typename acc_t>
__global__ void backward_kernel(const scalar_t* __restrict__ grad_out,
                                const scalar_t* __restrict__ data,
                                const scalar_t* __restrict__ s_raw,
                                const scalar_t* __restrict__ g_node,
                                scalar_t* __restrict__ grad_in,
                                scalar_t* __restrict__ grad_s_raw,
                                int64_t numel, int64_t F, acc_t c,
                                bool inverse) {
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  const bool use_clamp = c > acc_t(0);
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       k < numel; k += stride) {
    const ClampedScale<acc_t> cs = soft_clamp<DeviceMath>(
        static_cast<acc_t>(s_raw[k]), c, use_clamp);
    const acc_t go = grad_out ? static_cast<acc_t>(grad_out[k]) : acc_t(0);
    const acc_t g = g_node ? static_cast<acc_t>(g_node[k / F]) : acc_t(0);
    const AffineGrads<acc_t> r = affine_grads<DeviceMath>(
        go, static_cast<acc_t>(data[k]), g, cs, inverse);
    grad_in[k] = static_cast<scalar_t>(r.grad_in);
    grad_s_raw[k] = static_cast<scalar_t>(r.grad_s_raw);
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> affine_coupling_forward_cuda(
    const at::Tensor& x, const at::Tensor& s_raw, const at::Tensor& t,
    const std::optional<at::Tensor>& batch, int64_t num_graphs, double clamp,
    bool inverse) {
  check_affine_coupling_forward(x, s_raw, t, batch, num_graphs);
  TORCH_CHECK(x.is_cuda(), "affine_coupling_forward_cuda: expected CUDA "
              "tensors");
  const c10::cuda::CUDAGuard device_guard(x.device());
  const auto xc = x.contiguous(), sc = s_raw.contiguous(), tc = t.contiguous();
  const int64_t N = x.size(0), F = features_per_node(x);
  auto out = at::empty_like(xc);
  // Row sums in the accumulation type: float for half/bfloat16/float.
  const auto acc_dtype =
      x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto row_sum = at::empty({N}, x.options().dtype(acc_dtype));
  if (N > 0) {
    const int64_t blocks = (N + kRowsPerBlock - 1) / kRowsPerBlock;
    TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(),
                "affine_coupling_forward_cuda: too many nodes");
    const dim3 threads(kWarpSize, kRowsPerBlock);
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::ScalarType::Half, at::ScalarType::BFloat16, x.scalar_type(),
        "affine_coupling_forward_cuda", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          forward_kernel<scalar_t, acc_t>
              <<<static_cast<unsigned int>(blocks), threads, 0, stream>>>(
                  xc.data_ptr<scalar_t>(), sc.data_ptr<scalar_t>(),
                  tc.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
                  row_sum.data_ptr<acc_t>(), N, F, static_cast<acc_t>(clamp),
                  inverse);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
  }
  return {out, reduce_per_graph(row_sum, batch, num_graphs, x.scalar_type())};
}

std::tuple<at::Tensor, at::Tensor> affine_coupling_backward_cuda(
    const std::optional<at::Tensor>& grad_out, const at::Tensor& data,
    const at::Tensor& s_raw, const std::optional<at::Tensor>& batch,
    const std::optional<at::Tensor>& grad_log_det, int64_t num_graphs,
    double clamp, bool inverse) {
  check_affine_coupling_backward(grad_out, data, s_raw, batch, grad_log_det,
                                 num_graphs);
  TORCH_CHECK(data.is_cuda(), "affine_coupling_backward_cuda: expected CUDA "
              "tensors");
  const c10::cuda::CUDAGuard device_guard(data.device());
  const auto dc = data.contiguous(), sc = s_raw.contiguous();
  const at::Tensor go =
      grad_out.has_value() ? grad_out.value().contiguous() : at::Tensor();
  const at::Tensor g_node = gather_per_node(grad_log_det, batch, data.size(0));
  const int64_t numel = dc.numel(), F = features_per_node(data);
  auto grad_in = at::empty_like(dc);
  auto grad_s_raw = at::empty_like(dc);
  if (numel > 0) {
    // Grid-stride loop: cap the grid, each thread may do several elements.
    const int64_t blocks =
        std::min<int64_t>((numel + kThreads - 1) / kThreads, 65535 * 8);
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::ScalarType::Half, at::ScalarType::BFloat16, data.scalar_type(),
        "affine_coupling_backward_cuda", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          backward_kernel<scalar_t, acc_t>
              <<<static_cast<unsigned int>(blocks), kThreads, 0, stream>>>(
                  go.defined() ? go.data_ptr<scalar_t>() : nullptr,
                  dc.data_ptr<scalar_t>(), sc.data_ptr<scalar_t>(),
                  g_node.defined() ? g_node.data_ptr<scalar_t>() : nullptr,
                  grad_in.data_ptr<scalar_t>(),
                  grad_s_raw.data_ptr<scalar_t>(), numel, F,
                  static_cast<acc_t>(clamp), inverse);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
  }
  return {grad_in, grad_s_raw};
}

}  // namespace gnf
