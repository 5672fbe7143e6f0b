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
	$(BIN)/pip install -q "$(TORCH)" -e ".[eval,test,demo,data]"
	touch $@

.PHONY: install test demo ablations wheels
install: $(BIN)/surgery

test: install
	$(BIN)/python -m pytest

demo: install
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python scripts/demo_data.py
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/surgery run recipes/tiny.boom

# Wheels for bench/gpu_check.sh on a GPU machine that has torch and transformers but no network:
# what surgery needs to distill beyond those (the script installs only the ones missing there).
# Python 3.12 on x86-64 Linux, the GPU machine's; torch is never among them.
WHEELS := lark==1.3.1 networkx==3.6.1 pyyaml==6.0.4 rich==15.0.0 markdown-it-py==4.3.0 mdurl==0.1.2 \
	pygments==2.21.0 safetensors==0.8.0
wheels:
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		-d .whl $(WHEELS)

# The paper's claims on the tiny teacher (docs/ablations.md): the demo recipe itself, then three
# ablations of it, each in its own run directory (a rerun, or a run after `make demo`, skips the
# stages already done; the teacher and the naive-pruning scores come from the shared cache), then
# one figure and table. Not part of CI.
ABLATIONS := recipes/tiny.boom recipes/ablations/random-init.boom recipes/ablations/no-alignment.boom \
	recipes/ablations/paper.boom
ablations: install
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python scripts/demo_data.py
	for recipe in $(ABLATIONS); do \
		HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/surgery run $$recipe || exit 1; \
	done
	$(BIN)/surgery compare $(ABLATIONS) --out recipes/runs/ablations/compare
