from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch_geometric.nn.inits import reset

from torch_geometric_gnf.ops import affine_coupling
from torch_geometric_gnf.utils import (check_batch, check_edge_index,
                                       check_node_features, infer_num_graphs)
from torch_geometric_gnf.utils.rng import recorded_rng

from ._memory_saving import (ReversibleFunction, RngState,
                             release_chained_input)

HalfFunction = Union[torch.nn.Module, Sequence[torch.nn.Module]]

COUPLINGS = ('additive', 'affine')


class ReversibleMessagePassing(torch.nn.Module):
    r"""One reversible message passing step (GRevNet) from the `"Graph
    Normalizing Flows" <https://arxiv.org/abs/1905.13177>`_ paper.

    Node features are split into two halves :math:`\mathbf{X}^{(0)},
    \mathbf{X}^{(1)}` along :obj:`split_dim` and updated by two half-steps,
    each a message passing function of the other half:

    * :obj:`coupling="additive"`:

      .. math::
          \mathbf{Y}^{(1)} &= \mathbf{X}^{(1)} + F(\mathbf{X}^{(0)}) \\
          \mathbf{Y}^{(0)} &= \mathbf{X}^{(0)} + G(\mathbf{Y}^{(1)})

    * :obj:`coupling="affine"` (paper eq. 3):

      .. math::
          \mathbf{Y}^{(1)} &= \mathbf{X}^{(1)} \odot
          \exp\left(s_F(\mathbf{X}^{(0)})\right) + t_F(\mathbf{X}^{(0)}) \\
          \mathbf{Y}^{(0)} &= \mathbf{X}^{(0)} \odot
          \exp\left(s_G(\mathbf{Y}^{(1)})\right) + t_G(\mathbf{Y}^{(1)})

      where :math:`s = c \cdot \tanh(\tilde{s} / c)` soft-clamps the raw
      scale :math:`\tilde{s}` to :math:`(-c, c)` (:obj:`clamp` :math:`= c`):
      it is the identity near zero, so freshly initialised steps start close
      to volume preserving, and :math:`\exp(s)` can never overflow or vanish,
      which keeps the inverse well conditioned.

    The inverse runs the two half-steps backwards:
    :math:`\mathbf{X}^{(0)} = (\mathbf{Y}^{(0)} - t_G(\mathbf{Y}^{(1)}))
    \odot \exp(-s_G(\mathbf{Y}^{(1)}))`, then :math:`\mathbf{X}^{(1)}` from
    :math:`\mathbf{X}^{(0)}` the same way.

    With :obj:`memory_saving=True`, training stores no activation of
    :math:`F` and :math:`G`: a custom autograd function keeps only the output
    and rebuilds the input from it during the backward pass (RevNet's
    algorithm, recomputing each half-step once).  When steps are chained,
    a step also releases its predecessor's output, which the successor
    rebuilds in its own backward pass, so a stack of any depth keeps
    :math:`\mathcal{O}(N \cdot d)` activations.  The CPU and CUDA random
    number generator states are recorded before :math:`F` and :math:`G` and
    replayed, so dropout inside them gives the same masks in the
    recomputation and gradients equal plain autograd's exactly.

    Args:
        f (torch.nn.Module or (torch.nn.Module, torch.nn.Module)): The
            message passing function :math:`F` of the first half-step, called
            as :obj:`f(h, edge_index, *args, **kwargs)` (any PyG conv works).
            For the affine coupling, either a pair :obj:`(f_s, f_t)` giving
            scale and shift, or one module whose output is split in two
            halves along :obj:`split_dim` (first half scale, second shift).
        g (torch.nn.Module or (torch.nn.Module, torch.nn.Module)): The
            function :math:`G` of the second half-step, like :obj:`f`.
        coupling (str, optional): :obj:`"additive"` or :obj:`"affine"`.
            (default: :obj:`"additive"`)
        split_dim (int, optional): The feature dimension to split.
            (default: :obj:`-1`)
        memory_saving (bool, optional): Rebuild inputs from outputs in the
            backward pass instead of storing activations. Under
            :func:`torch.compile` the step runs eagerly inside the compiled
            model (one graph break per step) and keeps saving memory; under
            :func:`torch.export.export` / :func:`torch.jit.trace` the plain
            step is recorded (memory saving off, same numbers). Second-order
            gradients (``create_graph=True``) need
            :obj:`memory_saving=False`; the memory-saving backward raises a
            clear error otherwise. (default: :obj:`True`)
        clamp (float, optional): Soft-clamp bound :math:`c` of the affine
            scale; :obj:`None` or :obj:`0` disables clamping.
            (default: :obj:`2.0`)

    Shapes:
        - **input:** node features :math:`(|\mathcal{V}|, F_{in})` with an
          even :math:`F_{in}`, edge indices :math:`(2, |\mathcal{E}|)` or a
          sparse adjacency, extra arguments for :obj:`f` and :obj:`g`.
        - **output:** node features :math:`(|\mathcal{V}|, F_{in})`.
    """
    def __init__(self, f: HalfFunction, g: Optional[HalfFunction], *,
                 coupling: str = 'additive', split_dim: int = -1,
                 memory_saving: bool = True, clamp: Optional[float] = 2.0):
        super().__init__()
        if coupling not in COUPLINGS:
            raise ValueError(f"'coupling' must be one of {COUPLINGS} "
                             f"(got '{coupling}')")
        self.coupling = coupling
        self.split_dim = split_dim
        self.memory_saving = memory_saving
        self.clamp = float(clamp) if clamp else 0.0
        self.f = self._as_half_function(f, 'f')
        self.g = None if g is None else self._as_half_function(g, 'g')

    def _as_half_function(self, fn: HalfFunction, name: str) -> torch.nn.Module:
        if isinstance(fn, (tuple, list)):
            if self.coupling != 'affine' or len(fn) != 2:
                raise ValueError(f"'{name}' may be a pair of modules (scale, "
                                 f"shift) only for the affine coupling")
            return torch.nn.ModuleList(fn)
        if not isinstance(fn, torch.nn.Module):
            raise TypeError(f"'{name}' must be a torch.nn.Module "
                            f"(got {type(fn).__name__})")
        return fn

    def reset_parameters(self):
        r"""Resets all learnable parameters of :math:`F` and :math:`G`."""
        reset(self.f)
        if self.g is not None:
            reset(self.g)

    # ------------------------------------------------------------------ API
    def forward(self, x: Tensor, edge_index: Any, *args, **kwargs) -> Tensor:
        r"""Runs the step: :math:`\mathbf{X} \mapsto \mathbf{Y}`."""
        return self._run(x, edge_index, args, kwargs, None, 1, False)[0]

    def inverse(self, y: Tensor, edge_index: Any, *args, **kwargs) -> Tensor:
        r"""Inverts the step: :math:`\mathbf{Y} \mapsto \mathbf{X}`.  Random
        layers inside :math:`F`/:math:`G` (dropout) should be in eval mode
        for an exact inverse."""
        return self._run(y, edge_index, args, kwargs, None, 1, True)[0]

    # ------------------------------------------------------------- internals
    def _run(self, x: Tensor, edge_index: Any, args: Tuple, kwargs: Dict,
             batch: Optional[Tensor], num_graphs: Optional[int],
             inverse: bool) -> Tuple[Tensor, Tensor]:
        self._check_input(x, edge_index, batch)
        num_graphs = infer_num_graphs(batch, num_graphs)
        call = (edge_index, args, kwargs, batch, num_graphs)
        params = [p for p in self.parameters() if p.requires_grad]
        grad_args = [a for a in list(args) + list(kwargs.values())
                     if isinstance(a, Tensor) and a.requires_grad]
        needs_graph = torch.is_grad_enabled() and (
            x.requires_grad or len(params) > 0 or len(grad_args) > 0)
        if inverse or not self.memory_saving or not needs_graph or \
                _exporting():
            return self._step(x, call, inverse)
        return self._memory_saving_step(x, call, grad_args, params)

    # torch.compile runs the memory-saving step eagerly (a graph break around
    # it): its backward recomputes the step, which a compiled graph cannot
    # express, so a compiled stack still stores one feature matrix.
    @torch.compiler.disable
    def _memory_saving_step(self, x: Tensor, call: Tuple,
                            grad_args: List[Tensor],
                            params: List[Tensor]) -> Tuple[Tensor, Tensor]:
        y, log_det = ReversibleFunction.apply(self, call, len(grad_args), x,
                                              *grad_args, *params)
        release_chained_input(x, y)
        return y, log_det

    def _check_input(self, x: Tensor, edge_index: Any,
                     batch: Optional[Tensor]) -> None:
        param = next(self.parameters(), None)
        if isinstance(x, Tensor) and param is not None:  # before value checks
            if param.device != x.device:
                raise RuntimeError(f"'x' is on {x.device} but the parameters of "
                                   f"this step are on {param.device}")
            if param.dtype != x.dtype and x.is_floating_point():
                raise RuntimeError(f"'x' has dtype {x.dtype} but the parameters "
                                   f"of this step have dtype {param.dtype}")
        check_node_features(x)
        dim = self.split_dim % x.dim()
        if dim == 0:
            raise ValueError("'split_dim' must be a feature dimension, not the "
                             "node dimension 0")
        if x.size(dim) % 2 != 0:
            raise ValueError(f"Cannot split {x.size(dim)} channels (dimension "
                             f"{self.split_dim} of 'x') into two equal halves; "
                             f"use an even number of channels")
        check_edge_index(edge_index, x.size(0), x.device)
        check_batch(batch, x.size(0), x.device)

    def _split(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        x0, x1 = torch.chunk(x, 2, dim=self.split_dim)
        return x0, x1

    def _merge(self, x0: Tensor, x1: Tensor) -> Tensor:
        return torch.cat([x0, x1], dim=self.split_dim)

    def _half(self, fn: torch.nn.Module, h: Tensor, call: Tuple,
              name: str) -> Tuple[Optional[Tensor], Tensor]:
        r"""Evaluates a half-step function, returning (raw scale, shift)."""
        edge_index, args, kwargs = call[:3]
        if isinstance(fn, torch.nn.ModuleList):
            s, t = (m(h, edge_index, *args, **kwargs) for m in fn)
        else:
            out = fn(h, edge_index, *args, **kwargs)
            if self.coupling == 'additive':
                s, t = None, out
            else:
                _check_half_output(out, h, name, self.split_dim, factor=2)
                s, t = torch.chunk(out, 2, dim=self.split_dim)
        if s is not None:
            _check_half_output(s, h, name + ' (scale)', self.split_dim)
        _check_half_output(t, h, name, self.split_dim)
        return s, t

    def _couple(self, h: Tensor, s: Optional[Tensor], t: Tensor, call: Tuple,
                inverse: bool) -> Tuple[Tensor, Tensor]:
        r"""Applies :math:`h \exp(s) + t` (or its inverse) with the per-graph
        log-determinant."""
        batch, num_graphs = call[3], call[4]
        if s is None:
            out = h - t if inverse else h + t
            return out, h.new_zeros(num_graphs)
        return affine_coupling(h, s, t, batch=batch, num_graphs=num_graphs,
                               clamp=self.clamp, inverse=inverse)

    def _step(self, x: Tensor, call: Tuple, inverse: bool,
              rng: Optional[List[RngState]] = None) -> Tuple[Tensor, Tensor]:
        r"""The plain (autograd-traced) step or its inverse.  In the forward
        direction, the random generator state before each half-step is
        appended to :obj:`rng` if given (for replay in backward)."""
        a, b = self._split(x)  # (x0, x1) forward, (y0, y1) inverse
        if not inverse:
            with recorded_rng(rng, x.device):
                s, t = self._half(self.f, a, call, 'f')
            b, log_det = self._couple(b, s, t, call, False)
            if self.g is not None:
                with recorded_rng(rng, x.device):
                    s, t = self._half(self.g, b, call, 'g')
                a, ld = self._couple(a, s, t, call, False)
                log_det = log_det + ld
            return self._merge(a, b), log_det
        log_det = x.new_zeros(call[4])
        if self.g is not None:
            s, t = self._half(self.g, b, call, 'g')
            a, log_det = self._couple(a, s, t, call, True)
        s, t = self._half(self.f, a, call, 'f')
        b, ld = self._couple(b, s, t, call, True)
        return self._merge(a, b), log_det + ld

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(f={self.f}, g={self.g}, '
                f'coupling={self.coupling}, split_dim={self.split_dim}, '
                f'memory_saving={self.memory_saving})')


def _exporting() -> bool:
    r"""Whether :func:`torch.export.export` or :func:`torch.jit.trace` is
    tracing: both record a forward graph only, so the plain step is traced
    (memory saving is off in the exported program; gradients are equal)."""
    return torch.compiler.is_exporting() or torch.jit.is_tracing()


def _check_half_output(out: Any, h: Tensor, name: str, split_dim: int,
                       factor: int = 1) -> None:
    if not isinstance(out, Tensor):
        raise TypeError(f"'{name}' must return a Tensor (got {type(out).__name__}); "
                        f"wrap convs that return tuples")
    expected = list(h.shape)
    expected[split_dim] *= factor
    if list(out.shape) != expected:
        raise ValueError(f"'{name}' returned shape {tuple(out.shape)} but the "
                         f"coupling needs {tuple(expected)} (half of the "
                         f"channels{', times two for scale and shift' if factor == 2 else ''})")
