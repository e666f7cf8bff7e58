#include "cpu/affine_coupling_cpu.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>

#include "affine_coupling.h"
#include "affine_coupling_math.h"

namespace gnf {
namespace {

// exp/tanh for the shared element math (affine_coupling_math.h).
struct CpuMath {
  template <typename T>
  static T exp(T v) {
    return std::exp(v);
  }
  // tanh via one exp: scalar std::tanh is several times slower than exp and
  // dominates the kernel. Exact limits: exp overflow -> 1, underflow -> -1;
  // absolute error stays at a few ulp of 1, which is what the clamp needs.
  template <typename T>
  static T tanh(T u) {
    return T(1) - T(2) / (std::exp(T(2) * u) + T(1));
  }
};

// Rows (nodes) per parallel chunk: about GRAIN_SIZE elements each.
inline int64_t row_grain(int64_t num_features) {
  return std::max<int64_t>(1, at::internal::GRAIN_SIZE /
                                  std::max<int64_t>(1, num_features));
}

template <typename scalar_t>
void forward_kernel(const scalar_t* x, const scalar_t* s_raw,
                    const scalar_t* t, scalar_t* out, double* row_sum,
                    int64_t N, int64_t F, double clamp, bool inverse) {
  using opmath_t = at::opmath_type<scalar_t>;
  const bool use_clamp = clamp > 0;
  const opmath_t c = static_cast<opmath_t>(clamp);
  at::parallel_for(0, N, row_grain(F), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      double acc = 0;  // row sum of s in double: F can be large
      for (int64_t j = i * F; j < (i + 1) * F; ++j) {
        const opmath_t s = soft_clamp<CpuMath>(
            static_cast<opmath_t>(s_raw[j]), c, use_clamp).s;
        acc += static_cast<double>(s);
        out[j] = static_cast<scalar_t>(affine_apply<CpuMath>(
            static_cast<opmath_t>(x[j]), s, static_cast<opmath_t>(t[j]),
            inverse));
      }
      row_sum[i] = inverse ? -acc : acc;
    }
  });
}

// grad_out and g_node may be null (undefined upstream gradients are zero).
template <typename scalar_t>
void backward_kernel(const scalar_t* grad_out, const scalar_t* data,
                     const scalar_t* s_raw, const scalar_t* g_node,
                     scalar_t* grad_in, scalar_t* grad_s_raw, int64_t N,
                     int64_t F, double clamp, bool inverse) {
  using opmath_t = at::opmath_type<scalar_t>;
  const bool use_clamp = clamp > 0;
  const opmath_t c = static_cast<opmath_t>(clamp);
  at::parallel_for(0, N, row_grain(F), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const opmath_t g = g_node ? static_cast<opmath_t>(g_node[i]) : 0;
      for (int64_t j = i * F; j < (i + 1) * F; ++j) {
        const ClampedScale<opmath_t> cs = soft_clamp<CpuMath>(
            static_cast<opmath_t>(s_raw[j]), c, use_clamp);
        const opmath_t go = grad_out ? static_cast<opmath_t>(grad_out[j]) : 0;
        const AffineGrads<opmath_t> r = affine_grads<CpuMath>(
            go, static_cast<opmath_t>(data[j]), g, cs, inverse);
        grad_in[j] = static_cast<scalar_t>(r.grad_in);
        grad_s_raw[j] = static_cast<scalar_t>(r.grad_s_raw);
      }
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> affine_coupling_forward_cpu(
    const at::Tensor& x, const at::Tensor& s_raw, const at::Tensor& t,
    const std::optional<at::Tensor>& batch, int64_t num_graphs, double clamp,
    bool inverse) {
  check_affine_coupling_forward(x, s_raw, t, batch, num_graphs);
  TORCH_CHECK(x.is_cpu(), "affine_coupling_forward_cpu: expected CPU tensors");
  const auto xc = x.contiguous(), sc = s_raw.contiguous(), tc = t.contiguous();
  const int64_t N = x.size(0), F = features_per_node(x);
  auto out = at::empty_like(xc);
  auto row_sum = at::empty({N}, x.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "affine_coupling_forward_cpu",
                             [&] {
                               forward_kernel<scalar_t>(
                                   xc.data_ptr<scalar_t>(),
                                   sc.data_ptr<scalar_t>(),
                                   tc.data_ptr<scalar_t>(),
                                   out.data_ptr<scalar_t>(),
                                   row_sum.data_ptr<double>(), N, F, clamp,
                                   inverse);
                             });
  return {out, reduce_per_graph(row_sum, batch, num_graphs, x.scalar_type())};
}

std::tuple<at::Tensor, at::Tensor> affine_coupling_backward_cpu(
    const std::optional<at::Tensor>& grad_out, const at::Tensor& data,
    const at::Tensor& s_raw, const std::optional<at::Tensor>& batch,
    const std::optional<at::Tensor>& grad_log_det, int64_t num_graphs,
    double clamp, bool inverse) {
  check_affine_coupling_backward(grad_out, data, s_raw, batch, grad_log_det,
                                 num_graphs);
  TORCH_CHECK(data.is_cpu(), "affine_coupling_backward_cpu: expected CPU "
              "tensors");
  const auto dc = data.contiguous(), sc = s_raw.contiguous();
  const at::Tensor go =
      grad_out.has_value() ? grad_out.value().contiguous() : at::Tensor();
  const at::Tensor g_node = gather_per_node(grad_log_det, batch, data.size(0));
  const int64_t N = data.size(0), F = features_per_node(data);
  auto grad_in = at::empty_like(dc);
  auto grad_s_raw = at::empty_like(dc);
  AT_DISPATCH_FLOATING_TYPES(
      data.scalar_type(), "affine_coupling_backward_cpu", [&] {
        backward_kernel<scalar_t>(
            go.defined() ? go.data_ptr<scalar_t>() : nullptr,
            dc.data_ptr<scalar_t>(), sc.data_ptr<scalar_t>(),
            g_node.defined() ? g_node.data_ptr<scalar_t>() : nullptr,
            grad_in.data_ptr<scalar_t>(), grad_s_raw.data_ptr<scalar_t>(), N,
            F, clamp, inverse);
      });
  return {grad_in, grad_s_raw};
}

}  // namespace gnf
