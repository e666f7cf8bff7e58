import copy
import importlib.util
import json
import math
import os
import types

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
                                     'select': 'last', 'betas': [0.9, 0.999],
                                     'rollback': 0.0, 'reject': 0.0,
                                     'anneal_noise': 0.0, 'anneal_steps': None}
    assert runs[0]['config']['betas'] == [0.9, 0.999]  # Adam's defaults
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
                       ('select', 'best'), ('betas', [0.9, 0.99]),
                       ('rollback', 0.05), ('reject', 0.1), ('anneal_noise', 0.2),
                       ('anneal_steps', 100)):
        changed = [{**r, 'config': {**r['config'], key: other}} for r in legacy]
        with open(old_path, 'w') as f:
            json.dump(changed, f)
        with pytest.raises(ValueError, match='combine runs of one configuration'):
            example.main(['--combine', legacy_path, old_path, '--out', str(tmp_path),
                          '--no-plot'])


def test_betas_flag_sets_adams_moment_decay_rates(monkeypatch):
    example = _load_example()
    assert example.parse_args([]).betas == [0.9, 0.999]
    with pytest.raises(SystemExit):
        example.parse_args(['--betas', '0.9', '1'])
    seen = []

    class RecordingAdam(torch.optim.Adam):
        def __init__(self, params, **kwargs):
            super().__init__(params, **kwargs)
            seen.append(self.defaults['betas'])

    monkeypatch.setattr(example.torch.optim, 'Adam', RecordingAdam)
    args = _tiny_args(example, '--steps', '2', '--betas', '0.8', '0.95')
    train = example.DENSITY_DATASETS['moons6'](args.train_size, seed=1)
    example.train_flow('realnvp', train, args, seed=0)
    assert seen == [(0.8, 0.95)]


def test_rollback_returns_to_the_best_check(monkeypatch, tmp_path):
    example = _load_example()
    assert example.parse_args([]).rollback == 0.0
    for bad in (['--rollback', '-1'], ['--rollback', '0.1', '--ema', '0.9']):
        with pytest.raises(SystemExit):
            example.parse_args(bad)
    # scripted validation scores: check 2 is 1.5 nats worse than check 1
    scores, states = iter([0.5, 2.0, 0.1]), []

    def scripted(flow, sets, batch_size=2000):
        states.append(copy.deepcopy(flow.state_dict()))
        return next(scores)

    monkeypatch.setattr(example, 'evaluate', scripted)
    train = example.DENSITY_DATASETS['moons6'](512, seed=1)
    stats = {}
    flow = example.train_flow('realnvp', train, _tiny_args(
        example, '--steps', '2', '--rollback', '0.5'), seed=0,
        val=train.sets[:8], stats=stats)
    assert stats['rollbacks'] == 1
    assert any(not torch.equal(a, b) for a, b in zip(states[0].values(),
                                                   states[1].values()))
    for name, value in flow.state_dict().items():  # back at check 1
        assert torch.equal(value, states[0][name])
    # within DELTA of the best: no rollback, the last weights are kept
    scores, states = iter([0.5, 0.9]), []
    stats = {}
    flow = example.train_flow('realnvp', train, _tiny_args(
        example, '--steps', '2', '--rollback', '0.5'), seed=0,
        val=train.sets[:8], stats=stats)
    assert stats['rollbacks'] == 0
    for name, value in flow.state_dict().items():
        assert torch.equal(value, states[1][name])
    # the restores per seed are recorded in the results
    monkeypatch.undo()
    _check_count_is_recorded(example, tmp_path, 'rollback', 0.05, 'rollbacks')


def test_update_guard_restores_weights_and_adam_state():
    example = _load_example()
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters(), lr=0.1)
    guard = example.UpdateGuard(list(net.parameters()), opt)

    def update():
        opt.zero_grad()
        net(torch.randn(4, 3)).pow(2).sum().backward()
        opt.step()

    before = copy.deepcopy(net.state_dict())
    guard.save()  # no Adam state yet: undoing the first update clears it
    update()
    guard.restore()
    assert len(opt.state) == 0
    for name, value in net.state_dict().items():
        assert torch.equal(value, before[name])
    update()
    update()
    weights, state = copy.deepcopy(net.state_dict()), copy.deepcopy(opt.state_dict())
    guard.save()
    update()
    assert not torch.equal(net.weight, weights['weight'])
    guard.restore()
    for name, value in net.state_dict().items():
        assert torch.equal(value, weights[name])
    for i, entry in state['state'].items():
        for key, value in entry.items():
            assert torch.equal(opt.state_dict()['state'][i][key], value)


def test_reject_undoes_an_update_that_raises_the_next_loss(monkeypatch, tmp_path):
    example = _load_example()
    assert example.parse_args([]).reject == 0.0
    for bad in (['--reject', '-1'], ['--reject', '0.1', '--ema', '0.9'],
                ['--reject', '0.1', '--rollback', '0.1']):
        with pytest.raises(SystemExit):
            example.parse_args(bad)
    train = example.DENSITY_DATASETS['moons6'](512, seed=1)
    # reference: two ordinary updates
    reference = example.train_flow('realnvp', train, _tiny_args(example, '--steps', '2'),
                                   seed=0)
    # the loss after the third update is scripted 5 nats/node higher: that
    # update is undone, so the weights are those after two updates
    from torch_geometric_gnf.models.set_flow import SetFlow
    real, calls = SetFlow.nll_per_node, []

    def scripted(self, x):
        calls.append(len(calls))
        return real(self, x) + (5.0 if len(calls) == 4 else 0.0)

    monkeypatch.setattr(SetFlow, 'nll_per_node', scripted)
    stats = {}
    flow = example.train_flow('realnvp', train, _tiny_args(
        example, '--steps', '4', '--reject', '0.5'), seed=0, stats=stats)
    assert stats['rejected'] == 1 and len(calls) == 4
    for name, value in flow.state_dict().items():
        assert torch.equal(value, reference.state_dict()[name])
    # a rise right after an undo is not judged: the restored state was
    # accepted before, so the run cannot stall undoing updates
    calls.clear()
    offsets = {4: 5.0, 5: 5.0}
    monkeypatch.setattr(SetFlow, 'nll_per_node',
                        lambda self, x: (calls.append(len(calls)), real(self, x)
                                         + offsets.get(len(calls), 0.0))[1])
    stats = {}
    example.train_flow('realnvp', train, _tiny_args(
        example, '--steps', '6', '--reject', '0.5'), seed=0, stats=stats)
    assert stats['rejected'] == 1 and len(calls) == 6
    # without the option the same scripted rise is trained on
    calls.clear()
    stats = {}
    flow = example.train_flow('realnvp', train, _tiny_args(example, '--steps', '4'),
                              seed=0, stats=stats)
    assert stats['rejected'] == 0
    assert any(not torch.equal(value, reference.state_dict()[name])
               for name, value in flow.state_dict().items())
    monkeypatch.undo()
    _check_count_is_recorded(example, tmp_path, 'reject', 0.1, 'rejected')


def test_anneal_noise_blurs_the_training_batches_then_stops(monkeypatch):
    example = _load_example()
    args = example.parse_args([])
    assert (args.anneal_noise, args.anneal_steps) == (0.0, None)
    for bad in (['--anneal-noise', '-0.1'], ['--anneal-steps', '0']):
        with pytest.raises(SystemExit):
            example.parse_args(bad)
    args = _tiny_args(example, '--steps', '8', '--anneal-noise', '0.4')
    assert [example.anneal_sigma(t, args) for t in (0, 2, 4, 7)] == [0.4, 0.2, 0.0, 0.0]
    args.anneal_steps = 2
    assert [example.anneal_sigma(t, args) for t in (0, 1, 2)] == [0.4, 0.2, 0.0]
    # every training set is the same: what the flow sees minus it is the noise
    data = example.DENSITY_DATASETS['moons6'](64, seed=1)
    train = types.SimpleNamespace(sets=data.sets[:1].expand(64, -1, -1).clone())
    from torch_geometric_gnf.models.set_flow import SetFlow
    real, seen = SetFlow.nll_per_node, []

    def recording(self, x):
        seen.append(x.detach() - train.sets[0])
        return real(self, x)

    monkeypatch.setattr(SetFlow, 'nll_per_node', recording)
    example.train_flow('realnvp', train, _tiny_args(
        example, '--steps', '3', '--anneal-noise', '0.5', '--anneal-steps', '2'), seed=0)
    assert len(seen) == 3
    assert abs(float(seen[0].std()) - 0.5) < 0.05
    assert abs(float(seen[1].std()) - 0.25) < 0.025
    assert torch.equal(seen[2], torch.zeros_like(seen[2]))
    # off by default: the data as they are
    seen.clear()
    example.train_flow('realnvp', train, _tiny_args(example, '--steps', '1'), seed=0)
    assert torch.equal(seen[0], torch.zeros_like(seen[0]))


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


def _check_count_is_recorded(example, tmp_path, option, value, count):
    # a short real run records the option in its config and one count per seed
    results = example.main(['--dataset', 'moons6', '--model', 'realnvp', '--tiny',
                            '--steps', '4', f'--{option}', str(value), '--seeds', '1',
                            '--no-plot', '--out', str(tmp_path)])
    assert results[0]['config'][option] == value
    assert len(results[0][count]['realnvp']) == 1


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


@pytest.mark.parametrize('flags', [
    ['--ema', '0.9', '--select', 'best'],
    ['--rollback', '0.001', '--anneal-noise', '0.5'],
    ['--reject', '0.001'],
])
def test_training_resumed_from_its_checkpoint_equals_the_uninterrupted_one(flags, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the example runs (--threads 1)
    try:
        _check_resume_equals_uninterrupted(flags, tmp_path)
    finally:
        torch.set_num_threads(threads)


def _check_resume_equals_uninterrupted(flags, tmp_path):
    # The state saved at step 4 of 8 (weights, Adam, weight average, best
    # check, guards, batch generator) continues to the same final weights.
    example = _load_example()
    args = _tiny_args(example, '--steps', '8', '--eval-every', '2',
                      '--checkpoint-every', '4', *flags)
    train = example.DENSITY_DATASETS['moons6'](256, seed=1)
    path = str(tmp_path / 'run.pt')
    stats = {}
    straight = example.train_flow('realnvp', train, args, seed=0, val=train.sets[:16],
                                  stats=stats,
                                  checkpoint=example.RunCheckpoint(path, args, False),
                                  key='k')
    saved = example.RunCheckpoint(path, args, True)
    assert saved.training('k')['step'] == 4 and saved.training('other') is None
    resumed_stats = {}
    resumed = example.train_flow('realnvp', train, args, seed=0, val=train.sets[:16],
                                 stats=resumed_stats, checkpoint=saved, key='k')
    for name, value in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name
    assert (resumed_stats['rollbacks'], resumed_stats['rejected']) == \
        (stats['rollbacks'], stats['rejected'])
    # A checkpoint is resumed only with --resume, and only by the same run.
    with pytest.raises(FileExistsError, match='--resume'):
        example.RunCheckpoint(path, args, False)
    other = _tiny_args(example, '--steps', '9', *flags)
    with pytest.raises(ValueError, match='other arguments'):
        example.RunCheckpoint(path, other, True)
    with pytest.raises(FileNotFoundError, match='--resume'):
        example.RunCheckpoint(str(tmp_path / 'none.pt'), args, True)
