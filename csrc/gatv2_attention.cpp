// Fused GATv2 attention aggregation ("How Attentive are Graph Attention
// Networks?", Brody et al.) over a destination-sorted (CSR) graph.
//
// For every edge e = (j -> i) in CSR slot s (perm[s] = original edge id e,
// col[s] = j) and head h:
//   z_e   = x_src[j,h,:] + x_dst[i,h,:] (+ W_e[h] edge_attr[e])   (C-vector)
//   s_e   = att[h,:] . leaky_relu(z_e)
//   a_e   = softmax of s over the incoming edges of i
//   out_i = sum_e a_e * k_e * x_src[j,h,:],   k_e = keep(seed,e,h) / (1 - p)
// and lse[i,h] = max + log(sum exp(s - max)) (0 for nodes without edges,
// whose output is 0). W_e is lin_edge.weight [H*C, D]; the [E, H*C] edge
// projection is never formed (recomputed per edge), nor is any E x H x C
// tensor, in forward or backward.
//
// gatv2_attention_forward(...) -> (out [num_dst,H,C], lse [num_dst,H])
// gatv2_attention_backward(grad_out, ...) -> (grad_x_src, grad_x_dst,
//     grad_att, grad_edge_attr, grad_edge_weight (the last two are empty [0]
//     tensors without edge features)).
// The forward takes the by-source view (src_rowptr, src_slot, src_row) only
// so that autograd (registered in Python, torch_geometric_gnf/ops/
// gatv2_attention.py) can hand it to the backward.

#include <torch/library.h>

#include "cpu/gatv2_attention_cpu.h"

#ifdef WITH_CUDA
#include "cuda/gatv2_attention_cuda.h"
#endif

// The library itself is defined in affine_coupling.cpp (only once allowed).
TORCH_LIBRARY_FRAGMENT(torch_geometric_gnf, m) {
  m.def(
      "gatv2_attention_forward(Tensor x_src, Tensor x_dst, Tensor att, "
      "Tensor? edge_attr, Tensor? edge_weight, Tensor rowptr, Tensor col, "
      "Tensor perm, Tensor src_rowptr, Tensor src_slot, Tensor src_row, "
      "float negative_slope, float dropout, int seed) -> (Tensor, Tensor)");
  m.def(
      "gatv2_attention_backward(Tensor grad_out, Tensor x_src, Tensor x_dst, "
      "Tensor att, Tensor? edge_attr, Tensor? edge_weight, Tensor out, "
      "Tensor lse, Tensor rowptr, Tensor col, Tensor perm, Tensor src_rowptr, "
      "Tensor src_slot, Tensor src_row, float negative_slope, float dropout, "
      "int seed) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(torch_geometric_gnf, CPU, m) {
  m.impl("gatv2_attention_forward", &gnf::gatv2_attention_forward_cpu);
  m.impl("gatv2_attention_backward", &gnf::gatv2_attention_backward_cpu);
}

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(torch_geometric_gnf, CUDA, m) {
  m.impl("gatv2_attention_forward", &gnf::gatv2_attention_forward_cuda);
  m.impl("gatv2_attention_backward", &gnf::gatv2_attention_backward_cuda);
}
#endif
