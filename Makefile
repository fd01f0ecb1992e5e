# Two commands for a fresh machine:  make demo   (run the pipeline)   make test   (run the tests)

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
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

test: install-dev
	pytest

# Preprocessing against nnU-Net v2 (its own virtualenv: it needs torchvision, resseg must not).
bench: install
	test -x benchmarks/.venv-nnunet/bin/nnUNetv2_plan_and_preprocess || \
		($(PYTHON) -m venv benchmarks/.venv-nnunet && \
		 benchmarks/.venv-nnunet/bin/pip install --quiet $(if $(TORCH_CONSTRAINT),--constraint $(TORCH_CONSTRAINT)) nnunetv2)
	python benchmarks/preprocess_vs_nnunet.py

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
