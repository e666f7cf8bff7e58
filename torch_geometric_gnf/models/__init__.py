r"""Complete models built from :mod:`torch_geometric_gnf.nn` layers."""
from .set_flow import SetCouplingNet, SetFlow, Standardize, build_set_flow
from .grevnet import GRevNet, MessagePassingStep, ResidualStep
from .rev_gat import RevGAT
from .graph_auto_encoder import GraphAutoEncoder
from .graph_generator import GraphGenerator

__all__ = ['SetCouplingNet', 'SetFlow', 'Standardize', 'build_set_flow',
           'GRevNet', 'MessagePassingStep', 'ResidualStep', 'RevGAT',
           'GraphAutoEncoder', 'GraphGenerator']
