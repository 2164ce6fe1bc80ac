# snapboot — see README.md. Everything runs as root on Linux.
SHELL := /bin/bash
GO ?= go
BIN := bin
export PATH := /usr/local/go/bin:/usr/local/bin:$(PATH)
export GOFLAGS := -buildvcs=false

FUZZTIME ?= 10s
FUZZ_TARGETS := ./oci:FuzzDecodeManifest ./oci:FuzzDecodeMetadata ./oci:FuzzParseReference ./criuconf:FuzzParseUserOptions ./unpack:FuzzTar ./unpack:FuzzFrameReader ./unpack:FuzzLZ4Frame

.PHONY: all build deps demo-deps demo bench compare test unit integration fuzz vet install clean

all: build

## deps: install containerd, runc, CRIU, the registry and oras at pinned versions (idempotent)
deps:
	bash hack/install-deps.sh

## demo-deps: what the demo needs on top of deps (PostgreSQL, debootstrap)
demo-deps:
	SNAPBOOT_DEMO_DEPS=1 bash hack/install-deps.sh

DEMO_MODELS ?= 3200
BENCH_RUNS ?= 5

## demo: the main job: cold boot vs restored, with the table
demo: demo-deps build
	$(GO) run ./demo -models $(DEMO_MODELS)

## bench: every measurement BENCH_RUNS times, plus the runc restore floor; writes bench/results.{json,md,png}
bench: demo-deps build
	$(GO) run ./demo -models $(DEMO_MODELS) -runs $(BENCH_RUNS) -bench bench

COMPARE_RUNS ?= 8

## compare: compare the shim in bin/ with another build of it (SHIM=path; COMPRESSION=lz4 to pack their checkpoint so; LINK=1 to restore through the bench's link to the registry), or checkpoints packed at two levels (LEVELS=default,best), alternating in one stack, COMPARE_RUNS rounds
compare: demo-deps build
	@test -n "$(SHIM)$(LEVELS)" || { echo "usage: make compare SHIM=/path/to/other/containerd-shim-snapboot-v1 | LEVELS=default,best"; exit 2; }
	$(GO) run ./demo -models $(DEMO_MODELS) -runs $(COMPARE_RUNS) $(if $(SHIM),-compare-shim $(SHIM) $(if $(COMPRESSION),-compression $(COMPRESSION)) $(if $(filter 1 yes true,$(LINK)),-compare-link),-compare-levels $(LEVELS))

## build: build the shim and the CLI into bin/, statically linked (no cgo), as
## deploy/Dockerfile and containerd's own shims are: no dynamic loader or libc
## to set up at each of a shim's two starts, and no glibc version to match
build:
	CGO_ENABLED=0 $(GO) build -o $(BIN)/containerd-shim-snapboot-v1 ./cmd/containerd-shim-snapboot-v1
	CGO_ENABLED=0 $(GO) build -o $(BIN)/snapboot ./cmd/snapboot

## test: the README's test command: install what is missing (the demo's PostgreSQL and debootstrap too: a reduced demo is an integration test), then unit, fuzz and integration tests
test: demo-deps vet unit fuzz integration

vet:
	$(GO) vet ./...
	$(GO) vet -tags integration ./integration/
	cd deploy/policytest && $(GO) vet ./...

unit:
	$(GO) test -count=1 ./...
	cd deploy/policytest && $(GO) test -count=1 ./...

## fuzz: run every fuzz target for $(FUZZTIME) (hack/fuzz.sh: a bare deadline failure of Go 1.26's fuzz coordinator is run again once)
fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; \
		echo "fuzz $$pkg $$name ($(FUZZTIME))"; \
		hack/fuzz.sh $(GO) $$pkg $$name $(FUZZTIME); \
	done

## integration: the real stack: private containerd + runc + CRIU + registry, started by the tests
integration: build
	SNAPBOOT_SHIM_BIN=$(CURDIR)/$(BIN)/containerd-shim-snapboot-v1 SNAPBOOT_CLI_BIN=$(CURDIR)/$(BIN)/snapboot \
		$(GO) test -count=1 -tags integration -timeout 30m -v ./integration/

## install: install the shim next to containerd
install: build
	install -m 0755 $(BIN)/containerd-shim-snapboot-v1 $(BIN)/snapboot /usr/local/bin/

clean:
	rm -rf $(BIN)
