// Python module entry of torch_geometric_gnf._C. Importing it loads the
// library, whose static TORCH_LIBRARY blocks register the operators under
// torch.ops.torch_geometric_gnf.*.

#include <torch/extension.h>

#include "cpu/block_cache.h"

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
  // Not tensor operators: a scoped CPU allocator (csrc/cpu/block_cache.h).
  m.def("block_cache_enter", &gnf::block_cache::enter, py::arg("keep_bytes"));
  m.def("block_cache_exit", &gnf::block_cache::exit);
  m.def("block_cache_release", &gnf::block_cache::release);
  m.def("block_cache_end_pass", &gnf::block_cache::end_pass);
  m.def("block_cache_stats", &gnf::block_cache::stats);
  m.def("block_cache_size_class", [](int64_t n) {
    TORCH_CHECK(n >= 0, "block_cache_size_class: n must be >= 0");
    return int64_t(gnf::block_cache::size_class(std::size_t(n)));
  });
  m.attr("block_cache_min_bytes") = int64_t(gnf::block_cache::kMinBlockBytes);
}
