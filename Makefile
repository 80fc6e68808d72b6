# The two commands a newcomer needs are `make dev` (run it locally) and
# `make test` (everything CI runs). Tools come from the Go module proxy:
# controller-gen is a `go tool` dependency and the envtest control plane is
# built from source by hack/envtest-assets.sh into ~/.cache.

GO ?= go
CONTROLLER_GEN ?= $(GO) tool controller-gen
# kustomize and helm live in their own tools module so that their dependency
# versions never mix with the operator's.
KUSTOMIZE ?= $(GO) tool -modfile=hack/tools/go.mod kustomize
HELM ?= $(GO) tool -modfile=hack/tools/go.mod helm
ENVTEST_ASSETS ?= hack/envtest-assets.sh
IMG ?= ghcr.io/involveo/webhook-operator:dev
CONTAINER_TOOL ?= docker
# Integration tests start a real kube-apiserver and etcd per package.
GO_TEST_FLAGS ?= -count=1 -timeout=30m

SHELL := /usr/bin/env bash -o pipefail
.SHELLFLAGS := -ec

.PHONY: all
all: build

##@ General

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"; printf "\nUsage:\n  make \033[36m<target>\033[0m\n"} /^[a-zA-Z_0-9-]+:.*?##/ { printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2 } /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) } ' $(MAKEFILE_LIST)

##@ Development

.PHONY: manifests
manifests: ## Generate the CRD and RBAC manifests from the Go markers (and the Helm chart's copies).
	$(CONTROLLER_GEN) rbac:roleName=manager-role crd paths="./..." output:crd:artifacts:config=config/crd/bases
	cp config/crd/bases/webhooks.involveo.io_webhooksubscriptions.yaml dist/chart/crds/
	cp config/rbac/role.yaml dist/chart/files/manager-role.yaml

.PHONY: generate
generate: ## Generate the DeepCopy methods of the API types.
	$(CONTROLLER_GEN) object:headerFile="hack/boilerplate.go.txt" paths="./..."

.PHONY: fmt
fmt: ## Run gofmt on the code.
	gofmt -l -w $$(git ls-files '*.go')

.PHONY: vet
vet: ## Run go vet.
	$(GO) vet ./...

.PHONY: envtest
envtest: ## Build (once, cached in ~/.cache) the kube-apiserver and etcd used by tests; print their folder.
	@$(ENVTEST_ASSETS)

.PHONY: test
test: manifests generate vet ## Run all tests (unit, integration on a real API server, end-to-end).
	@assets="$$($(ENVTEST_ASSETS))"; \
	echo "using envtest assets in $$assets"; \
	KUBEBUILDER_ASSETS="$$assets" $(GO) test $(GO_TEST_FLAGS) ./...

BENCHTIME ?= 3s
BENCHCOUNT ?= 2
# BENCH picks the cases: by default every throughput case, on the embedded
# JetStream, on a 3-node cluster and in the forwarder. The isolation
# experiment is a fixed minute with its own figures, hence its own target.
BENCH ?= ^Benchmark(Relay|RelayCluster|Forwarder)_(OneSubscription|Fanout|BatchIngest)
.PHONY: bench
bench: ## Benchmark the relay end to end (events/s, p50/p99), embedded and on a 3-node cluster, next to an in-memory forwarder (BENCH=regex BENCHTIME=3s BENCHCOUNT=2).
	$(GO) test -run='^$$' -bench='$(BENCH)' -benchtime=$(BENCHTIME) -count=$(BENCHCOUNT) -timeout=20m ./internal/relay/

.PHONY: bench-isolation
bench-isolation: ## Healthy subscriptions' p50/p99 with and without one that hangs on half the events (three runs of about 30 s).
	$(GO) test -run='^$$' -bench='^BenchmarkRelay_Isolation$$' -benchtime=1x -count=1 -timeout=10m ./internal/relay/

.PHONY: bench-manager
bench-manager: ## Create 10,000 subscriptions at once against the manager and relay binaries: time until all Ready, ConfigMap writes, peak RSS (BENCH_LOG_DIR keeps their logs).
	$(GO) test -run='^$$' -bench=BenchmarkManager_10kSubscriptions -benchtime=1x -count=1 -timeout=30m ./internal/controller/

.PHONY: dev
dev: build ## Run it locally: API server + etcd, manager, relay, samples and a demo receiver. Ctrl-C stops all.
	$(GO) build -o bin/dev ./hack/dev
	@exec bin/dev

EVENT ?= task.published
INGEST ?= http://127.0.0.1:8080
.PHONY: dev-event
dev-event: ## Post a sample Involveo event to the local relay (EVENT=task.created|task.published|task.status_changed|task.deleted).
	@curl -sS -H 'Content-Type: application/json' --data-binary @internal/event/testdata/$(EVENT).json $(INGEST)/v1/events; echo

##@ Build

.PHONY: build
build: ## Build bin/manager and bin/relay.
	$(GO) build -o bin/ ./cmd/...

.PHONY: build-installer
build-installer: manifests ## Render the kustomize install (config/default) to dist/install.yaml.
	$(KUSTOMIZE) build config/default > dist/install.yaml

.PHONY: helm-template
helm-template: manifests ## Render the Helm chart (dist/chart) with its default values.
	$(HELM) template involveo-webhooks dist/chart --namespace involveo-webhooks --include-crds

.PHONY: docker-build
docker-build: ## Build the image with both binaries (needs a container engine).
	$(CONTAINER_TOOL) build -t $(IMG) .
