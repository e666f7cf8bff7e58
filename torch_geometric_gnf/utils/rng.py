r"""Recording and replaying the random generator state, so that re-running a
function in a backward pass (reversible steps, :func:`ops.recompute`) draws
the same dropout masks as the forward pass did."""
from contextlib import contextmanager
from typing import Iterator

import torch


class RngState:
    r"""CPU (and CUDA, for CUDA tensors) random generator state, recorded
    before a function runs so that its dropout masks replay exactly."""
    def __init__(self, device: torch.device):
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == 'cuda' else None

    def restore(self) -> None:
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
