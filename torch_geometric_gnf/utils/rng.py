r"""Recording and replaying the random generator state, so that re-running a
function in a backward pass (reversible steps, :func:`ops.recompute`) draws
the same dropout masks as the forward pass did."""
from contextlib import contextmanager
from typing import Iterator, List, Optional

import torch
from torch import Tensor


class RngState:
    r"""CPU (and CUDA, for CUDA tensors) random generator state, recorded
    before a function runs so that its dropout masks replay exactly."""
    def __init__(self, device: torch.device):
        self.device = device
        self.cpu: Optional[Tensor] = torch.get_rng_state()
        self.cuda: Optional[Tensor] = (torch.cuda.get_rng_state(device)
                                       if device.type == 'cuda' else None)

    def drop_unused(self) -> None:
        r"""Called after the function ran: forgets each generator's state
        that it left unchanged (it drew no random numbers from it, so the
        re-run draws none either).  A function without dropout then holds no
        state between forward and backward: thousands of small blocks kept
        across a deep stack's forward pass split the heap's large free
        blocks, and the heap grows layer by layer (``utils.memory``)."""
        if self.cpu is not None and torch.equal(torch.get_rng_state(), self.cpu):
            self.cpu = None
        if self.cuda is not None and torch.equal(
                torch.cuda.get_rng_state(self.device), self.cuda):
            self.cuda = None

    def restore(self) -> None:
        if self.cpu is not None:
            torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)


@contextmanager
def forked_rng(device: torch.device) -> Iterator[None]:
    r"""Replaying recorded states must not disturb the generator of the
    training loop: fork, replay, restore."""
    devices = []
    if device.type == 'cuda':
        devices = [device.index if device.index is not None
                   else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        yield


@contextmanager
def recorded_rng(states: Optional[List[RngState]],
                 device: torch.device) -> Iterator[None]:
    r"""Appends the generator state before the block to :obj:`states` (if
    given) and, after the block, drops what the block did not draw from
    (:meth:`RngState.drop_unused`)."""
    if states is None:
        yield
        return
    state = RngState(device)
    states.append(state)
    yield
    state.drop_unused()
