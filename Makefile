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

up:
	@echo "make up is not built yet: it will start a private MariaDB under ./.sf-dev/,"
	@echo "two sf-database instances, sf-api on :13000, sf-cluster and one sf-agent,"
	@echo "then apply examples/quickstart.yaml. See docs/roadmap.md."
	@exit 1

down:
	@echo "make down: nothing to stop (make up is not built yet)."
