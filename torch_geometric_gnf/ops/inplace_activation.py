r"""In-place invertible activations and activation recomputation.

As in InPlace-ABN (Rota Bulò et al., 2018): an activation that is invertible
on its output needs no copy of its input for backward. :func:`inplace_leaky_relu`
and :func:`inplace_elu` overwrite their input, save only the output and
compute the derivative from it. :func:`recompute` goes one step further and
keeps nothing of a sub-computation but its inputs, re-running it (with the
same random state, so dropout masks agree) in the backward pass.
"""
import math
from typing import Any, Callable, Iterable, List, Optional, Sequence

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from torch_geometric_gnf.utils.checks import input_checks_enabled
from torch_geometric_gnf.utils.rng import RngState, forked_rng


def _check_inplace_input(fn: str, x: Any) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{fn}: 'x' must be a Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{fn}: expected a floating point tensor, got "
                        f"{x.dtype}")
    if x.is_leaf and x.requires_grad and torch.is_grad_enabled():
        # Same rule (and wording) as PyTorch's own in-place operators.
        raise RuntimeError(f"{fn}: a leaf Variable that requires grad is "
                           f"being used in an in-place operation.")


def _check_positive(fn: str, name: str, value: float) -> float:
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{fn}: '{name}' must be finite and > 0 for the "
                         f"activation to be invertible, got {value}")
    return value


class InplaceLeakyReLUFunction(torch.autograd.Function):
    r""":math:`y = x` if :math:`x > 0` else :math:`\lambda x`, in place;
    :math:`dy/dx` is read off :math:`y` (same sign as :math:`x`)."""
    @staticmethod
    def forward(ctx, x: Tensor, negative_slope: float) -> Tensor:
        torch.nn.functional.leaky_relu_(x, negative_slope)
        ctx.mark_dirty(x)
        ctx.save_for_backward(x)
        ctx.negative_slope = negative_slope
        return x

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        y, = ctx.saved_tensors
        slope = grad_out.new_tensor(ctx.negative_slope)
        return grad_out * torch.where(y > 0, torch.ones_like(slope), slope), None


class InplaceELUFunction(torch.autograd.Function):
    r""":math:`y = x` if :math:`x > 0` else :math:`\alpha(e^x - 1)`, in
    place; :math:`dy/dx = 1` if :math:`y > 0` else :math:`y + \alpha`."""
    @staticmethod
    def forward(ctx, x: Tensor, alpha: float) -> Tensor:
        torch.nn.functional.elu_(x, alpha)
        ctx.mark_dirty(x)
        ctx.save_for_backward(x)
        ctx.alpha = alpha
        return x

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        y, = ctx.saved_tensors
        return grad_out * torch.where(y > 0, torch.ones_like(y),
                                      y + ctx.alpha), None


def inplace_leaky_relu(x: Tensor, negative_slope: float = 0.01) -> Tensor:
    r"""In-place LeakyReLU, :math:`\mathbf{y} = \max(\mathbf{x}, 0) +
    \lambda \min(\mathbf{x}, 0)` with :math:`\lambda > 0`, that stores only
    its output for backward: :math:`\partial y / \partial x = 1` if
    :math:`y > 0`, else :math:`\lambda` (the sign of :math:`y` is that of
    :math:`x`). Overwrites and returns :obj:`x`; like PyTorch's in-place ops
    it refuses a leaf that requires grad."""
    fn = 'inplace_leaky_relu'
    _check_inplace_input(fn, x)
    slope = _check_positive(fn, 'negative_slope', negative_slope)
    return InplaceLeakyReLUFunction.apply(x, slope)


def inplace_elu(x: Tensor, alpha: float = 1.0) -> Tensor:
    r"""In-place ELU, :math:`y = x` for :math:`x > 0` and :math:`y =
    \alpha (e^x - 1)` otherwise (:math:`\alpha > 0`), storing only its
    output: :math:`\partial y / \partial x = 1` if :math:`y > 0`, else
    :math:`\alpha e^x = y + \alpha`. Overwrites and returns :obj:`x`."""
    fn = 'inplace_elu'
    _check_inplace_input(fn, x)
    alpha = _check_positive(fn, 'alpha', alpha)
    return InplaceELUFunction.apply(x, alpha)


def leaky_relu_inverse(y: Tensor, negative_slope: float = 0.01) -> Tensor:
    r"""Exact inverse of LeakyReLU: :math:`x = y` if :math:`y > 0`, else
    :math:`y / \lambda` (:math:`\lambda > 0`). Not in place."""
    slope = _check_positive('leaky_relu_inverse', 'negative_slope',
                            negative_slope)
    return torch.where(y > 0, y, y / slope)


def elu_inverse(y: Tensor, alpha: float = 1.0) -> Tensor:
    r"""Exact inverse of ELU: :math:`x = y` if :math:`y > 0`, else
    :math:`\log(1 + y / \alpha)`. ELU's range is :math:`(-\alpha, \infty)`;
    values :math:`\leq -\alpha` raise a :class:`ValueError` (when value
    checks are on, see :func:`torch_geometric_gnf.utils.set_input_checks`).
    """
    alpha = _check_positive('elu_inverse', 'alpha', alpha)
    if input_checks_enabled() and y.numel() > 0:
        with torch.no_grad():
            low = float(y.min())
        if not low > -alpha:
            raise ValueError(f"elu_inverse: values must lie in (-alpha, inf)"
                             f" = ({-alpha}, inf), the range of ELU; found "
                             f"{low}")
    return torch.where(y > 0, y, torch.log1p(torch.clamp(y, max=0) / alpha))


# ---------------------------------------------------------------------------
# Recomputation
# ---------------------------------------------------------------------------
def _as_tuple(out: Any) -> tuple:
    return out if isinstance(out, tuple) else (out, )


def _missing_leaves(outputs: Sequence[Tensor], known: Iterable[Tensor]) -> List[Tensor]:
    r"""Leaves requiring grad in the graph of :obj:`outputs` that are not in
    :obj:`known` (their gradient would be lost)."""
    known_ids = {id(t) for t in known}
    seen, missing = set(), []
    stack = [o.grad_fn for o in outputs if o.grad_fn is not None]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        var = getattr(node, 'variable', None)  # AccumulateGrad
        if var is not None and id(var) not in known_ids:
            missing.append(var)
        stack.extend(n for n, _ in node.next_functions)
    return missing


class RecomputeFunction(torch.autograd.Function):
    r"""Runs :obj:`fn` without recording a graph; saves only its inputs and
    the RNG state, and re-runs it with grad enabled in backward."""
    @staticmethod
    def forward(ctx, fn: Callable, args: tuple, num_params: int,
                *tensors: Tensor):
        ctx.set_materialize_grads(False)
        params = tensors[len(tensors) - num_params:]
        inputs = tensors[:len(tensors) - num_params]
        device = next((t.device for t in inputs), torch.device('cpu'))
        ctx.rng = RngState(device)
        ctx.device = device
        versions = [t._version for t in inputs]
        with torch.no_grad():
            out = fn(*_fill(args, inputs))
        ctx.rng.drop_unused()
        if any(t._version != v for t, v in zip(inputs, versions)):
            raise RuntimeError("recompute: fn modified one of its tensor "
                               "arguments in place; the backward pass could "
                               "not re-run it on the original values")
        outs = _as_tuple(out)
        for o in outs:
            if not isinstance(o, Tensor):
                raise TypeError(f"recompute: fn must return a Tensor or a "
                                f"tuple of Tensors, got {type(o).__name__}")
        ctx.fn, ctx.args, ctx.num_params = fn, args, num_params
        ctx.num_inputs = len(inputs)
        ctx.save_for_backward(*inputs)
        ctx.params = params
        ctx.is_tuple = isinstance(out, tuple)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, *grad_outs: Optional[Tensor]):
        inputs = ctx.saved_tensors
        needs = ctx.needs_input_grad[3:]
        leaves = [t.detach().requires_grad_(need) for t, need in
                  zip(inputs, needs[:ctx.num_inputs])]
        with torch.enable_grad(), forked_rng(ctx.device):
            ctx.rng.restore()
            outs = _as_tuple(ctx.fn(*_fill(ctx.args, leaves)))
        wrt = [t for t in leaves if t.requires_grad] + \
            [p for p in ctx.params if p.requires_grad]
        missing = _missing_leaves(outs, wrt)
        if missing:
            raise RuntimeError(
                f"recompute: fn uses {len(missing)} tensor(s) that require "
                f"grad but were neither arguments nor 'params' (e.g. of shape "
                f"{tuple(missing[0].shape)}); their gradient would be lost. "
                f"Pass them as arguments or via params=.")
        pairs = [(o, g) for o, g in zip(outs, grad_outs)
                 if g is not None and o.requires_grad]
        grads: List[Optional[Tensor]] = [None] * len(wrt)
        if pairs and wrt:
            o, g = zip(*pairs)
            grads = list(torch.autograd.grad(o, wrt, g, allow_unused=True))
        it = iter(grads)
        result = [next(it) if t.requires_grad else None for t in leaves]
        result += [next(it) if p.requires_grad else None for p in ctx.params]
        return (None, None, None, *result)


class _Slot:
    __slots__ = ('index', )

    def __init__(self, index: int):
        self.index = index


def _fill(args: tuple, tensors: Sequence[Tensor]) -> tuple:
    return tuple(tensors[a.index] if isinstance(a, _Slot) else a for a in args)


def recompute(fn: Callable, *args: Any,
              params: Optional[Iterable[Tensor]] = None) -> Any:
    r"""Activation recomputation (gradient checkpointing) of one call
    :obj:`fn(*args)`: the forward pass keeps none of :obj:`fn`'s
    intermediate tensors, only its tensor arguments; the backward pass re-runs
    :obj:`fn` with gradients enabled and backpropagates through it. The CPU
    (and, for CUDA inputs, CUDA) random state is recorded before the call and
    replayed, so dropout inside :obj:`fn` draws the same mask both times.

    Gradients reach the tensor arguments and :obj:`params`, which defaults to
    the parameters of :obj:`fn` when it is a :class:`torch.nn.Module`. Unlike
    a reentrant checkpoint, it works with :func:`torch.autograd.grad` (the
    gradients flow through the autograd graph, nothing is accumulated
    behind its back); a tensor requiring grad that :obj:`fn` captures from
    elsewhere raises an error in backward instead of losing its gradient.

    :obj:`fn` must not modify its tensor arguments in place (in-place ops on
    its own intermediates, such as :func:`inplace_leaky_relu`, are fine).

    Args:
        fn (callable): Returns a tensor or a tuple of tensors.
        *args: Its arguments (tensors or anything else).
        params (iterable of torch.Tensor, optional): Further tensors
            :obj:`fn` uses that need gradients.
    """
    if not callable(fn):
        raise TypeError(f"recompute: 'fn' must be callable, got "
                        f"{type(fn).__name__}")
    if params is None:
        params = fn.parameters() if isinstance(fn, torch.nn.Module) else ()
    params = [p for p in params if isinstance(p, Tensor)]
    if not torch.is_grad_enabled() or not (
            any(p.requires_grad for p in params) or
            any(isinstance(a, Tensor) and a.requires_grad for a in args)):
        return fn(*args)  # nothing to differentiate: no bookkeeping
    tensors = [a for a in args if isinstance(a, Tensor)]
    slots, k = [], 0
    for a in args:
        if isinstance(a, Tensor):
            slots.append(_Slot(k))
            k += 1
        else:
            slots.append(a)
    return RecomputeFunction.apply(fn, tuple(slots), len(params), *tensors,
                                   *params)
