// Per-edge math of the fused GAT attention op, shared by the CPU and CUDA
// kernels (and mirrored in torch_geometric_gnf/ops/gat_attention.py), so that
// every path computes the same scores and the same dropout bits.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define GNF_HOST_DEVICE __host__ __device__
#else
#define GNF_HOST_DEVICE
#endif

namespace gnf {

// ---------------------------------------------------------------------------
// Counter-based dropout RNG: keep(seed, edge, head) is a pure function, so the
// backward pass (and a replayed reversible step) regenerates the mask instead
// of storing it. The Python reference (dropout_keep_mask) computes the same
// bits.
// ---------------------------------------------------------------------------

// "lowbias32" integer finaliser (C. Wellons): a bijection of uint32 with low
// bias; two rounds per draw below.
GNF_HOST_DEVICE inline uint32_t gat_mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}

// 32-bit key of a 64-bit seed (computed once per call).
GNF_HOST_DEVICE inline uint32_t gat_dropout_key(int64_t seed) {
  const uint64_t u = static_cast<uint64_t>(seed);
  return gat_mix32(static_cast<uint32_t>(u) ^
                   gat_mix32(static_cast<uint32_t>(u >> 32) ^ 0x9e3779b9u));
}

// Keep threshold: an edge is kept iff its 32-bit draw is >= floor(p * 2^32)
// (p * 2^32 is exact in double); p = 1 drops everything.
inline uint64_t gat_keep_threshold(double p) {
  if (p <= 0) return 0;
  if (p >= 1) return uint64_t(1) << 32;
  return static_cast<uint64_t>(p * 4294967296.0);
}

// Whether (edge, head) survives dropout; the counter is edge * heads + head
// in the ORIGINAL edge order.
GNF_HOST_DEVICE inline bool gat_keep(uint32_t key, int64_t edge,
                                     int64_t heads, int64_t head,
                                     uint64_t threshold) {
  const uint64_t c = static_cast<uint64_t>(edge) * heads + head;
  const uint32_t r = gat_mix32(gat_mix32(static_cast<uint32_t>(c) ^ key) ^
                               gat_mix32(static_cast<uint32_t>(c >> 32) + key));
  return static_cast<uint64_t>(r) >= threshold;
}

// ---------------------------------------------------------------------------
// Scores. raw = alpha_src[j] + alpha_dst[i] (+ alpha_edge[e]),
// s = leaky_relu(raw); d s / d raw = raw > 0 ? 1 : slope (as PyTorch).
// ---------------------------------------------------------------------------
template <typename T>
GNF_HOST_DEVICE inline T gat_leaky_relu(T raw, T slope) {
  return raw > T(0) ? raw : raw * slope;
}

template <typename T>
GNF_HOST_DEVICE inline T gat_leaky_relu_grad(T raw, T slope) {
  return raw > T(0) ? T(1) : slope;
}

// d loss / d score of one edge/head, a * (k * <g_i, x_j> - D_i): the
// softmax backward of attention-weighted sums, shared by GAT and GATv2.
template <typename T>
GNF_HOST_DEVICE inline T gat_grad_score(T a, T k, T dot_gx, T D) {
  return a * (k * dot_gx - D);
}

// Gradient of the pre-activation score of one edge/head:
//   ds = a * (k * <g_i, x_j> - D_i),  draw = ds * leaky'(raw)
// with a the softmax weight, k = keep / (1 - p) (1 without dropout) and
// D_i = <g_i, out_i>.
template <typename T>
GNF_HOST_DEVICE inline T gat_grad_raw(T a, T k, T dot_gx, T D, T raw,
                                      T slope) {
  return gat_grad_score(a, k, dot_gx, D) * gat_leaky_relu_grad(raw, slope);
}

// ---------------------------------------------------------------------------
// Guarded graph loads (CUDA kernels, which cannot report a bad graph without
// a device sync): a row's slot range is clamped into [0, E] and a slot whose
// source j or edge id e is out of range is skipped, so no load or store ever
// leaves its tensor. The CPU kernels validate the whole graph up front.
// ---------------------------------------------------------------------------
GNF_HOST_DEVICE inline int64_t gat_clamp_offset(int64_t v, int64_t lo,
                                                int64_t hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

GNF_HOST_DEVICE inline bool gat_edge_in_range(int64_t j, int64_t e,
                                              int64_t num_src, int64_t E) {
  return j >= 0 && j < num_src && e >= 0 && e < E;
}

}  // namespace gnf
