# The two commands a newcomer needs:
#   make run    start a local mesh of 3 replicas on embedded RocksDB and watch entries flow
#               (make run MESH_FLAGS=--tls: the same over mutual TLS, with certificates it makes)
#   make test   format check, clippy, every test, the Helm chart's checks, and the
#               chart run as real containers (root and podman, installed if missing)
# Both install what a fresh Debian machine lacks first (see .ci/deps).

export CARGO_TARGET_DIR ?= $(HOME)/.cache/mindoo-replica/target
CARGO_FLAGS := --release --locked
MESH_FLAGS ?=

.PHONY: run test deps bench powerloss
deps:
	@bash .ci/deps

run: deps
	cargo run $(CARGO_FLAGS) -- mesh --replicas 3 $(MESH_FLAGS)

test: deps
	cargo fmt --all -- --check
	cargo clippy $(CARGO_FLAGS) --all-targets -- -D warnings
	cargo clippy $(CARGO_FLAGS) --lib --no-default-features --features client -- -D warnings
	cargo test $(CARGO_FLAGS) --lib --bins --tests
	bash tests/chart/lint.sh
	bash tests/containers/run.sh

bench: deps
	cargo run $(CARGO_FLAGS) -- bench append

# 200 simulated power cuts under a replica with fsync on, and one with it off
# (the suite runs 3; each cut takes a few seconds).
powerloss: deps
	MINDOO_POWERLOSS_CUTS=200 cargo test $(CARGO_FLAGS) --test replica powerloss -- --nocapture --test-threads 1
