r"""Long runs survive faults: a training example killed with SIGKILL in the
middle of a training step, resumed, then killed again half way through
writing a checkpoint and resumed once more, finishes with the final metrics
of an uninterrupted run with the same seed (CPU, one thread, exactly).

The kills come from the :func:`~torch_geometric_gnf.utils.training.fault_point`
hook (``GNF_FAULT_AT=NAME:K``), so they land at the same point every time."""
import glob
import json
import os
import os.path as osp
import signal
import subprocess
import sys

from torch_geometric_gnf.datasets import write_ogbn_dataset
from torch_geometric_gnf.utils.training import FAULT_ENV, read_checkpoint

ROOT = osp.abspath(osp.join(osp.dirname(__file__), '..'))


def run_example(script, args, fault=None):
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join([ROOT, env.get('PYTHONPATH', '')])
    env.pop(FAULT_ENV, None)
    if fault is not None:
        env[FAULT_ENV] = fault
    return subprocess.run([sys.executable, osp.join(ROOT, 'examples', script), *args],
                          env=env, capture_output=True, text=True, timeout=600)


def assert_killed(proc):
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]


def assert_ok(proc):
    assert proc.returncode == 0, proc.stderr[-3000:]


def without_measurements(value):
    r"""Results without the wall-clock times and memory peaks (which differ
    between any two runs)."""
    if isinstance(value, dict):
        return {k: without_measurements(v) for k, v in value.items()
                if 'seconds' not in k and not k.endswith('_mb')}
    if isinstance(value, list):
        return [without_measurements(v) for v in value]
    return value


def read_json(path):
    with open(path) as f:
        return json.load(f)


def test_ogbn_arxiv_killed_mid_epoch_and_mid_checkpoint_resumes_exactly(tmp_path):
    root = str(tmp_path / 'ogb')
    write_ogbn_dataset(root, 'ogbn-arxiv', num_nodes=120, seed=0)
    base = ['--root', root, '--device', 'cpu', '--threads', '1', '--hidden', '16',
            '--heads', '2', '--layers', '2', '--warmup', '1', '--epochs', '4']
    assert_ok(run_example('ogbn_arxiv.py', base + ['--results', str(tmp_path / 'a.json')]))

    ckpt = str(tmp_path / 'run.pt')
    args = base + ['--checkpoint', ckpt, '--results', str(tmp_path / 'b.json')]
    # Killed in epoch 3, between its backward pass and its update.
    assert_killed(run_example('ogbn_arxiv.py', args, fault='train_step:3'))
    assert read_checkpoint(ckpt)['epoch'] == 2
    # Resumed at epoch 3; killed half way through writing its checkpoint:
    # the torn temporary is left, the epoch-2 checkpoint is intact.
    again = run_example('ogbn_arxiv.py', args, fault='checkpoint_write:1')
    assert_killed(again)
    assert 'Resumed from' in again.stderr and 'after epoch 2' in again.stderr
    assert read_checkpoint(ckpt)['epoch'] == 2
    assert len(glob.glob(ckpt + '.tmp*')) == 1
    assert_ok(run_example('ogbn_arxiv.py', args))
    assert read_checkpoint(ckpt)['epoch'] == 4
    assert glob.glob(ckpt + '.tmp*') == []  # the dead writer's temporary is gone

    straight, resumed = read_json(tmp_path / 'a.json'), read_json(tmp_path / 'b.json')
    assert resumed['last']['epoch'] == 4
    assert without_measurements(resumed) == without_measurements(straight)


def test_density_estimation_killed_mid_step_and_mid_checkpoint_resumes_exactly(tmp_path):
    # --reject keeps an undo snapshot (weights + Adam) and a learning-rate
    # scale, --select best the best check's weights, --anneal-noise draws
    # from the batch generator (--ema and --rollback: test_examples_density).
    base = ['--dataset', 'mog', '--model', 'gnf', '--seeds', '2', '--tiny',
            '--steps', '30', '--eval-every', '10', '--floor-samples', '50',
            '--no-plot', '--reject', '0.02', '--select', 'best', '--anneal-noise', '0.5']
    assert_ok(run_example('density_estimation.py',
                          base + ['--json', str(tmp_path / 'a.json')]))

    ckpt = str(tmp_path / 'run.pt')
    args = base + ['--json', str(tmp_path / 'b.json'), '--checkpoint', ckpt,
                   '--checkpoint-every', '10']
    # Seed 0 trains 30 steps (fewer backward passes if updates were undone);
    # the 45th backward pass is in seed 1, after its step-10 checkpoint.
    assert_killed(run_example('density_estimation.py', args, fault='train_step:45'))
    state = read_checkpoint(ckpt)
    assert list(state['finished']) == ['mog/gnf/0']
    assert state['current']['key'] == 'mog/gnf/1'
    saved_step = state['current']['step']
    assert saved_step in (10, 20)

    # Without --resume an existing checkpoint is refused, not overwritten.
    refused = run_example('density_estimation.py', base + ['--checkpoint', ckpt])
    assert refused.returncode != 0 and '--resume' in refused.stderr

    # Resumed at the saved step of seed 1; the kill tears the write of seed
    # 1's final record (the last of its checkpoint writes).
    again = run_example('density_estimation.py', args + ['--resume'],
                        fault=f'checkpoint_write:{(30 - saved_step) // 10}')
    assert_killed(again)
    assert f'resumed at step {saved_step}' in again.stdout
    state = read_checkpoint(ckpt)
    assert state['current']['step'] == 20 and list(state['finished']) == ['mog/gnf/0']
    assert_ok(run_example('density_estimation.py', args + ['--resume']))
    assert set(read_checkpoint(ckpt)['finished']) == {'mog/gnf/0', 'mog/gnf/1'}

    straight, resumed = read_json(tmp_path / 'a.json'), read_json(tmp_path / 'b.json')
    assert len(resumed[0]['nll']['gnf']) == 2
    assert without_measurements(resumed) == without_measurements(straight)
