r"""Reversible (memory-saving) RevGAT under DistributedDataParallel: two gloo
processes on CPU give the gradients of one process on the combined batch,
and the products example trains end to end with two ranks."""
import datetime
import importlib.util
import os
import os.path as osp
import socket
import sys
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch_geometric.data import Batch, Data

from torch_geometric_gnf.datasets import write_ogbn_dataset
from torch_geometric_gnf.models import RevGAT

WORLD_SIZE = 2
TIMEOUT_S = 120
EXAMPLE = osp.join(osp.dirname(__file__), '..', 'examples', 'ogbn_products.py')


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def make_graph(rank: int) -> Data:
    r"""Rank :obj:`rank`'s batch: a random graph with 6 of 30 nodes labelled
    (the same count on every rank, so the mean of the per-rank mean losses
    is the mean loss over the union)."""
    gen = torch.Generator().manual_seed(100 + rank)
    n = 30
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=gen)[:6]] = True
    return Data(x=torch.randn(n, 5, generator=gen),
                edge_index=torch.randint(0, n, (2, 90), generator=gen),
                edge_attr=torch.rand(90, 3, generator=gen),
                y=torch.randint(0, 4, (n,), generator=gen), mask=mask)


def make_model() -> RevGAT:
    torch.manual_seed(0)
    # No dropout: ranks draw different masks than a single process would.
    return RevGAT(5, 16, 4, num_layers=3, heads=2, edge_dim=3, memory_saving=True)


def loss_of(model: torch.nn.Module, data: Data) -> torch.Tensor:
    out = model(data.x, data.edge_index, data.edge_attr)
    return F.cross_entropy(out[data.mask], data.y[data.mask])


def two_steps(model: torch.nn.Module, data: Data, params) -> list:
    r"""Gradients of two consecutive SGD steps (the second forward is where
    DDP reports parameters that got no gradient in the first)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    grads = []
    for _ in range(2):
        opt.zero_grad()
        loss_of(model, data).backward()
        grads.append([p.grad.detach().clone() for p in params()])
        opt.step()
    return grads


def worker(rank: int, ports: list, argv: list, out_dir: str) -> None:
    r"""One rank: the gradient check, then the products example for two
    epochs and once more resumed for a third (one spawn for everything:
    starting a process that imports torch costs seconds)."""
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{ports[0]}',
                            rank=rank, world_size=WORLD_SIZE,
                            timeout=datetime.timedelta(seconds=TIMEOUT_S))
    try:
        model = make_model()
        ddp = torch.nn.parallel.DistributedDataParallel(
            model, find_unused_parameters=False)
        grads = two_steps(ddp, make_graph(rank), model.parameters)
        torch.save(grads, osp.join(out_dir, f'grads{rank}.pt'))
    finally:
        dist.destroy_process_group()

    spec = importlib.util.spec_from_file_location('example_ogbn_products', EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    os.environ.update(MASTER_ADDR='127.0.0.1', RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE))
    for run, (port, epochs) in enumerate(zip(ports[1:], ('2', '3'))):
        os.environ['MASTER_PORT'] = str(port)
        result = module.main(argv + ['--epochs', epochs])
        torch.save({'result': result}, osp.join(out_dir, f'result{rank}_{run}.pt'))


def run_workers(fn, args) -> None:
    r"""Spawns :obj:`WORLD_SIZE` processes and fails (killing them) instead of
    hanging if they do not finish in time."""
    ctx = mp.start_processes(fn, args=args, nprocs=WORLD_SIZE, join=False,
                             start_method='spawn')
    deadline = TIMEOUT_S
    start = time.monotonic()
    while not ctx.join(timeout=1):
        if time.monotonic() - start > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            pytest.fail(f'DDP workers did not finish in {deadline} s')


@pytest.fixture(scope='module')
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp('ddp')
    root = str(out / 'ogb')
    write_ogbn_dataset(root, 'ogbn-products', num_nodes=120, seed=0)
    ckpt = str(out / 'ddp.pt')
    argv = ['--root', root, '--device', 'cpu', '--hidden', '16', '--heads', '2',
            '--layers', '2', '--num-parts', '4', '--eval-parts', '2',
            '--checkpoint', ckpt]
    run_workers(worker, ([free_port() for _ in range(3)], argv, str(out)))
    return out


def test_ddp_gradients_equal_single_process_on_combined_batch(ddp_run):
    per_rank = [torch.load(ddp_run / f'grads{r}.pt', weights_only=True)
                for r in range(WORLD_SIZE)]
    # DDP all-reduces (averages): both ranks hold the same gradients.
    for a, b in zip(per_rank[0], per_rank[1]):
        for ga, gb in zip(a, b):
            assert torch.equal(ga, gb)

    # One process, one batch: the disjoint union of the ranks' graphs.
    combined = Batch.from_data_list([make_graph(r) for r in range(WORLD_SIZE)])
    model = make_model()
    expected = two_steps(model, combined, model.parameters)
    names = [n for n, _ in model.named_parameters()]
    assert len(names) == len(expected[0]) == len(per_rank[0][0])
    for step in range(2):
        for name, got, want in zip(names, per_rank[0][step], expected[step]):
            assert want.abs().sum() > 0, name  # every parameter is trained
            assert torch.allclose(got, want, rtol=1e-4, atol=1e-6), (step, name)


def test_products_example_two_ranks_with_resume(ddp_run):
    def result(rank, run):
        return torch.load(ddp_run / f'result{rank}_{run}.pt', weights_only=True)['result']
    assert result(1, 0) == {} and result(1, 1) == {}  # only rank 0 reports
    first = result(0, 0)
    assert first['world_size'] == 2 and first['last']['epoch'] == 2
    assert 0.0 <= first['last']['test_acc'] <= 1.0
    # The second run resumed from the epoch-2 checkpoint and ran epoch 3 only.
    second = result(0, 1)
    assert second['last']['epoch'] == 3
    state = torch.load(ddp_run / 'ddp.pt', weights_only=True)
    assert state['epoch'] == 3
    assert [h['epoch'] for h in state['extra']['history']] == [1, 2, 3]
