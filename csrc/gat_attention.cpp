// Fused GAT attention aggregation over a destination-sorted (CSR) graph.
//
// For every edge e = (j -> i) in CSR slot s (perm[s] = original edge id e,
// col[s] = j) and head h:
//   s_e   = leaky_relu(alpha_src[j,h] + alpha_dst[i,h] (+ alpha_edge[e,h]))
//   a_e   = softmax of s over the incoming edges of i (two-pass max / sum)
//   out_i = sum_e a_e * k_e * x[j,h,:],   k_e = keep(seed,e,h) / (1 - p)
// and lse[i,h] = max + log(sum exp(s - max)) (0 for nodes without edges,
// whose output is 0).
//
// gat_attention_forward(...) -> (out [num_dst,H,C], lse [num_dst,H])
// gat_attention_backward(grad_out, ...) -> (grad_x, grad_alpha_src,
//     grad_alpha_dst, grad_alpha_edge ([E,H]; an empty [0] tensor when
//     alpha_edge is None)).
// The backward recomputes every score from the inputs and lse; only
// transient per-edge scratch lives during the call. Dropout is active iff
// dropout > 0 (the caller passes 0 in eval mode).
//
// The forward takes the whole CSR (also the by-source view it does not
// use), so that the autograd formula registered in Python with
// torch.library.register_autograd finds everything the backward needs among
// the forward's inputs, and so that one call validates the whole graph.
// The CPU kernels validate every index they follow (rowptr monotone from 0
// to E, col/src_row in range, perm/src_slot permutations, both views
// consistent) and raise a ValueError otherwise; the CUDA kernels guard every
// load instead (no device sync), so neither reads out of bounds whatever the
// Python side checked.
//
// Autograd, fake (meta) kernels and opcheck: torch_geometric_gnf/ops/
// gat_attention.py.

#include <torch/library.h>

#include "cpu/gat_attention_cpu.h"

#ifdef WITH_CUDA
#include "cuda/gat_attention_cuda.h"
#endif

// The library itself is defined in affine_coupling.cpp (only once allowed).
TORCH_LIBRARY_FRAGMENT(torch_geometric_gnf, m) {
  m.def(
      "gat_attention_forward(Tensor x, Tensor alpha_src, Tensor alpha_dst, "
      "Tensor? alpha_edge, Tensor rowptr, Tensor col, Tensor perm, "
      "Tensor src_rowptr, Tensor src_slot, Tensor src_row, "
      "float negative_slope, float dropout, int seed) -> (Tensor, Tensor)");
  m.def(
      "gat_attention_backward(Tensor grad_out, Tensor x, Tensor alpha_src, "
      "Tensor alpha_dst, Tensor? alpha_edge, Tensor out, Tensor lse, "
      "Tensor rowptr, Tensor col, Tensor perm, Tensor src_rowptr, "
      "Tensor src_slot, Tensor src_row, float negative_slope, float dropout, "
      "int seed) -> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(torch_geometric_gnf, CPU, m) {
  m.impl("gat_attention_forward", &gnf::gat_attention_forward_cpu);
  m.impl("gat_attention_backward", &gnf::gat_attention_backward_cpu);
}

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(torch_geometric_gnf, CUDA, m) {
  m.impl("gat_attention_forward", &gnf::gat_attention_forward_cuda);
  m.impl("gat_attention_backward", &gnf::gat_attention_backward_cuda);
}
#endif
