// Shared declarations and input checks for the affine coupling op.
// Included by the CPU (.cpp) and CUDA (.cu) kernels, so it uses ATen only.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace gnf {

// Checks shared by the forward op and its CPU/CUDA kernels.
inline void check_affine_coupling_forward(const at::Tensor& x,
                                          const at::Tensor& s_raw,
                                          const at::Tensor& t,
                                          const std::optional<at::Tensor>& batch,
                                          int64_t num_graphs) {
  TORCH_CHECK(x.dim() >= 1, "affine_coupling: x must have at least one dim "
              "(nodes on dim 0), got a 0-dim tensor");
  TORCH_CHECK(s_raw.sizes() == x.sizes() && t.sizes() == x.sizes(),
              "affine_coupling: x, s_raw and t must have the same shape, got ",
              x.sizes(), ", ", s_raw.sizes(), " and ", t.sizes());
  TORCH_CHECK(s_raw.scalar_type() == x.scalar_type() &&
                  t.scalar_type() == x.scalar_type(),
              "affine_coupling: x, s_raw and t must have the same dtype, got ",
              x.scalar_type(), ", ", s_raw.scalar_type(), " and ",
              t.scalar_type());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()),
              "affine_coupling: expected a floating point dtype, got ",
              x.scalar_type());
  TORCH_CHECK(s_raw.device() == x.device() && t.device() == x.device(),
              "affine_coupling: x, s_raw and t must be on the same device");
  TORCH_CHECK(num_graphs >= 0, "affine_coupling: num_graphs must be >= 0, got ",
              num_graphs);
  if (batch.has_value()) {
    const auto& b = batch.value();
    TORCH_CHECK(b.dim() == 1 && b.size(0) == x.size(0),
                "affine_coupling: batch must be 1-D of length N=", x.size(0),
                ", got shape ", b.sizes());
    TORCH_CHECK(b.scalar_type() == at::kLong || b.scalar_type() == at::kInt,
                "affine_coupling: batch must be int32 or int64, got ",
                b.scalar_type());
    TORCH_CHECK(b.device() == x.device(),
                "affine_coupling: batch must be on the same device as x");
  } else {
    // Without batch every node belongs to graph 0, which must exist.
    TORCH_CHECK(x.size(0) == 0 || num_graphs >= 1,
                "affine_coupling: num_graphs must be >= 1 when batch is None");
  }
}

inline void check_affine_coupling_backward(
    const std::optional<at::Tensor>& grad_out, const at::Tensor& data,
    const at::Tensor& s_raw, const std::optional<at::Tensor>& batch,
    const std::optional<at::Tensor>& grad_log_det, int64_t num_graphs) {
  check_affine_coupling_forward(data, s_raw, data, batch, num_graphs);
  if (grad_out.has_value()) {
    const auto& g = grad_out.value();
    TORCH_CHECK(g.sizes() == data.sizes() &&
                    g.scalar_type() == data.scalar_type() &&
                    g.device() == data.device(),
                "affine_coupling_backward: grad_out must match data in shape, "
                "dtype and device");
  }
  if (grad_log_det.has_value()) {
    const auto& g = grad_log_det.value();
    TORCH_CHECK(g.dim() == 1 && g.size(0) == num_graphs &&
                    g.scalar_type() == data.scalar_type() &&
                    g.device() == data.device(),
                "affine_coupling_backward: grad_log_det must be 1-D of length "
                "num_graphs=", num_graphs, " with the dtype/device of data, "
                "got shape ", g.sizes());
  }
}

// Number of features per node: product of all dims but the first (1 for 1-D).
inline int64_t features_per_node(const at::Tensor& x) {
  int64_t f = 1;
  for (int64_t d = 1; d < x.dim(); ++d) f *= x.size(d);
  return f;
}

// Sums per-node values `row_sum` [N] into graphs: a [G] tensor of `dtype`.
// index_add_ keeps the reduction simple (and deterministic on CPU).
inline at::Tensor reduce_per_graph(const at::Tensor& row_sum,
                                   const std::optional<at::Tensor>& batch,
                                   int64_t num_graphs, at::ScalarType dtype) {
  auto log_det = at::zeros({num_graphs}, row_sum.options());
  if (row_sum.numel() > 0) {
    if (batch.has_value())
      log_det.index_add_(0, batch.value(), row_sum);
    else
      log_det.narrow(0, 0, 1).add_(row_sum.sum());
  }
  return log_det.to(dtype);
}

// Per-node upstream gradient of log_det: grad_log_det[batch[i]], [N], or an
// undefined tensor when there is no such gradient.
inline at::Tensor gather_per_node(const std::optional<at::Tensor>& grad_log_det,
                                  const std::optional<at::Tensor>& batch,
                                  int64_t num_nodes) {
  if (!grad_log_det.has_value() || num_nodes == 0) return at::Tensor();
  const auto& g = grad_log_det.value();
  if (batch.has_value()) return g.index_select(0, batch.value()).contiguous();
  return g.narrow(0, 0, 1).expand({num_nodes}).contiguous();
}

}  // namespace gnf
