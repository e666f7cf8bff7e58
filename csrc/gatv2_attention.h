// Shared declarations and input checks of the fused GATv2 attention op.
// Included by the CPU (.cpp) and CUDA (.cu) kernels, so it uses ATen only.
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include "csr_checks.h"

namespace gnf {

// The optional tensor made contiguous, or an undefined tensor.
inline at::Tensor contiguous_or_undefined(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->contiguous() : at::Tensor();
}

// Shapes, dtypes and devices of the forward inputs, and the index values the
// kernels read through (rowptr, col, perm; with `backward` also the
// by-source view), so that no kernel reads out of bounds.
inline void check_gatv2_attention_inputs(
    const at::Tensor& x_src, const at::Tensor& x_dst, const at::Tensor& att,
    const std::optional<at::Tensor>& edge_attr,
    const std::optional<at::Tensor>& edge_weight, const at::Tensor& rowptr,
    const at::Tensor& col, const at::Tensor& perm,
    const at::Tensor& src_rowptr, const at::Tensor& src_slot,
    const at::Tensor& src_row, double dropout, bool backward) {
  const char* op = "gatv2_attention";
  TORCH_CHECK(x_src.dim() == 3, op, ": x_src must be [num_src, heads, "
              "channels], got ", x_src.sizes());
  const int64_t num_src = x_src.size(0), H = x_src.size(1), C = x_src.size(2);
  TORCH_CHECK(H >= 1, op, ": need at least one head");
  TORCH_CHECK(at::isFloatingType(x_src.scalar_type()), op,
              ": expected a floating point dtype, got ", x_src.scalar_type());
  TORCH_CHECK(x_dst.dim() == 3 && x_dst.size(1) == H && x_dst.size(2) == C,
              op, ": x_dst must be [num_dst, ", H, ", ", C, "], got ",
              x_dst.sizes());
  TORCH_CHECK(att.dim() == 2 && att.size(0) == H && att.size(1) == C, op,
              ": att must be [", H, ", ", C, "], got ", att.sizes());
  const int64_t num_dst = x_dst.size(0), E = col.numel();
  TORCH_CHECK(edge_attr.has_value() == edge_weight.has_value(), op,
              ": edge_attr and edge_weight go together");
  std::vector<const at::Tensor*> floats = {&x_dst, &att};
  if (edge_attr.has_value()) {
    const auto& ea = edge_attr.value();
    const auto& we = edge_weight.value();
    TORCH_CHECK(ea.dim() == 2 && ea.size(0) == E, op,
                ": edge_attr must be [E = ", E, ", edge_dim], got ",
                ea.sizes());
    TORCH_CHECK(we.dim() == 2 && we.size(0) == H * C &&
                    we.size(1) == ea.size(1),
                op, ": edge_weight must be [", H * C, ", ", ea.size(1),
                "], got ", we.sizes());
    floats.push_back(&ea);
    floats.push_back(&we);
  }
  for (const at::Tensor* t : floats) {
    TORCH_CHECK(t->scalar_type() == x_src.scalar_type(), op,
                ": all float inputs must have the dtype of x_src (",
                x_src.scalar_type(), "), got ", t->scalar_type());
    TORCH_CHECK(t->device() == x_src.device(), op,
                ": all inputs must be on the device of x_src");
  }
  TORCH_CHECK(rowptr.dim() == 1 && rowptr.size(0) == num_dst + 1 &&
                  rowptr.scalar_type() == at::kLong,
              op, ": rowptr must be int64 of length num_dst + 1 = ",
              num_dst + 1, ", got ", rowptr.sizes(), " ", rowptr.scalar_type());
  TORCH_CHECK(col.dim() == 1 && (col.scalar_type() == at::kLong ||
                                 col.scalar_type() == at::kInt),
              op, ": col must be a 1-D int32/int64 tensor");
  TORCH_CHECK(perm.dim() == 1 && perm.size(0) == E &&
                  perm.scalar_type() == at::kLong,
              op, ": perm must be int64 of length E = ", E);
  TORCH_CHECK(src_rowptr.dim() == 1 && src_rowptr.size(0) == num_src + 1 &&
                  src_rowptr.scalar_type() == at::kLong,
              op, ": src_rowptr must be int64 of length num_src + 1 = ",
              num_src + 1);
  TORCH_CHECK(src_slot.dim() == 1 && src_slot.size(0) == E &&
                  src_slot.scalar_type() == at::kLong,
              op, ": src_slot must be int64 of length E = ", E);
  TORCH_CHECK(src_row.dim() == 1 && src_row.size(0) == E &&
                  src_row.scalar_type() == col.scalar_type(),
              op, ": src_row must have the length and dtype of col");
  for (const at::Tensor* t :
       {&rowptr, &col, &perm, &src_rowptr, &src_slot, &src_row})
    TORCH_CHECK(t->device() == x_src.device(), op,
                ": graph tensors must be on the device of x_src");
  TORCH_CHECK(dropout >= 0 && dropout <= 1, op,
              ": dropout must lie in [0, 1], got ", dropout);
  check_csr_offsets(rowptr, E, op, "rowptr");
  check_index_range(col, num_src, op, "col");
  check_index_range(perm, E, op, "perm");
  if (backward) {
    check_csr_offsets(src_rowptr, E, op, "src_rowptr");
    check_index_range(src_slot, E, op, "src_slot");
    check_index_range(src_row, num_dst, op, "src_row");
  }
}

inline void check_gatv2_attention_backward(const at::Tensor& grad_out,
                                           const at::Tensor& out,
                                           const at::Tensor& lse,
                                           const at::Tensor& x_dst) {
  const char* op = "gatv2_attention_backward";
  TORCH_CHECK(out.sizes() == x_dst.sizes() &&
                  out.scalar_type() == x_dst.scalar_type() &&
                  out.device() == x_dst.device(),
              op, ": out must be [num_dst, heads, channels] like x_dst, got ",
              out.sizes());
  TORCH_CHECK(grad_out.sizes() == out.sizes() &&
                  grad_out.scalar_type() == out.scalar_type() &&
                  grad_out.device() == out.device(),
              op, ": grad_out must match out");
  TORCH_CHECK(lse.dim() == 2 && lse.size(0) == out.size(0) &&
                  lse.size(1) == out.size(1) &&
                  lse.scalar_type() == out.scalar_type() &&
                  lse.device() == out.device(),
              op, ": lse must be [num_dst, heads]");
}

}  // namespace gnf
