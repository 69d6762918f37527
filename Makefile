# kiln — top-level tasks. `make demo` and `make test` are all a fresh machine needs.

CARGO ?= cargo
KILN  := target/release/kiln

.PHONY: all build demo test lint fmt bench clean

all: build

build:
	$(CARGO) build --release --locked

## demo: build kiln and run it on the example project in examples/hello.
demo: build
	@echo "== kiln parse: the syntax tree (BuildKit's dump format)"
	$(KILN) parse -f examples/hello/Dockerfile
	@echo
	@echo "== kiln parse --json: stages and build plan for --target release (first lines)"
	$(KILN) parse --json --target release --build-arg VERSION=2.0 -f examples/hello/Dockerfile examples/hello | head -n 40
	@echo
	@echo "== kiln check: a clean Dockerfile"
	$(KILN) check examples/hello
	@echo
	@echo "== kiln check: a Dockerfile with mistakes (exits 1)"
	-$(KILN) check -f examples/broken/Dockerfile examples/broken

## test: formatting, lints, and every test (unit, corpus, end-to-end, robustness).
test: lint
	$(CARGO) test --workspace --locked

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

fmt:
	$(CARGO) fmt --all

## bench: benchmarks; results go into docs/performance.md by hand, with the command.
bench:
	$(CARGO) bench -p kiln --bench frontend --locked

clean:
	$(CARGO) clean
