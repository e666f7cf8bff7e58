r"""The small graph-generation benchmarks of GraphRNN (You et al., 2018) used
by the GNF paper (section 5.2): community-small and ego-small.

Either read the exact graph lists the paper trained on (JSON,
``{"description", "graphs": [{"num_nodes", "edges"}]}``) or generate them
with GraphRNN's published procedure (seeded).  Split with
:func:`graphrnn_split`: first 80% train, last 20% test, in list order.

Note: by edge counts, the two rows of the paper's Table 3 are swapped
(community-small has about four times the edges of ego-small).
"""
import json
import math
import os
import tempfile
from typing import Any, Callable, List, Optional, Tuple

import networkx as nx
import numpy as np
import torch
from torch_geometric.data import Data, InMemoryDataset
from torch_geometric.utils import to_undirected

from torch_geometric_gnf.utils import check_int, check_real

from .planetoid import copy_planetoid_raw

PLANETOID_DIR = os.path.join(os.path.dirname(__file__), '..', '..', '..', 'shared',
                             'data', 'planetoid')


def _to_data(num_nodes: int, edges, where: str = 'Graph') -> Data:
    edge_index = torch.as_tensor(edges, dtype=torch.long).reshape(-1, 2).t()
    if edge_index.numel() > 0:
        lo, hi = int(edge_index.min()), int(edge_index.max())
        if lo < 0 or hi >= num_nodes:
            raise ValueError(f"{where}: 'edges' has node indices out of range for "
                             f"{num_nodes} nodes (found [{lo}, {hi}])")
        edge_index = edge_index[:, edge_index[0] != edge_index[1]]  # no self-loops
    return Data(edge_index=to_undirected(edge_index, num_nodes=num_nodes),
                num_nodes=num_nodes)


def _from_networkx(graph: nx.Graph) -> Data:
    graph = nx.convert_node_labels_to_integers(graph, ordering='sorted')
    return _to_data(graph.number_of_nodes(), list(graph.edges()))


def read_graph_json(path: str) -> List[Data]:
    r"""Reads a graph list ``{"graphs": [{"num_nodes": n, "edges": [[u, v],
    ...]}]}`` into undirected :class:`~torch_geometric.data.Data` objects.
    Self-loops are dropped (ego-small's file keeps Citeseer's few self-loops;
    the auto-encoder's decoder cannot express them)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'No graph list at {path!r}')
    with open(path) as f:
        content = json.load(f)
    if not isinstance(content, dict) or not isinstance(content.get('graphs'), list):
        raise ValueError(f"{path!r} must hold a JSON object with a 'graphs' list")
    out = []
    for k, g in enumerate(content['graphs']):
        if not isinstance(g, dict) or 'num_nodes' not in g or 'edges' not in g:
            raise ValueError(f"Graph {k} of {path!r} needs 'num_nodes' and 'edges'")
        where = f"Graph {k} of {path!r}"
        num_nodes = g['num_nodes']
        if isinstance(num_nodes, bool) or not isinstance(num_nodes, int) or num_nodes < 0:
            raise ValueError(f"{where}: 'num_nodes' must be a non-negative integer "
                             f"(got {num_nodes!r})")
        out.append(_to_data(num_nodes, _edge_pairs(g['edges'], where), where))
    return out


def _edge_pairs(edges: Any, where: str) -> List[List[int]]:
    r"""The :obj:`edges` of a graph list entry, checked to be a list of
    :obj:`[u, v]` integer pairs (a flat or 3-column list would otherwise be
    silently re-paired)."""
    if not isinstance(edges, list):
        raise ValueError(f"{where}: 'edges' must be a list of [u, v] pairs "
                         f"(got {type(edges).__name__})")
    for i, edge in enumerate(edges):
        if not (isinstance(edge, list) and len(edge) == 2 and all(
                isinstance(v, int) and not isinstance(v, bool) for v in edge)):
            raise ValueError(f"{where}: 'edges' must be a list of [u, v] pairs of "
                             f"node indices (edge {i} is {edge!r})")
    return edges


def community_small_graphs(seed: int = 0, sizes=range(6, 11), per_size: int = 20,
                           p_edge: float = 0.8, p_inter: float = 0.1) -> List[Data]:
    r"""GraphRNN's ``caveman_small`` generator (community-small): for every
    clique size :math:`k \in \{6, \dots, 10\}`, :obj:`per_size` graphs made of
    two :math:`k`-cliques (:func:`networkx.caveman_graph(2, k)`) whose
    intra-clique edges are each kept with probability :obj:`p_edge`, joined by
    :math:`\max(\lceil p_{\mathrm{inter}} k \rceil, 1)` random inter-community
    edges (repeats collapse), of which the largest connected component is
    kept: 100 graphs of 12-20 nodes, ordered by :math:`k`.  Node
    :obj:`community` (0 or 1) tells the clique of origin.  Seeded by
    :obj:`seed` (a :class:`numpy.random.Generator`)."""
    sizes = [check_int(k, 'sizes', minimum=1) for k in sizes]
    check_int(per_size, 'per_size', minimum=1)
    check_real(p_edge, 'p_edge', 0.0, 1.0)
    check_real(p_inter, 'p_inter', 0.0, 1.0)
    rng = np.random.default_rng(seed)
    out = []
    for k in sizes:
        for _ in range(per_size):
            g = nx.caveman_graph(2, k)
            for u, v in list(g.edges()):
                if (u < k) == (v < k) and rng.random() >= p_edge:
                    g.remove_edge(u, v)
            for _ in range(max(int(math.ceil(p_inter * k)), 1)):
                g.add_edge(int(rng.integers(0, k)), int(rng.integers(k, 2 * k)))
            nodes = sorted(max(nx.connected_components(g), key=len))
            data = _from_networkx(g.subgraph(nodes))
            data.community = torch.tensor([int(v >= k) for v in nodes])
            out.append(data)
    return out


def _load_citeseer_graph(planetoid_dir: str) -> nx.Graph:
    from torch_geometric.datasets import Planetoid
    with tempfile.TemporaryDirectory() as root:  # Planetoid writes processed/
        try:
            copy_planetoid_raw('citeseer', planetoid_dir, root)
        except FileNotFoundError as e:
            raise FileNotFoundError(
                f"Generating ego-small needs Citeseer's Planetoid files in "
                f"{os.path.abspath(planetoid_dir)!r} ({e}); pass 'planetoid_dir' "
                f"or read the graph list with 'json_path'") from None
        data = Planetoid(root, 'CiteSeer')[0]
    graph = nx.Graph()
    graph.add_nodes_from(range(data.num_nodes))
    graph.add_edges_from(data.edge_index.t().tolist())
    graph.remove_edges_from(nx.selfloop_edges(graph))
    return graph


def ego_small_graphs(seed: int = 0, planetoid_dir: str = PLANETOID_DIR,
                     min_nodes: int = 4, max_nodes: int = 20,
                     num_graphs: int = 200) -> List[Data]:
    r"""GraphRNN's ``citeseer_small`` generator (ego-small): the radius-1 ego
    graphs of every node of the largest connected component of Citeseer
    (read from the Planetoid files in :obj:`planetoid_dir` through
    :class:`torch_geometric.datasets.Planetoid`) with
    :obj:`min_nodes`-:obj:`max_nodes` nodes, shuffled (seeded), first
    :obj:`num_graphs`.  Node :obj:`center` (a bool mask) marks the ego."""
    check_int(min_nodes, 'min_nodes', minimum=1)
    check_int(max_nodes, 'max_nodes', minimum=min_nodes)
    check_int(num_graphs, 'num_graphs', minimum=1)
    graph = _load_citeseer_graph(planetoid_dir)
    graph = graph.subgraph(max(nx.connected_components(graph), key=len))
    egos = []
    for v in sorted(graph.nodes()):
        ego = nx.ego_graph(graph, v, radius=1)
        if min_nodes <= ego.number_of_nodes() <= max_nodes:
            egos.append((v, ego))
    order = np.random.default_rng(seed).permutation(len(egos))
    out = []
    for i in order[:num_graphs]:
        v, ego = egos[i]
        data = _from_networkx(ego)
        data.center = torch.tensor([u == v for u in sorted(ego.nodes())])
        out.append(data)
    return out


class _GraphRNNDataset(InMemoryDataset):
    def __init__(self, json_path: Optional[str] = None, seed: int = 0,
                 transform: Optional[Callable] = None, **kwargs):
        self.json_path, self.seed = json_path, seed
        super().__init__(None, transform)
        if json_path is not None:
            data_list = read_graph_json(json_path)
        else:
            data_list = self._generate(seed, **kwargs)
        self._data, self.slices = self.collate(data_list)

    def _generate(self, seed: int, **kwargs) -> List[Data]:
        raise NotImplementedError

    def __repr__(self) -> str:
        source = self.json_path if self.json_path is not None else f'seed={self.seed}'
        return f'{self.__class__.__name__}({len(self)}, {source})'


class CommunitySmall(_GraphRNNDataset):
    r"""Community-small (GraphRNN; GNF paper section 5.2): 100 two-community
    graphs with 12-20 nodes.

    With :obj:`json_path`, reads the exact list the GNF paper trained on
    (``../shared/data/graphrnn/community_small.json``); otherwise generates
    it with :func:`community_small_graphs` (GraphRNN's ``caveman_small``:
    two :math:`k`-cliques, :math:`k \in 6..10`, intra-clique edges kept with
    probability 0.8, :math:`\max(\lceil 0.1k \rceil, 1)` inter-clique edges,
    largest connected component), seeded by :obj:`seed`.  Split with
    :func:`graphrnn_split` (first 80% train).

    Args:
        json_path (str, optional): Graph list to read.
        seed (int, optional): Generation seed. (default: :obj:`0`)
        transform (callable, optional): Applied on access.
    """
    def _generate(self, seed: int, **kwargs) -> List[Data]:
        return community_small_graphs(seed)


class EgoSmall(_GraphRNNDataset):
    r"""Ego-small (GraphRNN; GNF paper section 5.2): 200 radius-1 ego graphs
    of Citeseer with 4-20 nodes.

    With :obj:`json_path`, reads the exact list the GNF paper trained on
    (``../shared/data/graphrnn/ego_small.json``); otherwise generates it with
    :func:`ego_small_graphs` (GraphRNN's ``citeseer_small``: ego graphs of
    the largest connected component of Citeseer, 4-20 nodes, shuffled with
    :obj:`seed`, first 200), reading Citeseer's Planetoid files from
    :obj:`planetoid_dir` (a clear error if they are absent).

    Args:
        json_path (str, optional): Graph list to read.
        seed (int, optional): Shuffling seed. (default: :obj:`0`)
        planetoid_dir (str, optional): Folder with ``ind.citeseer.*``.
            (default: ``../shared/data/planetoid`` next to the repository)
        transform (callable, optional): Applied on access.
    """
    def __init__(self, json_path: Optional[str] = None, seed: int = 0,
                 planetoid_dir: str = PLANETOID_DIR,
                 transform: Optional[Callable] = None):
        super().__init__(json_path, seed, transform, planetoid_dir=planetoid_dir)

    def _generate(self, seed: int, **kwargs) -> List[Data]:
        return ego_small_graphs(seed, kwargs['planetoid_dir'])


def graphrnn_split(dataset, train_fraction: float = 0.8) -> Tuple:
    r"""GraphRNN's split: the first :math:`\lfloor 0.8 |\mathcal{D}| \rfloor`
    graphs for training, the rest for testing, in list order."""
    if not 0 < train_fraction < 1:
        raise ValueError(f"'train_fraction' must be in (0, 1) (got {train_fraction})")
    n_train = int(train_fraction * len(dataset))
    return dataset[:n_train], dataset[n_train:]
