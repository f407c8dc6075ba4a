# sdsagent: `make run` starts the agent against the built-in CA; `make test` runs every test.
GO        ?= go
BIN       := bin/sdsagent
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X main.version=$(VERSION)
# Ports of `make run`; override when they are taken, e.g. make run CA_LISTEN=127.0.0.1:25012.
CA_LISTEN ?= 127.0.0.1:15012
HTTP_ADDR ?= 127.0.0.1:15020

.PHONY: all build run test test-short bench fleetsim lint fmt tidy clean

all: lint test build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/sdsagent

run: build
	CA_LISTEN=$(CA_LISTEN) HTTP_ADDR=$(HTTP_ADDR) ./hack/run-local.sh $(BIN)

test:
	$(GO) test -race -count=1 -timeout 8m ./...

test-short:
	$(GO) test -count=1 -short ./...

bench: build
	$(GO) test -run '^$$' -bench . -benchmem -count 1 ./internal/pki/ ./sds/ ./cache/
	$(GO) run ./cmd/sdsbench -agent $(BIN)

# Fleet simulation (cmd/fleetsim): CSVs and PNGs into FLEETSIM_OUT, summary and targets on stdout.
FLEETSIM_OUT ?= bin/fleetsim
fleetsim:
	$(GO) run ./cmd/fleetsim -proposal -out $(FLEETSIM_OUT)

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

clean:
	rm -rf bin
