r"""Complete models built from :mod:`torch_geometric_gnf.nn` layers."""
from .grevnet import GRevNet, MessagePassingStep

__all__ = ['GRevNet', 'MessagePassingStep']
