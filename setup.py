"""Build script for ``torch_geometric_gnf``.

The C++ extension ``torch_geometric_gnf._C`` is built from ``csrc/``:

* C++ (CPU, OpenMP) sources are always compiled;
* CUDA sources are added when torch has CUDA and ``nvcc`` is found, or when
  ``FORCE_CUDA=1`` is set;
* ``GNF_NO_EXTENSION=1`` skips the extension entirely (the pure-PyTorch
  reference path in ``torch_geometric_gnf.ops`` is then used).

torch must already be installed: build with
``pip install --no-build-isolation .`` so that pip never resolves torch itself.
"""
import glob
import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))

# What each part imports (tests/test_package.py checks this against the
# code). torch is deliberately not listed: pip must never resolve it (a bare
# `torch` requirement pulls a multi-GB CUDA build). Install it first.
# Core: nn, ops, models, datasets (networkx builds the GraphRNN graphs), utils.
INSTALL_REQUIRES = ['torch_geometric>=2.5', 'numpy', 'networkx', 'tqdm']
EXTRAS_REQUIRE = {
    'metrics': ['scipy'],                       # torch_geometric_gnf.metrics
    'ogb': ['ogb>=1.3.6'],                      # OGB loaders (pandas comes with ogb)
    'sparse': ['torch-scatter', 'torch-sparse'],  # optional; compiled from source
    'docs': ['sphinx==8.2.3'],                  # make docs
}
EXTRAS_REQUIRE['examples'] = (EXTRAS_REQUIRE['metrics'] + EXTRAS_REQUIRE['ogb'] +
                              ['matplotlib'])   # examples/ and benchmarks/
EXTRAS_REQUIRE['test'] = EXTRAS_REQUIRE['examples'] + ['pytest']
EXTRAS_REQUIRE['all'] = EXTRAS_REQUIRE['test']


def _flag(name: str) -> bool:
    return os.environ.get(name, '0').lower() in ('1', 'true', 'yes', 'on')


def _extensions():
    if _flag('GNF_NO_EXTENSION'):
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import (CUDA_HOME, BuildExtension,
                                               CppExtension, CUDAExtension)
    except ImportError:  # torch is required to build, never pulled by pip
        sys.exit('torch_geometric_gnf: install torch first (e.g. '
                 '`pip install torch==2.13.0`), then `pip install '
                 '--no-build-isolation .`; or set GNF_NO_EXTENSION=1.')

    # "torch has CUDA" means a CUDA build of torch; build machines often have
    # no visible GPU, so torch.cuda.is_available() is not required.
    with_cuda = torch.version.cuda is not None and (
        _flag('FORCE_CUDA') or CUDA_HOME is not None)

    csrc = os.path.join(ROOT, 'csrc')
    sources = sorted(glob.glob(os.path.join(csrc, '*.cpp')) +
                     glob.glob(os.path.join(csrc, 'cpu', '*.cpp')))
    extra_compile_args = {'cxx': ['-O3']}
    extra_link_args = []
    define_macros = []
    if sys.platform.startswith('linux'):
        extra_compile_args['cxx'].append('-fopenmp')
        extra_link_args.append('-fopenmp')
    extension_cls = CppExtension
    if with_cuda:
        sources += sorted(glob.glob(os.path.join(csrc, 'cuda', '*.cu')))
        define_macros.append(('WITH_CUDA', None))
        extra_compile_args['nvcc'] = ['-O3', '--expt-relaxed-constexpr']
        extension_cls = CUDAExtension
    sources = [os.path.relpath(s, ROOT) for s in sources]
    ext = extension_cls(
        'torch_geometric_gnf._C',
        sources,
        include_dirs=[csrc],
        define_macros=define_macros,
        extra_compile_args=extra_compile_args,
        extra_link_args=extra_link_args,
    )
    return [ext], {'build_ext': BuildExtension.with_options(no_python_abi_suffix=False)}


ext_modules, cmdclass = _extensions()

with open(os.path.join(ROOT, 'README.md'), encoding='utf-8') as f:
    long_description = f.read()

setup(
    name='torch_geometric_gnf',
    version='0.1.0',
    description='Graph Normalizing Flows and reversible, memory-saving '
    'message passing for PyTorch Geometric',
    long_description=long_description,
    long_description_content_type='text/markdown',
    license='MIT',
    python_requires='>=3.9',
    packages=find_packages(include=['torch_geometric_gnf',
                                    'torch_geometric_gnf.*']),
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
