import math
from typing import Optional

import torch
from torch_geometric.data import Data
from torch_geometric.utils import coalesce, to_undirected

from torch_geometric_gnf.utils import check_int, check_real


def community_node_classification(num_nodes: int = 2000, num_classes: int = 5,
                                  num_features: int = 32, avg_degree: float = 8.0,
                                  homophily: float = 0.8, feature_noise: float = 2.0,
                                  train_per_class: int = 20, num_val: int = 500,
                                  seed: Optional[int] = 0) -> Data:
    r"""A planted-partition (stochastic block model) node classification
    graph, generated in memory so that examples and tests need no download.

    Node :math:`v` gets a class :math:`c_v` uniformly at random; each of its
    :math:`\approx` :obj:`avg_degree` undirected edges goes to a node of the
    same class with probability :obj:`homophily` and to a uniformly random
    node otherwise.  Features are a class centroid
    :math:`\boldsymbol{\mu}_{c_v} \sim \mathcal{N}(0, \mathbf{I})` plus
    :math:`\mathcal{N}(0, \sigma^2 \mathbf{I})` noise
    (:math:`\sigma` = :obj:`feature_noise`), so features alone are weakly
    informative and aggregating neighbours helps, as on citation graphs.
    Splits follow Planetoid: :obj:`train_per_class` labelled nodes per class,
    :obj:`num_val` validation nodes, the rest for testing.

    Returns:
        :class:`torch_geometric.data.Data` with :obj:`x`, :obj:`edge_index`
        (undirected, coalesced, no self-loops), :obj:`y`,
        :obj:`train_mask`, :obj:`val_mask`, :obj:`test_mask`.
    """
    num_nodes = check_int(num_nodes, 'num_nodes', minimum=1)
    num_classes = check_int(num_classes, 'num_classes', minimum=1)
    num_features = check_int(num_features, 'num_features', minimum=1)
    train_per_class = check_int(train_per_class, 'train_per_class', minimum=0)
    num_val = check_int(num_val, 'num_val', minimum=0)
    avg_degree = check_real(avg_degree, 'avg_degree', 0.0, math.inf, high_open=True)
    homophily = check_real(homophily, 'homophily', 0.0, 1.0)
    feature_noise = check_real(feature_noise, 'feature_noise', 0.0, math.inf,
                               high_open=True)
    if seed is not None:
        seed = check_int(seed, 'seed', minimum=0)
    if num_nodes < num_classes * train_per_class + num_val + 1:
        raise ValueError(f"'num_nodes'={num_nodes} is too small for the splits "
                         f"(needs more than num_classes * train_per_class + "
                         f"num_val = {num_classes * train_per_class + num_val})")
    gen = torch.Generator().manual_seed(seed if seed is not None else
                                        torch.seed() % 2**31)
    y = torch.randint(0, num_classes, (num_nodes,), generator=gen)
    centroids = torch.randn(num_classes, num_features, generator=gen)
    x = centroids[y] + feature_noise * torch.randn(num_nodes, num_features,
                                                   generator=gen)

    num_half_edges = int(num_nodes * avg_degree / 2)
    src = torch.randint(0, num_nodes, (num_half_edges,), generator=gen)
    same = torch.rand(num_half_edges, generator=gen) < homophily
    # A same-class partner: a random node of the class, via sorted class lists.
    order = torch.argsort(y)
    counts = torch.bincount(y, minlength=num_classes)
    start = torch.cumsum(counts, 0) - counts
    pick = (torch.rand(num_half_edges, generator=gen) * counts[y[src]]).long()
    same_dst = order[start[y[src]] + pick]
    rand_dst = torch.randint(0, num_nodes, (num_half_edges,), generator=gen)
    dst = torch.where(same, same_dst, rand_dst)
    keep = src != dst
    edge_index = torch.stack([src[keep], dst[keep]])
    edge_index = coalesce(to_undirected(edge_index, num_nodes=num_nodes),
                          num_nodes=num_nodes)

    perm = torch.randperm(num_nodes, generator=gen)
    train_mask = torch.zeros(num_nodes, dtype=torch.bool)
    for c in range(num_classes):
        members = perm[y[perm] == c][:train_per_class]
        train_mask[members] = True
    rest = perm[~train_mask[perm]]
    val_mask = torch.zeros(num_nodes, dtype=torch.bool)
    val_mask[rest[:num_val]] = True
    test_mask = ~(train_mask | val_mask)
    return Data(x=x, edge_index=edge_index, y=y, train_mask=train_mask,
                val_mask=val_mask, test_mask=test_mask)
