import importlib.util
import json
import math
import os

import pytest
import torch

EXAMPLE = os.path.join(os.path.dirname(__file__), '..', 'examples', 'density_estimation.py')


def _load_example():
    spec = importlib.util.spec_from_file_location('density_estimation', EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
    example = _load_example()
    out = tmp_path_factory.mktemp('density')
    path = str(out / 'raw.json')
    results = example.main(['--dataset', 'all', '--tiny', '--steps', '4', '--seeds', '2',
                            '--out', str(out), '--json', path])
    return example, out, path, results


def test_tiny_mode_end_to_end(tiny_run, capsys):
    example, out, path, results = tiny_run
    assert [r['dataset'] for r in results] == ['mog', 'mog_ring', 'moons6']
    for r in results:
        assert set(r['nll']) == {'gnf', 'realnvp'}
        for model in ('gnf', 'realnvp'):
            assert len(r['nll'][model]) == 2
            # an untrained flow cannot beat the exact entropy floor
            for v in r['nll'][model]:
                assert math.isfinite(v)
                assert v > r['floor_joint'][0] - 4 * r['floor_joint'][1]
            assert len(r['samples'][model]) == 5
        assert r['floor_joint'][0] < r['floor_independent'][0]
        # the exact density on the very test sets: near the Monte Carlo floors,
        # and below every (barely trained) model's test NLL
        assert r['test_size'] == 256
        assert r['test_floor_joint'] < r['test_floor_independent']
        assert abs(r['test_floor_joint'] - r['floor_joint'][0]) < 0.2
        assert abs(r['test_floor_independent'] - r['floor_independent'][0]) < 0.2
        for model in ('gnf', 'realnvp'):
            assert min(r['nll'][model]) > r['test_floor_joint']
        assert min(r['nll']['realnvp']) > r['test_floor_independent']
        png = out / f"density_{r['dataset']}.png"
        assert png.exists() and 0 < png.stat().st_size < 300_000
    table = (out / 'density_estimation.md').read_text()
    for row in ('paper GNF', 'our GNF', 'our RealNVP', 'floor, joint', 'floor, independent',
                'exact density on the test sets'):
        assert row in table
    assert '6 half-moons' in table and 'MoG ring' in table
    with open(path) as f:
        assert len(json.load(f)) == 3


def test_combine_pools_seeds(tiny_run, tmp_path):
    example, out, path, results = tiny_run
    merged = example.main(['--combine', path, path, '--out', str(tmp_path)])
    for r, m in zip(results, merged):
        for model in ('gnf', 'realnvp'):
            assert m['nll'][model] == r['nll'][model] * 2
    assert (tmp_path / 'density_mog_ring.png').exists()
    assert '(4 seeds)' in (tmp_path / 'density_estimation.md').read_text()


def test_bad_arguments():
    example = _load_example()
    with pytest.raises(SystemExit):
        example.parse_args(['--dataset', 'cifar'])


def test_combine_refuses_mixed_configurations(tiny_run, tmp_path):
    example, out, path, results = tiny_run
    with open(path) as f:
        other = json.load(f)
    assert other[0]['config']['steps'] == 4
    other[0]['config']['steps'] = 5  # as if the run had trained longer
    other_path = str(tmp_path / 'other.json')
    with open(other_path, 'w') as f:
        json.dump(other, f)
    with pytest.raises(ValueError, match='combine runs of one configuration'):
        example.main(['--combine', path, other_path, '--out', str(tmp_path), '--no-plot'])


def test_files_without_test_floors_get_them_from_the_regenerated_test_sets(tiny_run):
    example, out, path, results = tiny_run
    for r in results:
        old = {k: v for k, v in r.items() if not k.startswith('test_floor')}
        filled = example.add_test_floors(old)
        assert filled['test_floor_joint'] == pytest.approx(r['test_floor_joint'], abs=1e-12)
        assert filled['test_floor_independent'] == pytest.approx(
            r['test_floor_independent'], abs=1e-12)
    # a file from before test_size was recorded was scored on the default 10,000 sets
    old = {k: v for k, v in results[0].items() if not k.startswith('test_')}
    assert example.add_test_floors(old)['test_size'] == 10000


def test_default_steps_per_dataset():
    example = _load_example()
    args = example.parse_args([])
    assert args.steps is None and (args.couplings, args.hidden) == (12, 64)
    assert (args.blocks, args.mixing) == (2, 'linear')  # the best setting (round 4)
    assert example.parse_args(['--tiny']).steps == 50
    assert example.parse_args(['--steps', '7']).steps == 7
    assert set(example.DEFAULT_STEPS) == set(example.DENSITY_DATASETS)
    # the learning rate and warm-up are per data set too; --tiny and explicit
    # values override them
    assert args.lr is None and args.warmup is None
    assert (args.ema, args.select) == (0.0, 'last')  # the raw final weights
    for table in (example.DEFAULT_LR, example.DEFAULT_WARMUP):
        assert set(table) == set(example.DENSITY_DATASETS)
    assert example.parse_args(['--tiny']).warmup == 10
    assert example.parse_args(['--warmup', '3']).warmup == 3
    for name in example.DENSITY_DATASETS:
        filled = example.dataset_args(name, args)
        assert (filled.steps, filled.lr, filled.warmup) == (
            example.DEFAULT_STEPS[name], example.DEFAULT_LR[name], example.DEFAULT_WARMUP[name])
        assert filled.warmup < filled.steps
    assert args.steps is None  # the caller's namespace is left as it was
    given = example.dataset_args('moons6', example.parse_args(
        ['--steps', '9', '--lr', '0.5', '--warmup', '2']))
    assert (given.steps, given.lr, given.warmup) == (9, 0.5, 2)


def test_failed_combine_leaves_input_checks_on(tiny_run, tmp_path):
    from torch_geometric_gnf.utils import checks
    example, out, path, results = tiny_run
    with pytest.raises(FileNotFoundError):
        example.main(['--combine', str(tmp_path / 'missing.json'), '--no-plot'])
    assert checks.input_checks_enabled()


def test_new_flags_are_recorded_and_older_files_count_as_their_old_values(tiny_run, tmp_path):
    example, out, path, results = tiny_run
    with open(path) as f:
        runs = json.load(f)
    assert example.LEGACY_CONFIG == {'clip': 10.0, 'mixing': 'permutation', 'ema': 0.0,
                                     'select': 'last'}
    assert runs[0]['config']['clip'] == 10.0  # the default never changed
    assert runs[0]['config']['mixing'] == 'linear'  # the default since round 4
    args = example.parse_args(['--clip', '1', '--mixing', 'permutation'])
    assert (args.clip, args.mixing) == (1.0, 'permutation')
    # a run with the values that files written before --clip / --mixing had
    legacy = [{**r, 'config': {**r['config'], **example.LEGACY_CONFIG}} for r in runs]
    legacy_path = str(tmp_path / 'legacy.json')
    with open(legacy_path, 'w') as f:
        json.dump(legacy, f)
    old = [{**r, 'config': {k: v for k, v in r['config'].items()
                            if k not in example.LEGACY_CONFIG}} for r in runs]
    old_path = str(tmp_path / 'old.json')
    with open(old_path, 'w') as f:
        json.dump(old, f)
    merged = example.main(['--combine', legacy_path, old_path, '--out', str(tmp_path),
                           '--no-plot'])
    assert merged[0]['nll']['gnf'] == results[0]['nll']['gnf'] * 2
    # the old file means channel swaps: it does not pool with a learned-mixing run
    with pytest.raises(ValueError, match='combine runs of one configuration'):
        example.main(['--combine', path, old_path, '--out', str(tmp_path), '--no-plot'])
    for key, other in (('clip', 1.0), ('mixing', 'linear'), ('ema', 0.999),
                       ('select', 'best')):
        changed = [{**r, 'config': {**r['config'], key: other}} for r in legacy]
        with open(old_path, 'w') as f:
            json.dump(changed, f)
        with pytest.raises(ValueError, match='combine runs of one configuration'):
            example.main(['--combine', legacy_path, old_path, '--out', str(tmp_path),
                          '--no-plot'])


def test_linear_mixing_flag_builds_and_trains_the_mixed_flow(tmp_path):
    from torch_geometric_gnf.nn import InvertibleLinear
    example = _load_example()
    args = example.dataset_args('mog', example.parse_args(
        ['--dataset', 'mog', '--tiny', '--steps', '40', '--mixing', 'linear',
         '--out', str(tmp_path)]))
    train = example.DENSITY_DATASETS['mog'](args.train_size, seed=1)
    flow = example.train_flow('gnf', train, args, seed=0)
    mixings = [m for m in flow.modules() if isinstance(m, InvertibleLinear)]
    assert len(mixings) == args.couplings - 1
    # they start as rotations (|det W| = 1) and are trained with the couplings
    assert any(abs(float(m.log_scale.detach().sum())) > 1e-3 for m in mixings)
    test = example.DENSITY_DATASETS['mog'](256, seed=2).sets
    untrained = example.build_set_flow('gnf', channels=2, num_couplings=args.couplings,
                                       hidden=args.hidden, heads=args.heads,
                                       num_blocks=args.blocks, mixing='linear', loc=flow.flow.couplings[0].loc,
                                       scale=flow.flow.couplings[0].scale)
    assert example.evaluate(flow, test) < example.evaluate(untrained, test) - 0.3


def _tiny_args(example, *extra):
    # warm-up longer than the run: the learning rate of step t does not
    # depend on --steps, so runs of 1 and 2 steps share their first step
    return example.dataset_args('moons6', example.parse_args(
        ['--dataset', 'moons6', '--tiny', '--warmup', '10', '--eval-every', '1', *extra]))


def test_ema_scores_the_moving_average_of_the_weights():
    example = _load_example()
    train = example.DENSITY_DATASETS['moons6'](64, seed=1)
    raw = [example.train_flow('realnvp', train, _tiny_args(
        example, '--steps', str(steps), '--ema', '0', '--select', 'last'), seed=0)
        for steps in (1, 2)]
    averaged = example.train_flow('realnvp', train, _tiny_args(
        example, '--steps', '2', '--ema', '0.9', '--select', 'last'), seed=0)
    # the average starts at the first step's weights, then decays by 0.9 a step
    moved = 0.0
    for (name, p1), p2, pa in zip(raw[0].named_parameters(), raw[1].parameters(),
                                  averaged.parameters()):
        torch.testing.assert_close(pa, 0.9 * p1 + 0.1 * p2, msg=name)
        moved = max(moved, float((p2 - p1).detach().abs().max()))
    assert moved > 1e-5  # the two raw states differ, so the check has teeth
    assert not averaged.training
    for buf, ref in zip(averaged.buffers(), raw[1].buffers()):
        assert torch.equal(buf, ref)  # constants (standardisation, permutations)
    with pytest.raises(SystemExit):
        example.parse_args(['--ema', '1'])


def test_select_best_scores_the_best_validation_check(capsys):
    example = _load_example()
    train = example.DENSITY_DATASETS['moons6'](256, seed=1)
    val = example.DENSITY_DATASETS['moons6'](64, seed=4).sets
    seen = {}
    for select in ('best', 'last'):
        capsys.readouterr()
        flow = example.train_flow('realnvp', train, _tiny_args(
            example, '--steps', '6', '--ema', '0.5', '--select', select,
            '--lr', '0.05'), seed=0, val=val)
        scores = [float(line.split(' val ')[1].split()[0])
                  for line in capsys.readouterr().out.splitlines() if ' val ' in line]
        assert len(scores) == 6  # one check a step (--eval-every 1)
        expected = min(scores) if select == 'best' else scores[-1]
        assert example.evaluate(flow, val) == pytest.approx(expected, abs=1e-4)
        seen[select] = scores
    assert seen['best'] == seen['last']  # same run; only the returned state differs
    assert min(seen['best']) < seen['best'][-1] - 1e-3  # the best is not the last
