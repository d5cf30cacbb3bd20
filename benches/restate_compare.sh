#!/usr/bin/env bash
# Side by side: switchboard's steady load vs the same flow on Restate (a
# virtual object per conversation), at each rate, alternating, then one
# markdown table. See benches/restate/README.md.
#
#   benches/restate_compare.sh [RATE ...]          (default: 250 500 1000 2000 4000)
#
# Env: SWITCHBOARD_BIN (default target/release/switchboard), DURATION (30),
# PHONES (2000), DRAIN (60), RESTATE_BENCH_DIR (/tmp/switchboard-restate: the
# npm installs, pinned, and each invocation's results-* folder; never the repo).
#
# Each run has a fresh server on both sides: the harness starts its own
# embedded PostgreSQL and `serve` process; here, a Restate server on a new
# data folder with its default configuration. Those defaults (1.7.12, read
# with `restate-server --dump-config`): one node with every role, Bifrost's
# `replicated` log provider with replication 1 on the node's own log-server,
# whose RocksDB WAL is fsynced (`log-server.rocksdb-disable-wal-fsync =
# false`) before an append is acknowledged — the ingress answers a send once
# its invocation is in that log; 24 partitions; the partition store's state
# rebuilt from the log after a crash. Only telemetry is turned off.
#
# The Restate side (server, service, generator) runs in a network namespace
# of its own with only loopback: the server asks GitHub for its latest
# release at every start, and here nothing but loopback is to be reached.
# Its ports (8080, 9070, 5122, 9080, 19999) are then free whatever runs on
# the machine.
#
# CPU per message: the machine's busy jiffies (/proc/stat: all but idle and
# iowait, every process) sampled every 100 ms the whole time, counted over
# the same window on both sides — from the first intended send until the
# last reply was sent (switchboard: its last commit event plus the report's
# `outbox_drained_after_s`; Restate: the last reply at the fake send API) —
# and divided by the messages applied. Server start, the harness's database
# set-up and its invariant check fall outside it.
set -uo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
SELF=$REPO/benches/restate_compare.sh
DURATION=${DURATION:-30}
PHONES=${PHONES:-2000}
DRAIN=${DRAIN:-60}
DIR=${RESTATE_BENCH_DIR:-/tmp/switchboard-restate}
RESTATE_VERSION=1.7.12 SDK_VERSION=1.17.2 SMOL_TOML_VERSION=1.9.1 NODE_MAJOR=22
SECRET=load-secret                                  # signs every delivery, both sides
INGRESS=8080 ADMIN=9070 SERVICE=9080 SEND_PORT=19999
NODE=$DIR/node_modules/node/bin/node
restate_bin() { ls "$DIR"/node_modules/@restatedev/restate-server-linux-*/bin/restate-server 2>/dev/null | head -1; }
PIDS=()

# ---- stopping what this script started --------------------------------------
stop() {   # stop PID...: SIGTERM, up to 10 s, then SIGKILL
  local p alive
  for p in "$@"; do kill -TERM "$p" 2>/dev/null; done
  for _ in $(seq 100); do
    alive=0
    for p in "$@"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && return
    sleep 0.1
  done
  for p in "$@"; do kill -KILL "$p" 2>/dev/null; done
}
wait_for() {   # wait_for SECONDS COMMAND...: until it succeeds
  local end=$((SECONDS + $1)); shift
  until "$@" > /dev/null 2>&1; do [ $SECONDS -lt $end ] || return 1; sleep 0.2; done
}

# ---- one Restate run, inside its network namespace -------------------------------
# `unshare -n $SELF --restate-run RATE OUT DATA`: server, service, generator.
if [ "${1:-}" = --restate-run ]; then
  rate=$2 out=$3 data=$4
  trap '[ ${#PIDS[@]} -gt 0 ] && stop "${PIDS[@]}"; rm -rf "$data"' EXIT
  trap 'exit 130' INT TERM
  ip link set lo up || exit 1
  RESTATE_DISABLE_TELEMETRY=true "$(restate_bin)" --base-dir "$data" --no-logo \
    --bind-ip 127.0.0.1 --advertised-host 127.0.0.1 > "$out.server.log" 2>&1 &
  PIDS+=($!)
  RESTATE_LOGGING=WARN PORT=$SERVICE FLOW=$REPO/flows/reporte.toml SEND_API=http://127.0.0.1:$SEND_PORT \
    APP_SECRET=$SECRET "$NODE" "$DIR/service.mjs" > "$out.service.log" 2>&1 &
  PIDS+=($!)
  if ! { wait_for 60 curl -sf "127.0.0.1:$ADMIN/health" &&
         wait_for 30 curl -sf -X POST "127.0.0.1:$ADMIN/deployments" -H 'content-type: application/json' \
           -d "{\"uri\": \"http://127.0.0.1:$SERVICE\"}" &&
         wait_for 30 curl -sf "127.0.0.1:$INGRESS/restate/health"; }; then
    echo "restate at $rate/s: the server or the service did not come up (see $out.*.log)" >&2
    exit 1
  fi
  sleep 1   # the new deployment reaches the ingress's schema
  # In the background, so a signal is handled at once rather than after it.
  timeout -k 5 $((DURATION + DRAIN + 120)) "$NODE" "$DIR/generator.mjs" --ingress "http://127.0.0.1:$INGRESS" \
    --admin "http://127.0.0.1:$ADMIN" --send-port $SEND_PORT --rate "$rate" --duration "$DURATION" \
    --phones "$PHONES" --drain "$DRAIN" --app-secret "$SECRET" > "$out.json" &
  PIDS+=($!)
  wait $! || { echo "restate at $rate/s: the generator failed" >&2; exit 1; }
  exit 0
fi

RATES=("$@")
[ ${#RATES[@]} -gt 0 ] || RATES=(250 500 1000 2000 4000)
SB=$(realpath -e "${SWITCHBOARD_BIN:-$REPO/target/release/switchboard}") || { echo "no switchboard binary: set SWITCHBOARD_BIN" >&2; exit 1; }

# ---- install (once; pinned; outside the repo) ------------------------------
mkdir -p "$DIR"
if ! { [ -x "$NODE" ] && "$NODE" --version | grep -q "^v$NODE_MAJOR\." && [ -n "$(restate_bin)" ] &&
       "$(restate_bin)" --version | grep -qx "restate-server $RESTATE_VERSION" &&
       grep -q "\"version\": \"$SDK_VERSION\"" "$DIR/node_modules/@restatedev/restate-sdk/package.json" 2>/dev/null; }; then
  cat > "$DIR/package.json" <<EOF
{ "name": "switchboard-restate-bench", "private": true, "type": "module",
  "dependencies": { "@restatedev/restate-server": "$RESTATE_VERSION", "@restatedev/restate-sdk": "$SDK_VERSION",
                    "smol-toml": "$SMOL_TOML_VERSION", "node": "^$NODE_MAJOR" } }
EOF
  echo "installing Restate $RESTATE_VERSION, SDK $SDK_VERSION, Node $NODE_MAJOR into $DIR…" >&2
  (cd "$DIR" && npm install --no-audit --no-fund --loglevel=error >&2) || exit 1
fi
# ESM resolves packages from the importing file's folder: run copies beside node_modules.
cp "$REPO/benches/restate/service.mjs" "$REPO/benches/restate/generator.mjs" "$DIR/"

RESULTS=$DIR/results-$(date +%Y%m%d-%H%M%S)
RUN=$(mktemp -d /tmp/sb-restate-compare.XXXXXX)
mkdir -p "$RESULTS"
trap '[ ${#PIDS[@]} -gt 0 ] && stop "${PIDS[@]}"; rm -rf "$RUN"' EXIT
trap 'exit 130' INT TERM

# Machine CPU counts every process: say so when something else is running.
BUSY=$(python3 -c '
import time
def busy():
    f = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return sum(f) - f[3] - f[4], sum(f)
(b0, t0) = busy(); time.sleep(2); (b1, t1) = busy()
print(round(100 * (b1 - b0) / max(t1 - t0, 1)))')
[ "$BUSY" -le 10 ] || echo "WARNING: the machine was ${BUSY}% busy before the runs: the CPU figures include that" >&2

# ---- the machine's busy jiffies, every 100 ms -------------------------------
python3 - "$RUN/cpu.txt" <<'PY' &
import sys, time
with open(sys.argv[1], "w", buffering=1) as out:
    while True:
        f = [int(x) for x in open("/proc/stat").readline().split()[1:]]
        out.write(f"{time.time():.3f} {sum(f) - f[3] - f[4]}\n")   # all but idle, iowait
        time.sleep(0.1)
PY
SAMPLER=$!
PIDS+=($SAMPLER)

# ---- one switchboard run ------------------------------------------------------
# Not --quiet: the harness's first progress line is printed as its schedule
# starts (200 ms before the first send), which is the CPU window's start.
stamp_start() {
  local line
  while IFS= read -r line; do
    printf '%s\n' "$line" >> "$1.log"
    [[ $line == t=* && ! -s $1.start ]] && echo "$EPOCHREALTIME" > "$1.start"
  done
}
run_switchboard() {   # run_switchboard RATE TAG
  local rate=$1 out=$RESULTS/switchboard-$2
  mkdir -p "$RUN/sb" && cd "$RUN/sb" || return 1   # an empty folder: no config.toml picked up
  timeout -k 10 $((DURATION + DRAIN + 300)) "$SB" load --scenario steady --serve-bin "$SB" --processes 1 \
    --rate "$rate" --duration "$DURATION" --phones "$PHONES" --drain "$DRAIN" --report "$out.json" \
    > /dev/null 2> >(stamp_start "$out") &
  PIDS+=($!)
  wait $! || echo "switchboard at $rate/s: exit $? (see $out.log)" >&2
  PIDS=("$SAMPLER")
  cd "$REPO" || return 1
}

run_restate() {   # run_restate RATE TAG
  local rate=$1
  DURATION=$DURATION PHONES=$PHONES DRAIN=$DRAIN RESTATE_BENCH_DIR=$DIR \
    unshare --net "$SELF" --restate-run "$rate" "$RESULTS/restate-$2" "$RUN/restate-$2" &
  PIDS+=($!)
  wait $!
  PIDS=("$SAMPLER")
}

# Each pair of runs is tagged <n>-<rate>: a rate given twice keeps both pairs.
TAGS=()
for rate in "${RATES[@]}"; do
  tag=$((${#TAGS[@]} + 1))-$rate
  TAGS+=("$tag")
  echo "rate $rate/s: switchboard…" >&2
  run_switchboard "$rate" "$tag"
  echo "rate $rate/s: restate…" >&2
  run_restate "$rate" "$tag"
done

# ---- the table -------------------------------------------------------------------
python3 - "$RESULTS" "$RUN/cpu.txt" "${TAGS[@]}" <<'PY' | tee "$RESULTS/table.md"
import json, os, sys
from bisect import bisect_left
results, cpu_file, tags = sys.argv[1], sys.argv[2], sys.argv[3:]
samples = [tuple(map(float, l.split())) for l in open(cpu_file) if len(l.split()) == 2]
times = [t for t, _ in samples]

def busy_at(t):
    """Busy jiffies at time t, interpolated between the samples."""
    i = min(max(bisect_left(times, t), 1), len(samples) - 1)
    (t0, b0), (t1, b1) = samples[i - 1], samples[i]
    return b0 + (b1 - b0) * (t - t0) / max(t1 - t0, 1e-9)

def load(path):
    try:
        return json.load(open(path))
    except (OSError, ValueError):
        return None

jiffy_ms = 1000 / os.sysconf("SC_CLK_TCK")
print("| rate | engine | sustained (applied/s) | applied/sent | ack p50 / p99 ms | e2e p50 / p99 ms | errors | machine CPU ms/msg | excl. generator |")
print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
for tag in tags:
    rate = tag.split("-", 1)[1]
    for engine in ("switchboard", "restate"):
        base = f"{results}/{engine}-{tag}"
        r = load(base + ".json")
        if not r:
            print(f"| {rate} | {engine} | failed | | | | | | |")
            continue
        applied, tput = r["applied"], r["throughput_msgs_per_s"]
        if engine == "switchboard":
            # Its first progress line comes 200 ms before second 0; elapsed runs to the last message
            # applied (its commit event), and the outbox sends the last replies after it.
            start = float(open(base + ".start").read()) + 0.2 if os.path.exists(base + ".start") else None
            elapsed = (applied / tput if tput else 0) + (r.get("outbox_drained_after_s") or 0)
            gen_ms = ((r.get("cost") or {}).get("generator_cpu_us") or 0) / 1000
        else:
            start, elapsed = r["start_epoch_s"], r["elapsed_s"]
            gen_ms = r["generator_cpu_s"] * 1000 / max(applied, 1)
        if start and applied and samples and start + elapsed <= times[-1]:
            cpu = (busy_at(start + elapsed) - busy_at(start)) * jiffy_ms / applied
            cpu_s, excl = f"{cpu:.3f}", f"{cpu - gen_ms:.3f}"
        else:
            cpu_s = excl = "-"
        a, e = r["ack_latency_ms"], r["e2e_latency_ms"]
        print(f"| {rate} | {engine} | {tput:.0f} | {applied}/{r['sent']} | {a['p50']:.1f} / {a['p99']:.1f} | "
              f"{e['p50']:.1f} / {e['p99']:.1f} | {r['errors']} | {cpu_s} | {excl} |")
PY
[ "$BUSY" -le 10 ] || echo "WARNING: the machine was ${BUSY}% busy before the runs" | tee -a "$RESULTS/table.md" >&2
echo "results: $RESULTS" >&2
