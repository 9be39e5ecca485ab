#!/usr/bin/env bash
# The whole test suite: one private MariaDB for the run (stopped by a trap), shared
# with every test process through SF_TEST_MARIADB_PORT, then lint and tests.
set -euo pipefail
cd "$(dirname "$0")/.."

run_dir=$(mktemp -d "${TMPDIR:-/tmp}/sf-test-run.XXXXXX")
harness=""
cleanup() {
  if [[ -n $harness && -x $harness ]]; then
    "$harness" stop "$run_dir/mariadb" || true
  fi
  rm -rf "$run_dir"
}
trap cleanup EXIT

echo "== format and lint"
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== build"
cargo build --workspace --all-targets --locked
harness="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug/sf-test-mariadb"

echo "== private MariaDB for this run"
eval "export $("$harness" start "$run_dir/mariadb")"
echo "SF_TEST_MARIADB_PORT=$SF_TEST_MARIADB_PORT (data in $run_dir/mariadb)"

echo "== Helm chart (lint, Kubernetes schemas, and the control plane booted from its rendering)"
tools/check-chart.sh

echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast "$@"
  # nextest does not run doctests.
  cargo test --workspace --locked --doc
else
  cargo test --workspace --locked --no-fail-fast "$@"
fi
