# okvm: run OCI containers as KVM microVMs.
#
#   make          set up the machine (idempotent) and build everything
#   make test     every test tier: lint, unit/integration, test-host harness, end to end
#   make demo     boot a microVM and show what it printed
#   make install  okvm into $(PREFIX) (/usr/local), registered with podman
#   make bench    benchmarks (inside the test host), tables into target/okvm/bench/
#
# Artifacts: target/release/{okvm,containerd-shim-okvm-v2}, target/okvm/vmlinux,
# target/okvm/okvm-initrd.img, target/okvm/images/. The guest kernel is cached in
# $(OKVM_CACHE_DIR) (default /var/cache/okvm), outside the repository.

SHELL := /bin/bash
CARGO ?= cargo
HOST_TARGET := x86_64-unknown-linux-gnu
INIT_BIN := target/$(HOST_TARGET)/release/okvm-init
ARTIFACTS := target/okvm

PREFIX ?= /usr/local

.PHONY: all setup build install rust init initramfs kernel images test lint unit test-testhost test-e2e conformance-runc bench demo clean

all: build

setup:
	@scripts/setup-host

build: setup rust initramfs kernel images

rust:
	$(CARGO) build --release --workspace --bins

# okvm-init must be static (there is no musl target here): glibc with crt-static,
# built for an explicit target so build scripts stay dynamic.
init:
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --release --target $(HOST_TARGET) -p okvm-init

initramfs: rust init
	@mkdir -p $(ARTIFACTS)
	target/release/okvm initramfs --init $(INIT_BIN) -o $(ARTIFACTS)/okvm-initrd.img

kernel: setup
	kernel-config/build-vmlinux $(ARTIFACTS)/vmlinux

images: setup
	integration/images/build $(ARTIFACTS)/images

test: build lint unit conformance-runc test-testhost test-e2e
	@echo "make test: all tiers passed"

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Unit tests and the tests/ crate (no VM; some load target/okvm/vmlinux into memory).
# OKVM_BIN_DIR points them at the release binaries.
unit: rust kernel
	OKVM_BIN_DIR=$(CURDIR)/target/release $(CARGO) test --workspace

# Our OCI conformance suite (tests/tests/conformance.rs) against runc, which
# proves the suite itself right; okvm joins once its lifecycle verbs land.
conformance-runc: images
	OKVM_CONFORMANCE_RUNTIME=$$(command -v runc) $(CARGO) test -p okvm-tests --test conformance -- --include-ignored --test-threads=1

# The harness itself, driven from this machine (each test boots a test host).
test-testhost: build
	$(CARGO) test -p okvm-integration --test testhost -- --include-ignored --test-threads=2

# Suites that boot guests, inside one test host (run-suite stops at the first
# failing suite: cri, whose okvm pod waits for the shim's pod support, is last).
test-e2e: build
	integration/run-suite smoke vmm guest_container engines podman containerd okvm-tests:conformance okvm-tests:vm_lifecycle okvm-tests:network cri

# Benchmarks: medians and side-by-side ratios measured in one run (docs/performance.md).
bench: build
	integration/bench/run

# okvm, its guest kernel and initramfs under $(PREFIX), registered with podman.
install: build
	scripts/install --prefix $(PREFIX)

demo: build
	@scripts/demo

clean:
	$(CARGO) clean
