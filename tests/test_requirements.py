r"""The declared requirements cover what the code imports: core
(``install_requires``) for ``nn``, ``ops``, ``models``, ``datasets`` and
``utils``; the extras named in the README for the rest (``[metrics]``,
``[ogb]``, ``[examples]``, ``[test]``, ``[docs]``).  Imports are read with
``ast`` (module-level and inside functions), so a new third-party import
fails here until setup.py declares it."""
import ast
import os
import re
import sys

import pytest

from conftest import REPO

# import name -> requirement name in setup.py (None: installed beforehand)
DISTRIBUTION = {
    'torch': None, 'torch_geometric': 'torch_geometric', 'numpy': 'numpy',
    'networkx': 'networkx', 'tqdm': 'tqdm', 'scipy': 'scipy', 'ogb': 'ogb',
    'pandas': 'ogb',  # an ogb dependency, used only next to ogb
    'matplotlib': 'matplotlib', 'pytest': 'pytest', 'sphinx': 'sphinx',
    'torch_scatter': 'torch-scatter', 'torch_sparse': 'torch-sparse',
}
# The package, setup.py and the repository's own scripts (tests import
# benchmark and example modules by name).
LOCAL = {'torch_geometric_gnf', 'setup'} | {
    f[:-3] for folder in ('examples', 'benchmarks', 'tests')
    for f in os.listdir(os.path.join(REPO, folder)) if f.endswith('.py')}


def declared():
    r"""``INSTALL_REQUIRES`` and ``EXTRAS_REQUIRE`` as setup.py computes
    them (its top-level assignments of those names, run without setup())."""
    with open(os.path.join(REPO, 'setup.py')) as f:
        source = f.read()
    namespace = {}
    for node in ast.parse(source).body:
        targets = [t.value if isinstance(t, ast.Subscript) else t
                   for t in getattr(node, 'targets', [])]
        if any(getattr(t, 'id', None) in ('INSTALL_REQUIRES', 'EXTRAS_REQUIRE')
               for t in targets):
            exec(compile(ast.Module([node], []), 'setup.py', 'exec'), namespace)
    names = lambda reqs: {re.split(r'[<>=!\[ ;]', r)[0].lower() for r in reqs}  # noqa: E731
    return (names(namespace['INSTALL_REQUIRES']),
            {k: names(v) for k, v in namespace['EXTRAS_REQUIRE'].items()})


def third_party_imports(paths, module_level_only=False):
    r"""``{top-level import name: [files]}`` of third-party imports."""
    found = {}
    for path in paths:
        with open(path) as f:
            tree = ast.parse(f.read())
        nodes = tree.body if module_level_only else ast.walk(tree)
        for node in nodes:
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                mods = [node.module]
            else:
                continue
            for mod in mods:
                top = mod.split('.')[0]
                if top not in sys.stdlib_module_names and top not in LOCAL:
                    found.setdefault(top, []).append(os.path.relpath(path, REPO))
    return found


def python_files(*parts):
    folder = os.path.join(REPO, *parts)
    if os.path.isfile(folder):
        return [folder]
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(folder)
                  for f in fs if f.endswith('.py'))


def check_covered(imports, allowed, what):
    for name, files in imports.items():
        assert name in DISTRIBUTION, (
            f'{files[0]} imports {name!r}: declare it in setup.py and map it here')
        dist = DISTRIBUTION[name]
        assert dist is None or dist in allowed, (
            f'{what}: {files[0]} imports {name!r}, which {sorted(allowed)} do not provide')


CORE_SUBPACKAGES = ['nn', 'ops', 'models', 'datasets', 'utils']


@pytest.mark.parametrize('subpackage', CORE_SUBPACKAGES)
def test_core_subpackages_import_with_core_requirements(subpackage):
    core, _ = declared()
    imports = third_party_imports(python_files('torch_geometric_gnf', subpackage),
                                  module_level_only=True)
    check_covered(imports, core, f'import torch_geometric_gnf.{subpackage}')


def test_metrics_need_the_metrics_extra():
    core, extras = declared()
    imports = third_party_imports(python_files('torch_geometric_gnf', 'metrics'))
    check_covered(imports, core | extras['metrics'], 'torch_geometric_gnf.metrics')


def test_every_library_import_is_declared():
    core, extras = declared()
    library = core.union(*(extras[k] for k in ('metrics', 'ogb', 'sparse')))
    check_covered(third_party_imports(python_files('torch_geometric_gnf')), library,
                  'torch_geometric_gnf')


@pytest.mark.parametrize('folder,extra', [('examples', 'examples'), ('benchmarks', 'examples'),
                                          ('tests', 'test'), ('docs', 'docs')])
def test_scripts_are_covered_by_their_extra(folder, extra):
    core, extras = declared()
    check_covered(third_party_imports(python_files(folder)), core | extras[extra], folder)


def test_extras_nest_and_requirements_txt_pins_everything():
    core, extras = declared()
    assert extras['metrics'] | extras['ogb'] <= extras['examples'] <= extras['test']
    assert extras['test'] <= extras['all']
    with open(os.path.join(REPO, 'requirements.txt')) as f:
        pinned = {re.split(r'[<>=!\[ ;]', line.strip())[0].lower() for line in f
                  if line.strip() and not line.startswith('#')}
    missing = (core | extras['all']) - pinned
    assert not missing, f'requirements.txt lacks {sorted(missing)}'


def test_make_docs_installs_the_declared_sphinx():
    with open(os.path.join(REPO, 'setup.py')) as f:
        pin = re.search(r"'sphinx==([0-9.]+)'", f.read()).group(1)
    with open(os.path.join(REPO, 'Makefile')) as f:
        assert f'SPHINX_VERSION ?= {pin}\n' in f.read()
