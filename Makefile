# sdsagent: `make run` starts the agent against the built-in CA; `make test` runs every test.
GO        ?= go
BIN       := bin/sdsagent
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X main.version=$(VERSION)
# Ports of `make run`; override when they are taken, e.g. make run CA_LISTEN=127.0.0.1:25012.
CA_LISTEN ?= 127.0.0.1:15012
HTTP_ADDR ?= 127.0.0.1:15020
# External programs some tests run, installed by `make tools` from the Go
# module proxy; the tests look for them here (internal/testtools), then in PATH.
TOOLS_DIR ?= $(HOME)/.cache/sdsagent-tools
export SDSAGENT_TOOLS_DIR := $(TOOLS_DIR)
CFSSL_VERSION := v1.6.5

.PHONY: all build run test test-short bench lint fmt tidy clean tools

all: lint test build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/sdsagent

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

bench: build
	$(GO) test -run '^$$' -bench . -benchmem -count 1 ./internal/pki/ ./sds/ ./cache/
	$(GO) run ./cmd/sdsbench -agent $(BIN)

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
