r"""Graph generation with a graph auto-encoder + graph normalizing flow
(GNF paper section 5.2, Tables 3-4, Figure 4) on community-small / ego-small.

For every seed:

1. trains a :class:`GraphAutoEncoder` (attention message passing on fresh
   Gaussian node features, distance decoder, BCE over node pairs) and
   reports Table 3 (BCE per node, incorrect edges; mean of 5 noise draws);
2. trains a :class:`GraphGenerator` (a GNF with dense attention couplings)
   on the encoder's embeddings of the training graphs (re-encoded with fresh
   noise at every step);
3. samples graphs with both protocols of the paper (as many graphs as test
   graphs with the test graphs' node counts; 1024 graphs with node counts
   from the training prior) and computes the GraphRNN MMD^2 (degree,
   clustering, orbit) against the test graphs, beside the train-vs-test
   noise floor.

A :class:`LossSpikeGuard` watches the auto-encoder's training: if its
running loss runs away (``--ae-spike-factor`` times its lowest), training
goes back to the last healthy copy at half the learning rate, and the table
lists the rollback.  Training checkpoints (resumed automatically) go to
``--checkpoint-dir``; the table and a grid of real vs generated graphs go to
``<out>/graph_generation_<dataset>.{md,png}``, where ``--out`` defaults to a
new ``runs/graph_generation/<UTC time>/`` folder (the recorded results in
``examples/results/`` change only when ``--out`` names that folder).

    python examples/graph_generation.py --dataset community_small --seeds 3
    python examples/graph_generation.py --dataset ego_small --tiny   # smoke run

``--compile`` compiles the flow's couplings with :func:`torch.compile`
(same math; needs a C++ compiler for PyTorch's CPU code generation), which
makes the flow's training steps 1.2-1.4x faster on CPU
(``benchmarks/graph_generation_steps.py`` measures it side by side, and
the opt-in ``--compile-ae`` for the auto-encoder's loss):

    python examples/graph_generation.py --dataset community_small --seeds 1 --threads 2 --compile

Seeds can train in parallel processes (one per core) and be evaluated
together afterwards, with the same result as one sequential run:

    python examples/graph_generation.py --dataset ego_small --stage train --seeds 1 --first-seed S
    python examples/graph_generation.py --dataset ego_small --stage eval --seeds 3
"""
import argparse
import copy
import json
import math
import os
import tempfile
import time
from typing import Dict, List, Optional

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import networkx as nx  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch_geometric.data import Batch  # noqa: E402
from torch_geometric.utils import to_networkx  # noqa: E402
from tqdm import tqdm  # noqa: E402

from torch_geometric_gnf.datasets import (CommunitySmall, EgoSmall,  # noqa: E402
                                          graphrnn_split)
from torch_geometric_gnf.models import GraphAutoEncoder, GraphGenerator  # noqa: E402
from torch_geometric_gnf.utils.cli import HelpFormatter, resolve_out  # noqa: E402

SHARED_JSON = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..',
                           'shared', 'data', 'graphrnn', '{}.json')
DATASETS = {'community_small': CommunitySmall, 'ego_small': EgoSmall}
# Flow training steps per data set. The community-small flow was still
# improving at 8,000 steps (its held-out log-likelihood did not fall behind
# the training one), and with 16,000 its samples' clustering MMD halved.
DEFAULT_FLOW_STEPS = {'community_small': 16000, 'ego_small': 8000}
# Reference rows (MMD^2: degree / clustering / orbit).
PAPER = {'community_small': {'GNF (paper)': (0.20, 0.20, 0.11),
                             'GraphRNN (paper)': (0.08, 0.12, 0.04),
                             'GNF 1024 (paper)': (0.12, 0.15, 0.02),
                             'target': (0.08, 0.12, 0.04)},
         'ego_small': {'GNF (paper)': (0.03, 0.10, 0.001),
                       'GraphRNN (paper)': (0.09, 0.22, 0.003),
                       'GNF 1024 (paper)': (0.01, 0.03, 0.0008),
                       'target': (0.03, 0.10, 0.003)}}
STATS = ('degree', 'clustering', 'orbit')


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument('--dataset', choices=sorted(DATASETS), default='community_small')
    p.add_argument('--data-json', default=None,
                   help='graph list to read (default: ../shared/data/graphrnn/'
                        '<dataset>.json if present, else generate)')
    p.add_argument('--seeds', type=int, default=None,
                   help='number of training seeds (default: 3; 1 with --tiny)')
    p.add_argument('--first-seed', type=int, default=0,
                   help='seeds are first-seed, first-seed + 1, ...: train seeds '
                        'in parallel processes with --stage train, then '
                        'evaluate them together with --stage eval')
    p.add_argument('--embedding', type=int, default=8)
    p.add_argument('--hidden', type=int, default=64)
    p.add_argument('--heads', type=int, default=4)
    p.add_argument('--ae-layers', type=int, default=10)
    p.add_argument('--ae-steps', type=int, default=20000)
    p.add_argument('--attention', choices=['edges', 'all'], default='all',
                   help="encoder attention: over each node's neighbours (the "
                        "paper's) or over its whole graph with a learned "
                        "bias on linked pairs")
    p.add_argument('--flow-couplings', type=int, default=10)
    p.add_argument('--flow-blocks', type=int, default=2,
                   help='attention + MLP blocks in every coupling network')
    p.add_argument('--flow-mixing', choices=['permutation', 'linear'],
                   default='linear',
                   help='between couplings: a fixed random channel permutation '
                        'or a learned invertible linear map (InvertibleLinear)')
    p.add_argument('--flow-steps', type=int, default=None,
                   help='flow training steps (default: per data set, '
                        'DEFAULT_FLOW_STEPS)')
    p.add_argument('--batch-size', type=int, default=32)
    p.add_argument('--lr', type=float, default=2e-3)
    p.add_argument('--num-samples', type=int, default=1024)
    p.add_argument('--temperature', type=float, default=None,
                   help='scale of the latent prior when sampling (default: the '
                        'best of --temperatures by MMD to the *training* graphs)')
    p.add_argument('--temperatures', type=float, nargs='+',
                   default=[1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    p.add_argument('--temperature-draws', type=int, default=10,
                   help='sample sets (training node counts) per temperature whose '
                        'summed train MMD^2 is averaged to choose the temperature '
                        '(rounds up to 10 used 1)')
    p.add_argument('--center-std', type=float, default=0.1)
    p.add_argument('--ae-embedding-noise', type=float, default=0.0,
                   help='std of the Gaussian noise added to the embeddings '
                        'before decoding in auto-encoder training (and to the '
                        "flow's training embeddings): a margin around the "
                        "decoder's threshold")
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--compile', action='store_true',
                   help="torch.compile the flow's couplings for training (one "
                        'compiled graph serves all couplings; dynamic shapes; '
                        'under a minute to compile, then faster flow steps)')
    p.add_argument('--compile-ae', action='store_true',
                   help="also torch.compile the auto-encoder's loss "
                        '(GraphAutoEncoder.compile_loss; opt-in: two community-small '
                        'runs with it had their loss run away, which --ae-spike-factor '
                        'now catches; docs/graph_generation.md, rounds 11-12)')
    p.add_argument('--ae-spike-factor', type=float, default=10.0,
                   help="roll the auto-encoder back to its last healthy copy and "
                        'halve its learning rate when its running loss exceeds '
                        'this multiple of its lowest (LossSpikeGuard; 0: off)')
    p.add_argument('--stage', choices=['all', 'train', 'eval'], default='all')
    p.add_argument('--checkpoint-dir',
                   default=os.path.join(tempfile.gettempdir(), 'gnf_graph_generation'))
    p.add_argument('--checkpoint-every', type=int, default=250)
    p.add_argument('--out', default=None,
                   help='folder for the table and figure (default: a new '
                        'runs/graph_generation/<UTC time>/ folder)')
    p.add_argument('--tiny', action='store_true',
                   help='seconds-long smoke run (small models, few steps, 1 seed)')
    args = p.parse_args(argv)
    if args.seeds is None:
        args.seeds = 1 if args.tiny else 3
    if args.flow_steps is None:
        args.flow_steps = DEFAULT_FLOW_STEPS[args.dataset]
    if args.seeds < 1 or args.first_seed < 0:
        p.error('--seeds must be positive and --first-seed non-negative')
    if args.ae_spike_factor != 0 and args.ae_spike_factor <= 2:
        p.error('--ae-spike-factor must be 0 (off) or above 2')
    if args.temperature_draws < 1:
        p.error('--temperature-draws must be positive')
    if args.tiny:
        args.embedding, args.hidden, args.heads = 4, 16, 2
        args.ae_layers, args.ae_steps, args.flow_couplings = 2, 20, 2
        args.flow_steps, args.num_samples, args.checkpoint_every = 20, 16, 10
        args.temperatures, args.temperature_draws = [1.0, 0.7], 2
    return args


def load_dataset(args) -> List:
    path = args.data_json
    if path is None and os.path.isfile(SHARED_JSON.format(args.dataset)):
        path = SHARED_JSON.format(args.dataset)
    dataset = DATASETS[args.dataset](json_path=path)
    args.data_source = (f'graph list `{os.path.relpath(path)}`' if path is not None
                        else 'generated with the published procedure (seed 0)')
    print(f'{dataset}: {len(dataset)} graphs')
    return dataset


def cosine_lr(step: int, total: int, lr: float) -> float:
    return lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / max(total, 1))))


def minibatch(graphs: List, size: int, gen: torch.Generator) -> Batch:
    idx = torch.randperm(len(graphs), generator=gen)[:size].tolist()
    return Batch.from_data_list([graphs[i] for i in idx])


def config_of(args) -> Dict:
    keys = ('dataset', 'embedding', 'hidden', 'heads', 'ae_layers', 'ae_steps',
            'flow_couplings', 'flow_steps', 'batch_size', 'lr', 'data_json',
            'center_std', 'attention', 'flow_blocks', 'flow_mixing',
            'ae_embedding_noise')
    return {k: getattr(args, k) for k in keys}


# Config keys added after checkpoints were written, with the value those
# earlier runs used (the encoder attended over edges before --attention; the
# flow had one block per network and channel permutations before
# --flow-blocks / --flow-mixing, and decoded the embeddings without noise
# before --ae-embedding-noise).
LEGACY_CONFIG = {'attention': 'edges', 'flow_blocks': 1, 'flow_mixing': 'permutation',
                 'ae_embedding_noise': 0.0}


def same_config(saved: Dict, args) -> bool:
    return {**LEGACY_CONFIG, **saved} == config_of(args)


def build(args, train: List):
    ae = GraphAutoEncoder(args.embedding, args.hidden, args.ae_layers, args.heads,
                          attention=args.attention, embedding_noise=args.ae_embedding_noise)
    gen = GraphGenerator(ae, [g.num_nodes for g in train], args.flow_couplings,
                         args.hidden, num_blocks=args.flow_blocks, heads=args.heads,
                         center_std=args.center_std, mixing=args.flow_mixing)
    return ae, gen


def compile_couplings(gen: GraphGenerator) -> None:
    r"""Compiles every affine coupling of the flow in place (the state dict
    keeps its keys).  The couplings share one class and structure, so one
    compiled graph (per :obj:`requires_grad` pattern of the input) serves
    them all; dynamic shapes keep batches of other sizes from recompiling;
    :obj:`fullgraph` makes untraceable code an error, not a slow path."""
    from torch_geometric_gnf.nn import GraphAffineCoupling
    for module in gen.flow.couplings:
        if isinstance(module, GraphAffineCoupling):
            module.compile(dynamic=True, fullgraph=True)


def make_adam(params, lr: float) -> torch.optim.Adam:
    r"""Adam with the fused kernel: the flow has ~600 small parameter tensors,
    and the default per-tensor loop took ~13% of a training step on CPU.
    The update rule is Adam's; only the rounding order differs."""
    return torch.optim.Adam(params, lr=lr, fused=True)


def ae_loss(ae: GraphAutoEncoder, batch: Batch) -> torch.Tensor:
    r"""The auto-encoder's training loss: BCE per node of the batch (fresh
    encoder noise each call)."""
    ae.train()
    bce, nodes = ae.loss(batch)
    return bce / nodes


def flow_loss(gen: GraphGenerator, batch: Batch) -> torch.Tensor:
    r"""The flow's training loss: negative log-likelihood per node of the
    batch's encoder embeddings (fresh encoder noise each call)."""
    gen.auto_encoder.eval()
    x = gen.embed(batch)
    return -gen.log_prob(x, batch.batch).sum() / x.size(0)


def optimizer_step(opt: torch.optim.Optimizer, params: List, loss: torch.Tensor) -> float:
    r"""Backward, gradient clipping (norm 10) and one optimiser step;
    returns the loss."""
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 10.0, foreach=True)
    opt.step()
    return loss.item()


class LossSpikeGuard:
    r"""Rolls a training stage back when its loss runs away.

    Watches the running loss :math:`\bar{\ell}_t` (the exponential average
    shown in the progress bar) and its lowest value after :obj:`warmup`
    steps, :math:`m_t = \min_{s \le t} \bar{\ell}_s`.  Every :obj:`every`
    steps at which :math:`\bar{\ell}_t \le 2 m_t`, it keeps an in-memory
    copy of the module's parameters and the optimiser's state.  When
    :math:`\bar{\ell}_t > \mathrm{factor} \cdot m_t`, it restores the last
    copy, halves the learning rate for the rest of the stage and returns the
    copy's step, from which training goes on with fresh batches.  For
    positive losses (the auto-encoder's BCE).

    Why: community-small auto-encoders (lr 0.002) train at the edge of
    stability.  From one saved state (seed 3), a compiled run's loss went
    from 0.2 to 10 per node within ~15 steps and stayed high for thousands,
    an eager run spiked to 11 later and recovered, and at half the learning
    rate the same state trained on normally; both runs' gradients matched
    float64 to ~1e-5 (docs, round 12).  Healthy runs were seen to reach 3-4x
    their lowest running loss and recover; the runaway ones 50x.  The copies
    live in memory only: a run resumed from disk starts watching afresh (the
    learning-rate scale and the rollbacks are checkpointed).
    """
    def __init__(self, module: torch.nn.Module, opt: torch.optim.Optimizer,
                 factor: float = 10.0, every: int = 250, warmup: int = 1000,
                 max_rollbacks: int = 5):
        self.module, self.opt = module, opt
        self.factor, self.every, self.warmup = factor, every, warmup
        self.max_rollbacks = max_rollbacks
        self.lowest = math.inf
        self.rollbacks: List = []  # (step of the runaway, step restored)
        self._copy: Optional[Dict] = None

    def observe(self, step: int, running_loss: float) -> Optional[int]:
        r"""Call after the optimiser step that made :obj:`step` steps; returns
        the step to go on from after a rollback, else :obj:`None`."""
        if step < self.warmup:
            return None
        if running_loss > self.factor * self.lowest and self._copy is not None:
            return self._roll_back(step)
        self.lowest = min(self.lowest, running_loss)
        if step % self.every == 0 and running_loss <= 2 * self.lowest:
            self._copy = dict(step=step, running_loss=running_loss,
                              module=copy.deepcopy(self.module.state_dict()),
                              opt=copy.deepcopy(self.opt.state_dict()))
        return None

    @property
    def lr_scale(self) -> float:
        r"""Factor on the learning rate: halved by every rollback."""
        return 0.5 ** len(self.rollbacks)

    @property
    def running_loss(self) -> float:
        r"""The running loss at the last copy (to restart the average from)."""
        return self._copy['running_loss']

    def _roll_back(self, step: int) -> int:
        if len(self.rollbacks) == self.max_rollbacks:
            raise RuntimeError(f'the loss ran away {len(self.rollbacks) + 1} times '
                               f'(steps {[r[0] for r in self.rollbacks] + [step]}); '
                               f'lower --lr')
        self.module.load_state_dict(self._copy['module'])
        # a copy of the copy: the optimiser adopts the tensors it is given
        # and updates them in place, and a later rollback may need them
        self.opt.load_state_dict(copy.deepcopy(self._copy['opt']))
        self.rollbacks.append((step, self._copy['step']))
        return self._copy['step']


def train_seed(args, seed: int, train: List, ckpt_path: str) -> Dict:
    r"""Trains (or resumes) both stages of one seed; returns the checkpoint."""
    torch.manual_seed(seed)
    ae, gen = build(args, train)
    if args.compile_ae:
        ae.compile_loss()
    if args.compile:
        compile_couplings(gen)
    ae_opt = make_adam(ae.parameters(), args.lr)
    flow_opt = make_adam(gen.flow.parameters(), args.lr)
    state = dict(config=config_of(args), ae_step=0, flow_step=0, ae_seconds=0.0,
                 flow_seconds=0.0)
    if os.path.isfile(ckpt_path):
        state = torch.load(ckpt_path, weights_only=False)
        if not same_config(state['config'], args):
            raise ValueError(f'{ckpt_path} was trained with another configuration; '
                             f'delete it or use another --checkpoint-dir')
        gen.load_state_dict(state['model'])
        ae_opt.load_state_dict(state['ae_opt'])
        flow_opt.load_state_dict(state['flow_opt'])
    data_gen = torch.Generator().manual_seed(1000 + seed + state['ae_step']
                                             + state['flow_step'])

    def save():
        state.update(model=gen.state_dict(), ae_opt=ae_opt.state_dict(),
                     flow_opt=flow_opt.state_dict(), threads=args.threads,
                     compiled=args.compile, compiled_ae=args.compile_ae,
                     ae_spike_factor=args.ae_spike_factor)
        torch.save(state, ckpt_path + '.tmp')
        os.replace(ckpt_path + '.tmp', ckpt_path)

    for stage in ('ae', 'flow'):
        total = getattr(args, f'{stage}_steps')
        opt = ae_opt if stage == 'ae' else flow_opt
        params = list(ae.parameters()) if stage == 'ae' else list(gen.flow.parameters())
        guard = None
        if stage == 'ae' and args.ae_spike_factor > 0:
            guard = LossSpikeGuard(ae, ae_opt, args.ae_spike_factor)
            guard.rollbacks = [tuple(r) for r in state.get('ae_rollbacks', [])]
        step = state[f'{stage}_step']
        bar = tqdm(desc=f'seed {seed} {stage}', initial=step, total=total, mininterval=5)
        start, avg = time.perf_counter(), None
        while step < total:
            batch = minibatch(train, args.batch_size, data_gen)
            lr_scale = guard.lr_scale if guard is not None else 1.0
            for group in opt.param_groups:
                group['lr'] = lr_scale * cosine_lr(step, total, args.lr)
            loss = ae_loss(ae, batch) if stage == 'ae' else flow_loss(gen, batch)
            value = optimizer_step(opt, params, loss)
            avg = value if avg is None else 0.98 * avg + 0.02 * value
            step += 1
            back = guard.observe(step, avg) if guard is not None else None
            if back is not None:
                tqdm.write(f'seed {seed} {stage}: running loss {avg:.4g} at step {step}; '
                           f'back to step {back}, learning rate x{guard.lr_scale:g}')
                step, avg = back, guard.running_loss
                state.update(ae_lr_scale=guard.lr_scale, ae_rollbacks=guard.rollbacks)
                bar.n = step
            else:
                bar.update(1)
            bar.set_postfix({'loss/node': f'{avg:.4f}'}, refresh=False)  # drawn every mininterval
            state[f'{stage}_step'] = step
            # after a rollback too, so that the file never holds the runaway state
            if back is not None or step % args.checkpoint_every == 0 or step == total:
                state[f'{stage}_seconds'] += time.perf_counter() - start
                start = time.perf_counter()
                save()
    if not os.path.isfile(ckpt_path):
        save()
    return state


@torch.no_grad()
def auto_encoder_table(ae: GraphAutoEncoder, graphs: List, draws: int = 5) -> Dict:
    r"""Table 3 for one graph set: BCE per node and incorrect edges, mean of
    :obj:`draws` encodings (fresh input noise each)."""
    ae.eval()
    batch = Batch.from_data_list(graphs)
    bce, wrong = [], []
    for _ in range(draws):
        z = ae.encode(batch.edge_index, batch.batch)
        b, n = ae.loss(batch, z)
        bce.append(float(b) / n)
        wrong.append(ae.incorrect_edges(batch, z))
    return dict(bce=float(np.mean(bce)), incorrect=float(np.mean(wrong)),
                edges=batch.num_edges // 2)


def to_nx(graphs) -> List[nx.Graph]:
    data_list = graphs.to_data_list() if isinstance(graphs, Batch) else list(graphs)
    return [to_networkx(d, to_undirected=True, remove_self_loops=True) for d in data_list]


def mean_std(rows: List[Dict], key: str) -> str:
    vals = np.array([r[key] for r in rows], dtype=float)
    return f'{vals.mean():.4g} ± {vals.std():.2g}' if len(vals) > 1 else f'{vals[0]:.4g}'


def draw_grid(real: List[nx.Graph], fake: List[nx.Graph], path: str, title: str):
    cols = min(8, len(real), len(fake))
    fig, axes = plt.subplots(2, cols, figsize=(2 * cols, 4.4), squeeze=False)
    for row, (graphs, name) in enumerate(((real, 'test'), (fake, 'GNF'))):
        for c in range(cols):
            ax, g = axes[row][c], graphs[c]
            pos = nx.spring_layout(g, seed=0)
            nx.draw(g, pos, ax=ax, node_size=18, width=0.6,
                    node_color='tab:blue' if row == 0 else 'tab:orange')
            ax.set_title(f'{name} |V|={g.number_of_nodes()}', fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def resampled_train_mmd(train_nx: List[nx.Graph], test_nx: List[nx.Graph],
                        draws: int = 20, seed: int = 0) -> Dict[str, float]:
    r"""MMD^2 of an ideal generator under the matched-count protocol: for
    every test graph, a training graph with the same node count (the nearest
    count if none) drawn at random, as a model that reproduces the training
    distribution exactly would; mean over :obj:`draws`.  Unlike the
    train-vs-test floor, its sample sizes and node counts are those of the
    matched-count rows, so it is the value to compare them with."""
    from torch_geometric_gnf.metrics import graph_mmd_table
    by_count: Dict[int, List[nx.Graph]] = {}
    for g in train_nx:
        by_count.setdefault(g.number_of_nodes(), []).append(g)
    pools = [by_count[min(by_count, key=lambda m: (abs(m - g.number_of_nodes()), m))]
             for g in test_nx]
    rng = np.random.default_rng(seed)
    totals = dict.fromkeys(STATS, 0.0)
    for _ in range(draws):
        fake = [pool[rng.integers(len(pool))] for pool in pools]
        for key, value in graph_mmd_table(test_nx, fake).items():
            totals[key] += value / draws
    return totals


def select_temperature(gen: GraphGenerator, train_nx: List[nx.Graph],
                       temperatures: List[float], seed: int, draws: int = 1) -> float:
    r"""The sampling temperature whose graphs (node counts of the training
    graphs) have the smallest summed MMD^2 to the *training* graphs, averaged
    over :obj:`draws` independent sample sets; the test graphs play no part in
    the choice.  One sample set as large as the training set (80
    community-small graphs) is a noisy estimate of a temperature's MMD^2,
    so one lucky set could decide the choice; the mean over several sets is
    a steadier estimate.  Draw 0 uses the random stream of the single-draw rule
    of earlier rounds (``--temperature-draws 1``)."""
    from torch_geometric_gnf.metrics import graph_mmd_table
    if draws < 1:
        raise ValueError(f'draws must be positive, got {draws}')
    counts = [g.number_of_nodes() for g in train_nx]
    scores = {}
    for t in temperatures:
        per_draw = []
        for d in range(draws):
            rng = torch.Generator().manual_seed(777 + seed + 100003 * d)
            fake = gen.sample(num_nodes=counts, temperature=t, generator=rng)
            per_draw.append(sum(graph_mmd_table(train_nx, to_nx(fake)).values()))
        scores[t] = (float(np.mean(per_draw)), per_draw)
    best = min(scores, key=lambda t: scores[t][0])
    print(f'seed {seed}: summed train MMD^2 by temperature, mean / std / first of '
          f'{draws} draw(s): ' + ', '.join(
              f'{t:g}: {m:.4f} / {np.std(p):.4f} / {p[0]:.4f}' for t, (m, p) in scores.items())
          + f' -> T = {best}')
    return best


def rollback_label(state: Dict) -> str:
    r"""The checkpoint's auto-encoder rollbacks (runs before the guard, or
    with it off, say so)."""
    if not state.get('ae_spike_factor'):
        return 'no guard'
    rollbacks = state.get('ae_rollbacks', [])
    return (' '.join(f'{a}->{b}' for a, b in rollbacks) + f' (lr x{0.5 ** len(rollbacks):g})'
            if rollbacks else 'none')


def compiled_label(state: Dict) -> str:
    r"""What the checkpoint's run compiled (runs before the auto-encoder's
    compiled loss recorded only :obj:`compiled`: the flow's couplings)."""
    parts = [name for name, key in (('auto-encoder', 'compiled_ae'), ('flow', 'compiled'))
             if state.get(key)]
    return f", compiled {' and '.join(parts)}" if parts else ''


def evaluate(args, train: List, test: List, states: List[Dict],
             seeds: List[int]) -> str:
    from torch_geometric_gnf.metrics import graph_mmd_table
    test_nx, train_nx = to_nx(test), to_nx(train)
    floor = graph_mmd_table(test_nx, train_nx)
    ideal = resampled_train_mmd(train_nx, test_nx)
    ae_rows, mmd_rows = [], {'matched': [], f'{args.num_samples}': []}
    fake_for_plot = None
    for seed, state in zip(seeds, states):
        torch.manual_seed(seed)
        ae, gen = build(args, train)
        gen.load_state_dict(state['model'])
        gen.eval()
        row = {}
        for split, graphs in (('train', train), ('test', test)):
            for k, v in auto_encoder_table(ae, graphs).items():
                row[f'{split}_{k}'] = v
        row['seconds'] = state['ae_seconds'] + state['flow_seconds']
        row['setup'] = (f"{state['threads']} thread(s){compiled_label(state)}"
                        if 'threads' in state else 'threads not recorded')
        row['rollbacks'] = rollback_label(state)
        ae_rows.append(row)
        temperature = args.temperature
        if temperature is None:
            temperature = select_temperature(gen, train_nx, args.temperatures, seed,
                                             args.temperature_draws)
        row['temperature'] = temperature
        rng = torch.Generator().manual_seed(12345 + seed)
        matched = gen.sample(num_nodes=[g.num_nodes for g in test],
                             temperature=temperature, generator=rng)
        many = gen.sample(args.num_samples, temperature=temperature, generator=rng)
        for key, sample in (('matched', matched), (f'{args.num_samples}', many)):
            t = time.perf_counter()
            mmd_rows[key].append(graph_mmd_table(test_nx, to_nx(sample)))
            print(f'seed {seed} {key}: {mmd_rows[key][-1]} '
                  f'({time.perf_counter() - t:.0f} s)')
        if fake_for_plot is None:
            fake_for_plot = to_nx(many)[:8]
    args.out = resolve_out(args.out, 'graph_generation')
    stem = os.path.join(args.out, f'graph_generation_{args.dataset}')
    draw_grid(test_nx[:8], fake_for_plot,
              stem + '.png', f'{args.dataset}: test graphs (top), GNF samples (bottom)')
    lines = [f'### {args.dataset} ({len(train)} train / {len(test)} test graphs, '
             f'seed(s) {", ".join(map(str, seeds))}; mean ± std over seeds)', '',
             f'Data: {args.data_source}; MMD^2 against the test graphs, GraphRNN kernels.', '',
             '| model | degree | clustering | orbit |', '|---|---|---|---|']
    for name, vals in PAPER[args.dataset].items():
        lines.append(f'| {name} | ' + ' | '.join(f'{v:g}' for v in vals) + ' |')
    lines.append('| train vs test (noise floor) | ' +
                 ' | '.join(f'{floor[s]:.4g}' for s in STATS) + ' |')
    lines.append('| train graphs at the test node counts (ideal generator, 20 draws) | ' +
                 ' | '.join(f'{ideal[s]:.4g}' for s in STATS) + ' |')
    for key, rows in mmd_rows.items():
        label = ('ours, matched node counts' if key == 'matched'
                 else f'ours, {key} samples')
        lines.append(f'| {label} | ' + ' | '.join(mean_std(rows, s) for s in STATS) + ' |')
    lines += ['', '| auto-encoder | BCE/node | incorrect edges | edges |', '|---|---|---|---|']
    for split in ('train', 'test'):
        lines.append(f'| {split} | {mean_std(ae_rows, split + "_bce")} | '
                     f'{mean_std(ae_rows, split + "_incorrect")} | '
                     f'{ae_rows[0][split + "_edges"]} |')
    lines += ['', 'Training time per seed (both stages): ' +
              ', '.join(f'{r["seconds"] / 60:.1f} min ({r["setup"]})' for r in ae_rows),
              '', 'Sampling temperature per seed (chosen on the training graphs, '
              f'mean of {args.temperature_draws} draw(s) per temperature): ' +
              ', '.join(f'{r["temperature"]:g}' for r in ae_rows),
              '', 'Auto-encoder rollbacks per seed (LossSpikeGuard; step of the '
              'runaway -> step restored): ' + ', '.join(r['rollbacks'] for r in ae_rows),
              '', f'Config: `{json.dumps(config_of(args))}`']
    table = '\n'.join(lines) + '\n'
    with open(stem + '.md', 'w') as f:
        f.write(table)
    return table


def main(argv=None) -> str:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    dataset = load_dataset(args)
    train, test = graphrnn_split(dataset)
    train, test = list(train), list(test)
    os.makedirs(args.checkpoint_dir, exist_ok=True)
    tag = 'tiny_' if args.tiny else ''
    states = []
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    for seed in seeds:
        ckpt = os.path.join(args.checkpoint_dir, f'{tag}{args.dataset}_seed{seed}.pt')
        if args.stage == 'eval':
            if not os.path.isfile(ckpt):
                raise FileNotFoundError(f'No checkpoint {ckpt}; train first')
            states.append(torch.load(ckpt, weights_only=False))
            if not same_config(states[-1]['config'], args):
                raise ValueError(f'{ckpt} was trained with another configuration')
        else:
            states.append(train_seed(args, seed, train, ckpt))
    if args.stage == 'train':
        return ''
    table = evaluate(args, train, test, states, seeds)
    print(table)
    print(f'Wrote the table and figure to {args.out}/')
    return table


if __name__ == '__main__':
    main()
