# pgop developer entry points. Everything runs as root on a Debian bookworm machine (see README).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
HARNESS := $(PY) -m e2e.harness
PYTEST_ARGS ?=
# Nodes in all: 1 (the default) is the host node alone; 3 adds two kubelet nodes on this machine
# (docs/local-cluster.md).
NODES ?= 1

.PHONY: all venv up down reset status env test test-unit test-integration test-e2e test-nodes nodes-up nodes-down build clean-cache

all: up

# The Python environment (pinned in pyproject.toml); re-installed when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

## The main job: local Kubernetes + services, CRDs, the operator running against it, and the example
## PgCluster (examples/pgcluster-orders.yaml in namespace pgop-example) Ready.
up: venv
	$(HARNESS) up --operator --nodes $(NODES)

## Only the cluster and services (no operator): what the tests need. Removes the example's namespace.
env-up: venv
	$(HARNESS) up --nodes $(NODES)

## Two extra kubelet nodes next to a running (or not yet running) environment.
nodes-up: venv
	$(HARNESS) up --nodes 3

down: venv
	$(HARNESS) down

## Stop everything and forget the cluster's objects and local volumes: the next up is an empty cluster.
reset: venv
	$(HARNESS) down --wipe

## Back to one node: the extra nodes stop, the rest keeps running.
nodes-down: venv
	$(HARNESS) down --extra-nodes

status:
	$(HARNESS) status

env:
	@$(HARNESS) env

build: venv
	$(HARNESS) build

## Every test: unit and integration (real services); the e2e tests (real cluster) in E2E_LANES
## parallel lanes (pytest-xdist, a module per lane at a time, each lane with its own namespaces and
## operators: e2e/harness/lanes.py), then the `clusterwide` ones alone; all on the environment as it
## is (one node unless NODES=3). Then the two extra nodes join and the node-level tests run (marker
## `nodes`: three nodes, network across them, node-local volumes, node faults). Every step always runs.
E2E_LANES ?= 2
test: env-up
	@status=0; \
	$(VENV)/bin/pytest tests $(PYTEST_ARGS) || status=$$?; \
	$(MAKE) --no-print-directory test-e2e-lanes || status=$$(( status ? status : 1 )); \
	$(MAKE) --no-print-directory test-nodes || status=$$(( status ? status : 1 )); \
	exit $$status

## The e2e tests but the node-level ones: the lanes, then the clusterwide tests alone (both always run).
.PHONY: test-e2e-lanes
test-e2e-lanes: venv
	@$(HARNESS) forget-tests
	@status=0; \
	$(VENV)/bin/pytest e2e -m "not nodes and not clusterwide" -n $(E2E_LANES) --dist loadfile $(PYTEST_ARGS) || status=$$?; \
	$(VENV)/bin/pytest e2e -m "clusterwide and not nodes" $(PYTEST_ARGS) || status=$$(( status ? status : 1 )); \
	exit $$status

test-nodes: venv
	$(HARNESS) up --nodes 3
	$(VENV)/bin/pytest e2e -m nodes $(PYTEST_ARGS)

test-unit: venv
	$(VENV)/bin/pytest tests/unit $(PYTEST_ARGS)

test-integration: env-up
	$(VENV)/bin/pytest tests/integration $(PYTEST_ARGS)

test-e2e: env-up
	$(MAKE) --no-print-directory test-e2e-lanes

## pgop, pgBackRest and barman-cloud base backups and restores side by side (local S3, about 2 GB),
## then the WAL-heavy case (1 GB of WAL, a point-in-time restore by each tool); about 10 minutes on
## 2 cores. Then bench.wal_replay (pgop's restore_command modes). BENCH_ARGS, e.g. "--scale 5 --wal-mb 128",
## are passed on to the first; WAL_BENCH_ARGS, e.g. "--wal-mb 256", to the second.
.PHONY: bench-backup
BENCH_ARGS ?=
WAL_BENCH_ARGS ?=
bench-backup: venv
	command -v pgbackrest >/dev/null && command -v barman-cloud-backup >/dev/null && command -v socat >/dev/null || \
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends pgbackrest barman-cli-cloud socat
	$(PY) -m bench.backup_compare $(BENCH_ARGS)
	$(PY) -m bench.wal_replay $(WAL_BENCH_ARGS)

## One operator, many clusters (issue 15): N PgClusters of 3 instances on simulated KWOK nodes with
## simulated agents, against the operator `make up` runs (bench/scale.py). Builds KWOK once (an
## optional harness component, cached; never built by `up`). BENCH_ARGS, e.g. "--clusters 300".
.PHONY: bench-scale
bench-scale: venv
	$(HARNESS) build kwok
	$(PY) -m bench.scale $(BENCH_ARGS)

## Node faults on a three-node environment, e.g. `make node-kill NODE=pgop-node-3`, `make node-list`
## (kill, restart, freeze, thaw, partition, heal; ARGS=--from-apiserver-only for partition).
node-%: venv
	$(HARNESS) node $* $(NODE) $(ARGS)
