// Per-element math of the affine coupling op, shared by the CPU and CUDA
// kernels so both compute exactly the same expressions.
//
// `Math` supplies exp and tanh as static functions: each backend keeps its
// own (the CPU a fast one-exp tanh, CUDA expf/tanhf of its math library).
// `T` is the op-math type (float for half/bfloat16/float, double for double).
#pragma once

#if defined(__CUDACC__)
#define GNF_HOST_DEVICE __host__ __device__
#else
#define GNF_HOST_DEVICE
#endif

namespace gnf {

// Clamped log-scale s and its derivative ds/ds_raw.
template <typename T>
struct ClampedScale {
  T s;
  T ds;
};

// Soft clamp s = c * tanh(s_raw / c), so |s| < c. use_clamp is passed in
// (not c > 0) because the CPU decides it on the double clamp argument.
template <typename Math, typename T>
GNF_HOST_DEVICE inline ClampedScale<T> soft_clamp(T s_raw, T c,
                                                  bool use_clamp) {
  if (use_clamp) {
    const T th = Math::tanh(s_raw / c);
    return {c * th, T(1) - th * th};
  }
  return {s_raw, T(1)};
}

// Forward: y = x * exp(s) + t. Inverse: x = (y - t) * exp(-s).
template <typename Math, typename T>
GNF_HOST_DEVICE inline T affine_apply(T in, T s, T t, bool inverse) {
  return inverse ? (in - t) * Math::exp(-s) : in * Math::exp(s) + t;
}

template <typename T>
struct AffineGrads {
  T grad_in;
  T grad_s_raw;
};

// Gradients w.r.t. the coupling input and s_raw. `data` is x in both modes
// (the input in forward mode, the output in inverse mode), `go` the
// upstream gradient of the output and `g` that of the node's log-det.
template <typename Math, typename T>
GNF_HOST_DEVICE inline AffineGrads<T> affine_grads(T go, T data, T g,
                                                   ClampedScale<T> cs,
                                                   bool inverse) {
  T gin, gs;
  if (!inverse) {  // dy/ds = x * exp(s), dlogdet/ds = 1
    const T e = Math::exp(cs.s);
    gin = go * e;
    gs = go * data * e + g;
  } else {  // dx/ds = -x, dlogdet/ds = -1
    gin = go * Math::exp(-cs.s);
    gs = -(go * data + g);
  }
  return {gin, gs * cs.ds};
}

}  // namespace gnf
