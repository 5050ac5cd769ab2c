# servewell — every target is documented: `make help` (the default goal) lists them.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

# Options for training targets (empty means "not given").
MODEL ?=
SPEC ?=
DATA ?=
TARGET ?=
TASK ?=
NAME ?=
VERSION ?=
FORCE ?=
ESTIMATOR ?=
KEEP ?=
# Train on the model's labelled captured traffic: capture, or capture+original (with the spec's data).
FROM ?=
# Options for scoring a CSV (OUT defaults to <DATA>.scored.csv; PROBA=1 adds class probabilities).
OUT ?=
PROBA ?=
# Options for traffic experiments (make shadow / canary / traffic).
SAMPLE ?=
WEIGHT ?=
KEY_FIELD ?=
END ?=
# Where the model store lives; the service and the training CLI both read SERVEWELL_STORE.
STORE ?= models
# Where make serve listens (empty: SERVEWELL_HOST / SERVEWELL_PORT, else 127.0.0.1:8000).
HOST ?=
PORT ?=
export SERVEWELL_STORE ?= $(STORE)

.PHONY: help venv test lint typecheck unit test-slow serve train models compare prune promote rollback shadow canary traffic sign score grpc-proto export-capture bench bench-score clean bench-peers

help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "; printf "servewell — make targets:\n\n"} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@printf "\nTraining options: MODEL=name SPEC=path.toml DATA=file.csv TARGET=column [TASK=classification|regression NAME=model ESTIMATOR=random_forest|extra_trees|gradient_boosting|hist_gradient_boosting|logistic_regression|linear_regression|ridge|knn] FORCE=1 FROM=capture|capture+original\n"
	@printf "make train exits 0 when promoted (or identical to production), 3 when stored but not promoted, 1 on errors\n"
	@printf "Scoring options: MODEL=name DATA=in.csv [OUT=out.csv VERSION=n PROBA=1]\n"
	@printf "Store: STORE=dir (default models/), exported as SERVEWELL_STORE\n"

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "Python 3.11 is required (python3.11 not found)"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP) ## Create .venv and install servewell with its dev tools

lint: $(STAMP) ## Ruff lint and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP) ## Mypy (strict)
	$(VENV)/bin/mypy

unit: $(STAMP) ## Run the test suite only (no lint), fast tests, one worker per core
	$(PY) -m pytest -m "not slow and not ray" -q -n auto --dist loadscope

test: lint typecheck unit ## Lint, type-check and run the whole default test suite

# pytest exits 5 when nothing is selected: for a marker run that means its tests are gone.
define pytest_marked
	$(PY) -m pytest -q -m "$(1)"; status=$$?; \
	if [ $$status = 5 ]; then echo "no test is marked '$(1)': the tests or their marker are gone"; fi; \
	exit $$status
endef

test-slow: $(STAMP) ## Run the slow load/soak/shutdown tests (make test runs the others; soak needs wrk)
	@command -v wrk >/dev/null || test "$$(id -u)" != 0 || (apt-get update -qq && apt-get install -y -qq wrk)
	$(call pytest_marked,slow)

train: $(STAMP) ## Train: all specs, or MODEL=name, SPEC=path.toml, or DATA=file.csv TARGET=col [ESTIMATOR=name]; FROM=capture: on labelled traffic
	$(PY) -m training train \
		$(if $(MODEL),--model "$(MODEL)") $(if $(SPEC),--spec "$(SPEC)") \
		$(if $(DATA),--data "$(DATA)") $(if $(TARGET),--target "$(TARGET)") \
		$(if $(TASK),--task "$(TASK)") $(if $(NAME),--name "$(NAME)") \
		$(if $(ESTIMATOR),--estimator "$(ESTIMATOR)") $(if $(FORCE),--force) \
		$(if $(FROM),--from "$(FROM)")

models: $(STAMP) ## List the store: versions, production, primary metric
	$(PY) -m training models

compare: $(STAMP) ## Every version of MODEL=name side by side: metrics ± fold spread, baseline, data, params, changes
	@test -n "$(MODEL)" || { echo "usage: make compare MODEL=name"; exit 2; }
	$(PY) -m training compare "$(MODEL)"

prune: $(STAMP) ## Remove old versions of MODEL=name, keeping the newest KEEP=n, production and the previous one
	@test -n "$(MODEL)" -a -n "$(KEEP)" || { echo "usage: make prune MODEL=name KEEP=n"; exit 2; }
	$(PY) -m training prune "$(MODEL)" --keep "$(KEEP)"

promote: $(STAMP) ## Make MODEL=name VERSION=n the production version
	@test -n "$(MODEL)" -a -n "$(VERSION)" || { echo "usage: make promote MODEL=name VERSION=n"; exit 2; }
	$(PY) -m training promote "$(MODEL)" "$(VERSION)"

rollback: $(STAMP) ## Return MODEL=name to its previous production version
	@test -n "$(MODEL)" || { echo "usage: make rollback MODEL=name"; exit 2; }
	$(PY) -m training rollback "$(MODEL)"

shadow: $(STAMP) ## Let MODEL=name VERSION=n predict production's requests in shadow [SAMPLE=0-1]; compare at /models/<name>/compare
	@test -n "$(MODEL)" -a -n "$(VERSION)" || { echo "usage: make shadow MODEL=name VERSION=n [SAMPLE=1.0]"; exit 2; }
	$(PY) -m training shadow "$(MODEL)" "$(VERSION)" $(if $(SAMPLE),--sample "$(SAMPLE)")

canary: $(STAMP) ## Let MODEL=name VERSION=n answer WEIGHT=percent of requests [KEY_FIELD=feature]
	@test -n "$(MODEL)" -a -n "$(VERSION)" -a -n "$(WEIGHT)" || { echo "usage: make canary MODEL=name VERSION=n WEIGHT=percent [KEY_FIELD=feature]"; exit 2; }
	$(PY) -m training canary "$(MODEL)" "$(VERSION)" --weight "$(WEIGHT)" $(if $(KEY_FIELD),--key-field "$(KEY_FIELD)")

traffic: $(STAMP) ## Show the traffic experiment of MODEL=name (END=1 ends it)
	@test -n "$(MODEL)" || { echo "usage: make traffic MODEL=name [END=1]"; exit 2; }
	$(PY) -m training traffic "$(MODEL)" $(if $(END),--end)

sign: $(STAMP) ## Re-sign every version signed in the old format with SERVEWELL_SIGNING_KEY
	$(PY) -m training sign

score: $(STAMP) ## Score a CSV of any size: MODEL=name DATA=in.csv [OUT=out.csv VERSION=n PROBA=1]; refused rows go to a side file (out.errors.csv)
	@test -n "$(MODEL)" -a -n "$(DATA)" || { echo "usage: make score MODEL=name DATA=in.csv [OUT=out.csv VERSION=n PROBA=1]"; exit 2; }
	$(PY) -m training score "$(MODEL)" "$(DATA)" \
		$(if $(OUT),--out "$(OUT)") $(if $(VERSION),--version "$(VERSION)") $(if $(PROBA),--probabilities)

export-capture: $(STAMP) ## Captured predictions and labels of MODEL=name to OUT=file.csv (.parquet with pyarrow)
	@test -n "$(MODEL)" -a -n "$(OUT)" || { echo "usage: make export-capture MODEL=name OUT=file.csv"; exit 2; }
	$(PY) -m training export-capture "$(MODEL)" "$(OUT)"

bench-score: $(STAMP) ## Bulk scoring throughput and peak memory, 1 000 000-row CSVs (~2 min): table + bench/results/score-latest.json
	$(PY) bench/score.py

serve: $(STAMP) ## Train the default models if the store is empty, then serve on 127.0.0.1:8000 (HOST=, PORT=)
	$(PY) -m training ensure-default
	$(PY) -m serving $(if $(HOST),--host "$(HOST)") $(if $(PORT),--port "$(PORT)")

BENCH_ARGS ?=
bench: $(STAMP) ## Load benchmark, wrk on loopback (~18 min; BENCH_ARGS=--quick ~5 min; --baseline-ref=COMMIT adds a paired A/B with that commit): table + bench/results/*.json/.png
	@command -v wrk >/dev/null || test "$$(id -u)" != 0 || (apt-get update -qq && apt-get install -y -qq wrk)
	$(PY) bench/run.py $(BENCH_ARGS)

grpc-proto: $(STAMP) ## Regenerate serving/grpc/generated/ from serving/grpc/proto/inference.proto
	$(PY) -m serving.grpc.generate

clean: ## Remove the virtualenv and caches (keeps the model store)
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

# Seldon MLServer in its own virtualenv, with servewell's exact scikit-learn (joblib files load
# only with the version that wrote them).
PEERS_VENV := .venv-peers
PEERS_STAMP := $(PEERS_VENV)/.installed-stamp
PEERS_ARGS ?=
$(PEERS_STAMP): bench/peers-requirements.txt $(STAMP)
	@test -x $(PEERS_VENV)/bin/python || $(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(PEERS_VENV)/bin/python -m pip install --quiet -r bench/peers-requirements.txt \
		"scikit-learn==$$($(PY) -c 'import sklearn; print(sklearn.__version__)')"
	@touch $(PEERS_STAMP)

bench-peers: $(STAMP) $(PEERS_STAMP) ## servewell vs Seldon MLServer, wrk on loopback (~3 min; PEERS_ARGS=--quick ~1 min; first run installs MLServer into .venv-peers): table + bench/results/peers-*.json/.png
	@command -v wrk >/dev/null || test "$$(id -u)" != 0 || (apt-get update -qq && apt-get install -y -qq wrk)
	$(PY) bench/run.py --suite peers --peers-venv $(PEERS_VENV) $(PEERS_ARGS)

# -- Ray Serve (optional extra `.[ray]`: large wheels, so not part of `make venv`) -------------
RAY_STAMP := $(VENV)/.ray-installed-stamp
.PHONY: venv-ray serve-ray test-ray bench-ray
RAY_CPUS ?= $(shell nproc)

$(RAY_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install --quiet -e '.[dev,ray]'
	@touch $(RAY_STAMP)

venv-ray: $(RAY_STAMP) ## Install the ray extra into .venv (Ray Serve; ~1 GB, a few minutes)

serve-ray: $(RAY_STAMP) ## Train defaults if the store is empty; local Ray head (loopback) + serving/ray/ray-serve.yaml on 127.0.0.1:8000
	$(PY) -m training ensure-default
	RAY_USAGE_STATS_ENABLED=0 $(PY) -m serving.ray.local --config serving/ray/ray-serve.yaml --num-cpus $(RAY_CPUS)

test-ray: $(RAY_STAMP) ## Ray Serve tests: two real replicas on a local Ray instance (~1.5 min)
	$(call pytest_marked,ray)

bench-ray: $(RAY_STAMP) ## Benchmark the Ray Serve proxy vs the single-box service (BENCH_ARGS as for bench)
	@command -v wrk >/dev/null || test "$$(id -u)" != 0 || (apt-get update -qq && apt-get install -y -qq wrk)
	$(PY) bench/run.py --suite ray $(BENCH_ARGS)
