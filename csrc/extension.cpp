// Python module entry of torch_geometric_gnf._C. Importing it loads the
// library, whose static TORCH_LIBRARY blocks register the operators under
// torch.ops.torch_geometric_gnf.*.

#include <torch/extension.h>

#ifdef WITH_CUDA
#include <cuda.h>
#endif

namespace {

// CUDA version the extension was built with (e.g. 12040), or -1 (CPU only).
int64_t cuda_version() {
#ifdef WITH_CUDA
  return CUDA_VERSION;
#else
  return -1;
#endif
}

bool with_cuda() { return cuda_version() != -1; }

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("cuda_version", &cuda_version,
        "CUDA version the extension was built with, -1 if CPU only");
  m.def("with_cuda", &with_cuda, "Whether CUDA kernels were compiled");
}
