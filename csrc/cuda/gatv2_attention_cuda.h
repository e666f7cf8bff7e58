#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace gnf {

// Returns (out, lse); see csrc/gatv2_attention.cpp.
std::tuple<at::Tensor, at::Tensor> gatv2_attention_forward_cuda(
    const at::Tensor& x_src, const at::Tensor& x_dst, const at::Tensor& att,
    const std::optional<at::Tensor>& edge_attr,
    const std::optional<at::Tensor>& edge_weight, const at::Tensor& rowptr,
    const at::Tensor& col, const at::Tensor& perm,
    const at::Tensor& src_rowptr, const at::Tensor& src_slot,
    const at::Tensor& src_row, double negative_slope, double dropout,
    int64_t seed);

// Returns (grad_x_src, grad_x_dst, grad_att, grad_edge_attr,
// grad_edge_weight).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
gatv2_attention_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& x_src,
    const at::Tensor& x_dst, const at::Tensor& att,
    const std::optional<at::Tensor>& edge_attr,
    const std::optional<at::Tensor>& edge_weight, const at::Tensor& out,
    const at::Tensor& lse, const at::Tensor& rowptr, const at::Tensor& col,
    const at::Tensor& perm, const at::Tensor& src_rowptr,
    const at::Tensor& src_slot, const at::Tensor& src_row,
    double negative_slope, double dropout, int64_t seed);

}  // namespace gnf
