"""Loading of the compiled extension ``torch_geometric_gnf._C``.

This is the only module that imports ``_C``; everything else asks
:func:`extension_available` / :func:`extension_supports`. Setting the
environment variable ``GNF_DISABLE_EXTENSION=1`` makes the extension look
unavailable (checked at call time), forcing the pure-PyTorch reference path.
"""
import os
from typing import Optional

import torch
from torch import Tensor

try:  # load once; registers torch.ops.torch_geometric_gnf.*
    from torch_geometric_gnf import _C  # type: ignore[attr-defined]
    _import_error: Optional[BaseException] = None
except (ImportError, OSError) as e:  # not built, or built for another torch
    _C = None
    _import_error = e

_CPU_DTYPES = (torch.float32, torch.float64)
_CUDA_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _disabled_by_env() -> bool:
    value = os.environ.get('GNF_DISABLE_EXTENSION', '0').lower()
    return value in ('1', 'true', 'yes', 'on')


def extension_available() -> bool:
    r"""Whether the compiled C++ extension is loaded and not disabled via
    ``GNF_DISABLE_EXTENSION``."""
    return _C is not None and not _disabled_by_env()


def extension_with_cuda() -> bool:
    r"""Whether the loaded extension was built with CUDA kernels."""
    return extension_available() and bool(_C.with_cuda())


def extension_import_error() -> Optional[BaseException]:
    r"""The error raised while importing ``_C`` (:obj:`None` if it loaded)."""
    return _import_error


def extension_supports(*tensors: Optional[Tensor]) -> bool:
    r"""Whether the built kernels can run on these floating point tensors:
    CPU float32/float64 always, CUDA (also half/bfloat16) only if the
    extension was built with CUDA. :obj:`None` entries are ignored."""
    if not extension_available():
        return False
    for t in tensors:
        if t is None:
            continue
        if t.device.type == 'cpu':
            if t.dtype not in _CPU_DTYPES:
                return False
        elif t.device.type == 'cuda':
            if not extension_with_cuda() or t.dtype not in _CUDA_DTYPES:
                return False
        else:
            return False
    return True


def op_registered(name: str) -> bool:
    r"""Whether ``torch.ops.torch_geometric_gnf.<name>`` exists (the loaded
    ``_C`` registered it), independent of ``GNF_DISABLE_EXTENSION``."""
    if _C is None:
        return False
    try:
        return hasattr(torch.ops.torch_geometric_gnf, name)
    except (AttributeError, RuntimeError):  # pragma: no cover
        return False
