r"""Low-level fused operators; the only place that touches the C++ extension
``torch_geometric_gnf._C`` (with pure-PyTorch fallbacks)."""
from torch_geometric_gnf.ops._extension import (extension_available,
                                                extension_supports,
                                                extension_with_cuda)
from torch_geometric_gnf.ops.affine_coupling import (
    affine_coupling, affine_coupling_reference, soft_clamp)

__all__ = [
    'extension_available',
    'extension_supports',
    'extension_with_cuda',
    'affine_coupling',
    'affine_coupling_reference',
    'soft_clamp',
]
