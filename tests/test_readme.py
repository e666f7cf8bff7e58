r"""Every ```python block of README.md runs as written, each in a fresh
namespace with the repository root as the working directory (snippets that
need ``../shared`` are skipped cleanly when it is absent)."""
import os
import re

import pytest

from conftest import REPO, SHARED

BLOCK = re.compile(r'^```python\n(.*?)^```', re.S | re.M)


def readme_blocks():
    with open(os.path.join(REPO, 'README.md'), encoding='utf-8') as f:
        return BLOCK.findall(f.read())


def test_readme_has_snippets():
    assert len(readme_blocks()) >= 5


@pytest.mark.parametrize('index', range(len(readme_blocks())))
def test_readme_snippet_runs(index, monkeypatch):
    code = readme_blocks()[index]
    if '../shared' in code and not os.path.isdir(SHARED):
        pytest.skip('needs ../shared')
    monkeypatch.chdir(REPO)
    exec(compile(code, f'README.md python block {index}', 'exec'), {'__name__': '__readme__'})
