r"""Running an example's smoke mode never touches the repository: by default
its tables and figures go to a new ``runs/<example>/<UTC time>/`` folder
under the current directory (``runs/`` is git-ignored), and ``git status``
of the checkout stays as it was.  (``demo.py``, ``planetoid.py`` and the
benchmarks print their results and write files only to paths given on the
command line.)"""
import os
import shutil
import subprocess

import pytest

from conftest import REPO, SHARED, load_example

SMOKE = {
    'density_estimation': (['--dataset', 'mog', '--tiny', '--steps', '2'],
                           ['density_estimation.md', 'density_mog.png']),
    'graph_generation': (['--dataset', 'ego_small', '--tiny', '--ae-steps', '4',
                          '--flow-steps', '4'],
                         ['graph_generation_ego_small.md', 'graph_generation_ego_small.png']),
    'ogbn_arxiv': (['--synthetic', '100', '--root', 'data/ogb', '--epochs', '1',
                    '--device', 'cpu', '--hidden', '8', '--heads', '2', '--layers', '1'], []),
    'planetoid': (['--seeds', '1', '--epochs', '2', '--model', 'grevnet'], []),
}


def repo_state():
    r"""What ``git status`` shows (tracked and untracked, not ignored files),
    plus the repository's own ``runs/`` folder, which is ignored."""
    status = subprocess.run(['git', '-C', REPO, 'status', '--porcelain'],
                            capture_output=True, text=True, check=True).stdout
    runs = os.path.join(REPO, 'runs')
    return status, sorted(os.listdir(runs)) if os.path.isdir(runs) else None


@pytest.mark.skipif(shutil.which('git') is None or not os.path.exists(
    os.path.join(REPO, '.git')), reason='not a git checkout')
@pytest.mark.parametrize('name', list(SMOKE))
def test_smoke_run_leaves_the_checkout_clean(name, tmp_path, monkeypatch):
    # planetoid reads Cora, and ego-small is generated from CiteSeer's graph.
    if name in ('planetoid', 'graph_generation') and \
            not os.path.isdir(os.path.join(SHARED, 'data', 'planetoid')):
        pytest.skip('needs ../shared/data/planetoid')
    args, files = SMOKE[name]
    if name == 'graph_generation':
        args = args + ['--checkpoint-dir', str(tmp_path / 'ckpt')]
    example = load_example(name)
    before = repo_state()
    monkeypatch.chdir(tmp_path)
    example.main(args)
    assert repo_state() == before
    if files:
        runs = os.listdir(tmp_path / 'runs' / name)
        assert len(runs) == 1  # one fresh folder named by its UTC start time
        assert sorted(os.listdir(tmp_path / 'runs' / name / runs[0])) == sorted(files)


def test_runs_folder_is_git_ignored():
    if shutil.which('git') is None or not os.path.exists(os.path.join(REPO, '.git')):
        pytest.skip('not a git checkout')
    result = subprocess.run(['git', '-C', REPO, 'check-ignore', '-q',
                             'runs/density_estimation/x/density_estimation.md'])
    assert result.returncode == 0


def test_new_run_folders_never_collide(tmp_path, monkeypatch):
    from torch_geometric_gnf.utils.cli import new_run_folder, resolve_out

    monkeypatch.chdir(tmp_path)
    first, second = new_run_folder('demo'), new_run_folder('demo')
    assert first != second and os.path.isdir(first) and os.path.isdir(second)
    assert resolve_out(str(tmp_path / 'mine'), 'demo') == str(tmp_path / 'mine')
    with pytest.raises(ValueError, match="'example'"):
        new_run_folder('a/b')


def test_smoke_modes_run_one_seed():
    density, generation = load_example('density_estimation'), load_example('graph_generation')
    assert density.parse_args(['--tiny']).seeds == 1
    assert density.parse_args([]).seeds == 3
    assert generation.parse_args(['--tiny']).seeds == 1
