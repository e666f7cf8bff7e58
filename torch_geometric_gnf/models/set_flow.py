r"""Flows over sets of points for structured density estimation (paper
section 5.1): a graph normalizing flow whose couplings pass self-attention
messages over the fully connected graph of each set, and the RealNVP
baseline, the same flow with the message passing removed."""
import math
import numbers
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from torch_geometric_gnf.nn import (DenseSelfAttention, GraphAffineCoupling,
                                    GraphNormalizingFlow, InvertibleLinear)
from torch_geometric_gnf.utils import (check_batch, graph_order, infer_num_graphs,
                                       nodes_per_graph, restore_order)

MIXINGS = ('permutation', 'linear')


def coupling_steps(make_coupling: Callable[[], torch.nn.Module], num_couplings: int,
                   channels: int, mixing: str) -> List[torch.nn.Module]:
    r"""The steps of a flow of :obj:`num_couplings` couplings built by
    :obj:`make_coupling`, with a learned
    :class:`~torch_geometric_gnf.nn.InvertibleLinear` between every two of
    them when :obj:`mixing="linear"` (with :obj:`"permutation"` the flow's
    fixed channel permutations do that job).  Modules are created in flow
    order, so a seed gives the same initial weights as before."""
    if mixing not in MIXINGS:
        raise ValueError(f"'mixing' must be one of {MIXINGS} (got '{mixing}')")
    steps = []
    for i in range(num_couplings):
        if i > 0 and mixing == 'linear':
            steps.append(InvertibleLinear(channels))
        steps.append(make_coupling())
    return steps


class SetCouplingNet(torch.nn.Module):
    r"""Scale and shift network :math:`F` (or :math:`G`) of a set-flow
    coupling: a lift, :obj:`num_blocks` pre-norm transformer blocks and a
    zero-initialised head (so a fresh coupling is the identity),

    .. math::
        \mathbf{H} &\leftarrow \mathbf{H} + \mathrm{Attn}(\mathrm{LN}(\mathbf{H})) \\
        \mathbf{H} &\leftarrow \mathbf{H} + \mathrm{MLP}(\mathrm{LN}(\mathbf{H}))

    with :class:`~torch_geometric_gnf.nn.DenseSelfAttention` message
    passing over the complete graph of each set.  With
    :obj:`message_passing=False` the attention becomes the per-node map
    :math:`\mathbf{W}_O \mathbf{W}_V \mathbf{h}_i` (each node attends only to
    itself), which turns the flow into RealNVP with the same width and
    depth.  Called as :obj:`net(h, edge_index, set_size=n)` or
    :obj:`net(h, edge_index, node_batch=batch)` (:obj:`edge_index` unused:
    the graph is complete).
    """
    def __init__(self, in_channels: int, out_channels: int, hidden: int = 64,
                 heads: int = 4, num_blocks: int = 1, message_passing: bool = True):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.message_passing = message_passing
        self.lift = torch.nn.Linear(in_channels, hidden)
        self.attn_norms = torch.nn.ModuleList()
        self.attns = torch.nn.ModuleList()
        self.mlp_norms = torch.nn.ModuleList()
        self.mlps = torch.nn.ModuleList()
        for _ in range(num_blocks):
            self.attn_norms.append(torch.nn.LayerNorm(hidden))
            self.attns.append(DenseSelfAttention(hidden, heads, message_passing))
            self.mlp_norms.append(torch.nn.LayerNorm(hidden))
            self.mlps.append(torch.nn.Sequential(
                torch.nn.Linear(hidden, 2 * hidden), torch.nn.GELU(),
                torch.nn.Linear(2 * hidden, hidden)))
        self.norm = torch.nn.LayerNorm(hidden)
        self.head = torch.nn.Linear(hidden, out_channels)
        self.reset_parameters()

    def reset_parameters(self):
        r"""Resets all parameters; the head starts at zero."""
        self.lift.reset_parameters()
        for module in [*self.attn_norms, *self.attns, *self.mlp_norms, self.norm]:
            module.reset_parameters()
        for mlp in self.mlps:
            for layer in mlp:
                if hasattr(layer, 'reset_parameters'):
                    layer.reset_parameters()
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)

    def forward(self, h: Tensor, edge_index: Any = None, *,
                set_size: Optional[int] = None,
                node_batch: Optional[Tensor] = None) -> Tensor:
        h = self.lift(h)
        for attn_norm, attn, mlp_norm, mlp in zip(self.attn_norms, self.attns,
                                                  self.mlp_norms, self.mlps):
            h = h + attn(attn_norm(h), set_size=set_size, node_batch=node_batch)
            h = h + mlp(mlp_norm(h))
        return self.head(self.norm(h))

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({self.in_channels}, '
                f'{self.out_channels}, blocks={len(self.attns)}, '
                f'message_passing={self.message_passing})')


class Standardize(torch.nn.Module):
    r"""A fixed per-channel affine map :math:`\mathbf{y}_v = (\mathbf{x}_v -
    \mathbf{m}) / \mathbf{s}` (e.g. the training data's mean and standard
    deviation) as the first step of a flow, with log-determinant
    :math:`-|\mathcal{V}_\mathcal{G}| \sum_k \log s_k` per graph.  It has the
    coupling interface of :class:`~torch_geometric_gnf.nn.GraphNormalizingFlow`."""
    def __init__(self, loc: Tensor, scale: Tensor):
        super().__init__()
        loc = torch.as_tensor(loc, dtype=torch.get_default_dtype()).reshape(-1)
        scale = torch.as_tensor(scale, dtype=torch.get_default_dtype()).reshape(-1)
        if loc.shape != scale.shape or not bool((scale > 0).all()):
            raise ValueError("'loc' and 'scale' must have the same shape and "
                             "'scale' must be positive")
        self.register_buffer('loc', loc)
        self.register_buffer('scale', scale)

    def _log_det(self, x: Tensor, batch: Optional[Tensor], num_graphs: int) -> Tensor:
        return -nodes_per_graph(x, batch, num_graphs) * self.scale.log().sum().to(x.dtype)

    def forward(self, x: Tensor, edge_index: Any = None, batch: Optional[Tensor] = None,
                num_graphs: Optional[int] = None, **kwargs) -> Tuple[Tensor, Tensor]:
        num_graphs = 1 if num_graphs is None else num_graphs
        return (x - self.loc) / self.scale, self._log_det(x, batch, num_graphs)

    def inverse(self, y: Tensor, edge_index: Any = None, batch: Optional[Tensor] = None,
                num_graphs: Optional[int] = None, **kwargs) -> Tuple[Tensor, Tensor]:
        num_graphs = 1 if num_graphs is None else num_graphs
        return y * self.scale + self.loc, -self._log_det(y, batch, num_graphs)

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(loc={self.loc.tolist()}, scale={self.scale.tolist()})'


class SetFlow(torch.nn.Module):
    r"""A normalizing flow over sets of points: a
    :class:`~torch_geometric_gnf.nn.GraphNormalizingFlow` of
    :class:`~torch_geometric_gnf.nn.GraphAffineCoupling` steps whose
    :math:`F`/:math:`G` are :class:`SetCouplingNet` s, preceded by an
    optional fixed :class:`Standardize` step, with a standard normal prior
    on every node,

    .. math::
        \log p(\mathbf{X}) = \sum_{v} \log \mathcal{N}(\mathbf{z}_v \mid
        \mathbf{0}, \mathbf{I}) + \sum_k \log \left| \det
        \frac{\partial \mathbf{H}_k}{\partial \mathbf{H}_{k-1}} \right|.

    With :obj:`message_passing=True` this is the paper's GNF (every node's
    scale and shift depend on the whole set through self-attention, and
    :math:`\log p` is invariant to the node order); with :obj:`False` it is
    RealNVP applied to every node independently, with the same base, width
    and depth.

    Dense sets :obj:`[B, n, C]` (all sets of size :math:`n`) are the fast
    path; node-level input :obj:`[num_nodes, C]` with a :obj:`batch` vector
    handles sets of different sizes.

    Args:
        channels (int): Features per node (even). (default: :obj:`2`)
        num_couplings (int): Number of graph affine couplings.
            (default: :obj:`12`)
        hidden (int): Width of the coupling networks. (default: :obj:`64`)
        heads (int): Attention heads. (default: :obj:`4`)
        num_blocks (int): Transformer blocks per coupling network.
            (default: :obj:`1`)
        message_passing (bool): GNF (:obj:`True`) or RealNVP (:obj:`False`).
        clamp (float): Soft clamp of the coupling scales. (default: :obj:`2.0`)
        loc (Tensor, optional), scale (Tensor, optional): Per-channel
            standardisation applied first (none if :obj:`None`).
        permutation (str): Channel permutation between couplings when
            :obj:`mixing="permutation"`. (default: :obj:`"reverse"`)
        mixing (str): What sits between two couplings: the fixed
            :obj:`permutation`, or a learned
            :class:`~torch_geometric_gnf.nn.InvertibleLinear` channel mixing
            (:obj:`"linear"`, starting from a random rotation), so that the
            couplings of 2-D points split them along other directions than
            the axes. (default: :obj:`"permutation"`)
    """
    def __init__(self, channels: int = 2, num_couplings: int = 12, hidden: int = 64,
                 heads: int = 4, num_blocks: int = 1, message_passing: bool = True,
                 clamp: float = 2.0, loc: Optional[Tensor] = None,
                 scale: Optional[Tensor] = None, permutation: str = 'reverse',
                 mixing: str = 'permutation'):
        super().__init__()
        if channels < 2 or channels % 2 != 0:
            raise ValueError(f"'channels' must be even and >= 2 (got {channels})")
        if num_couplings < 1:
            raise ValueError(f"'num_couplings' must be positive (got {num_couplings})")
        self.channels = channels
        self.mixing = mixing
        self.message_passing = message_passing
        half = channels // 2

        def net():
            return SetCouplingNet(half, 2 * half, hidden, heads, num_blocks,
                                  message_passing)

        steps = coupling_steps(
            lambda: GraphAffineCoupling(net(), net(), clamp=clamp, memory_saving=False),
            num_couplings, channels, mixing)
        if mixing == 'linear':
            permutation = None  # the learned mixing replaces it
        if (loc is None) != (scale is None):
            raise ValueError("Give both 'loc' and 'scale' or neither")
        if loc is not None:
            steps.insert(0, Standardize(loc, scale))
        self.flow = GraphNormalizingFlow(steps, channels, permutation=permutation)

    def reset_parameters(self):
        r"""Resets the coupling networks."""
        for step in self.flow.couplings:
            if hasattr(step, 'reset_parameters'):
                step.reset_parameters()

    # ------------------------------------------------------------------ api
    def _flat(self, x: Tensor, batch: Optional[Tensor]
              ) -> Tuple[Tensor, Tensor, int, Dict[str, Any], Optional[Tensor]]:
        r"""Node-level features, graph ids, number of sets, the coupling
        networks' keyword arguments and the node order the features were
        put in (:func:`~torch_geometric_gnf.utils.graph_order`: node-level
        input in any set order is grouped by set; :obj:`None` if unchanged)."""
        if x.dim() == 3:
            if batch is not None:
                raise ValueError("'batch' is only for node-level [num_nodes, C] input")
            B, n, C = x.shape
            if C != self.channels:
                raise ValueError(f"Expected sets of shape [B, n, {self.channels}] "
                                 f"(got {tuple(x.shape)})")
            flat_batch = torch.arange(B, device=x.device).repeat_interleave(n)
            return x.reshape(B * n, C), flat_batch, B, {'set_size': max(n, 1)}, None
        if x.dim() == 2:
            if batch is None:
                batch = torch.zeros(x.size(0), dtype=torch.long, device=x.device)
            check_batch(batch, x.size(0), x.device)
            num_graphs = infer_num_graphs(batch)
            # The attention pads each set's nodes consecutively: group them.
            order = graph_order(batch)
            if order is not None:
                x, batch = x[order], batch[order]
            return x, batch, num_graphs, {'node_batch': batch}, order
        raise ValueError(f"'x' must be [B, n, C] or [num_nodes, C] (got "
                         f"{tuple(x.shape)})")

    def forward(self, x: Tensor, batch: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        r"""Maps data to latents (same shape) and returns the log-determinant
        per set."""
        flat, flat_batch, num_graphs, kw, order = self._flat(x, batch)
        z, log_det = self.flow(flat, None, flat_batch, num_graphs, **kw)
        return restore_order(z, order).view_as(x), log_det

    def inverse(self, z: Tensor, batch: Optional[Tensor] = None) -> Tensor:
        r"""Maps latents to data."""
        flat, flat_batch, num_graphs, kw, order = self._flat(z, batch)
        x = self.flow.inverse(flat, None, flat_batch, num_graphs, **kw)
        return restore_order(x, order).view_as(z)

    def log_prob(self, x: Tensor, batch: Optional[Tensor] = None) -> Tensor:
        r"""Log-density of each set in nats, shape :obj:`[num_sets]`."""
        flat, flat_batch, num_graphs, kw, _ = self._flat(x, batch)
        return self.flow.log_prob(flat, None, flat_batch, num_graphs, **kw)

    def nll_per_node(self, x: Tensor) -> Tensor:
        r"""Mean negative log-likelihood per node (nats) of dense sets."""
        return -self.log_prob(x).sum() / (x.size(0) * x.size(1))

    @torch.no_grad()
    def sample(self, num_sets: int, set_size: int, temperature: float = 1.0,
               generator: Optional[torch.Generator] = None) -> Tensor:
        r"""Draws :obj:`[num_sets, set_size, channels]` sets."""
        for name, value in (('num_sets', num_sets), ('set_size', set_size)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) \
                    or value < 1:
                raise ValueError(f"'{name}' must be a positive int (got {value!r})")
        if not 0 < temperature < math.inf:
            raise ValueError(f"'temperature' must be positive and finite (got {temperature})")
        param = next(self.parameters())
        z = torch.randn(num_sets, set_size, self.channels, generator=generator,
                        dtype=param.dtype).to(param.device) * temperature
        return self.inverse(z)

    def __repr__(self) -> str:
        kind = 'GNF' if self.message_passing else 'RealNVP'
        return f'{self.__class__.__name__}({kind}, {self.flow})'


def build_set_flow(model: str = 'gnf', **kwargs) -> SetFlow:
    r"""The GNF (:obj:`model="gnf"`) or its RealNVP baseline
    (:obj:`model="realnvp"`) with otherwise identical settings
    (:class:`SetFlow` keyword arguments)."""
    if model not in ('gnf', 'realnvp'):
        raise ValueError(f"'model' must be 'gnf' or 'realnvp' (got '{model}')")
    return SetFlow(message_passing=(model == 'gnf'), **kwargs)
