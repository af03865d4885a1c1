# Targets document themselves: `make help`.
GO ?= go
PKGS ?= ./...

.PHONY: help run test test-short vet fmt fuzz build ci

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

run: ## Run the worker on its embedded defaults (NATS and ledger in process, ./data)
	$(GO) run ./cmd/wallets-worker run --log-format text

build: ## Build bin/wallets-worker
	$(GO) build -o bin/wallets-worker ./cmd/wallets-worker

test: ## Run every test with the race detector (the README's test command)
	$(GO) test -race -count=1 ./...

test-short: ## Run the tests without the race detector
	$(GO) test ./...

vet: ## go vet and gofmt check
	$(GO) vet $(PKGS)
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

fmt: ## Format the code
	gofmt -w $$(git ls-files '*.go')

fuzz: ## Fuzz the command decoder for a minute
	$(GO) test -run='^$$' -fuzz=FuzzDecodeCreateBalance -fuzztime=60s ./messages/

ci: ## What CI runs (.ci/run)
	bash .ci/run
