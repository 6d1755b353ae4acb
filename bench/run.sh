#!/usr/bin/env bash
# Benchmark of im-callback-forwarder against the bare-hyper ceiling (issue 6). See BENCHMARKS.md.
#
#   bench/run.sh              # full run: ~2.5 min of load plus build and Kafka read-back
#   bench/run.sh --profile    # callgrind profile instead (bench/profile.sh)
#
# On this machine (loopback only) it starts tansu (memory storage, temp port, both topics created), the
# release forwarder (token set, JSON logs, addresses read from its "listening" line), the ceiling example
# and the loadgen example, then runs:
#   1. closed-loop saturation, ceiling and forwarder alternating (SAT_ROUNDS rounds of SAT_SECS/SAT_ROUNDS s
#      each, same connections and body mix), so both see the same background load; with FLOOR=1 (default) a
#      third server takes turns too, the *Kafka floor* (the ceiling example with --kafka: the bare server
#      that also produces each body to Kafka, on its own topic), the least any publishing server must do;
#   2. a restart of the forwarder (graceful; its counts are kept), so that the fixed-rate RSS is its own;
#   3. open-loop RATE/s against the forwarder (and, if RATE_CEILING=1, the ceiling) for RATE_SECS s;
# and reports throughput, forwarder/ceiling ratio, ack latency p50/p99/p99.9, peak RSS (VmHWM, reset per
# phase), CPU seconds per 1,000 callbacks (/proc/PID/stat), and accepted (imcf_callbacks_total, summed over
# both forwarder processes) against delivered (records consumed back from Kafka, which must be equal).
# Exit status 0 even when a target is missed: the summary marks each check PASS or FAIL.
#
# Environment (defaults): SAT_SECS=20 SAT_ROUNDS=2 SAT_CONNECTIONS=32 RATE=5000 RATE_SECS=20
# RATE_CONNECTIONS=64 RATE_CEILING=1 FLOOR=1 PHASES=saturation,rate WARMUP_SECS=2 LOADGEN_THREADS=1 PARTITIONS=3
# TOKEN SDK_APP_ID FORWARDER_ARGS (extra forwarder flags, e.g. "--durability disk --spool-dir DIR" or
# "-X linger.ms=20") FORWARDER_ENV (NAME=VALUE words for the forwarder only, e.g. TOKIO_WORKER_THREADS=1)
# LABEL (a name for this configuration in the summary) REV (build the forwarder of this commit from a
# git archive instead of the work tree) OUT (result folder; default a new /tmp/imcf-bench.* folder)
# SKIP_BUILD=1 TANSU=/path/to/tansu.
set -euo pipefail
if [[ ${1:-} == --profile ]]; then
    shift
    exec "$(dirname "$0")/profile.sh" "$@"
fi
[[ $# == 0 ]] || { echo "usage: $0 [--profile]" >&2; exit 2; }

# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"

SAT_SECS=${SAT_SECS:-20}
SAT_ROUNDS=${SAT_ROUNDS:-2}
SAT_CONNECTIONS=${SAT_CONNECTIONS:-32}
RATE=${RATE:-5000}
RATE_SECS=${RATE_SECS:-20}
RATE_CONNECTIONS=${RATE_CONNECTIONS:-64}
RATE_CEILING=${RATE_CEILING:-1}
FLOOR=${FLOOR:-1}
FLOOR_TOPIC=$TOPIC.bench-floor
WARMUP_SECS=${WARMUP_SECS:-2}
LOADGEN_THREADS=${LOADGEN_THREADS:-1}
LABEL=${LABEL:-memory}
PHASES=${PHASES:-saturation,rate}
OUT=${OUT:-$(mktemp -d /tmp/imcf-bench.XXXXXX)}
mkdir -p "$OUT"
: >"$OUT/phases.jsonl"
trap cleanup EXIT
trap 'exit 130' INT TERM

build
log "results in $OUT"
start_tansu "$OUT"
start_forwarder "$OUT"
"$CEILING" --exit-after 3600 >"$OUT/ceiling.log" 2>&1 &
CEILING_PID=$!
STARTED_PIDS+=("$CEILING_PID")
CEILING_ADDR=$(wait_for_line "$OUT/ceiling.log" 'listening on' 10 "$CEILING_PID" | awk '{ print $NF }') ||
    die "ceiling did not start"
log "ceiling on $CEILING_ADDR (pid $CEILING_PID)"
targets=("$CEILING_ADDR" "$CALLBACK_ADDR")
if [[ $FLOOR == 1 ]]; then
    create_topic "$OUT" "$FLOOR_TOPIC" "$PARTITIONS"
    "$CEILING" --exit-after 3600 --kafka "127.0.0.1:$BROKER_PORT" --topic "$FLOOR_TOPIC" >"$OUT/floor.log" 2>&1 &
    FLOOR_PID=$!
    STARTED_PIDS+=("$FLOOR_PID")
    FLOOR_ADDR=$(wait_for_line "$OUT/floor.log" 'listening on' 10 "$FLOOR_PID" | awk '{ print $NF }') ||
        die "Kafka floor did not start"
    log "Kafka floor on $FLOOR_ADDR (pid $FLOOR_PID), publishing to $FLOOR_TOPIC"
    targets+=("$FLOOR_ADDR")
fi

# Load before measuring, and a check that both servers answer every signed callback with the OK ack.
for target in "${targets[@]}"; do
    check=$("$LOADGEN" --target "$target" --token "$TOKEN" --sdk-app-id "$SDK_APP_ID" -c 4 -d 3 --warmup 0 \
        --max-requests 2000 --label check 2>/dev/null)
    [[ $(jq '.ok == .measured and .measured > 0 and .bad_ack == 0 and .errors == 0' <<<"$check") == true ]] ||
        die "sanity check against $target failed: $check"
done
log "sanity check passed: every server answers signed callbacks with the exact OK ack"

# phase NAME SERVER(ceiling|forwarder) PID ADDR loadgen-args...: one loadgen run plus server-side figures.
phase() {
    local name=$1 server=$2 pid=$3 addr=$4
    shift 4
    local cpu0 cpu1 tcpu0 tcpu1 mcpu0 mcpu1 result hwm rss
    reset_hwm "$pid" || log "WARNING: cannot reset VmHWM of $pid: peak RSS is since start"
    cpu0=$(cpu_seconds "$pid")
    tcpu0=$(cpu_seconds "$TANSU_PID")
    mcpu0=$(machine_busy_seconds)
    # RSS once a second (bounded: stops with the phase, with the process, or after 2 h).
    (for ((t = 0; t < 7200; t++)); do
        kill -0 "$pid" 2>/dev/null || break
        echo "$t $(rss_kib "$pid")"
        sleep 1
    done) >"$OUT/rss-$name.tsv" 2>/dev/null &
    local sampler=$!
    STARTED_PIDS+=("$sampler")
    local started
    started=$(date +%s.%N)
    result=$("$LOADGEN" --target "$addr" --token "$TOKEN" --sdk-app-id "$SDK_APP_ID" --threads "$LOADGEN_THREADS" \
        --warmup "$WARMUP_SECS" --label "$name" "$@" 2>>"$OUT/loadgen.log")
    cpu1=$(cpu_seconds "$pid")
    tcpu1=$(cpu_seconds "$TANSU_PID")
    mcpu1=$(machine_busy_seconds)
    stop_pid "$sampler" 20
    hwm=$(hwm_kib "$pid")
    rss=$(rss_kib "$pid")
    jq -c --arg server "$server" --argjson cpu "$(calc "$cpu1 - $cpu0")" \
        --argjson tansu_cpu "$(calc "$tcpu1 - $tcpu0")" --argjson machine_cpu "$(calc "$mcpu1 - $mcpu0")" \
        --argjson hwm "$hwm" --argjson rss "$rss" \
        --argjson wall "$(calc "$(date +%s.%N) - $started")" --arg config "$LABEL" \
        '. + {server: $server, config: $config, server_cpu_s: $cpu, tansu_cpu_s: $tansu_cpu, machine_cpu_s: $machine_cpu,
              server_peak_rss_kib: $hwm, server_rss_end_kib: $rss, wall_s: $wall}' \
        <<<"$result" >>"$OUT/phases.jsonl"
    tail -1 "$OUT/loadgen.log" >&2
}

# stop_forwarder: waits for its delivery reports, adds its counters to the run's totals, stops it with
# SIGTERM (graceful: drain, flush) and adds what its "shutdown complete" line reports as undelivered.
ACCEPTED=0 REPORTS_OK=0 FAILURES=0 UNDELIVERED=0 INSTANCES=0
stop_forwarder() {
    INSTANCES=$((INSTANCES + 1))
    wait_drained 120 || true
    curl -s "http://$ADMIN_ADDR/metrics" >"$OUT/metrics-$INSTANCES.txt"
    local value file=$OUT/metrics-$INSTANCES.txt
    saved() { awk -v name="$1" '$1 == name { v = $2 } END { print (v == "" ? 0 : v) }' "$file"; }
    ACCEPTED=$((ACCEPTED + $(saved 'imcf_callbacks_total{outcome="accepted"}')))
    REPORTS_OK=$((REPORTS_OK + $(saved imcf_kafka_delivered_total)))
    FAILURES=$((FAILURES + $(saved imcf_kafka_delivery_failures_total)))
    stop_pid "$FWD_PID" 400
    value=$(grep -m1 '"shutdown complete"' "$OUT/$FWD_LOG" | jq '.fields.undelivered' || echo null)
    [[ $value =~ ^[0-9]+$ ]] || { log "WARNING: forwarder $INSTANCES logged no undelivered count"; value=0; }
    UNDELIVERED=$((UNDELIVERED + value))
    mv "$OUT/$FWD_LOG" "$OUT/forwarder-$INSTANCES.log"
}

round_secs=$(calc "$SAT_SECS / $SAT_ROUNDS")
[[ ,$PHASES, == *,saturation,* ]] || SAT_ROUNDS=0
for ((round = 1; round <= SAT_ROUNDS; round++)); do
    log "saturation round $round/$SAT_ROUNDS: closed loop, $SAT_CONNECTIONS connections, $round_secs s per server"
    phase "saturation-ceiling-$round" ceiling "$CEILING_PID" "$CEILING_ADDR" -c "$SAT_CONNECTIONS" -d "$round_secs"
    phase "saturation-forwarder-$round" forwarder "$FWD_PID" "$CALLBACK_ADDR" -c "$SAT_CONNECTIONS" -d "$round_secs"
    if [[ $FLOOR == 1 ]]; then
        phase "saturation-floor-$round" floor "$FLOOR_PID" "$FLOOR_ADDR" -c "$SAT_CONNECTIONS" -d "$round_secs"
    fi
done
if [[ ,$PHASES, == *,rate,* ]]; then
    if ((SAT_ROUNDS > 0)); then
        # A fresh process, so that the peak RSS at the fixed rate is not what saturation left behind
        # (allocator high-water mark, replay-cache entries of the saturation requests).
        log "restarting the forwarder for the fixed-rate phase"
        stop_forwarder
        start_forwarder "$OUT"
    fi
    log "fixed rate: $RATE/s, $RATE_CONNECTIONS connections, $RATE_SECS s"
    phase "rate-forwarder" forwarder "$FWD_PID" "$CALLBACK_ADDR" -c "$RATE_CONNECTIONS" -r "$RATE" -d "$RATE_SECS"
    if [[ $RATE_CEILING == 1 ]]; then
        phase "rate-ceiling" ceiling "$CEILING_PID" "$CEILING_ADDR" -c "$RATE_CONNECTIONS" -r "$RATE" -d "$RATE_SECS"
    fi
fi

log "waiting for the forwarder's delivery reports, then reading both topics back from Kafka"
stop_forwarder
"$COUNT_TOPIC" --brokers "127.0.0.1:$BROKER_PORT" --topic "$TOPIC" --expect "$ACCEPTED" --idle-ms 5000 \
    --timeout-secs 300 >"$OUT/count-events.json" 2>>"$OUT/count.log"
"$COUNT_TOPIC" --brokers "127.0.0.1:$BROKER_PORT" --topic "$DEAD_LETTER_TOPIC" --idle-ms 3000 \
    --timeout-secs 60 >"$OUT/count-dead-letters.json" 2>>"$OUT/count.log"

jq -n --slurpfile events "$OUT/count-events.json" --slurpfile dead "$OUT/count-dead-letters.json" \
    --argjson accepted "$ACCEPTED" --argjson undelivered "$UNDELIVERED" --argjson reports "$REPORTS_OK" \
    --argjson failures "$FAILURES" --argjson instances "$INSTANCES" \
    --arg nproc "$(nproc)" --arg cpu "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')" \
    --arg loadavg "$(cut -d' ' -f1-3 /proc/loadavg)" --arg config "$LABEL" \
    --arg forwarder_args "${FORWARDER_ENV:+$FORWARDER_ENV }${FORWARDER_ARGS:-}" \
    '{config: $config, forwarder_args: $forwarder_args, forwarder_instances: $instances, accepted: $accepted,
      delivery_reports_ok: $reports, delivery_failures: $failures, undelivered_at_shutdown: $undelivered,
      events: $events[0], dead_letters: $dead[0], nproc: $nproc, cpu: $cpu, loadavg_at_end: $loadavg}' \
    >"$OUT/kafka.json"

python3 "$(dirname "$0")/summary.py" "$OUT"
