# audience-operator: the two commands a new user types are `make demo` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
CARGO ?= cargo

.PHONY: all build test test-unit test-integration demo envtest crds lint fmt bench clean-envtest

all: build

## Build every binary (controller, crdgen, aep-emulator, envtest).
build:
	$(CARGO) build --locked --workspace --bins

## Build (once, cached by version) the local control-plane binaries from pinned Go modules.
envtest:
	@hack/envtest/build.sh >/dev/null

## Every test tier: unit, AEP contract (client <-> emulator), and end to end on a real
## kube-apiserver + etcd with the emulator and the operator process.
test: envtest
	bin="$$(hack/envtest/build.sh)" && PATH="$$bin:$$PATH" ENVTEST_BIN_DIR="$$bin" $(CARGO) test --locked --workspace --no-fail-fast --all-targets -- --test-threads=6

## Only the fast tiers (no control plane).
test-unit:
	$(CARGO) test --locked --workspace --lib --test aep_contract

## The operator's main job end to end on the local defaults (KEEP=1 leaves it running).
demo: envtest
	bin="$$(hack/envtest/build.sh)" && PATH="$$bin:$$PATH" ENVTEST_BIN_DIR="$$bin" hack/demo.sh

## Convergence time and memory of the operator for N objects (N=1000 by default).
bench: envtest
	bin="$$(hack/envtest/build.sh)" && PATH="$$bin:$$PATH" ENVTEST_BIN_DIR="$$bin" hack/bench.sh

## Regenerate the committed CRD from the Rust types.
crds:
	$(CARGO) run --locked -q --bin crdgen > crds/externalaudience.yaml

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all
