# One reproducible install (.venv from constraints.txt), then everything runs from it.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
SHARED_WEIGHTS := ../shared/models/mobilenet_v2_1.0_backbone.weights.h5
# ImageNet weights are the product default; on machines without internet the team's offline copy is used
FRUITS_WEIGHTS ?= $(if $(wildcard $(SHARED_WEIGHTS)),$(abspath $(SHARED_WEIGHTS)),imagenet)
export FRUITS_WEIGHTS
DEMO_OUTPUT ?= out/demo

.PHONY: setup demo test test-fast lint format bench clean rehearse-aws

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

demo: setup
	$(BIN)/python -m fruits_platform.local.demo --input data/sample --output $(DEMO_OUTPUT)

# two test processes, each test file on one of them (its module fixtures run once; each process has its
# own Spark session and Airflow DB)
test: setup
	$(BIN)/pytest -n 2 --dist loadfile --no-loadscope-reorder

# everything but the whole-pipeline, DAG and browser runs (marked slow): a minute or two while editing
test-fast: setup
	$(BIN)/pytest -n 2 --dist loadfile --no-loadscope-reorder -m "not slow"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# the first AWS run, rehearsed without AWS (docs/AWS.md, section 12): the runbook's commands against moto's
# server with IAM enforced, the local Airflow stack running fruits_features_emr; ~3 min.
# REHEARSAL_MUTATION=runbook|policy|trigger-endpoint shows it failing for each reason it exists
rehearse-aws: setup
	$(BIN)/python -m tests.aws_rehearsal

# figures for docs/BENCHMARKS.md; BENCH_ARGS="--images 2000" or "--images 20000 --skip notebook" for scaling
BENCH_ARGS ?= --images 600
bench: setup
	$(BIN)/fruits bench $(BENCH_ARGS)

clean:
	rm -rf out test-artifacts .pytest_cache .ruff_cache

# Local Airflow 3 (api-server, scheduler, dag-processor, triggerer; LocalExecutor on SQLite) on
# http://127.0.0.1:$(AIRFLOW_PORT), home .airflow/, login admin / admin. Ctrl-C or `make airflow-stop` stops it.
AIRFLOW_PORT ?= 8080
LOCAL_AIRFLOW := $(BIN)/python -m fruits_platform.local.airflow_server
.PHONY: airflow airflow-stop test-browser

airflow: setup
	$(LOCAL_AIRFLOW) start --home $(CURDIR)/.airflow --port $(AIRFLOW_PORT)

airflow-stop:
	$(LOCAL_AIRFLOW) stop --home $(CURDIR)/.airflow

test-browser: setup
	$(BIN)/pytest tests/browser -m browser
