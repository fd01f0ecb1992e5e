# Two commands for a fresh machine:  make demo   (run the pipeline)   make test   (run the tests)

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# nnU-Net v2, in a virtualenv of its own (the `bench` extra): it needs torchvision, which resseg
# must not load. The tests use its evaluator, the benchmarks its planner, trainer and predictor.
NNUNET_VENV := benchmarks/.venv-nnunet
# With no NVIDIA driver, pin PyTorch's CPU build (a bare `torch` may pull the CUDA one).
# On a GPU machine nothing is pinned and your own CUDA torch satisfies the requirement.
TORCH_CONSTRAINT ?= $(if $(shell command -v nvidia-smi),,constraints/torch-cpu.txt)
PIP_INSTALL := $(BIN)/pip install --quiet $(if $(TORCH_CONSTRAINT),--constraint $(TORCH_CONSTRAINT))
# dvc.yaml calls `resseg`, so the virtualenv's scripts must be on PATH for dvc.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: demo test bench install install-dev clean

demo: install
	dvc repro
	@echo
	dvc metrics show
	@dvc plots show --out reports/plots >/dev/null
	@echo
	@echo "Metrics:         reports/metrics.json  (per case: reports/per_case.csv)"
	@echo "Report (plots):  reports/plots/index.html"
	@echo "Model:           models/synthetic/"

# nnU-Net's own virtualenv too: tests/evaluate/test_against_nnunet.py checks our scores with its evaluator.
test: install-dev $(NNUNET_VENV)/.installed
	pytest

# Every benchmark, side by side with nnU-Net v2 (`make bench QUICK=1`: minutes; ONLY='inference
# scaling': some steps). nnU-Net gets its own virtualenv from the `bench` extra: it needs
# torchvision, which resseg must not load; resseg's own code, installed there too, lets nnU-Net's
# predictor and trainer run resseg's networks.
bench: install-dev $(NNUNET_VENV)/.installed
	pytest tests/evaluate/test_against_nnunet.py    # resseg's Dice against nnU-Net's evaluator
	python benchmarks/suite.py $(if $(QUICK),--quick) $(if $(ONLY),--only $(ONLY))

$(NNUNET_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(NNUNET_VENV)
	$(NNUNET_VENV)/bin/pip install --quiet $(if $(TORCH_CONSTRAINT),--constraint $(TORCH_CONSTRAINT)) --editable '.[bench]'
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --editable .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP_INSTALL) --editable '.[dev]'
	touch $@

clean:
	rm -rf $(VENV) data/raw data/preprocessed data/predictions models dvclive reports/plots
