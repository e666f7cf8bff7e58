#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace gnf {

// Returns (out, lse); see csrc/gat_attention.cpp.
std::tuple<at::Tensor, at::Tensor> gat_attention_forward_cpu(
    const at::Tensor& x, const at::Tensor& alpha_src,
    const at::Tensor& alpha_dst, const std::optional<at::Tensor>& alpha_edge,
    const at::Tensor& rowptr, const at::Tensor& col, const at::Tensor& perm,
    const at::Tensor& src_rowptr, const at::Tensor& src_slot,
    const at::Tensor& src_row, double negative_slope, double dropout,
    int64_t seed);

// Returns (grad_x, grad_alpha_src, grad_alpha_dst, grad_alpha_edge).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>
gat_attention_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x,
    const at::Tensor& alpha_src, const at::Tensor& alpha_dst,
    const std::optional<at::Tensor>& alpha_edge, const at::Tensor& out,
    const at::Tensor& lse, const at::Tensor& rowptr, const at::Tensor& col,
    const at::Tensor& perm, const at::Tensor& src_rowptr,
    const at::Tensor& src_slot, const at::Tensor& src_row,
    double negative_slope, double dropout, int64_t seed);

}  // namespace gnf
