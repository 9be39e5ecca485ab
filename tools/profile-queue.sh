#!/usr/bin/env bash
# Profiles the queue benchmark where its CPU goes: runs one phase of the gateway bench
# (`cargo bench -p sf-database --bench gateway`) with 16 producers, scaled to run for
# about half a minute, and samples mariadbd and the bench process (both gateways and
# the client) with `perf record -g` for 12 s in the middle of the phase. Prints the
# phase's figures and, per process, the heaviest call paths (inclusive).
#
#   tools/profile-queue.sh [unbatched|batched] [scale]
#
# Needs perf (Debian: linux-perf) and root (or perf_event_paranoid <= 1). Everything
# runs on 127.0.0.1 against the bench's own private MariaDB.
set -euo pipefail
cd "$(dirname "$0")/.."
phase=${1:-unbatched}
scale=${2:-$([[ $phase == batched ]] && echo 2.5 || echo 5)}
command -v perf >/dev/null || { echo "profile-queue: perf is missing (apt-get install linux-perf)" >&2; exit 1; }

bench=$(cargo bench -p sf-database --bench gateway --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "gateway":
        print(m["executable"])')
out=$(mktemp -d "${TMPDIR:-/tmp}/sf-profile.XXXXXX")
echo "profile-queue: $phase, scale $scale; data in $out"
SF_BENCH_PRODUCERS=16 SF_BENCH_PHASES=$phase SF_BENCH_SCALE=$scale \
  "$bench" --bench >"$out/bench.json" 2>"$out/bench.err" &
pid=$!
sleep 10
db=$(pgrep -f "mariadbd.*--datadir=${TMPDIR:-/tmp}" | head -1 || true)
[[ -n $db ]] || { echo "profile-queue: the bench's mariadbd did not start" >&2; kill $pid; exit 1; }
perf record -F 499 -g -o "$out/mariadbd.data" -p "$db" -- sleep 12 >/dev/null 2>&1 &
perf record -F 499 -g -o "$out/gateways.data" -p "$pid" -- sleep 12 >/dev/null 2>&1 &
wait $pid
wait
python3 - "$out/bench.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
for k, v in d.items():
    if k.startswith("create_claim_complete"):
        keep = ("jobs_per_second", "cpu", "combining", "mariadb_per_job")
        print(k, json.dumps({x: v.get(x) for x in keep}, indent=1))
PY
for who in mariadbd gateways; do
  echo "== $who: inclusive share of samples by symbol (top 40)"
  perf report -i "$out/$who.data" --children --sort symbol --stdio -g none 2>/dev/null |
    grep '%' | grep -v '0x0000' | head -40 | cut -c1-110
done
