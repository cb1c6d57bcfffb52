# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv and installs
# what it needs from the package registries; nothing else is required but Python >= 3.10.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO := demo
DEMO_SHARDS := 4
DEMO_SAMPLES := 24
LAST := $(shell printf '%06d' $$(($(DEMO_SHARDS) - 1)))

.PHONY: demo test lint typecheck fuzz bench render image constraints clean argo-lint controlplane

# pip -qq: errors only (-q still prints setuptools' notice about editable installs).
PIP := $(BIN)/python -m pip install -qq

$(BIN)/python:
	@echo "creating $(VENV) with $$($(PYTHON) --version)"
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip

# Reinstall when the project's metadata changes; the stamp names the extras installed.
# The image's pins (containers/constraints.txt) apply here too: tests run what pods run.
# fast-png (ISA-L deflate) and fpng are what the image installs, so the demo shows the same speed.
CONSTRAINTS := containers/constraints.txt
$(VENV)/.installed: pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	@echo "installing shardflow into $(VENV) (a minute the first time)"
	$(PIP) -c $(CONSTRAINTS) -e '.[fast-png,strict-jpeg,fpng]'
	touch $@

$(VENV)/.installed-test: pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	@echo "installing shardflow with its test extras into $(VENV) (a minute the first time)"
	$(PIP) -c $(CONSTRAINTS) -e '.[test]'
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/shardflow synth $(DEMO)/in --shards $(DEMO_SHARDS) --samples $(DEMO_SAMPLES)
	$(BIN)/shardflow run '$(DEMO)/in/in-{000000..$(LAST)}.tar' \
		'$(DEMO)/out/out-{000000..$(LAST)}.tar' --recipe seed

# The installs and the Go builds run side by side: Go's links and downloads, and pip's, leave
# cores idle that the others' compiles take (README: how shardflow is tested against Argo).
test:
	$(MAKE) -j4 $(VENV)/.installed-test argo-lint controlplane
	$(BIN)/python -m pytest
	$(BIN)/ruff check .
	$(MAKE) typecheck

# The real control plane the Argo scenarios run under (tests/test_argo_controller.py): etcd,
# kube-apiserver and Argo's workflow-controller, built from their Go modules (versions in
# tests/controlplane/*/go.mod) with Go's build cache; a cold build takes minutes, a warm one
# seconds. Needs Go >= 1.25.7 and the Go module proxy.
GO ?= go
CONTROLPLANE_BIN := tests/.bin
KUBE_MODULE := tests/controlplane/kube
ARGO_MODULE := tests/controlplane/argo
KUBE_VERSION := v1.33.13
ARGO_VERSION := v3.7.18
# $(call GO_BUILD,module dir,output,package,extra -ldflags): the versions are stamped as the
# projects' own release builds stamp them.
GO_BUILD = cd $(1) && $(GO) build -buildvcs=false -ldflags='-s -w $(4)' -o $(CURDIR)/$(2) $(3)
controlplane: $(CONTROLPLANE_BIN)/etcd $(CONTROLPLANE_BIN)/kube-apiserver $(CONTROLPLANE_BIN)/workflow-controller

$(CONTROLPLANE_BIN)/etcd: $(KUBE_MODULE)/go.mod $(KUBE_MODULE)/go.sum $(KUBE_MODULE)/etcd/main.go
	$(call GO_BUILD,$(KUBE_MODULE),$@,./etcd)

$(CONTROLPLANE_BIN)/kube-apiserver: $(KUBE_MODULE)/go.mod $(KUBE_MODULE)/go.sum
	$(call GO_BUILD,$(KUBE_MODULE),$@,k8s.io/kubernetes/cmd/kube-apiserver,\
		-X k8s.io/component-base/version.gitVersion=$(KUBE_VERSION) \
		-X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=33)

$(CONTROLPLANE_BIN)/workflow-controller: $(ARGO_MODULE)/go.mod $(ARGO_MODULE)/go.sum
	$(call GO_BUILD,$(ARGO_MODULE),$@,github.com/argoproj/argo-workflows/v3/cmd/workflow-controller,\
		-X github.com/argoproj/argo-workflows/v3.version=$(ARGO_VERSION))

lint: $(VENV)/.installed-test typecheck
	$(BIN)/ruff check .

# mypy ([tool.mypy] in pyproject.toml) reads the package as it is installed, shardflow.steps
# being steps/: the links below give it that layout (the editable install's import hook is
# invisible to a static checker).
TYPING := $(VENV)/typing/shardflow
typecheck: $(VENV)/.installed-test
	mkdir -p $(TYPING)
	ln -sfn $(CURDIR)/steps $(TYPING)/steps
	ln -sfn $(CURDIR)/workflows $(TYPING)/workflows
	$(BIN)/mypy

# The long fuzz run, outside `make test`: FUZZ_CASES mutated shards (and as many damaged
# outputs) and as many recipes, with a fresh seed each time; a failure names its seed and
# case to replay.
FUZZ_CASES ?= 1000
FUZZ_SEED ?= $(shell date +%s)
fuzz: $(VENV)/.installed-test
	@echo "fuzzing $(FUZZ_CASES) cases with --fuzz-seed $(FUZZ_SEED)"
	$(BIN)/python -m pytest tests/test_fuzz.py tests/test_fuzz_recipes.py -q \
		--fuzz-cases $(FUZZ_CASES) --fuzz-seed $(FUZZ_SEED)

# Benchmarks, never part of `make test` (benchmarks/README.md). Add the 2 GB shard's memory
# row with: make bench BENCH_ARGS="--big-gb 2"
BENCH_ARGS ?=
$(VENV)/.installed-bench: pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	@echo "installing shardflow with its benchmark extras into $(VENV)"
	$(PIP) -c $(CONSTRAINTS) -e '.[bench]'
	touch $@ $(VENV)/.installed

bench: $(VENV)/.installed-bench
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)

# Argo's own offline linter (what `argo lint --offline` runs), v3.7 and v4.0, built from Argo's
# Go packages into tests/.bin/ for tests/test_argo_validator.py. Needs Go; the first build
# takes minutes, later ones come from Go's build cache.
ARGO_LINT := tests/.bin/argo-lint-v3 tests/.bin/argo-lint-v4
argo-lint: $(ARGO_LINT)
tests/.bin/argo-lint-%: tests/argo/%/main.go tests/argo/%/go.mod tests/argo/%/go.sum
	@echo "building $@ from Argo's Go packages (minutes the first time)"
	$(call GO_BUILD,tests/argo/$*,$@,.)

# Argo manifests (argo/*.yaml) from workflows/dag.py; a test fails when they are stale.
render: $(VENV)/.installed
	$(BIN)/shardflow render --write

# The container image (containers/Dockerfile), tagged with the version the manifests default to.
IMAGE ?= shardflow:$(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
image:
	docker build -f containers/Dockerfile -t $(IMAGE) .

# Re-pin the image's dependencies to the versions installed in .venv (after pyproject changes).
constraints: $(VENV)/.installed-test
	$(PIP) -e '.[s3,gcs,fast-png,strict-jpeg,fpng,parquet,fast-resize]'
	$(BIN)/python containers/lock.py > $(CONSTRAINTS)

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache .ruff_cache .mypy_cache build *.egg-info tests/.bin
