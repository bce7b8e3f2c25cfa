# Biometric Bridge — developer entry points. `make help` lists them.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

# Every module of the workspace. `go test ./...` at the root does not cross
# modules, so targets loop over these.
MODULE_DIRS := $(shell go list -m -f '{{.Dir}}')
# Packages of every module, as patterns go test and go vet accept.
ALL_PKGS := $(foreach d,$(MODULE_DIRS),$(d)/...)
# Test parallelism sized for a two-core machine; override with `make test P=4`.
P ?= 2
TEST_TIMEOUT ?= 20m
FUZZTIME ?= 10s
BENCH_OUT := $(CURDIR)/.bench

.PHONY: help
help: ## List the targets.
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-16s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: generate
generate: ## Regenerate Go code, the OpenAPI document and the Python stubs from proto/ (offline; buf.gen.yaml).
	scripts/gen-python.sh ensure
	go tool buf generate
	scripts/gen-python.sh

.PHONY: checkgenerate
checkgenerate: generate ## Fail when generated code is not in sync with proto/.
	@if [ -n "$$(git status --porcelain -- gen proto)" ]; then \
		echo "generated code is stale; run 'make generate' and commit:"; git status --porcelain -- gen proto; exit 1; fi

# golangci-lint is a tool dependency of tools/go.mod, a module kept out of
# go.work so its many dependencies never change the services' build list.
# It is built once into bin/ and rebuilt when tools/go.mod changes.
GOLANGCI_LINT := $(CURDIR)/bin/golangci-lint
# buf breaking compares proto/ with this git ref (the previous commit; CI
# on a branch may pass BREAKING_AGAINST=origin/main). A clone too shallow
# to have it skips the check with a note rather than failing.
BREAKING_AGAINST ?= HEAD~1

$(GOLANGCI_LINT): tools/go.mod tools/go.sum
	@mkdir -p $(@D)
	cd tools && GOWORK=off go build -o $@ github.com/golangci/golangci-lint/v2/cmd/golangci-lint

.PHONY: lint
lint: $(GOLANGCI_LINT) ## gofmt, go vet, golangci-lint over every module, buf lint, format and breaking, documents named are in the repo.
	@unformatted="$$(gofmt -l $(MODULE_DIRS) | grep -v '^$(CURDIR)/gen/go/' || true)"; \
		if [ -n "$$unformatted" ]; then echo "not gofmt-ed:"; echo "$$unformatted"; exit 1; fi
	go vet $(ALL_PKGS)
	$(GOLANGCI_LINT) run $(ALL_PKGS)
	go tool buf lint
	go tool buf format --diff --exit-code
	@if git rev-parse -q --verify '$(BREAKING_AGAINST)^{commit}' >/dev/null; then \
		echo "go tool buf breaking --against '.git#ref=$(BREAKING_AGAINST)'"; \
		go tool buf breaking --against '.git#ref=$(BREAKING_AGAINST)'; \
	else echo "buf breaking: $(BREAKING_AGAINST) is not in this clone (shallow?), skipped"; fi
	scripts/check-doc-refs.sh

.PHONY: vulncheck
vulncheck: ## govulncheck over every module, against an offline snapshot of the Go vulnerability database.
	scripts/vulncheck.sh

.PHONY: build
build: ## Build every service binary into bin/.
	@mkdir -p bin
	@for d in services/*/cmd/*/; do name=$$(basename $$d); \
		echo "go build -o bin/$$name ./$$d"; go build -o bin/$$name ./$$d; done

.PHONY: chaos
chaos: ## Fault-injection suite: every service as its own process on private stores, one fault per scenario under load; writes RELIABILITY.md (ports 28000-28999; CHAOS_ARGS=-short, -scenarios a,b, -seed N).
	go run ./services/devstack/cmd/chaos $(CHAOS_ARGS)

.PHONY: build-isolated
build-isolated: ## Build and vet each module with GOWORK=off, so go.mod files cannot drift.
	@for d in $(MODULE_DIRS); do echo "GOWORK=off go build ./... in $$d"; \
		(cd $$d && GOWORK=off go build ./... && GOWORK=off go vet ./... >/dev/null); done
	@# Every service module but devstack requires only gen and pkg of this repository.
	@for d in $(filter-out %/services/devstack,$(filter %/services/%,$(MODULE_DIRS))); do \
		extra=$$(cd $$d && GOWORK=off go list -m -f '{{if not .Main}}{{.Path}}{{end}}' all | grep '^github.com/biobridge/bridge/' \
			| grep -vx 'github.com/biobridge/bridge/gen' | grep -vx 'github.com/biobridge/bridge/pkg'); \
		if [ -n "$$extra" ]; then echo "$$d requires more than gen and pkg: $$extra"; exit 1; fi; done

.PHONY: test
test: test-python test-go ## Run every test: Python against a devstack, then Go (needs PostgreSQL and Redis; see README).

.PHONY: test-go
test-go: ## Run the Go tests of every module.
	go test -p $(P) -count=1 -timeout $(TEST_TIMEOUT) $(ALL_PKGS)

# The Python client's integration tests run against a devstack of their own:
# other ports, database and Redis db, so they never collide with `make run`.
PYTEST_STACK_ENV := GATEWAY_HTTP_ADDR=127.0.0.1:18080 GATEWAY_ADMIN_ADDR=127.0.0.1:19200 \
	INGEST_GRPC_ADDR=127.0.0.1:19101 INGEST_ADMIN_ADDR=127.0.0.1:19201 \
	TOKENBROKER_GRPC_ADDR=127.0.0.1:19102 TOKENBROKER_ADMIN_ADDR=127.0.0.1:19202 \
	PERSISTENCE_GRPC_ADDR=127.0.0.1:19103 PERSISTENCE_ADMIN_ADDR=127.0.0.1:19203 \
	PUBLISHER_GRPC_ADDR=127.0.0.1:19104 PUBLISHER_ADMIN_ADDR=127.0.0.1:19204 \
	EMULATOR_ADDR=127.0.0.1:18090 KAFKA_ADDR=127.0.0.1:19092 \
	POSTGRES_URL=postgres://postgres@127.0.0.1:5432/biobridge_pytest REDIS_URL=redis://127.0.0.1:6379/7

.PHONY: test-python
test-python: ## Python client tests: unit, and integration against a devstack started here.
	@mkdir -p bin && go build -o bin/devstack ./services/devstack/cmd/devstack
	@rm -rf $(CURDIR)/.devstack/pytest && mkdir -p $(CURDIR)/.devstack/pytest
	@psql -q postgres://postgres@127.0.0.1:5432/postgres -c 'DROP DATABASE IF EXISTS biobridge_pytest WITH (FORCE)'
	@redis-cli -h 127.0.0.1 -p 6379 -n 7 flushdb >/dev/null
	@env $(PYTEST_STACK_ENV) bin/devstack -data-dir $(CURDIR)/.devstack/pytest/data \
		>$(CURDIR)/.devstack/pytest/log 2>&1 & pid=$$!; \
	trap 'kill $$pid 2>/dev/null; wait $$pid 2>/dev/null || true' EXIT; \
	for _ in $$(seq 1 120); do \
		curl -fsS -o /dev/null http://127.0.0.1:19203/readyz 2>/dev/null && \
		curl -fsS -o /dev/null http://127.0.0.1:19200/readyz 2>/dev/null && break; \
		kill -0 $$pid 2>/dev/null || { echo "devstack exited:"; tail -20 $(CURDIR)/.devstack/pytest/log; exit 1; }; \
		sleep 0.5; done; \
	BIOBRIDGE_GRPC_ADDR=127.0.0.1:19103 BIOBRIDGE_GATEWAY_URL=http://127.0.0.1:18080 \
	BIOBRIDGE_SERVICE_TOKEN=dev-agent-token \
	BIOBRIDGE_USER_TOKEN_SECRET=dev-user-token-secret-not-for-production-0123456789 \
	BIOBRIDGE_REQUIRE_INTEGRATION=1 scripts/test-python.sh

.PHONY: fuzz
fuzz: ## Run each fuzz target briefly (FUZZTIME=10s).
	@for d in $(MODULE_DIRS); do \
		for pkg in $$(cd $$d && go list -f '{{if .TestGoFiles}}{{.ImportPath}}{{end}}' ./...); do \
			for f in $$(cd $$d && go test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
				echo "fuzz $$pkg $$f"; (cd $$d && go test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg); \
			done; done; done

.PHONY: images
images: ## Build every image (services + devstack) FROM scratch with buildah, else docker; IMAGE_REPO, IMAGE_TAG override deploy/docker/images.env.
	scripts/images.sh build

.PHONY: images-test
images-test: ## Run the built images with podman against the local PostgreSQL and Redis; ports 24000-24099 (IMAGES_TEST_PORT_BASE).
	scripts/images-test.sh

.PHONY: images-dockerfile-test
images-dockerfile-test: ## deploy/docker/Dockerfile (built by buildah on a stand-in Go image) gives the same images as make images; SERVICES="gateway devstack" narrows it.
	scripts/dockerfile-test.sh $(SERVICES)

METRICS_WAIT ?= 2m
.PHONY: deploy-check
deploy-check: ## Static checks of deploy/: kustomize render + strict decode, docker-compose config, alert rules, dashboard.
	go run ./deploy/check static

.PHONY: deploy-metrics
deploy-metrics: ## Metrics the dashboard and alerts query are exported by a running devstack.
	go run ./deploy/check metrics -wait $(METRICS_WAIT) $(foreach p,9200 9201 9202 9203 9204,-url http://127.0.0.1:$(p)/metrics)

.PHONY: run
run: ## Start the whole suite in one process (devstack): services, emulator, embedded Kafka.
	go run ./services/devstack/cmd/devstack $(ARGS)

.PHONY: demo
demo: ## devstack with emulated users producing live data.
	go run ./services/devstack/cmd/devstack -demo

.PHONY: bench
bench: ## Run the benchmarks; writes BENCHMARKS.md and benchmarks.json.
	@rm -rf $(BENCH_OUT) && mkdir -p $(BENCH_OUT)
	@for d in services/*/cmd/*-bench/; do echo "go run ./$$d -out $(BENCH_OUT)"; go run ./$$d -out $(BENCH_OUT); done
	go run ./pkg/benchreport/cmd/benchmerge -in $(BENCH_OUT) -md BENCHMARKS.md -json benchmarks.json

.PHONY: bench-plot
bench-plot: ## Plot throughput and p99 against client concurrency (HealthKit push, GetLatest; bridge and baseline) into docs/bench/ (BENCH_PLOT_ARGS=-concurrency 1,2,4).
	go run ./services/devstack/cmd/bench-plot -out docs/bench $(BENCH_PLOT_ARGS)

.PHONY: vegeta-crosscheck
vegeta-crosscheck: ## vegeta against a devstack's REST gateway (HealthKit pushes, GetLatest) to cross-check the bench figures; ports 25600-25612 (VEGETA_PORT_BASE), results in .vegeta/.
	scripts/vegeta-crosscheck.sh
