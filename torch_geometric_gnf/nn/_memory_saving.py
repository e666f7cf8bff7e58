r"""Memory-saving autograd for reversible steps.

:class:`ReversibleFunction` runs a step without recording a graph and keeps
only its output.  The backward pass follows RevNet (Gomez et al., 2017,
Algorithm 1): for each half-step, recompute :math:`F` (or :math:`G`) on the
known half with grad enabled, rebuild the other half of the input with the
inverse coupling, re-apply the coupling to the rebuilt half and backpropagate.
Each half-step's function thus runs once more in backward, not twice
(inverse, then forward) as in a plain "invert, then recompute" scheme.

Chaining: when a step's input is the output of another memory-saving step,
the successor takes the predecessor's stored output away
(:func:`release_chained_input`) and hands back the input it rebuilds during
its own backward pass, so a stack of any depth stores one feature matrix.

On CPU each step's forward and backward pass run inside the block cache
(``ops.block_cache``, part of the memory release of ``utils.memory``): the
next layer's intermediates reuse the blocks this layer freed.
"""
import contextlib
from typing import Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from torch_geometric_gnf.ops.block_cache import (block_cache,
                                                 end_block_cache_pass)
from torch_geometric_gnf.utils.memory import (memory_release_applies,
                                              memory_release_block_cache,
                                              memory_release_keep_bytes,
                                              release_freed_memory)
from torch_geometric_gnf.utils.rng import RngState
from torch_geometric_gnf.utils.rng import forked_rng as _forked_rng


def _substitute(call: Tuple, originals: Sequence[Tensor],
                replacements: Sequence[Tensor]) -> Tuple:
    r"""Replaces grad-requiring tensors among the extra arguments by leaves."""
    if len(originals) == 0:
        return call
    swap = {id(o): r for o, r in zip(originals, replacements)}
    edge_index, args, kwargs, batch, num_graphs = call
    args = tuple(swap.get(id(a), a) for a in args)
    kwargs = {k: swap.get(id(v), v) for k, v in kwargs.items()}
    return edge_index, args, kwargs, batch, num_graphs


def _grad(outputs: Sequence[Tensor], grad_outputs: Sequence[Optional[Tensor]],
          inputs: Sequence[Tensor]) -> List[Optional[Tensor]]:
    r"""``torch.autograd.grad`` that skips outputs without a graph or a
    gradient and returns ``None`` for unused inputs."""
    pairs = [(o, g) for o, g in zip(outputs, grad_outputs)
             if g is not None and o.requires_grad]
    if len(pairs) == 0 or len(inputs) == 0:
        return [None] * len(inputs)
    outs, gouts = zip(*pairs)
    return list(torch.autograd.grad(outs, inputs, gouts, allow_unused=True))


def _or_zeros(grad: Optional[Tensor], like: Tensor) -> Tensor:
    return grad if grad is not None else torch.zeros_like(like)


def _backward_half_step(block: torch.nn.Module, fn: torch.nn.Module, name: str,
                        rng: RngState, call: Tuple, known: Tensor, out: Tensor,
                        grad_out: Optional[Tensor], grad_log_det: Optional[Tensor],
                        need_known: bool, need_rebuilt: bool,
                        wrt: List[Tensor]) -> Tuple[Tensor, ...]:
    r"""Backward through one half-step :math:`out = c(rebuilt; fn(known))`:
    re-runs :obj:`fn(known)` with grad enabled (replaying its random state),
    rebuilds the other input from :obj:`out` with the inverse coupling,
    re-applies the coupling to it and backpropagates.  Returns
    :obj:`(rebuilt, grad_known, grad_rebuilt, grads_wrt)`."""
    rng.restore()
    known_ = known.detach().requires_grad_(need_known)
    s, t = block._half(fn, known_, call, name)
    with torch.no_grad():
        rebuilt, _ = block._couple(out, s, t, call, True)
    rebuilt_ = rebuilt.detach().requires_grad_(need_rebuilt)
    out_, log_det = block._couple(rebuilt_, s, t, call, False)
    # Twice per half-step (here and after its gradients): what the heap
    # touches between two releases adds to the peak (utils.memory).
    release_freed_memory(rebuilt)
    inputs = [known_] * need_known + [rebuilt_] * need_rebuilt + wrt
    grads = _grad([out_, log_det], [grad_out, grad_log_det], inputs)
    grad_known = grads.pop(0) if need_known else None
    grad_rebuilt = grads.pop(0) if need_rebuilt else None
    del s, t, out_, log_det
    release_freed_memory(rebuilt)  # the recomputation's transients
    return rebuilt, grad_known, grad_rebuilt, grads


def _use_block_cache(like: Optional[Tensor], num_bytes: Optional[int] = None) -> bool:
    r"""Whether a step of :obj:`num_bytes` features (default: the size of
    :obj:`like`) like :obj:`like` takes
    its large CPU blocks from the block cache (``ops.block_cache``): each
    layer's intermediates then reuse the previous layer's blocks."""
    return (like is not None and memory_release_applies(like, num_bytes)
            and memory_release_block_cache())


@contextlib.contextmanager
def _step_blocks(use: bool, end_of_pass: bool) -> Iterator[None]:
    r"""Runs a step's forward or backward pass inside the block cache if
    :obj:`use`.  After :obj:`end_of_pass` (the backward pass of a chain's
    first step, the last to run), whether or not this step used the cache,
    the waiting blocks that this pass did not reuse are handed back.  (Takes
    no tensor: the context manager would hold it for the whole step.)"""
    if use:  # freed blocks wait for reuse up to the release's keep_bytes
        with block_cache(keep_bytes=memory_release_keep_bytes()):
            yield
    else:
        yield
    if end_of_pass:
        end_block_cache_pass()


def _add(a: Optional[Tensor], b: Optional[Tensor]) -> Optional[Tensor]:
    if a is None:
        return b
    return a if b is None else a + b


class ReversibleFunction(torch.autograd.Function):
    r"""Runs ``block._step`` storing only its output; see the module doc."""
    @staticmethod
    def forward(ctx, block: torch.nn.Module, call: Tuple, num_grad_args: int,
                x: Tensor, *inputs: Tensor) -> Tuple[Tensor, Tensor]:
        ctx.set_materialize_grads(False)
        rng: List[RngState] = []
        with _step_blocks(_use_block_cache(x), end_of_pass=False):
            y, log_det = block._step(x, call, False, rng)
        release_freed_memory(y)  # the step's transients (utils.memory)
        ctx.block, ctx.call, ctx.rng = block, call, rng
        ctx.grad_args = inputs[:num_grad_args]
        ctx.params = inputs[num_grad_args:]
        # A detached alias: storing `y` itself would form a reference cycle
        # through `y.grad_fn`.
        ctx.output = y.detach()
        ctx.output_from_successor = False
        ctx.predecessor = None
        ctx.grad_buffers = None
        ctx.is_gnf_reversible = True
        return y, log_det

    @staticmethod
    def backward(ctx, grad_y: Optional[Tensor],
                 grad_log_det: Optional[Tensor]) -> Tuple[Optional[Tensor], ...]:
        if torch.is_grad_enabled():  # create_graph=True: a graph of backward
            raise RuntimeError(
                "ReversibleMessagePassing(memory_saving=True) does not "
                "support second-order gradients (backward with "
                "create_graph=True, e.g. a gradient penalty): its backward "
                "recomputes the step instead of recording it. Use "
                "memory_saving=False for such a loss.")
        y = ctx.output  # the output, or its halves handed back
        halves = y if isinstance(y, tuple) else (y,)
        use = _use_block_cache(halves[0], sum(
            h.numel() * h.element_size() for h in halves if h is not None))
        del y, halves  # the step frees them as soon as it has rebuilt its input
        with _step_blocks(use, end_of_pass=ctx.predecessor is None):
            return ReversibleFunction._recompute_backward(ctx, grad_y,
                                                          grad_log_det)

    @staticmethod
    @once_differentiable
    def _recompute_backward(ctx, grad_y: Optional[Tensor],
                            grad_log_det: Optional[Tensor]
                            ) -> Tuple[Optional[Tensor], ...]:
        y = ctx.output
        if y is None:
            raise RuntimeError(
                "A memory-saving reversible step lost its output: it was "
                "released for the next reversible step to rebuild, but that "
                "step's backward pass did not run. Backpropagate through the "
                "last step's output or use memory_saving=False.")
        if ctx.output_from_successor:
            ctx.output = None  # handed over by the successor; free it now
        block, rng = ctx.block, ctx.rng
        _reserve_param_grads(ctx)
        # Halves handed back by the successor are separate tensors: each is
        # dropped as soon as its half-step has rebuilt the input from it.
        y0, y1 = y if isinstance(y, tuple) else block._split(y)
        device = y0.device
        del y
        need_x = ctx.needs_input_grad[3]
        grad_args = list(ctx.grad_args)
        leaves = [a.detach().requires_grad_() for a in grad_args]
        call = _substitute(ctx.call, grad_args, leaves)
        wrt = leaves + list(ctx.params)
        if grad_y is None:
            gy0, gy1 = torch.zeros_like(y0), torch.zeros_like(y1)
        else:
            gy0, gy1 = block._split(grad_y)
        grads: List[Optional[Tensor]] = [None] * len(wrt)

        with torch.enable_grad(), _forked_rng(device):
            x0, gx0 = y0, gy0
            if block.g is not None:  # second half-step: y0 = c(x0; G(y1))
                x0, g_y1, gx0, g_wrt = _backward_half_step(
                    block, block.g, 'g', rng[1], call, y1, y0, gy0,
                    grad_log_det, True, need_x, wrt)
                gy1 = _add(gy1, g_y1)
                grads = [_add(a, b) for a, b in zip(grads, g_wrt)]
            del y0
            # first half-step: y1 = c(x1; F(x0))
            x1, g_x0, gx1, g_wrt = _backward_half_step(
                block, block.f, 'f', rng[0], call, x0, y1, gy1, grad_log_det,
                need_x, need_x, wrt)
            del y1
            grads = [_add(a, b) for a, b in zip(grads, g_wrt)]
        grad_x = None
        if need_x:
            gx0 = _add(gx0, g_x0)
            grad_x = block._merge(_or_zeros(gx0, x0), _or_zeros(gx1, x1))

        if ctx.predecessor is not None:  # hand the rebuilt input back (kept
            # linked so that a retained graph can be backpropagated again),
            # as halves where the predecessor splits the same way: no merged
            # copy (one feature matrix less allocated and held per step).
            same_split = ctx.predecessor.block.split_dim == block.split_dim
            ctx.predecessor.output = (x0, x1) if same_split else \
                block._merge(x0, x1)
        num_args = len(grad_args)
        buffers, ctx.grad_buffers = ctx.grad_buffers, None
        for i, buffer in enumerate(buffers, start=num_args):
            if buffer is not None and grads[i] is not None:
                grads[i] = buffer.copy_(grads[i])
        return (None, None, None, grad_x, *grads[:num_args], *grads[num_args:])


def _reserve_param_grads(ctx) -> None:
    r"""At the start of a chain's backward pass, allocates the gradient of
    each CPU parameter without one (``.grad is None``) for every step of the
    chain; each step copies its gradients there and autograd keeps these
    tensors as ``.grad``.  Allocated in the backward pass of each step, amid
    its transients, these small long-lived blocks would split the heap's
    large free blocks one layer after another and the heap would grow with
    depth (``utils.memory``); allocated together, they sit side by side."""
    node = ctx
    while node is not None and node.grad_buffers is None:
        node.grad_buffers = [
            torch.empty_like(p) if (p.requires_grad and p.grad is None
                                    and p.device.type == 'cpu') else None
            for p in node.params]
        node = node.predecessor


def release_chained_input(x: Tensor, y: Tensor) -> None:
    r"""If :obj:`x` is the stored output of another memory-saving step, drop
    that copy: the step that produced :obj:`y` rebuilds it in backward."""
    prev = x.grad_fn
    if prev is None or not getattr(prev, 'is_gnf_reversible', False):
        return
    if x.output_nr != 0:  # the log-det output, not the features
        return
    prev.output = None
    prev.output_from_successor = True
    y.grad_fn.predecessor = prev
