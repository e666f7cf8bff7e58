r"""Value checks (they read tensor values) step aside inside code traced by
torch.compile; the shape checks stay."""
import pytest
import torch

from torch_geometric_gnf.utils import check_node_features, input_checks_enabled


def test_value_checks_are_off_only_while_compiling():
    assert input_checks_enabled()

    def fn(x):
        return x + 1 if input_checks_enabled() else x - 1

    x = torch.zeros(2)
    assert torch.equal(fn(x), x + 1)
    assert torch.equal(torch.compile(fn, fullgraph=True, backend='eager')(x), x - 1)
    assert input_checks_enabled()


def test_compiled_code_keeps_the_shape_checks():
    def fn(x):
        check_node_features(x)
        return x * 2

    compiled = torch.compile(fn, fullgraph=True, backend='eager')
    x = torch.randn(3, 2)
    x[0, 0] = float('nan')  # not caught inside the compiled region
    assert torch.isnan(compiled(x)[0, 0])
    with pytest.raises(ValueError, match='non-finite'):
        fn(x)  # eager: caught
    # fullgraph compilation reports the check's error through dynamo's own
    # exception type, with our message
    with pytest.raises(Exception, match=r'must have shape \[num_nodes, channels\]'):
        compiled(torch.randn(3))
