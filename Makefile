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

.PHONY: all build run test test-short bench fuzz lint fmt tidy clean

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

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

clean:
	rm -rf bin
