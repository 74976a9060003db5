# GoGrid: every entry point a person or CI uses. `make help` lists them.
SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

CARGO ?= cargo
HELM = $(shell hack/tool.sh helm)
HELM_UNITTEST = $(shell hack/tool.sh helm-unittest)

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

.PHONY: demo
demo: ## The main job: local cluster, helm install, a model deployed, a canary edit, metrics
	e2e/demo.sh

.PHONY: test
test: lint unit fuzz-short chart e2e ## Every test: lint, unit, a short fuzz pass, chart and end-to-end

.PHONY: lint
lint: ## cargo fmt --check and clippy with warnings as errors
	@echo "==> cargo fmt --check"
	$(CARGO) fmt --all -- --check
	@echo "==> cargo clippy --workspace --all-targets -- -D warnings"
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
	@echo "==> cargo clippy -p gogrid-agent --features gpu (NVML and CUDA driver discovery)"
	$(CARGO) clippy -p gogrid-agent --features gpu --locked -- -D warnings

.PHONY: unit
unit: ## Unit, property and model tests of every crate (models come from hack/models.sh)
	@echo "==> real models for the pipeline tests (hack/models.sh)"
	hack/models.sh
	@echo "==> cargo test (unit)"
	CANDLE_NUM_THREADS=1 GOGRID_MODEL_MINILM="$$(hack/models.sh minilm)" GOGRID_MODEL_SMOLLM2="$$(hack/models.sh smollm2)" \
	  $(CARGO) test --locked
	@echo "==> cargo test -p gogrid-agent --features gpu (NVML and CUDA driver discovery, without a GPU here)"
	$(CARGO) test -p gogrid-agent --features gpu --locked --lib gpu::

.PHONY: fuzz-short
fuzz-short: ## The request-decoding fuzz targets, 30 s each (CI)
	hack/fuzz.sh 30

.PHONY: fuzz
fuzz: ## The request-decoding fuzz targets, 10 minutes each
	hack/fuzz.sh 600

.PHONY: bench
bench: ## GoGrid against llama.cpp, sentence-transformers, ONNX Runtime and KServe (docs/bench/)
	hack/bench.sh

.PHONY: bench-propagation
bench-propagation: ## Weight edit to every agent at 1, 10 and 100 nodes of the local cluster (docs/bench/propagation-*)
	hack/bench-propagation.sh

.PHONY: bench-scale
bench-scale: ## 100 and 1000 kwok nodes with hollow agents: reconcile, DaemonSet, edit, memory, API load (docs/bench/scale*)
	hack/bench-scale.sh

.PHONY: chart
chart: ## helm lint, helm-unittest suites, the install.yaml drift check and promtool on the alerts and dashboard
	@echo "==> helm lint charts/gogrid"
	"$(HELM)" lint --strict --kube-version 1.34.0 charts/gogrid
	@echo "==> helm-unittest charts/gogrid"
	"$(HELM_UNITTEST)" charts/gogrid
	@echo "==> manifests/install.yaml is rendered from the chart"
	hack/render-manifests.sh --check
	@echo "==> promtool check rules: the PrometheusRule's alerts and the dashboard's queries"
	hack/check-monitoring.sh

.PHONY: e2e
e2e: ## End-to-end tests against the local real control plane (see e2e/README.md)
	e2e/run-tests.sh

.PHONY: dashboard-png
dashboard-png: ## Draw the Grafana dashboard's panels from a real Prometheus on the local cluster (docs/dashboard/)
	hack/dashboard-png.sh

.PHONY: reliability
reliability: ## Fault tests at full length (10 min of watch cuts, 5 min idle); figures to docs/reliability.md
	hack/reliability.sh

.PHONY: soak
soak: ## The fault tests and a 30-minute soak under load (RSS and open files flat, nothing lost)
	hack/reliability.sh soak

.PHONY: crds
crds: ## Regenerate the CRD templates of the chart and manifests/install.yaml
	$(CARGO) run --quiet -p gogrid-crds --bin crdgen
	hack/render-manifests.sh

.PHONY: build
build: ## Build both binaries (debug)
	$(CARGO) build --locked -p gogrid-operator -p gogrid-agent

-include e2e/cluster/cluster.mk
