import os

import pytest
import torch

import torch_geometric_gnf
from torch_geometric_gnf import ops


def test_public_api():
    from torch_geometric_gnf import models, nn
    for module, names in ((nn, ['ReversibleMessagePassing', 'GraphAffineCoupling',
                                'GraphNormalizingFlow']), (models, ['GRevNet'])):
        for name in names:
            assert name in module.__all__ and isinstance(getattr(module, name), type)
    assert torch_geometric_gnf.__version__


@pytest.mark.skipif(os.environ.get('GNF_EXPECT_EXTENSION') != '1',
                    reason='set GNF_EXPECT_EXTENSION=1 where the build must have run')
def test_extension_was_built():
    # `make test` builds the extension: a silently failed build must not
    # leave CI green on the reference path alone.
    from torch_geometric_gnf.ops._extension import extension_import_error
    assert ops.extension_available(), extension_import_error()
    assert ops.extension_supports(torch.zeros(1))


def test_reference_path_can_be_forced(monkeypatch):
    monkeypatch.setenv('GNF_DISABLE_EXTENSION', '1')
    assert not ops.extension_available()
    x = torch.randn(5, 2, dtype=torch.float64)
    y, log_det = ops.affine_coupling(x, torch.zeros_like(x), torch.ones_like(x))
    assert torch.allclose(y, x + 1) and log_det.item() == 0
