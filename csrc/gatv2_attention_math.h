// Per-edge math of the fused GATv2 attention op, shared by the CPU and CUDA
// kernels (and mirrored in torch_geometric_gnf/ops/gatv2_attention.py). The
// softmax backward, LeakyReLU and the dropout hash are GAT's
// (gat_attention_math.h), so both ops drop the same (edge, head) pairs for a
// given seed.
//
// For edge e = (j -> i) and head h, channel c:
//   z_c = x_src[j,h,c] + x_dst[i,h,c] (+ <W_e[h*C + c, :], edge_attr[e, :]>)
//   s   = sum_c att[h,c] * leaky_relu(z_c)
// and with ds = d loss / d s (gat_grad_score):
//   d z_c   = ds * att[h,c] * leaky_relu'(z_c)
//   d att_c = ds * leaky_relu(z_c)
#pragma once

#include <cstdint>

#include "gat_attention_math.h"

namespace gnf {

// <w_row, edge_attr_e> over the D edge features: the edge term of one
// channel, recomputed instead of materialising W_e edge_attr ([E, H*C]).
template <typename acc_t, typename scalar_t>
GNF_HOST_DEVICE inline acc_t gatv2_edge_term(const scalar_t* w_row,
                                             const scalar_t* edge_attr_e,
                                             int64_t D) {
  acc_t s = 0;
  for (int64_t d = 0; d < D; ++d)
    s += static_cast<acc_t>(w_row[d]) * static_cast<acc_t>(edge_attr_e[d]);
  return s;
}

// Pre-activation z_c of one channel (x_src + x_dst, then the edge term, in
// PyG's order of additions).
template <typename acc_t, typename scalar_t>
GNF_HOST_DEVICE inline acc_t gatv2_z(const scalar_t* xs_jh,
                                     const scalar_t* xd_ih,
                                     const scalar_t* w_row,
                                     const scalar_t* edge_attr_e, int64_t D,
                                     int64_t c) {
  acc_t z = static_cast<acc_t>(xs_jh[c]) + static_cast<acc_t>(xd_ih[c]);
  if (edge_attr_e != nullptr)
    z += gatv2_edge_term<acc_t>(w_row, edge_attr_e, D);
  return z;
}

}  // namespace gnf
