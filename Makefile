# kiln — top-level tasks. `make demo` and `make test` are all a fresh machine needs.

CARGO ?= cargo
KILN  := target/release/kiln

.PHONY: all build deps demo test lint fmt bench clean

all: build

build:
	$(CARGO) build --release --locked

## deps: the Debian packages the tests use (installed when run as root, listed otherwise).
deps:
	@scripts/install-deps.sh

GENESIS_ROOTFS := examples/genesis/busybox.tar.xz
$(GENESIS_ROOTFS): scripts/make-busybox-rootfs.sh
	scripts/make-busybox-rootfs.sh $@

DEMO_ROOT ?= $(CURDIR)/target/demo-store

## demo: build kiln, build examples/genesis into a store, show it, run it if docker is up.
demo: deps build $(GENESIS_ROOTFS)
	@echo "== kiln build: examples/genesis (FROM scratch, ADD busybox.tar.xz /, CMD [\"sh\"])"
	$(KILN) --root $(DEMO_ROOT) build -t genesis:latest -o target/genesis.tar examples/genesis
	@echo
	$(KILN) --root $(DEMO_ROOT) images
	@echo
	$(KILN) --root $(DEMO_ROOT) inspect genesis
	@echo
	@if /usr/bin/docker info >/dev/null 2>&1; then \
		echo "== docker load + run"; \
		/usr/bin/docker load -i target/genesis.tar && \
		/usr/bin/docker run --rm --pull=never --network none genesis sh -c 'echo hello from genesis'; \
	else \
		echo "(no docker daemon running: load it elsewhere with: docker load -i target/genesis.tar)"; \
	fi
	@echo
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
test: deps lint
	$(CARGO) test --workspace --locked

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

fmt:
	$(CARGO) fmt --all

## bench: benchmarks; results go into docs/performance.md by hand, with the command.
bench: build
	$(CARGO) bench -p kiln --bench frontend --locked
	$(CARGO) bench -p kiln-oci --bench export --locked
	$(CARGO) bench -p kiln-sandbox --bench overhead --locked
	@if [ "$$(id -u)" = 0 ]; then scripts/bench-run.sh $(KILN) 5; \
	else echo "(RUN benchmarks against BuildKit and buildah need root: sudo scripts/bench-run.sh)"; fi
	@if [ "$$(id -u)" = 0 ]; then scripts/bench-registry.sh $(KILN); \
	else echo "(registry pull/push against skopeo and docker needs root: sudo scripts/bench-registry.sh)"; fi

clean:
	$(CARGO) clean
