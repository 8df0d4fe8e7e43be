# The README's two commands: `make reproduce` (the smoke chain) and `make test` (the suite).
# Both create and fill .venv when it is missing or when pyproject.toml changed.
PROFILE ?= smoke
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.recrepro-installed

.PHONY: setup reproduce compare promote test test-fast lab bench clean-runs

# Optional: a wheel index for torch, e.g. `make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu` for
# the CPU-only build (PyPI's Linux torch is the multi-GB CUDA build). Empty (the default, used by CI): torch
# comes from PyPI with the rest. Takes effect when the venv is (re)filled: a fresh clone or a changed pyproject.
TORCH_INDEX ?=

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(if $(TORCH_INDEX),$(PY) -m pip install --quiet $$($(PY) -c "import tomllib; print(next(d for d in tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'] if d.startswith('torch==')))") --index-url $(TORCH_INDEX))
	$(PY) -m pip install --quiet -e '.[dev]'
	# RecBole's metadata pins ray<=2.6.3 (broken on numpy 2); install it alone, without deps.
	$(PY) -m pip install --quiet --no-deps $$($(PY) -c "import tomllib; print(' '.join(tomllib.load(open('pyproject.toml', 'rb'))['tool']['recrepro']['no_deps']))")
	touch $(STAMP)

# The chain, then the comparison with the committed reference (it never writes results/ or figures/).
reproduce: setup
	$(PY) -m recrepro run --profile $(PROFILE)
	$(PY) -m recrepro compare --profile $(PROFILE)

compare: setup
	$(PY) -m recrepro compare --profile $(PROFILE)

# The only way the committed reference outputs change: review `git diff results figures` afterwards.
promote: setup
	$(PY) -m recrepro promote --profile $(PROFILE)

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

# The repository root, so README, results, figures and runs/<profile>/notebooks are in reach; root
# accounts (containers) need --allow-root.
lab: setup
	$(VENV)/bin/jupyter lab --notebook-dir=. $(if $(filter 0,$(shell id -u)),--allow-root,) notebooks/00_setup.ipynb

bench: setup
	$(PY) benchmarks/bench_amazon_parse.py
	$(PY) benchmarks/bench_parser.py

clean-runs:
	rm -rf runs/$(PROFILE)
