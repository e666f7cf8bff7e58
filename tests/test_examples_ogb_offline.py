r"""The OGB examples without their data and without network: one line that
says where the data are expected and what to do (``--root``,
``--synthetic``), a non-zero exit, no partial folder left behind, never a
question on stdin, and the same answer on the next run."""
import os
import urllib.error
import urllib.request

import pytest

from conftest import load_example
from torch_geometric_gnf.datasets import (OGBDataUnavailableError,
                                          load_node_prop_pred_dataset)


@pytest.fixture
def offline(monkeypatch):
    def refuse(*args, **kwargs):
        raise urllib.error.URLError('no network (simulated)')

    def no_prompt(*args, **kwargs):
        raise AssertionError(f'prompted: {args}')
    monkeypatch.setattr(urllib.request, 'urlopen', refuse)
    monkeypatch.setattr('builtins.input', no_prompt)


@pytest.mark.parametrize('name', ['ogbn_arxiv', 'ogbn_products', 'ogbn_proteins'])
def test_example_without_data_exits_with_one_line_and_can_rerun(name, offline, tmp_path):
    example = load_example(name)
    root = tmp_path / 'data' / 'ogb'
    for _ in range(2):  # the second run must not prompt about a partial folder
        with pytest.raises(SystemExit) as info:
            example.main(['--root', str(root), '--device', 'cpu', '--epochs', '1'])
        message = info.value.code
        assert isinstance(message, str)  # printed to stderr, exit status 1
        assert '\n' not in message
        folder = os.path.join(str(root), name)
        for part in (folder, '--root', '--synthetic', 'URLError'):
            assert part in message
        assert os.listdir(tmp_path) == []  # not even data/ogb is left


def test_loader_keeps_what_existed(offline, tmp_path):
    (tmp_path / 'keep.txt').write_text('mine')
    with pytest.raises(OGBDataUnavailableError, match='ogbn-arxiv'):
        load_node_prop_pred_dataset('ogbn-arxiv', str(tmp_path))
    assert os.listdir(tmp_path) == ['keep.txt']


def test_folder_without_release_marker_is_an_error_not_a_prompt(offline, tmp_path):
    (tmp_path / 'ogbn_arxiv' / 'raw').mkdir(parents=True)
    with pytest.raises(RuntimeError, match='RELEASE_v1.txt.*Delete it'):
        load_node_prop_pred_dataset('ogbn-arxiv', str(tmp_path))
    assert (tmp_path / 'ogbn_arxiv' / 'raw').is_dir()  # the user's folder stays
