import importlib.util
import os

import pytest
import torch

EXAMPLE = os.path.join(os.path.dirname(__file__), '..', 'examples', 'graph_generation.py')


def load_example():
    spec = importlib.util.spec_from_file_location('graph_generation_example', EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_mode_end_to_end_with_resume(tmp_path):
    example = load_example()
    ckpt, out = str(tmp_path / 'ckpt'), str(tmp_path / 'out')
    args = ['--dataset', 'community_small', '--tiny', '--checkpoint-dir', ckpt, '--out', out]
    table = example.main(args)
    state = torch.load(os.path.join(ckpt, 'tiny_community_small_seed0.pt'),
                       weights_only=False)
    assert state['ae_step'] == 20 and state['flow_step'] == 20
    md = os.path.join(out, 'graph_generation_community_small.md')
    png = os.path.join(out, 'graph_generation_community_small.png')
    assert os.path.getsize(png) > 1000
    with open(md) as f:
        assert f.read() == table
    for row in ('noise floor', 'ideal generator', 'matched node counts', '16 samples',
                'GNF (paper)', '| test |', 'step restored): none\n'):
        assert row in table
    # Evaluating again from the checkpoint gives the same auto-encoder edge count
    # (same weights) without training.
    again = example.main(args[:-4] + ['--checkpoint-dir', ckpt, '--out', out,
                                      '--stage', 'eval'])
    assert again.split('| auto-encoder')[1].split('\n')[3].split('|')[4] == \
        table.split('| auto-encoder')[1].split('\n')[3].split('|')[4]  # edge totals
    # A checkpoint from another configuration is refused, not silently reused.
    with pytest.raises(ValueError, match='another configuration'):
        example.main(args + ['--lr', '0.5'])
    assert state['config']['attention'] == 'all'  # the default encoder


def test_checkpoints_from_before_the_attention_flag_count_as_edges(tmp_path):
    example = load_example()
    ckpt, out = str(tmp_path / 'ckpt'), str(tmp_path / 'out')
    args = ['--dataset', 'community_small', '--tiny', '--checkpoint-dir', ckpt, '--out', out,
            '--attention', 'edges']
    table = example.main(args)
    path = os.path.join(ckpt, 'tiny_community_small_seed0.pt')
    state = torch.load(path, weights_only=False)
    assert state['config']['attention'] == 'edges'
    del state['config']['attention']  # as written before --attention existed
    torch.save(state, path)
    again = example.main(args + ['--stage', 'eval'])
    assert again.split('| auto-encoder')[1] == table.split('| auto-encoder')[1]
    with pytest.raises(ValueError, match='another configuration'):
        example.main(args[:-2] + ['--stage', 'eval'])  # default attention='all'


def test_flow_blocks_and_mixing_flags_are_recorded_and_older_checkpoints_count_as_one_block(
        tmp_path):
    from torch_geometric_gnf.nn import InvertibleLinear
    example = load_example()
    assert example.LEGACY_CONFIG['flow_blocks'] == 1
    assert example.LEGACY_CONFIG['flow_mixing'] == 'permutation'
    args = example.parse_args(['--flow-blocks', '2', '--flow-mixing', 'linear', '--tiny'])
    train = [g for g in example.load_dataset(args)][:8]
    _, gen = example.build(args, train)
    assert sum(isinstance(m, InvertibleLinear) for m in gen.modules()) == args.flow_couplings - 1
    assert len(gen.flow.couplings[0].f.blocks) == 2
    ckpt, out = str(tmp_path / 'ckpt'), str(tmp_path / 'out')
    base = ['--dataset', 'community_small', '--tiny', '--checkpoint-dir', ckpt, '--out', out,
            '--flow-blocks', '1', '--flow-mixing', 'permutation']
    table = example.main(base)
    path = os.path.join(ckpt, 'tiny_community_small_seed0.pt')
    state = torch.load(path, weights_only=False)
    assert (state['config']['flow_blocks'], state['config']['flow_mixing']) == (1, 'permutation')
    assert state['config']['ae_embedding_noise'] == 0.0
    for key in ('flow_blocks', 'flow_mixing', 'ae_embedding_noise'):  # before the flags
        del state['config'][key]
    torch.save(state, path)
    again = example.main(base + ['--stage', 'eval'])
    assert again.split('| auto-encoder')[1] == table.split('| auto-encoder')[1]
    with pytest.raises(ValueError, match='another configuration'):
        example.main(base + ['--stage', 'eval', '--flow-mixing', 'linear'])
    with pytest.raises(ValueError, match='another configuration'):
        example.main(base + ['--stage', 'eval', '--ae-embedding-noise', '0.1'])


def test_flow_defaults_are_two_blocks_learned_mixing_and_per_data_set_steps():
    example = load_example()
    community = example.parse_args(['--dataset', 'community_small'])
    ego = example.parse_args(['--dataset', 'ego_small'])
    assert (community.flow_blocks, community.flow_mixing) == (2, 'linear')
    assert community.flow_steps == example.DEFAULT_FLOW_STEPS['community_small'] == 16000
    assert ego.flow_steps == example.DEFAULT_FLOW_STEPS['ego_small'] == 8000
    assert example.parse_args(['--dataset', 'ego_small', '--flow-steps', '123']).flow_steps == 123
    assert example.parse_args(['--dataset', 'community_small', '--tiny']).flow_steps == 20
    old = example.parse_args(['--flow-blocks', '1', '--flow-mixing', 'permutation'])
    assert (old.flow_blocks, old.flow_mixing) == (1, 'permutation')


def test_embedding_noise_flag_reaches_the_auto_encoder(tmp_path):
    example = load_example()
    assert example.LEGACY_CONFIG['ae_embedding_noise'] == 0.0
    args = example.parse_args(['--tiny', '--ae-embedding-noise', '0.2'])
    train = [g for g in example.load_dataset(args)][:8]
    ae, gen = example.build(args, train)
    assert ae.embedding_noise == 0.2 and gen.auto_encoder is ae
    assert example.config_of(args)['ae_embedding_noise'] == 0.2
    ckpt = str(tmp_path / 'ckpt')
    example.main(['--dataset', 'community_small', '--tiny', '--ae-embedding-noise', '0.2',
                  '--checkpoint-dir', ckpt, '--out', str(tmp_path / 'out')])
    state = torch.load(os.path.join(ckpt, 'tiny_community_small_seed0.pt'), weights_only=False)
    assert state['config']['ae_embedding_noise'] == 0.2


def test_seeds_trained_in_separate_processes_evaluate_like_one_run(tmp_path):
    # --first-seed lets seeds train in parallel (--stage train) and be
    # evaluated together (--stage eval): same checkpoints, same table.
    example = load_example()
    base = ['--dataset', 'community_small', '--tiny', '--out', str(tmp_path / 'out')]
    together = str(tmp_path / 'together')
    table = example.main(base + ['--seeds', '2', '--checkpoint-dir', together])
    assert 'seed(s) 0, 1;' in table
    apart = str(tmp_path / 'apart')
    for seed in ('1', '0'):
        assert example.main(base + ['--first-seed', seed, '--stage', 'train',
                                    '--checkpoint-dir', apart]) == ''
    def weights(folder, seed):
        return torch.load(os.path.join(folder, f'tiny_community_small_seed{seed}.pt'),
                          weights_only=False)['model']

    def same(a, b):
        return all(torch.equal(a[k], b[k]) for k in a)

    runs = {(folder, seed): weights(folder, seed) for folder in (together, apart)
            for seed in (0, 1)}
    for seed in (0, 1):
        assert same(runs[together, seed], runs[apart, seed])
    # the two seeds really differ, so the comparison above can fail
    assert not same(runs[apart, 0], runs[apart, 1])
    again = example.main(base + ['--seeds', '2', '--stage', 'eval', '--checkpoint-dir', apart])
    strip = [line for line in table.splitlines() if not line.startswith('Training time')]
    assert [line for line in again.splitlines() if not line.startswith('Training time')] == strip
    only_second = example.main(base + ['--first-seed', '1', '--stage', 'eval',
                                       '--checkpoint-dir', apart])
    assert 'seed(s) 1;' in only_second
    with pytest.raises(SystemExit):
        example.parse_args(['--seeds', '0'])


def test_compile_flag_trains_compiled_stages_and_records_the_setup(tmp_path):
    example = load_example()
    ckpt = str(tmp_path / 'ckpt')
    args = ['--dataset', 'community_small', '--tiny', '--checkpoint-dir', ckpt,
            '--out', str(tmp_path / 'out'), '--compile', '--threads', '2']
    table = example.main(args)
    state = torch.load(os.path.join(ckpt, 'tiny_community_small_seed0.pt'),
                       weights_only=False)
    assert state['flow_step'] == 20 and state['threads'] == 2
    assert state['compiled'] and not state['compiled_ae']
    assert '(2 thread(s), compiled flow)' in table
    assert example.compiled_label({'compiled': True, 'compiled_ae': True}) == \
        ', compiled auto-encoder and flow'
    # checkpoints of runs that compiled only the flow (no 'compiled_ae')
    assert example.compiled_label({'compiled': True}) == ', compiled flow'
    assert example.compiled_label({'compiled': False, 'compiled_ae': False}) == ''
    # Compiled modules keep their state-dict keys: an eager build (strict
    # load_state_dict) evaluates the checkpoint to the same table.
    again = example.main(args[:-3] + ['--stage', 'eval'])
    assert again.split('| auto-encoder')[1] == table.split('| auto-encoder')[1]


def test_resampled_train_mmd_is_zero_for_a_copy_and_grows_with_a_mismatch():
    import networkx as nx
    example = load_example()
    paths, stars = [nx.path_graph(4), nx.path_graph(4)], [nx.star_graph(4)]
    test = [nx.path_graph(4), nx.star_graph(4)]
    # every pool holds only isomorphic copies of the test graph of that size
    ideal = example.resampled_train_mmd(paths + stars, test, draws=3)
    assert all(abs(v) < 1e-12 for v in ideal.values())
    # a test size missing from the training graphs takes the nearest pool
    ideal = example.resampled_train_mmd(paths + stars, [nx.path_graph(3)], draws=3)
    assert ideal['degree'] > 0.01  # P4 (4 nodes, not 5) stands in for P3
    # training cliques against test paths: far from zero, and seeded
    cliques = [nx.complete_graph(4), nx.complete_graph(5)]
    far = example.resampled_train_mmd(cliques, test, draws=4, seed=1)
    assert far['degree'] > 0.1 and far['clustering'] > 0.1 and far['orbit'] > 0.01
    assert far == example.resampled_train_mmd(cliques, test, draws=4, seed=1)


class _ScriptedGenerator:
    r"""Samples by script: at T = 1.0 every third graph is a path, the rest
    the training clique; at T = 0.9 the first draw copies the training
    graphs exactly and every later draw gives paths only."""

    def __init__(self, seed: int):
        self.first_draw_seed = 777 + seed
        self.calls, self.counts = [], []

    def sample(self, num_nodes, temperature, generator):
        from torch_geometric.utils import from_networkx
        import networkx as nx
        self.calls.append((temperature, generator.initial_seed()))
        self.counts.append(list(num_nodes))
        first = generator.initial_seed() == self.first_draw_seed
        graphs = []
        for i, n in enumerate(num_nodes):
            if temperature == 1.0:
                g = nx.path_graph(n) if i % 3 == 0 else nx.complete_graph(n)
            else:
                g = nx.complete_graph(n) if first else nx.path_graph(n)
            graphs.append(from_networkx(g))
        return graphs


def test_select_temperature_averages_draws_on_the_training_graphs():
    import networkx as nx
    example = load_example()
    train_nx = [nx.complete_graph(4), nx.complete_graph(5), nx.complete_graph(4)]
    # one draw (the rule before --temperature-draws): T = 0.9's lucky first draw wins
    gen = _ScriptedGenerator(seed=3)
    assert example.select_temperature(gen, train_nx, [1.0, 0.9], seed=3) == 0.9
    assert len(gen.calls) == 2 and all(s == 780 for _, s in gen.calls)
    # averaged over draws, T = 1.0's steady third of paths beats 0.9's later all-path draws
    gen = _ScriptedGenerator(seed=3)
    assert example.select_temperature(gen, train_nx, [1.0, 0.9], seed=3, draws=4) == 1.0
    assert len(gen.calls) == 8 and len({s for _, s in gen.calls}) == 4
    # each draw sees the training node counts, and the draws are the same for every T
    assert [s for t, s in gen.calls if t == 1.0] == [s for t, s in gen.calls if t == 0.9]
    assert all(c == [4, 5, 4] for c in gen.counts)
    with pytest.raises(ValueError, match='draws'):
        example.select_temperature(gen, train_nx, [1.0], seed=3, draws=0)


def test_temperature_draws_flag_defaults_to_ten_and_must_be_positive():
    example = load_example()
    assert example.parse_args([]).temperature_draws == 10
    assert example.parse_args(['--tiny']).temperature_draws == 2
    with pytest.raises(SystemExit):
        example.parse_args(['--temperature-draws', '0'])


def test_loss_spike_guard_rolls_back_to_the_last_healthy_copy():
    example = load_example()
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(lin.parameters(), lr=0.1)
    guard = example.LossSpikeGuard(lin, opt, factor=10, every=5, warmup=5, max_rollbacks=2)

    def train_step():  # moves the weights and the optimiser's state
        opt.zero_grad()
        lin(torch.randn(4, 3)).pow(2).sum().backward()
        opt.step()

    def snapshot():
        return ([p.detach().clone() for p in lin.parameters()],
                [s['exp_avg_sq'].clone() for s in opt.state.values()])

    def same(a, b):
        return all(torch.equal(x, y) for xs, ys in zip(a, b) for x, y in zip(xs, ys))

    assert guard.observe(3, 100.0) is None  # warm-up: not watched
    for step in range(5, 11):
        train_step()
        assert guard.observe(step, 1.0) is None
    at_10 = snapshot()  # the last copy (every 5 steps while healthy)
    train_step()
    assert guard.observe(11, 5.0) is None  # a spike healthy runs recover from
    train_step()
    assert not same(snapshot(), at_10)
    assert guard.observe(12, 10.5) == 10  # runaway: back to step 10
    assert same(snapshot(), at_10)
    assert guard.lr_scale == 0.5 and guard.rollbacks == [(12, 10)]
    assert guard.running_loss == 1.0
    for step in range(11, 16):
        train_step()
        assert guard.observe(step, 3.0) is None  # above 2x the lowest: no new copy at 15
    assert guard.observe(16, 10.5) == 10  # the same copy again, unchanged by training
    assert same(snapshot(), at_10) and guard.lr_scale == 0.25
    with pytest.raises(RuntimeError, match='ran away 3 times'):
        guard.observe(17, 10.5)


def test_training_rolls_the_auto_encoder_back_and_records_it(tmp_path, monkeypatch):
    # The training loop with a guard that watches from step 2 and copies every
    # 4 steps; the 12th auto-encoder step reports a runaway loss.
    example = load_example()

    class QuickGuard(example.LossSpikeGuard):
        def __init__(self, module, opt, factor):
            super().__init__(module, opt, factor, every=4, warmup=2)

    lrs, real_step = [], example.optimizer_step

    def scripted_step(opt, params, loss):
        lrs.append(opt.param_groups[0]['lr'])
        real_step(opt, params, loss)
        return 1000.0 if len(lrs) == 12 else 1.0

    monkeypatch.setattr(example, 'LossSpikeGuard', QuickGuard)
    monkeypatch.setattr(example, 'optimizer_step', scripted_step)
    ckpt = str(tmp_path / 'ckpt')
    table = example.main(['--dataset', 'community_small', '--tiny', '--checkpoint-dir', ckpt,
                          '--out', str(tmp_path / 'out'), '--stage', 'train'])
    assert table == ''  # --stage train
    state = torch.load(os.path.join(ckpt, 'tiny_community_small_seed0.pt'), weights_only=False)
    assert state['ae_step'] == 20 and state['ae_rollbacks'] == [(12, 8)]
    assert state['ae_lr_scale'] == 0.5
    assert example.rollback_label(state) == '12->8 (lr x0.5)'
    # 12 steps, then steps 9-20 again at half the learning rate; then the flow's 20
    assert len(lrs) == 12 + 12 + 20
    lr = example.parse_args(['--tiny']).lr
    assert lrs[11] == pytest.approx(example.cosine_lr(11, 20, lr))
    assert lrs[12] == pytest.approx(0.5 * example.cosine_lr(8, 20, lr))
    assert lrs[24] == pytest.approx(example.cosine_lr(0, 20, lr))  # the flow: unscaled
    # Runs before the guard, or with it off, say so.
    assert example.rollback_label({}) == 'no guard'
    assert example.rollback_label({'ae_spike_factor': 0.0}) == 'no guard'
    assert example.rollback_label({'ae_spike_factor': 10.0}) == 'none'
    with pytest.raises(SystemExit):
        example.parse_args(['--ae-spike-factor', '1.5'])
