#!/usr/bin/env bash
# `make up`: the whole system on this machine, from a fresh clone.
#
# Starts, under ./.sf-dev/ (override with SF_DEV_DIR):
#   - a private MariaDB (never the system one) on 127.0.0.1:$SF_DEV_MARIADB_PORT (13306),
#   - two sf-database instances (gRPC 13005 and 13015, metrics 13006 and 13016),
#   - sf-api on :13000, sf-cluster (metrics 13007),
#   - one sf-agent (libvirt test driver unless SHAKENFIST_LIBVIRT_URI is set) whose host
#     networking lives in the network namespace `sfdev-hv1`, which this script creates;
#     the agent process itself stays in the root namespace and talks to loopback only.
# then bootstraps the system namespace, writes the sf config, applies
# examples/quickstart.yaml and waits until the instance runs.
#
# Safe to run twice: whatever already runs (by pid file) is left running.
# Logs: ./.sf-dev/logs/. Stop with `make down` (add CLEAN=1 to remove the data).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEV=${SF_DEV_DIR:-$ROOT/.sf-dev}
LOGS=$DEV/logs
PIDS=$DEV/pids
PROFILE=${SF_DEV_PROFILE:-release}   # `debug` for a quicker build while developing
BIN=$ROOT/target/$PROFILE
MARIADB_PORT=${SF_DEV_MARIADB_PORT:-13306}
NETNS=sfdev-hv1
SECRET_FILE=$DEV/secrets.env

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
die() { printf 'make up: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) == 0 ]] || die "must run as root: the agent's networking needs a network namespace (ip netns add)"

mkdir -p "$LOGS" "$PIDS" "$DEV/storage"
chmod 700 "$DEV"

running() { # name
  local f=$PIDS/$1.pid
  [[ -f $f ]] && kill -0 "$(cat "$f")" 2>/dev/null
}

start() { # name command...   (env is inherited)
  local name=$1; shift
  if running "$name"; then
    echo "   $name already running (pid $(cat "$PIDS/$name.pid"))"
    return
  fi
  setsid "$@" >>"$LOGS/$name.log" 2>&1 < /dev/null &
  echo $! >"$PIDS/$name.pid"
  echo "   $name started (pid $!, log .sf-dev/logs/$name.log)"
}

wait_port() { # name port
  local i
  for i in $(seq 1 150); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null; then return 0; fi
    running "$1" || die "$1 exited; see $LOGS/$1.log: $(tail -5 "$LOGS/$1.log")"
    sleep 0.2
  done
  die "$1 did not open port $2 in 30 s; see $LOGS/$1.log"
}

say "system packages"
"$ROOT/tools/install-deps.sh"

say "$PROFILE build (first time: several minutes on 2 cores)"
profile_flag=()
[[ $PROFILE == release ]] && profile_flag=(--release)
(cd "$ROOT" && cargo build "${profile_flag[@]}" --locked \
  -p sf-database -p sf-ctl -p sf-api -p sf-cluster -p sf-agent -p sf-cli)

# Secrets: generated once, kept with the data.
if [[ ! -f $SECRET_FILE ]]; then
  umask 077
  {
    echo "SHAKENFIST_MARIADB_GATEWAY_SECRET=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')"
    echo "SHAKENFIST_AUTH_SECRET_SEED=$(head -c 32 /dev/urandom | base64 | tr -d '/+=')"
  } >"$SECRET_FILE"
  umask 022
fi
set -a
# shellcheck disable=SC1090
source "$SECRET_FILE"
set +a

say "private MariaDB on 127.0.0.1:$MARIADB_PORT"
MDB=$DEV/mariadb
if [[ ! -d $MDB/data/mysql ]]; then
  mkdir -p "$MDB"
  mariadb-install-db --no-defaults --datadir="$MDB/data" --user=root \
    --auth-root-authentication-method=normal --skip-test-db >"$LOGS/mariadb-install.log" 2>&1 \
    || die "mariadb-install-db failed; see $LOGS/mariadb-install.log"
fi
if ! running mariadb; then
  start mariadb "$(PATH=$PATH:/usr/sbin command -v mariadbd)" --no-defaults \
    --datadir="$MDB/data" --socket="$MDB/sock" --port="$MARIADB_PORT" \
    --bind-address=127.0.0.1 --user=root --pid-file="$MDB/mariadbd.pid" \
    --log-error="$LOGS/mariadbd.err" --innodb-buffer-pool-size=128M \
    --character-set-server=utf8mb4 --collation-server=utf8mb4_unicode_ci
fi
wait_port mariadb "$MARIADB_PORT"
mariadb --no-defaults -h127.0.0.1 -P"$MARIADB_PORT" -uroot \
  -e "CREATE DATABASE IF NOT EXISTS shakenfist CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"

export SHAKENFIST_MARIADB_HOST=127.0.0.1
export SHAKENFIST_MARIADB_PORT=$MARIADB_PORT
export SHAKENFIST_MARIADB_USER=root
export SHAKENFIST_MARIADB_DATABASE=shakenfist
export SHAKENFIST_LOG_FORMAT=json

say "schema"
"$BIN/sf-ctl" ensure-mariadb-schema

say "two sf-database instances"
SHAKENFIST_MARIADB_GATEWAY_PORT=13005 SHAKENFIST_MARIADB_GATEWAY_METRICS_PORT=13006 \
  start sf-database-1 "$BIN/sf-database" --listen=127.0.0.1
SHAKENFIST_MARIADB_GATEWAY_PORT=13015 SHAKENFIST_MARIADB_GATEWAY_METRICS_PORT=13016 \
  start sf-database-2 "$BIN/sf-database" --listen=127.0.0.1
wait_port sf-database-1 13005
wait_port sf-database-2 13015
export SHAKENFIST_MARIADB_GATEWAY_HOSTS=127.0.0.1:13005,127.0.0.1:13015

say "system key"
KEY_FILE=$DEV/system.key
if [[ ! -s $KEY_FILE ]]; then
  umask 077
  "$BIN/sf-ctl" bootstrap-system-key --key-name make-up >"$KEY_FILE.tmp"
  mv "$KEY_FILE.tmp" "$KEY_FILE"
  umask 022
fi
SYSTEM_KEY=$(cat "$KEY_FILE")

# A 2-core machine could schedule nothing with Shaken Fist's per-node reservations:
# keep none. sf-cluster schedules with these and sf-api reports them.
export SHAKENFIST_NODE_CPU_RESERVATION_THREADS=0 SHAKENFIST_NODE_RAM_RESERVATION_GB=0 \
  SHAKENFIST_NODE_DISK_RESERVATION_GB=0

say "sf-api on :13000"
SHAKENFIST_API_PORT=13000 start sf-api "$BIN/sf-api"
wait_port sf-api 13000

say "agent network namespace $NETNS"
if ! ip netns list | grep -qw "$NETNS"; then
  ip netns add "$NETNS"
fi
ip -n "$NETNS" link set lo up
# The mesh NIC: one end of a veth pair (one node has no peers). The network node's egress:
# a veth pair whose other end stays in the same namespace, down — a dead end, so no
# guest traffic can leave this machine.
ip -n "$NETNS" link show mesh0 >/dev/null 2>&1 || ip -n "$NETNS" link add mesh0 type veth peer name mesh0-end
ip -n "$NETNS" addr replace 192.0.2.1/24 dev mesh0
ip -n "$NETNS" link set mesh0 up
ip -n "$NETNS" link set mesh0-end up
ip -n "$NETNS" link show egress0 >/dev/null 2>&1 \
  || ip -n "$NETNS" link add egress0 type veth peer name egress0-end
ip -n "$NETNS" link set egress0 up

say "sf-cluster"
SHAKENFIST_API_URL=http://127.0.0.1:13000 \
SHAKENFIST_CLUSTER_NAMESPACE=system SHAKENFIST_CLUSTER_KEY=$SYSTEM_KEY \
SHAKENFIST_CLUSTER_METRICS_PORT=13007 \
  start sf-cluster "$BIN/sf-cluster"

say "sf-agent (node hv1, libvirt ${SHAKENFIST_LIBVIRT_URI:-test:///default})"
SHAKENFIST_NODE_NAME=hv1 SHAKENFIST_NODE_NETNS=$NETNS \
SHAKENFIST_STORAGE_PATH=$DEV/storage \
SHAKENFIST_LIBVIRT_URI=${SHAKENFIST_LIBVIRT_URI:-test:///default} \
SHAKENFIST_LIBVIRT_DOMAIN_TYPE=${SHAKENFIST_LIBVIRT_DOMAIN_TYPE:-test} \
SHAKENFIST_NODE_MESH_NIC=mesh0 SHAKENFIST_NODE_MESH_IP=192.0.2.1 \
SHAKENFIST_NODE_EGRESS_NIC=egress0 SHAKENFIST_NODE_IS_NETWORK_NODE=true \
SHAKENFIST_MAX_HYPERVISOR_MTU=1500 \
SHAKENFIST_AGENT_METRICS_PORT=13008 \
  start sf-agent "$BIN/sf-agent"

say "sf login (config in ~/.config/sf/config.yaml)"
"$BIN/sf" login --url http://127.0.0.1:13000 --namespace system --key "$SYSTEM_KEY"
"$BIN/sf" namespace create demo 2>/dev/null || true

say "applying examples/quickstart.yaml"
"$BIN/sf" apply -f "$ROOT/examples/quickstart.yaml" --wait --timeout 180
"$BIN/sf" get instances -n demo

SF=${BIN#"$ROOT"/}/sf
cat <<EOF

The system is up. Try:
  $SF get instances -n demo -o wide
  $SF describe instance hello -n demo
  $SF instance pause hello -n demo
  $SF instance screenshot hello -n demo -o hello.png
  $SF network addresses quickstart -n demo
  $SF get instances -A -w -o json      # a watch, one event per line
Logs are in .sf-dev/logs/. Stop everything with: make down   (make down CLEAN=1 removes the data)
EOF
