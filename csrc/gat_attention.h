// Shared declarations and input checks of the fused GAT attention op.
// Included by the CPU (.cpp) and CUDA (.cu) kernels, so it uses ATen only.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace gnf {

// Shapes/dtypes/devices of the by-source view (src_rowptr, src_slot,
// src_row), which forward and backward both take.
inline void check_gat_attention_source_view(const at::Tensor& x,
                                            const at::Tensor& col,
                                            const at::Tensor& src_rowptr,
                                            const at::Tensor& src_slot,
                                            const at::Tensor& src_row) {
  TORCH_CHECK(src_rowptr.dim() == 1 && src_rowptr.size(0) == x.size(0) + 1 &&
                  src_rowptr.scalar_type() == at::kLong,
              "gat_attention: src_rowptr must be int64 of length num_src + 1");
  TORCH_CHECK(src_slot.dim() == 1 && src_slot.size(0) == col.size(0) &&
                  src_slot.scalar_type() == at::kLong,
              "gat_attention: src_slot must be int64 of length E");
  TORCH_CHECK(src_row.dim() == 1 && src_row.size(0) == col.size(0) &&
                  src_row.scalar_type() == col.scalar_type(),
              "gat_attention: src_row must have the length and dtype of col");
  for (const at::Tensor* t : {&src_rowptr, &src_slot, &src_row})
    TORCH_CHECK(t->device() == x.device(),
                "gat_attention: graph tensors must be on the device of x");
}

// Shapes/dtypes/devices of the forward inputs. Index *values* are checked
// by the CPU kernels (validate_csr in cpu/gat_attention_cpu.cpp) and guarded
// by the CUDA kernels; the Python wrapper checks NaN/Inf.
inline void check_gat_attention_inputs(const at::Tensor& x,
                                       const at::Tensor& alpha_src,
                                       const at::Tensor& alpha_dst,
                                       const std::optional<at::Tensor>& alpha_edge,
                                       const at::Tensor& rowptr,
                                       const at::Tensor& col,
                                       const at::Tensor& perm,
                                       const at::Tensor& src_rowptr,
                                       const at::Tensor& src_slot,
                                       const at::Tensor& src_row,
                                       double dropout) {
  TORCH_CHECK(x.dim() == 3, "gat_attention: x must be [num_src, heads, "
              "channels], got ", x.sizes());
  const int64_t num_src = x.size(0), heads = x.size(1);
  TORCH_CHECK(heads >= 1, "gat_attention: need at least one head");
  TORCH_CHECK(at::isFloatingType(x.scalar_type()),
              "gat_attention: expected a floating point dtype, got ",
              x.scalar_type());
  TORCH_CHECK(alpha_src.dim() == 2 && alpha_src.size(0) == num_src &&
                  alpha_src.size(1) == heads,
              "gat_attention: alpha_src must be [", num_src, ", ", heads,
              "], got ", alpha_src.sizes());
  TORCH_CHECK(alpha_dst.dim() == 2 && alpha_dst.size(1) == heads,
              "gat_attention: alpha_dst must be [num_dst, ", heads, "], got ",
              alpha_dst.sizes());
  TORCH_CHECK(rowptr.dim() == 1 && rowptr.size(0) == alpha_dst.size(0) + 1 &&
                  rowptr.scalar_type() == at::kLong,
              "gat_attention: rowptr must be int64 of length num_dst + 1 = ",
              alpha_dst.size(0) + 1, ", got ", rowptr.sizes(), " ",
              rowptr.scalar_type());
  TORCH_CHECK(col.dim() == 1 && (col.scalar_type() == at::kLong ||
                                 col.scalar_type() == at::kInt),
              "gat_attention: col must be a 1-D int32/int64 tensor");
  const int64_t E = col.size(0);
  TORCH_CHECK(perm.dim() == 1 && perm.size(0) == E &&
                  perm.scalar_type() == at::kLong,
              "gat_attention: perm must be int64 of length E = ", E);
  TORCH_CHECK(E == 0 || num_src > 0, "gat_attention: edges without source "
              "nodes");
  for (const at::Tensor* t : {&alpha_src, &alpha_dst}) {
    TORCH_CHECK(t->scalar_type() == x.scalar_type(),
                "gat_attention: all float inputs must have the dtype of x (",
                x.scalar_type(), "), got ", t->scalar_type());
    TORCH_CHECK(t->device() == x.device(),
                "gat_attention: all inputs must be on the device of x");
  }
  if (alpha_edge.has_value()) {
    const auto& ae = alpha_edge.value();
    TORCH_CHECK(ae.dim() == 2 && ae.size(0) == E && ae.size(1) == heads,
                "gat_attention: alpha_edge must be [", E, ", ", heads,
                "], got ", ae.sizes());
    TORCH_CHECK(ae.scalar_type() == x.scalar_type() &&
                    ae.device() == x.device(),
                "gat_attention: alpha_edge must match x in dtype and device");
  }
  for (const at::Tensor* t : {&rowptr, &col, &perm})
    TORCH_CHECK(t->device() == x.device(),
                "gat_attention: graph tensors must be on the device of x");
  TORCH_CHECK(dropout >= 0 && dropout <= 1,
              "gat_attention: dropout must lie in [0, 1], got ", dropout);
  check_gat_attention_source_view(x, col, src_rowptr, src_slot, src_row);
}

inline void check_gat_attention_backward(const at::Tensor& grad_out,
                                         const at::Tensor& out,
                                         const at::Tensor& lse,
                                         const at::Tensor& x,
                                         const at::Tensor& alpha_dst) {
  const int64_t num_dst = alpha_dst.size(0);
  TORCH_CHECK(out.dim() == 3 && out.size(0) == num_dst &&
                  out.size(1) == x.size(1) && out.size(2) == x.size(2),
              "gat_attention_backward: out has the wrong shape ", out.sizes());
  TORCH_CHECK(grad_out.sizes() == out.sizes() &&
                  grad_out.scalar_type() == out.scalar_type() &&
                  grad_out.device() == out.device(),
              "gat_attention_backward: grad_out must match out");
  TORCH_CHECK(lse.dim() == 2 && lse.size(0) == num_dst &&
                  lse.size(1) == x.size(1) &&
                  lse.device() == out.device(),
              "gat_attention_backward: lse must be [num_dst, heads]");
}

}  // namespace gnf
