"""Small helpers shared by layers and models: input checks and graph builders."""
from .checks import (check_batch, check_counts, check_edge_index, check_int,
                     check_node_features, check_real, input_checks_enabled,
                     set_input_checks)
from .graph import (fully_connected_edge_index, graph_order, infer_num_graphs,
                    nodes_per_graph, relabel_edges, restore_order)
from .memory import (memory_release, memory_release_available,
                     memory_release_block_cache, memory_release_enabled,
                     memory_release_keep_bytes, set_memory_release)
from .profiling import (memory_baseline, run_in_fresh_process,
                        step_memory_bytes)
from .training import (load_checkpoint, peak_memory, reset_peak_memory,
                       save_checkpoint)

__all__ = [
    'check_batch',
    'check_counts',
    'check_edge_index',
    'check_int',
    'check_node_features',
    'check_real',
    'input_checks_enabled',
    'set_input_checks',
    'fully_connected_edge_index',
    'graph_order',
    'infer_num_graphs',
    'nodes_per_graph',
    'relabel_edges',
    'restore_order',
    'memory_release',
    'memory_release_available',
    'memory_release_block_cache',
    'memory_release_enabled',
    'memory_release_keep_bytes',
    'set_memory_release',
    'memory_baseline',
    'run_in_fresh_process',
    'step_memory_bytes',
    'load_checkpoint',
    'peak_memory',
    'reset_peak_memory',
    'save_checkpoint',
]
