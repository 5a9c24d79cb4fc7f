# courier — build, test, benchmark, demo.
#   make demo   runs the e-commerce demo on the embedded mem:// broker
#   make test   go vet + the whole suite with -race (what CI runs)
GO        ?= go
TESTFLAGS ?=
BENCHTIME ?= 1s

.PHONY: all test vet lint bench demo fmt tidy-check

all: lint test

# -count=1: the suite talks to real brokers, so a cached pass proves nothing.
test: vet
	$(GO) test -race -count=1 -timeout 25m $(TESTFLAGS) ./...

vet:
	$(GO) vet ./...

lint: vet
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

fmt:
	gofmt -w $$(git ls-files '*.go')

# Every package's benchmarks, one table. BENCHTIME=5s for steadier figures.
bench:
	$(GO) test -run '^$$' -bench . -benchmem -benchtime $(BENCHTIME) -timeout 30m ./... | tee bench.txt

demo:
	$(GO) run ./examples/demo
