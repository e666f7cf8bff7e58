// Building blocks of the warp-per-(node, head) CUDA attention kernels (GAT
// and GATv2): launch shape, exp/log overloads, warp reductions and the
// dropout parameters of the counter-based mask (gat_attention_math.h).
#pragma once

#include <cmath>
#include <cstdint>

#include "gat_attention_math.h"

namespace gnf {
namespace cuda {

constexpr int kWarpSize = 32;
constexpr int kWarpsPerBlock = 8;
constexpr int kThreads = kWarpSize * kWarpsPerBlock;

__device__ __forceinline__ float dev_exp(float v) { return ::expf(v); }
__device__ __forceinline__ double dev_exp(double v) { return ::exp(v); }
__device__ __forceinline__ float dev_log(float v) { return ::logf(v); }
__device__ __forceinline__ double dev_log(double v) { return ::log(v); }

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2)
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;  // every lane holds the sum
}

template <typename T>
__device__ __forceinline__ T warp_max(T v) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    const T o = __shfl_xor_sync(0xffffffffu, v, offset);
    v = o > v ? o : v;
  }
  return v;
}

template <typename acc_t>
struct DropoutArgs {
  bool active;
  uint32_t key;
  uint64_t threshold;
  acc_t scale;  // 1 / (1 - p), 0 for p = 1
};

template <typename acc_t>
inline DropoutArgs<acc_t> make_dropout(double p, int64_t seed) {
  return {p > 0, gat_dropout_key(seed), gat_keep_threshold(p),
          static_cast<acc_t>(p < 1 ? 1.0 / (1.0 - p) : 0.0)};
}

inline unsigned int num_blocks(int64_t warps) {
  return static_cast<unsigned int>((warps + kWarpsPerBlock - 1) /
                                   kWarpsPerBlock);
}

}  // namespace cuda
}  // namespace gnf
