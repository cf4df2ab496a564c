# okvm: run OCI containers as KVM microVMs.
#
#   make          set up the machine (idempotent) and build everything
#   make test     every test tier: lint, unit/integration, test-host harness, end to end
#   make demo     boot a microVM and show what it printed
#   make install  okvm into $(PREFIX) (/usr/local), registered with podman
#   make bench    benchmarks (inside the test host), tables into target/okvm/bench/
#   make fuzz     every fuzz target under libFuzzer, FUZZ_SECONDS (60) each
#
# Artifacts: target/release/{okvm,containerd-shim-okvm-v2}, target/okvm/vmlinux,
# target/okvm/testhost-vmlinux, target/okvm/okvm-initrd.img, target/okvm/images/.
# Both kernels are cached in $(OKVM_CACHE_DIR) (default /var/cache/okvm), outside
# the repository.

SHELL := /bin/bash
CARGO ?= cargo
HOST_TARGET := x86_64-unknown-linux-gnu
INIT_BIN := target/$(HOST_TARGET)/release/okvm-init
ARTIFACTS := target/okvm

PREFIX ?= /usr/local

.PHONY: all setup build install rust init initramfs kernel testhost-kernel images test lint unit test-testhost test-e2e conformance-runc bench fuzz demo clean \
	tier-test-build tier-lint tier-unit tier-conformance-runc tier-test-testhost tier-e2e-a tier-e2e-b

all: build

setup:
	@scripts/setup-host

build: setup rust initramfs kernel testhost-kernel images

# What okvm ships: the runtime, the shim and okvm-init (whose dynamic build the
# CLI tests run outside a guest). The benchmark programs are built by `make
# bench`, which alone needs them and their CRI/gRPC dependencies.
rust:
	$(CARGO) build --release -p okvm -p containerd-shim-okvm-v2 -p okvm-init --bins

# okvm-init must be static (there is no musl target here): glibc with crt-static,
# built for an explicit target so build scripts stay dynamic. The hostile_guest
# suite's test programs are built the same way beside it and never installed:
# okvm-hostile-init (integration/hostile-init), a guest PID 1 that speaks
# okvm-init's protocol and lies, and okvm-hostile (integration/hostile), an
# attacker run in a container (the test image has no libc for it).
init:
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --release --target $(HOST_TARGET) -p okvm-init -p okvm-hostile-init -p okvm-hostile

initramfs: rust init
	@mkdir -p $(ARTIFACTS)
	target/release/okvm initramfs --init $(INIT_BIN) -o $(ARTIFACTS)/okvm-initrd.img

kernel: setup
	kernel-config/build-vmlinux $(ARTIFACTS)/vmlinux

# The emulated test host's own kernel (docs/testhost.md); cached like the guest's.
testhost-kernel: setup
	kernel-config/build-vmlinux --testhost $(ARTIFACTS)/testhost-vmlinux

images: setup
	integration/images/build $(ARTIFACTS)/images

# `make test`: everything is built once, the release build, the test build and
# the lint side by side (cargo keeps one lock per profile directory, and clippy
# has a directory of its own, so none waits for another and the single-threaded
# tail of one build overlaps the others); then the host-side tiers in one lane
# and the end-to-end suites in two test hosts of their own (one emulated CPU
# each, so together they use both cores). scripts/test-tiers prints each tier's
# wall time at the end.
test: setup
	@scripts/test-tiers build tier-test-build tier-lint -- tier-unit,tier-conformance-runc,tier-test-testhost tier-e2e-a tier-e2e-b

# Each tier on its own: builds what it needs, then runs the tier-* target (which
# assumes a built tree and is what `make test` runs).
lint:
	@$(MAKE) --no-print-directory tier-lint
unit: rust kernel
	@$(MAKE) --no-print-directory tier-unit
conformance-runc: images
	@$(MAKE) --no-print-directory tier-conformance-runc
test-testhost: build
	@$(MAKE) --no-print-directory tier-test-testhost
test-e2e: build
	@scripts/test-tiers tier-e2e-a tier-e2e-b

# Every test executable, once, before the tiers that run them. Every `cargo test`
# here (and in integration/run-suite) says --workspace, so that all resolve the
# same features and reuse these artifacts instead of compiling dependencies again.
tier-test-build:
	$(CARGO) test --workspace --no-run

# fmt and clippy. Clippy keeps its own target directory so that it runs beside
# the test build instead of waiting for cargo's lock on target/.
tier-lint:
	$(CARGO) fmt --all -- --check
	CARGO_TARGET_DIR=$(CURDIR)/target/lint $(CARGO) clippy --workspace --all-targets -- -D warnings

# Unit tests and the tests/ crate (no VM; some load target/okvm/vmlinux into memory).
# OKVM_BIN_DIR points them at the release binaries.
tier-unit:
	OKVM_BIN_DIR=$(CURDIR)/target/release $(CARGO) test --workspace

# Our OCI conformance suite (tests/tests/conformance.rs) against runc, which
# proves the suite itself right; okvm runs it in the test host (tier-e2e-b).
tier-conformance-runc:
	OKVM_CONFORMANCE_RUNTIME=$$(command -v runc) $(CARGO) test --workspace --test conformance -- --include-ignored --test-threads=1

# The harness itself, driven from this machine (each test boots a test host).
tier-test-testhost:
	$(CARGO) test --workspace --test testhost -- --include-ignored --test-threads=2

# Suites that boot guests, in two test hosts side by side (split so that the two
# take about as long; run-suite stops at the first failing suite of its lane).
# 2026-12-03, quiet machine: smoke 76 s, vmm 59, guest_container 40, podman 256,
# containerd 161, network 283 | engines 58, conformance 149, vm_lifecycle 86,
# cri 29, hostile_guest 566.
E2E_A := smoke vmm guest_container podman containerd okvm-tests:network
E2E_B := engines okvm-tests:conformance okvm-tests:vm_lifecycle cri hostile_guest
tier-e2e-a:
	integration/run-suite $(E2E_A)
tier-e2e-b:
	integration/run-suite $(E2E_B)

# Benchmarks: medians and side-by-side ratios measured in one run (docs/performance.md).
bench: build
	$(CARGO) build --release -p okvm-integration --bins
	integration/bench/run

# Fuzzing (docs/fuzzing.md): each target of fuzz/ under libFuzzer for
# FUZZ_SECONDS seconds (FUZZ_TARGETS to pick some), coverage-guided on stable
# Rust; crashes land in target/fuzz/artifacts/. The unit tier replays the
# corpus in fuzz/corpus/ (seeds and every crash found) as tests.
FUZZ_SECONDS ?= 60
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) scripts/fuzz

# okvm, its guest kernel and initramfs under $(PREFIX), registered with podman.
install: build
	scripts/install --prefix $(PREFIX)

demo: build
	@scripts/demo

clean:
	$(CARGO) clean
