# Sphinx configuration of the API reference (`make docs`): autodoc reads the
# docstrings of the public API, as PyG's reference does. The guides are the
# Markdown files next to this one (read on GitHub), not part of this build.
import os
import sys

sys.path.insert(0, os.path.abspath('..'))

project = 'torch_geometric_gnf'
author = 'torch_geometric_gnf developers'
extensions = ['sphinx.ext.autodoc', 'sphinx.ext.napoleon', 'sphinx.ext.mathjax',
              'sphinx.ext.viewcode']
exclude_patterns = ['_build', '*.md']
autodoc_member_order = 'bysource'
autodoc_typehints = 'none'  # the docstrings' Args sections say the types
autodoc_mock_imports = ['ogb']
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # NamedTuple 'Attributes:' sections: no duplicate entries
html_theme = 'alabaster'
