#!/usr/bin/env bash
# `make down`: stops what `make up` started (by pid), in reverse order, and removes the
# agent's network namespace. Leaves the data under ./.sf-dev/; CLEAN=1 removes it too.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEV=${SF_DEV_DIR:-$ROOT/.sf-dev}
PIDS=$DEV/pids
NETNS=sfdev-hv1

stop() { # name
  local f=$PIDS/$1.pid pid i
  [[ -f $f ]] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      echo "   $1 (pid $pid) did not stop in 10 s: killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    echo "   stopped $1 (pid $pid)"
  fi
  rm -f "$f"
}

for name in sf-agent sf-cluster sf-api sf-database-2 sf-database-1 mariadb; do
  stop "$name"
done
# dnsmasq and other helpers the agent started inside its namespace.
if ip netns list 2>/dev/null | grep -qw "$NETNS"; then
  for pid in $(ip netns pids "$NETNS" 2>/dev/null); do
    kill -TERM "$pid" 2>/dev/null || true
  done
  ip netns del "$NETNS" || true
fi
# The agent's per-network namespaces: sf-hostnet names them `<node tag>-<vxid>`, the
# tag being "sf" + 6 hex digits of the FNV-1a hash of the node name (hv1).
tag=$(python3 -c 'h=0x811c9dc5
for b in b"hv1":
    h=((h^b)*0x01000193)&0xffffffff
print("sf%06x" % (h & 0xffffff))')
for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$tag-" || true); do
  for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -TERM "$pid" 2>/dev/null || true; done
  ip netns del "$ns" || true
  echo "   removed network namespace $ns"
done
if [[ ${CLEAN:-0} == 1 ]]; then
  rm -rf "$DEV"
  echo "   removed $DEV"
fi
