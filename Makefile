# sdsagent: `make run` starts the agent against the built-in CA; `make test` runs every test.
GO        ?= go
BIN       := bin/sdsagent
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X main.version=$(VERSION)
# Ports of `make run`; override when they are taken, e.g. make run CA_LISTEN=127.0.0.1:25012.
CA_LISTEN ?= 127.0.0.1:15012
HTTP_ADDR ?= 127.0.0.1:15020
# How long `make fuzz` runs each fuzz target, e.g. make fuzz FUZZTIME=5m.
FUZZTIME  ?= 30s
# External programs some tests run, installed by `make tools` from the Go
# module proxy; the tests look for them here (internal/testtools), then in PATH.
TOOLS_DIR ?= $(HOME)/.cache/sdsagent-tools
export SDSAGENT_TOOLS_DIR := $(TOOLS_DIR)
CFSSL_VERSION := v1.6.5

.PHONY: all build run test test-short bench bench-peers peer-tools fuzz fleetsim lint fmt tidy clean tools

all: lint test build

# grpcnotrace: grpc-go without golang.org/x/net/trace, whose html/template
# keeps the linker from dropping unused methods (a binary 3 MB smaller, a
# faster start; the agent never turns gRPC tracing on).
build:
	CGO_ENABLED=0 $(GO) build -tags grpcnotrace -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/sdsagent

run: build
	CA_LISTEN=$(CA_LISTEN) HTTP_ADDR=$(HTTP_ADDR) ./hack/run-local.sh $(BIN)

# The tests of cmd/sdsagent exec the agent binary: it is built once here
# (without -race: the race detector runs in the tests, not in the child)
# and passed by path; `go test` alone builds its own.
TEST_BIN  := bin/sdsagent-test

test:
	$(GO) build -o $(TEST_BIN) ./cmd/sdsagent
	SDSAGENT_TEST_BINARY=$(CURDIR)/$(TEST_BIN) $(GO) test -race -count=1 -timeout 8m ./...

test-short:
	$(GO) test -count=1 -short ./...

# The floor server (cmd/sdsbench/floor): a grpc-go SDS server that only
# returns one fixed response; sdsbench prints connection figures as ratios to it.
FLOOR_BIN := bin/sdsfloor

bench: build
	$(GO) test -run '^$$' -bench . -benchmem -count 1 ./internal/pki/ ./sds/ ./cache/
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w' -o $(FLOOR_BIN) ./cmd/sdsbench/floor
	$(GO) run ./cmd/sdsbench -agent $(BIN) -floor $(FLOOR_BIN)

# The same load against spire-agent, beside the floor server and the agent
# in one run (optional, not in CI). peer-tools builds spire-server and
# spire-agent SPIRE_VERSION from the Go module proxy into SPIRE_DIR once
# (about 13 minutes cold on 2 cores; it needs gcc: SPIRE's SQLite is cgo).
SPIRE_VERSION := v1.13.3
SPIRE_DIR     := $(TOOLS_DIR)/spire-$(SPIRE_VERSION)

peer-tools:
	GO=$(GO) ./hack/build-spire.sh $(SPIRE_VERSION) $(SPIRE_DIR)

bench-peers: build peer-tools
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w' -o $(FLOOR_BIN) ./cmd/sdsbench/floor
	$(GO) run ./cmd/sdsbench -agent $(BIN) -floor $(FLOOR_BIN) -only peers \
		-peer-agent $(SPIRE_DIR)/bin/spire-agent -peer-server $(SPIRE_DIR)/bin/spire-server

# fuzz runs every Fuzz target of every package, one after the other, for
# FUZZTIME each. `make test` already runs their seed corpora (f.Add seeds
# and each package's testdata/fuzz/FuzzXxx files); a crash found here is
# written to that directory and stays there as a regression case.
fuzz:
	@targets=$$($(GO) test -list '^Fuzz' ./... | awk '/^Fuzz/ {f[n++] = $$1} /^ok/ {for (i = 0; i < n; i++) print $$2 "@" f[i]; n = 0}'); \
	[ -n "$$targets" ] || { echo "fuzz: no Fuzz targets found (does ./... compile?)"; exit 1; }; \
	failed=; for t in $$targets; do \
		echo "== fuzz $${t#*@} in $${t%@*} for $(FUZZTIME)"; \
		$(GO) test -run '^$$' -fuzz "^$${t#*@}\$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 5s "$${t%@*}" </dev/null || failed="$$failed $${t#*@}"; \
	done; \
	[ -z "$$failed" ] || { echo "fuzz: FAILED:$$failed (failing inputs are in each package's testdata/fuzz)"; exit 1; }

# Fleet simulation (cmd/fleetsim): CSVs and PNGs into FLEETSIM_OUT, summary and targets on stdout.
FLEETSIM_OUT ?= bin/fleetsim
fleetsim:
	$(GO) run ./cmd/fleetsim -out $(FLEETSIM_OUT)

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

# cfssl and cfssljson for the CFSSL provider's tests; a stamp per version
# makes this a no-op once installed. CGO is off: the tests need no SQLite.
tools: $(TOOLS_DIR)/.cfssl-$(CFSSL_VERSION)

$(TOOLS_DIR)/.cfssl-$(CFSSL_VERSION):
	mkdir -p $(TOOLS_DIR)
	GOBIN=$(TOOLS_DIR) CGO_ENABLED=0 $(GO) install github.com/cloudflare/cfssl/cmd/cfssl@$(CFSSL_VERSION) github.com/cloudflare/cfssl/cmd/cfssljson@$(CFSSL_VERSION)
	touch $@

clean:
	rm -rf bin
