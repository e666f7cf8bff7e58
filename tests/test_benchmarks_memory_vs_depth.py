r"""benchmarks/memory_vs_depth.py: default environment, PyG baselines in
processes without our package, the release on/off timing and the CUDA path's
handling (in-process, no child processes) without a GPU."""
import pytest
import torch

from conftest import import_benchmark


@pytest.fixture
def bench(monkeypatch):
    return import_benchmark(monkeypatch, 'memory_vs_depth')


def test_tiny_run_in_the_default_environment(bench, tmp_path, monkeypatch):
    monkeypatch.delenv('MALLOC_MMAP_THRESHOLD_', raising=False)
    md = str(tmp_path / 't.md')
    children = []
    run_child = bench.measure_in_child

    def recording(config, env):
        children.append((config['method'], config['repeats'], env))
        return run_child(config, env)

    monkeypatch.setattr(bench, 'measure_in_child', recording)
    results = bench.main(['--nodes', '300', '--edges', '1500', '--depths', '2',
                          '--methods', 'groupaddrev', 'ours', 'ours_keep0', '--repeats', '1',
                          '--time-runs', '2',
                          '--memory-runs', '2', '--markdown', md])
    rev, ours = results[('groupaddrev', 2)], results[('ours', 2)]
    assert not rev['imports_gnf'] and ours['imports_gnf']  # PyG as its users run it
    assert rev['seconds'] > 0 and 'seconds_no_release' not in rev
    assert ours['seconds'] > 0 and ours['seconds_no_release'] > 0
    assert ours['peak_mb_no_release'] > 0
    for key in ('minor_faults_per_step', 'system_seconds_per_step'):
        assert ours[key] >= 0 and ours[key + '_no_release'] >= 0
    # The "no release" steps ran in a process of their own, release off;
    # only the first process per configuration is timed.
    # Two timed processes per mode, on and off alternating; times are medians.
    assert [c for c in children if c[0] == 'ours_off'] == [
        ('ours_off', 1, {'GNF_MEMORY_RELEASE': '0'})] * 2
    assert [c[1] for c in children if c[0] == 'ours'] == [1, 0, 1]
    assert [c[0] for c in children if c[1] == 1] == ['groupaddrev', 'ours', 'ours_off',
                                                     'ours', 'ours_off']
    assert ours['seconds'] == sum(ours['seconds_runs']) / 2
    assert ours['seconds_no_release'] == sum(ours['seconds_no_release_runs']) / 2
    assert all('GNF_MEMORY_RELEASE' not in c[2] for c in children
               if c[0] not in ('ours_off', 'ours_keep0'))
    # Releasing at every check: memory only, in processes of its own.
    assert [c for c in children if c[0] == 'ours_keep0'] == [
        ('ours_keep0', 0, {'GNF_MEMORY_RELEASE_KEEP_MB': '0'})] * 2
    assert results[('ours_keep0', 2)]['peak_mb'] > 0
    for r in (rev, ours):  # the median of two fresh processes
        assert len(r['peak_mb_runs']) == 2 and r['peak_mb'] in r['peak_mb_runs']
    text = open(md).read()
    assert "MALLOC_MMAP_THRESHOLD_=unset (glibc's default malloc)" in text
    assert 'the median of 2 fresh processes' in text
    assert 'ours s (no release)' in text and 'ours time release on/off' in text
    assert 'ours page faults per step, release on / off' in text
    assert 'ours releases per step (ms in checks and releases)' in text
    assert 'the median of 2 processes per mode, release on and off alternating' in text
    assert 'ours (release at every check) MB' in text
    assert ours['releases_per_step'] >= 0 and ours['release_ms_per_step'] >= 0
    assert ours['cache_waiting_mb'] >= 0 and 'cache_waiting_mb' not in rev
    assert 'ours: block cache MB waiting (peak)' in text


def test_cuda_path_runs_in_process(bench, monkeypatch):
    calls = []

    def fake_measure(**config):
        calls.append(config)
        return {'peak_mb': 10.0 * config['depth'], 'seconds': 0.1, 'first_seconds': 0.2,
                'imports_gnf': True}

    def no_child(*args, **kwargs):
        raise AssertionError('the CUDA path must not spawn processes')

    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'empty_cache', lambda: None)
    monkeypatch.setattr(bench, 'measure', fake_measure)
    monkeypatch.setattr(bench, 'measure_in_child', no_child)
    results = bench.main(['--device', 'cuda', '--depths', '1', '64',
                          '--methods', 'groupaddrev', 'fused'])
    assert len(calls) == 4 and {c['device'] for c in calls} == {'cuda'}
    assert {c['repeats'] for c in calls} == {1}  # one timed step by default on a GPU
    assert results[('fused', 64)]['peak_mb'] == 640.0


def test_bad_arguments(bench, monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    for argv in (['--device', 'tpu'], ['--channels', '30'], ['--depths', '0'],
                 ['--memory-runs', '0'], ['--time-runs', '0'],
                 ['--device', 'cuda', '--malloc-mmap-threshold']):
        with pytest.raises(SystemExit):
            bench.main(argv)
    with pytest.raises(SystemExit, match='CUDA is not available'):
        bench.main(['--device', 'cuda'])


def test_plot_reads_the_first_table_memory_only(monkeypatch, tmp_path):
    plot = import_benchmark(monkeypatch, 'plot_memory_vs_depth')
    table = tmp_path / 't.md'
    table.write_text('# title\n\nDevice: cpu; graph\n\n| depth | GroupAddRev MB | ours MB |\n'
                     '|---|---|---|\n| 1 | 500 | 300 |\n| 4 | 600 | 310 |\n\nnotes\n\n'
                     '| depth | ours MB | ours s |\n|---|---|---|\n| 1 | 999 | 2.0 |\n')
    caption, series = plot.read_table(str(table))
    assert caption == 'Device: cpu; graph'
    assert series['ours (ReversibleMessagePassing)'] == [(1, 300.0, None), (4, 310.0, None)]
    assert series['PyG GroupAddRev'] == [(1, 500.0, None), (4, 600.0, None)]
