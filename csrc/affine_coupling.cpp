// Fused elementwise affine coupling with per-graph log-determinant.
//
// Nodes are on dim 0 of x, s_raw, t (all of shape [N, *]); batch[i] is the
// graph of node i (None: all nodes in graph 0). With clamp c > 0 the scale is
// soft-clamped, s = c * tanh(s_raw / c); with c <= 0, s = s_raw.
//
//   forward:  y = x * exp(s) + t,     log_det[g] =  sum_{i: batch[i]=g} sum s
//   inverse:  x = (y - t) * exp(-s),  log_det[g] = -sum_{i: batch[i]=g} sum s
//
// affine_coupling_backward(grad_out, data, ...) -> (grad_in, grad_s_raw)
// where `data` is x in both modes: the forward *input* (forward mode) or the
// inverse *output* (inverse mode), so y never has to be stored. grad_out and
// grad_log_det may be None (= zero). grad_t is grad_out (forward) or
// -grad_in (inverse) and is formed by the caller.
//
// Autograd is wired in Python (torch_geometric_gnf/ops/affine_coupling.py).

#include <torch/library.h>

#include "cpu/affine_coupling_cpu.h"

#ifdef WITH_CUDA
#include "cuda/affine_coupling_cuda.h"
#endif

TORCH_LIBRARY(torch_geometric_gnf, m) {
  m.def(
      "affine_coupling_forward(Tensor x, Tensor s_raw, Tensor t, "
      "Tensor? batch, int num_graphs, float clamp, bool inverse) "
      "-> (Tensor, Tensor)");
  m.def(
      "affine_coupling_backward(Tensor? grad_out, Tensor data, Tensor s_raw, "
      "Tensor? batch, Tensor? grad_log_det, int num_graphs, float clamp, "
      "bool inverse) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(torch_geometric_gnf, CPU, m) {
  m.impl("affine_coupling_forward", &gnf::affine_coupling_forward_cpu);
  m.impl("affine_coupling_backward", &gnf::affine_coupling_backward_cpu);
}

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(torch_geometric_gnf, CUDA, m) {
  m.impl("affine_coupling_forward", &gnf::affine_coupling_forward_cuda);
  m.impl("affine_coupling_backward", &gnf::affine_coupling_backward_cuda);
}
#endif
