r"""Training-step time of both stages of the graph generation example, eager
PyTorch versus compiled with :func:`torch.compile` (the example's
``--compile-ae`` and ``--compile``), side by side in one process.

For each stage, both models are built from the same seed with the example's
default configuration (``examples/graph_generation.py``: the auto-encoder's
10 attention layers and its pairwise BCE (:meth:`GraphAutoEncoder.compile_loss`);
the flow's 10 affine couplings with two attention + MLP blocks per coupling
network, learned mixing, width 64, 4 heads (each coupling compiled)) and
train on the same minibatches of the data set's training graphs.  After a
warm-up (which includes compiling), rounds alternate eager / compiled so
that both see the same machine; the machine's speed drifts, the ratio is
what to read.

    python benchmarks/graph_generation_steps.py --dataset community_small \
        [--stages ae flow] [--threads 2] [--steps 60] [--rounds 4] [--markdown out.md]
"""
import argparse
import functools
import importlib.util
import os.path as osp
import time
from typing import Dict, List, Optional, Sequence

import torch
from torch_geometric.data import Batch

EXAMPLE = osp.join(osp.dirname(osp.abspath(__file__)), '..', 'examples',
                   'graph_generation.py')


def load_example():
    spec = importlib.util.spec_from_file_location('graph_generation_example', EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


STAGES = ('ae', 'flow')


def trainer(example, args, train: List, stage: str, compiled: bool):
    r"""One training-step function of :obj:`stage` (the example's loss,
    clipping and optimiser) for models built from seed 0, compiled or not."""
    torch.manual_seed(0)
    ae, gen = example.build(args, train)
    if stage == 'ae':
        if compiled:
            ae.compile_loss()
        params = list(ae.parameters())
        loss = functools.partial(example.ae_loss, ae)
    else:
        if compiled:
            example.compile_couplings(gen)
        params = list(gen.flow.parameters())
        loss = functools.partial(example.flow_loss, gen)
    opt = example.make_adam(params, args.lr)

    def step(batch: Batch) -> float:
        return example.optimizer_step(opt, params, loss(batch))
    return step


def run(dataset: str = 'community_small', threads: int = 2, steps: int = 60,
        rounds: int = 4, warmup: int = 4, extra: Optional[List[str]] = None,
        stages: Sequence[str] = STAGES) -> Dict[str, Dict[str, float]]:
    r"""Per stage: mean milliseconds per step of both variants, their ratio,
    the warm-up seconds of each (the compiled one's includes compiling) and
    the stage's default number of steps."""
    from torch_geometric_gnf.datasets import graphrnn_split
    torch.set_num_threads(threads)
    example = load_example()
    args = example.parse_args(['--dataset', dataset] + (extra or []))
    train = list(graphrnn_split(example.load_dataset(args))[0])
    return {stage: time_stage(example, args, train, stage, steps, rounds, warmup)
            for stage in stages}


def time_stage(example, args, train: List, stage: str, steps: int, rounds: int,
               warmup: int) -> Dict[str, float]:
    r"""Warm-up, then :obj:`rounds` alternating rounds of :obj:`steps` steps
    of the eager and the compiled trainer of :obj:`stage` on the same
    batches."""
    trainers = {name: trainer(example, args, train, stage, name == 'compiled')
                for name in ('eager', 'compiled')}
    result = {}
    for name, step in trainers.items():
        gen = torch.Generator().manual_seed(1)
        start = time.perf_counter()
        for _ in range(warmup):
            step(example.minibatch(train, args.batch_size, gen))
        result[f'{name}_warmup_s'] = time.perf_counter() - start
    totals = dict.fromkeys(trainers, 0.0)
    for r in range(rounds):
        for name, step in trainers.items():
            gen = torch.Generator().manual_seed(100 + r)  # same batches for both
            start = time.perf_counter()
            for _ in range(steps):
                step(example.minibatch(train, args.batch_size, gen))
            ms = 1000 * (time.perf_counter() - start) / steps
            totals[name] += ms / rounds
            print(f'{stage} round {r}: {name:8s} {ms:7.1f} ms/step', flush=True)
    result.update(eager_ms=totals['eager'], compiled_ms=totals['compiled'],
                  speedup=totals['eager'] / totals['compiled'],
                  steps=getattr(args, f'{stage}_steps'))
    return result


STAGE_NAMES = {'ae': 'auto-encoder', 'flow': 'flow'}


def to_markdown(res: Dict[str, Dict[str, float]], dataset: str, threads: int) -> str:
    lines = [f'Training steps, {dataset}, batch 32, {threads} thread(s):', '',
             '| stage | variant | ms / step | warm-up (s) | default stage at this rate |',
             '|---|---|---|---|---|']
    for stage, r in res.items():
        name = STAGE_NAMES[stage]
        for variant, label in (('eager', 'eager'),
                               ('compiled', 'compiled (`torch.compile`, dynamic, fullgraph)')):
            minutes = r[f'{variant}_ms'] * r['steps'] / 60000
            lines.append(f"| {name} | {label} | {r[f'{variant}_ms']:.1f} | "
                         f"{r[f'{variant}_warmup_s']:.1f} | {minutes:.1f} min ({r['steps']} steps) |")
        lines.append(f"| {name} | **speed-up** | **{r['speedup']:.2f}x** | | |")
    return '\n'.join(lines + [''])


def main(argv=None) -> str:
    p = argparse.ArgumentParser(
        description=__doc__.split('\n')[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--dataset', default='community_small',
                   choices=['community_small', 'ego_small'])
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--steps', type=int, default=60, help='steps per round')
    p.add_argument('--rounds', type=int, default=4)
    p.add_argument('--stages', nargs='+', choices=STAGES, default=list(STAGES))
    p.add_argument('--markdown', default=None)
    args, extra = p.parse_known_args(argv)  # the rest goes to the example's parser
    res = run(args.dataset, args.threads, args.steps, args.rounds, extra=extra,
              stages=args.stages)
    table = to_markdown(res, args.dataset, args.threads)
    print(table)
    if args.markdown:
        with open(args.markdown, 'w') as f:
            f.write(table)
    return table


if __name__ == '__main__':
    main()
