r"""Low-level fused operators; the only place that touches the C++ extension
``torch_geometric_gnf._C`` (with pure-PyTorch fallbacks)."""
from torch_geometric_gnf.ops._extension import (extension_available,
                                                extension_supports,
                                                extension_with_cuda)
from torch_geometric_gnf.ops.block_cache import (block_cache,
                                                 block_cache_available,
                                                 block_cache_min_bytes,
                                                 block_cache_stats,
                                                 release_block_cache)
from torch_geometric_gnf.ops.affine_coupling import (
    affine_coupling, affine_coupling_reference, soft_clamp)
from torch_geometric_gnf.ops.csr import (CSRGraph, build_csr, cached_csr,
                                         clear_csr_cache)
from torch_geometric_gnf.ops.gat_attention import (
    dropout_keep_mask, fused_gat_attention, fused_gat_attention_reference,
    gat_attention_weights)
from torch_geometric_gnf.ops.gatv2_attention import (
    fused_gatv2_attention, fused_gatv2_attention_reference,
    gatv2_attention_weights)
from torch_geometric_gnf.ops.inplace_activation import (
    elu_inverse, inplace_elu, inplace_leaky_relu, leaky_relu_inverse,
    recompute)

__all__ = [
    'extension_available',
    'extension_supports',
    'extension_with_cuda',
    'affine_coupling',
    'affine_coupling_reference',
    'soft_clamp',
    'block_cache',
    'block_cache_available',
    'block_cache_min_bytes',
    'block_cache_stats',
    'release_block_cache',
    'CSRGraph',
    'build_csr',
    'cached_csr',
    'clear_csr_cache',
    'fused_gat_attention',
    'fused_gat_attention_reference',
    'gat_attention_weights',
    'dropout_keep_mask',
    'fused_gatv2_attention',
    'fused_gatv2_attention_reference',
    'gatv2_attention_weights',
    'inplace_leaky_relu',
    'inplace_elu',
    'leaky_relu_inverse',
    'elu_inverse',
    'recompute',
]
