r"""Training-step time of the graph generator's flow: eager PyTorch versus
couplings compiled with :func:`torch.compile`, side by side in one process.

Both flows are built from the same seed with the example's default
configuration (``examples/graph_generation.py``: 10 affine couplings, two
attention + MLP blocks per coupling network, learned mixing, width 64,
4 heads) and train on the same minibatches of the data set's training
graphs (encoder embeddings, fresh noise each step).  After a warm-up (which
includes compiling), rounds alternate eager / compiled so that both see the
same machine; the machine's speed drifts, the ratio is what to read.

    python benchmarks/graph_generation_steps.py --dataset community_small \
        [--threads 2] [--steps 60] [--rounds 4] [--markdown out.md]
"""
import argparse
import importlib.util
import os.path as osp
import time
from typing import Dict, List, Optional

import torch
from torch_geometric.data import Batch

EXAMPLE = osp.join(osp.dirname(osp.abspath(__file__)), '..', 'examples',
                   'graph_generation.py')


def load_example():
    spec = importlib.util.spec_from_file_location('graph_generation_example', EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def flow_trainer(example, args, train: List, compiled: bool):
    r"""One flow-training step function (the example's loss, clipping and
    optimiser) for a flow built from seed 0, compiled or not."""
    torch.manual_seed(0)
    ae, gen = example.build(args, train)
    if compiled:
        example.compile_couplings(gen)
    params = list(gen.flow.parameters())
    opt = example.make_adam(params, args.lr)
    ae.eval()

    def step(batch: Batch) -> float:
        return example.optimizer_step(opt, params, example.flow_loss(gen, batch))
    return step


def run(dataset: str = 'community_small', threads: int = 2, steps: int = 60,
        rounds: int = 4, warmup: int = 4, extra: Optional[List[str]] = None
        ) -> Dict[str, float]:
    r"""Returns mean milliseconds per step of both variants, their ratio and
    the warm-up seconds of each (the compiled one's includes compiling)."""
    from torch_geometric_gnf.datasets import graphrnn_split
    torch.set_num_threads(threads)
    example = load_example()
    args = example.parse_args(['--dataset', dataset] + (extra or []))
    train = list(graphrnn_split(example.load_dataset(args))[0])
    trainers = {name: flow_trainer(example, args, train, name == 'compiled')
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
            print(f'round {r}: {name:8s} {ms:7.1f} ms/step', flush=True)
    result.update(eager_ms=totals['eager'], compiled_ms=totals['compiled'],
                  speedup=totals['eager'] / totals['compiled'],
                  flow_steps=args.flow_steps)
    return result


def to_markdown(res: Dict[str, float], dataset: str, threads: int) -> str:
    minutes = {k: res[f'{k}_ms'] * res['flow_steps'] / 60000 for k in ('eager', 'compiled')}
    return '\n'.join([
        f'Flow training step, {dataset}, batch 32, {threads} thread(s):', '',
        '| flow couplings | ms / step | warm-up (s) | default flow stage at this rate |',
        '|---|---|---|---|',
        f"| eager | {res['eager_ms']:.1f} | {res['eager_warmup_s']:.1f} | "
        f"{minutes['eager']:.1f} min |",
        f"| compiled (`torch.compile`, dynamic, fullgraph) | {res['compiled_ms']:.1f} | "
        f"{res['compiled_warmup_s']:.1f} | {minutes['compiled']:.1f} min |",
        f"| **speed-up** | **{res['speedup']:.2f}x** | | |", ''])


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--dataset', default='community_small',
                   choices=['community_small', 'ego_small'])
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--steps', type=int, default=60, help='steps per round')
    p.add_argument('--rounds', type=int, default=4)
    p.add_argument('--markdown', default=None)
    args, extra = p.parse_known_args(argv)  # the rest goes to the example's parser
    res = run(args.dataset, args.threads, args.steps, args.rounds, extra=extra)
    table = to_markdown(res, args.dataset, args.threads)
    print(table)
    if args.markdown:
        with open(args.markdown, 'w') as f:
            f.write(table)
    return table


if __name__ == '__main__':
    main()
