# Two commands do all the set-up:
#   make repro   create .venv if missing, install logitlab, run the whole DVC pipeline, independent
#                stages side by side (JOBS of them: default, the cores; JOBS=1 is plain `dvc repro`)
#   make test    the same set-up, then the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.logitlab-installed

# No usage telemetry leaves this machine.
export MLFLOW_DISABLE_TELEMETRY ?= true
export DVC_NO_ANALYTICS ?= 1
# DVC stages call `python`: make it the project's.
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup repro test test-fast bench bench-pipeline params plots-page exps metrics ui server serve lock docs-images

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet "pip>=23"
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[test]'
	touch $@

docs-images: $(STAMP)  ## a maintainer's command: the README's images under docs/images/, and its registry facts (docs/registry.json, cog), from a finished make repro
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[test,docs]'
	$(BIN)/python docs/make_images.py
	$(BIN)/python docs/readme_facts.py

lock: $(STAMP)  ## resolve pyproject.toml's ranges anew (newest allowed) into requirements.lock, the versions make installs
	$(BIN)/python -m pip install --quiet --upgrade --upgrade-strategy eager -e '.[test,docs]'
	{ sed -n '1,2p' requirements.lock; $(BIN)/python -m pip freeze --exclude-editable; } > requirements.lock.new
	mv requirements.lock.new requirements.lock
	touch $(STAMP)

# Workers for `make repro`; empty: as many as the cores this process may use.
JOBS ?=

repro: $(STAMP)  ## one `dvc --wait-for-lock repro -s STAGE` per stage, JOBS at a time (src/logitlab/stages/parallel.py)
	$(BIN)/python -m logitlab.stages.parallel $(if $(JOBS),--jobs $(JOBS))

# pytest-xdist workers for make test and test-fast (auto: one per core; 0: none, one process), each
# taking whole test files (--dist loadfile: a file's module fixtures and ordered tests stay together).
TEST_WORKERS ?= auto
PYTEST := $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

test: $(STAMP)  ## the whole suite (~15-24 min on two cores, by CPU)
	$(PYTEST)

test-fast: $(STAMP)  ## everything but the slow end-to-end runs
	$(PYTEST) -m "not slow"

bench: $(STAMP)  ## benchmarks/bench.py: training, tracking, pictures and a sweep against their baselines (~18 min)
	$(BIN)/dvc repro preprocess@mnist preprocess@blobs
	$(BIN)/python benchmarks/bench.py

bench-pipeline: $(STAMP)  ## dvc repro from nothing: JOBS=1, JOBS=2 and 8fc7770's; the no-op; the study's subset against 996da51 (~20 min)
	$(BIN)/dvc repro preprocess@mnist preprocess@blobs
	$(BIN)/python benchmarks/bench.py --only pipeline study

params: $(STAMP)  ## regenerate params.yaml from conf/ and dvc.yaml's history plots from params.yaml (a test fails while they disagree)
	$(BIN)/python -m logitlab params

plots-page:  ## rebuild vega/plots_page.html, dvc plots' offline page, from vega/package-lock.json (needs npm)
	$(PYTHON) vega/build.py

exps: $(STAMP)  ## dvc exp show in 100 columns, a row per variant x experiment (src/logitlab/stages/views.py); VARIANT='mnist-*' SORT=test_loss
	$(BIN)/python -m logitlab exps $(if $(VARIANT),--variant '$(VARIANT)') $(if $(SORT),--sort-by $(SORT))

# DVC rounds each value to --precision decimals with Python's round(), which returns a float unchanged
# past 323 digits: every value as its metrics file stores it (prob_min about 1e-27, not 5 decimals' 0.0).
metrics: $(STAMP)  ## dvc metrics show, no value rounded: every field of every variant (wide: less -S, or make exps)
	$(BIN)/dvc metrics show --precision 330

# The project's SQLite store and where it keeps artifacts (logitlab.tracking.store), named outright:
# plain `mlflow ui` opens ./mlflow.db of its working directory (creating an empty one elsewhere) and
# $MLFLOW_BACKEND_STORE_URI before it, which a team's server set-up may have exported.
ui: $(STAMP)  ## MLflow UI on the project's store (mlflow.db, mlartifacts/ here), loopback only; PORT=5000
	$(BIN)/mlflow ui --host 127.0.0.1 --port $(or $(PORT),5000) --backend-store-uri 'sqlite:///$(CURDIR)/mlflow.db' \
	    --default-artifact-root 'file://$(CURDIR)/mlartifacts' --artifacts-destination '$(CURDIR)/mlartifacts'

server: $(STAMP)  ## MLflow tracking server, loopback only; BACKEND=postgresql://... ARTIFACTS=dir|s3://... PORT=5000
	$(BIN)/python -m logitlab server --port $(or $(PORT),5000) \
	    $(if $(BACKEND),--backend-store-uri '$(BACKEND)') $(if $(ARTIFACTS),--artifacts-destination '$(ARTIFACTS)')

serve: $(STAMP)  ## a registered model behind MLflow's scoring server, loopback only; MODEL=models:/logitlab-mnist-25-15-relu@champion PORT=5001
	$(BIN)/python -m logitlab serve '$(or $(MODEL),models:/logitlab-mnist-25-15-relu@champion)' --port $(or $(PORT),5001)
