# The two commands of the README: `make demo` (main job) and `make test`.
# Both create .venv/ from pyproject.toml when it is missing or pyproject.toml changed.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-from-pyproject
PY := $(VENV)/bin/python

.PHONY: venv demo test lint format bench-kernels gpu-check experiments clean-venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	@touch $(STAMP)

# Generates data/synth if missing, trains the demo experiment with the softmax baseline and
# with concurrent softmax on CPU, evaluates both with the OID metric and prints the table
# (runs/demo/summary.md, plots in runs/demo/ and runs/demo_<loss>/eval/).
demo: $(STAMP)
	$(PY) -m lsdet.apps.demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: lint
	$(PY) -m pytest -q

bench-kernels: $(STAMP)
	$(PY) -m lsdet.bench.kernels

# On a CUDA machine (<= 30 min): kernel tests compiled, kernel and detector benchmarks, input
# pipeline, AMP / DDP training, evaluation and the demo; report in benchmarks/gpu/<date>-<gpu>/.
# Without a GPU it says so and exits 0.
gpu-check: $(STAMP)
	$(PY) -m lsdet.bench.gpu_check $(ARGS)

# The paper's Tables 1-4 and Figures 4-5 on the synthetic benchmark (experiments/README.md):
# runs every task of experiments/sweeps.yaml whose results are not yet in
# experiments/results/converged/ (so a later start continues), then writes the tables and
# figures there. ARGS e.g. "--size converged --jobs 2 --threads 1 --dry-run".
experiments: $(STAMP)
	$(PY) experiments/run_all.py $(or $(ARGS),--size converged --jobs 2 --threads 1)

clean-venv:
	rm -rf $(VENV)
