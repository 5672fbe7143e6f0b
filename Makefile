# Two entry points for a fresh machine: `make demo` and `make test`.
# torch is pinned in the same pip command as everything else, so a CPU machine gets the
# CPU build of torch (lm-eval alone would pull a CUDA build). GPU users: see README.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0

$(BIN)/surgery: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)" -e ".[eval,test,demo]"
	touch $@

.PHONY: install test demo ablations
install: $(BIN)/surgery

test: install
	$(BIN)/python -m pytest

demo: install
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python scripts/demo_data.py
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/surgery run recipes/tiny.boom

# The paper's claims on the tiny teacher (docs/ablations.md): four recipes, each in its own run
# directory (a rerun skips the stages already done), then one figure and table. Not part of CI.
ABLATIONS := demo random-init no-alignment paper
ablations: install
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python scripts/demo_data.py
	for name in $(ABLATIONS); do \
		HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/surgery run recipes/ablations/$$name.boom || exit 1; \
	done
	$(BIN)/surgery compare $(ABLATIONS:%=recipes/ablations/%.boom) --out recipes/runs/ablations/compare
