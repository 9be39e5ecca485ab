# The two commands: `make up` starts the whole system on this machine, `make test`
# runs every test. See README.md.
.PHONY: test up down deps lint fmt crds

test: deps
	tools/test.sh

deps:
	tools/install-deps.sh

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings

fmt:
	cargo fmt --all

# Regenerates committed generated files (CRDs, golden key lists).
crds:
	SF_UPDATE_GOLDEN=1 cargo test -p sf-schema

# Starts the whole system on this machine (root; see tools/up.sh).
up:
	tools/up.sh

# Stops what `make up` started; CLEAN=1 also removes ./.sf-dev/.
down:
	CLEAN=$(CLEAN) tools/down.sh
