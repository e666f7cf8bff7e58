# One-command set-up: `make demo` and `make test` create .venv if missing,
# install torch (CPU) + PyG + ogb + this package with its C++ extension.
PYTHON ?= python3
TORCH_VERSION ?= 2.13.0
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.gnf-installed
SOURCES := setup.py requirements.txt $(wildcard csrc/*.cpp csrc/*.h csrc/cpu/* csrc/cuda/*)

.PHONY: install demo test docs bench clean

install: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) $(SOURCES)
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -r requirements.txt
	# --no-build-isolation: build against the torch installed above
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	$(PY) -c "from torch_geometric_gnf import ops; print('C++ extension:', ops.extension_available())"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

test: $(STAMP)
	GNF_EXPECT_EXTENSION=1 $(PY) -m pytest tests -q

# HTML API reference from the docstrings, warnings as errors (CI runs it too).
SPHINX_VERSION ?= 8.2.3
docs: $(STAMP)
	$(PY) -m pip install -q sphinx==$(SPHINX_VERSION)
	$(PY) -m sphinx -W --keep-going -q -b html docs docs/_build/html
	@echo "API reference: docs/_build/html/index.html"

bench: $(STAMP)
	$(PY) benchmarks/memory_vs_depth.py --markdown benchmarks/results/memory_vs_depth_cpu.md
	$(PY) benchmarks/plot_memory_vs_depth.py benchmarks/results/memory_vs_depth_cpu.md \
		benchmarks/results/memory_vs_depth_cpu.png
	$(PY) benchmarks/fused_gat.py --graphs 100k arxiv 10M --threads 2 --repeats 3 \
		--markdown benchmarks/results/fused_gat_cpu.md --plot benchmarks/results/fused_gat_cpu.png

clean:
	rm -rf build *.egg-info torch_geometric_gnf/_C*.so docs/_build $(VENV)
