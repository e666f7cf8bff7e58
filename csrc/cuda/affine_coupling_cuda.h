#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace gnf {

// Returns (out, log_det[num_graphs]); see csrc/affine_coupling.cpp.
std::tuple<at::Tensor, at::Tensor> affine_coupling_forward_cuda(
    const at::Tensor& x, const at::Tensor& s_raw, const at::Tensor& t,
    const std::optional<at::Tensor>& batch, int64_t num_graphs, double clamp,
    bool inverse);

// Returns (grad_in, grad_s_raw); see csrc/affine_coupling.cpp.
std::tuple<at::Tensor, at::Tensor> affine_coupling_backward_cuda(
    const std::optional<at::Tensor>& grad_out, const at::Tensor& data,
    const at::Tensor& s_raw, const std::optional<at::Tensor>& batch,
    const std::optional<at::Tensor>& grad_log_det, int64_t num_graphs,
    double clamp, bool inverse);

}  // namespace gnf
