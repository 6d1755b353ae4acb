#!/usr/bin/env bash
# Benchmark of im-callback-forwarder against the bare-hyper ceiling (issue 6) and of disk durability against
# memory durability and the disk's own sync latency (issue 13). See BENCHMARKS.md.
#
#   bench/run.sh              # full run: ~3.5 min of load plus build and Kafka read-back
#   bench/run.sh --profile    # callgrind profile instead (bench/profile.sh)
#
# On this machine (loopback only) it starts tansu (memory storage, temp port, both topics created), two
# release forwarders publishing to the same topics (token set, JSON logs, addresses read from their "listening"
# lines): *memory* (the default durability) and, with DISK=1 (default), *disk* (`--durability disk` with a
# spool in SPOOL_DIR), the ceiling example and the loadgen example, then:
#   0. probes the disk under SPOOL_DIR (examples/fsync_probe.rs: append + fdatasync of a FRAME_BYTES record,
#      p50/p99, into a growing and a preallocated file): the physical limit of a disk-mode acknowledgement;
#   1. closed-loop saturation, the servers taking turns (SAT_ROUNDS rounds of SAT_SECS/SAT_ROUNDS s each,
#      same connections and body mix), so all see the same background load: the ceiling, the memory
#      forwarder, the disk forwarder and, with FLOOR=1 (default), the *Kafka floor* (the ceiling example with
#      --kafka: the bare server that also produces each body to Kafka, on its own topic), the least any
#      publishing server must do;
#   2. a restart of the forwarders (graceful; their counts are kept), so that the fixed-rate RSS is their own;
#   3. open-loop RATE/s against each forwarder (and, if RATE_CEILING=1, the ceiling) for RATE_SECS s; then, with
#      DISK=1 and LOADED_PROBE=1 (default), the probe again (LOADED_PROBE_BATCH records per sync, as a group
#      commit holds at that rate), beside the memory forwarder at RATE/s: the disk's sync latency under load;
# and reports throughput, the ratios, ack latency p50/p99/p99.9, peak RSS (VmHWM, reset per phase), CPU seconds
# per 1,000 callbacks (/proc/PID/stat), and accepted (imcf_callbacks_total, summed over every forwarder process)
# against delivered (records consumed back from Kafka, which must be equal).
# Exit status 0 even when a target is missed: the summary marks each check PASS or FAIL.
#
# Environment (defaults): SAT_SECS=20 SAT_ROUNDS=2 SAT_CONNECTIONS=32 RATE=5000 RATE_SECS=20
# RATE_CONNECTIONS=64 RATE_CEILING=1 FLOOR=1 DISK=1 SPOOL_DIR ($OUT/spool) FRAME_BYTES=1200 PROBE_COUNT=2000
# LOADED_PROBE=1 LOADED_PROBE_COUNT=5000 LOADED_PROBE_BATCH=4
# PHASES=saturation,rate WARMUP_SECS=2 LOADGEN_THREADS=1 PARTITIONS=3
# TOKEN SDK_APP_ID FORWARDER_ARGS (extra flags for both forwarders, e.g. "-X linger.ms=20")
# FORWARDER_ENV (NAME=VALUE words for the forwarders only, e.g. TOKIO_WORKER_THREADS=1)
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
DISK=${DISK:-1}
FRAME_BYTES=${FRAME_BYTES:-1200}
PROBE_COUNT=${PROBE_COUNT:-2000}
LOADED_PROBE=${LOADED_PROBE:-1}
LOADED_PROBE_COUNT=${LOADED_PROBE_COUNT:-5000}
LOADED_PROBE_BATCH=${LOADED_PROBE_BATCH:-4}
FLOOR_TOPIC=$TOPIC.bench-floor
WARMUP_SECS=${WARMUP_SECS:-2}
LOADGEN_THREADS=${LOADGEN_THREADS:-1}
LABEL=${LABEL:-memory}
PHASES=${PHASES:-saturation,rate}
OUT=${OUT:-$(mktemp -d /tmp/imcf-bench.XXXXXX)}
mkdir -p "$OUT"
SPOOL_DIR=${SPOOL_DIR:-$OUT/spool}
: >"$OUT/phases.jsonl"
trap cleanup EXIT
trap 'exit 130' INT TERM

build
# The build's writes (hundreds of MB) would otherwise be written back during the first phases, and every
# fdatasync of the disk forwarder and the probe would wait behind them (seen: p99 over 100 ms at 5,000/s).
sync
log "results in $OUT"
if [[ $DISK == 1 ]]; then
    # Before any load: what one disk-mode acknowledgement costs at least, on the spool's filesystem.
    mkdir -p "$SPOOL_DIR"
    "$FSYNC_PROBE" --dir "$SPOOL_DIR" --bytes "$FRAME_BYTES" --count "$PROBE_COUNT" >"$OUT/fsync.jsonl" ||
        die "fsync probe failed in $SPOOL_DIR"
    log "fsync probe in $SPOOL_DIR ($(df --output=fstype "$SPOOL_DIR" | tail -1)): $(jq -r '"\(.file): p50 \(.p50_ms) p99 \(.p99_ms) ms"' "$OUT/fsync.jsonl" | paste -sd' ' | sed 's/ms /ms; /')"
fi
start_tansu "$OUT"
# start_named NAME [EXTRA_FLAG...]: a forwarder whose PID and addresses are kept under NAME.
declare -A PIDS CALLBACKS ADMINS
FORWARDERS=()
start_named() {
    local name=$1
    shift
    FWD_LOG=forwarder-$name.log FORWARDER_ARGS="${FORWARDER_ARGS:-} $*" start_forwarder "$OUT"
    PIDS[$name]=$FWD_PID CALLBACKS[$name]=$CALLBACK_ADDR ADMINS[$name]=$ADMIN_ADDR
}
start_all() {
    start_named memory
    [[ $DISK == 0 ]] || start_named disk --durability disk --spool-dir "$SPOOL_DIR"
}
FORWARDERS=(memory)
[[ $DISK == 0 ]] || FORWARDERS+=(disk)
start_all
"$CEILING" --exit-after 3600 >"$OUT/ceiling.log" 2>&1 &
CEILING_PID=$!
STARTED_PIDS+=("$CEILING_PID")
CEILING_ADDR=$(wait_for_line "$OUT/ceiling.log" 'listening on' 10 "$CEILING_PID" | awk '{ print $NF }') ||
    die "ceiling did not start"
log "ceiling on $CEILING_ADDR (pid $CEILING_PID)"
targets=("$CEILING_ADDR")
for name in "${FORWARDERS[@]}"; do targets+=("${CALLBACKS[$name]}"); done
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

# stop_forwarder NAME: waits for its delivery reports, adds its counters to the run's totals, stops it with
# SIGTERM (graceful: drain, flush) and adds what its "shutdown complete" line reports as undelivered.
ACCEPTED=0 REPORTS_OK=0 FAILURES=0 UNDELIVERED=0 INSTANCES=0
stop_forwarder() {
    local name=$1
    INSTANCES=$((INSTANCES + 1))
    ADMIN_ADDR=${ADMINS[$name]}
    wait_drained 120 || true
    local file=$OUT/metrics-$name-$INSTANCES.txt log=forwarder-$name.log value
    curl -s "http://$ADMIN_ADDR/metrics" >"$file"
    saved() { awk -v name="$1" '$1 == name { v = $2 } END { print (v == "" ? 0 : v) }' "$file"; }
    ACCEPTED=$((ACCEPTED + $(saved 'imcf_callbacks_total{outcome="accepted"}')))
    REPORTS_OK=$((REPORTS_OK + $(saved imcf_kafka_delivered_total)))
    FAILURES=$((FAILURES + $(saved imcf_kafka_delivery_failures_total)))
    stop_pid "${PIDS[$name]}" 400
    value=$(grep -m1 '"shutdown complete"' "$OUT/$log" | jq '.fields.undelivered' || echo null)
    [[ $value =~ ^[0-9]+$ ]] || { log "WARNING: forwarder $name ($INSTANCES) logged no undelivered count"; value=0; }
    UNDELIVERED=$((UNDELIVERED + value))
    mv "$OUT/$log" "$OUT/forwarder-$name-$INSTANCES.log"
}

round_secs=$(calc "$SAT_SECS / $SAT_ROUNDS")
[[ ,$PHASES, == *,saturation,* ]] || SAT_ROUNDS=0
for ((round = 1; round <= SAT_ROUNDS; round++)); do
    log "saturation round $round/$SAT_ROUNDS: closed loop, $SAT_CONNECTIONS connections, $round_secs s per server"
    phase "saturation-ceiling-$round" ceiling "$CEILING_PID" "$CEILING_ADDR" -c "$SAT_CONNECTIONS" -d "$round_secs"
    for name in "${FORWARDERS[@]}"; do
        phase "saturation-$name-$round" "$name" "${PIDS[$name]}" "${CALLBACKS[$name]}" -c "$SAT_CONNECTIONS" -d "$round_secs"
    done
    if [[ $FLOOR == 1 ]]; then
        phase "saturation-floor-$round" floor "$FLOOR_PID" "$FLOOR_ADDR" -c "$SAT_CONNECTIONS" -d "$round_secs"
    fi
done
if [[ ,$PHASES, == *,rate,* ]]; then
    if ((SAT_ROUNDS > 0)); then
        # A fresh process, so that the peak RSS at the fixed rate is not what saturation left behind
        # (allocator high-water mark, replay-cache entries of the saturation requests).
        log "restarting the forwarders for the fixed-rate phase"
        for name in "${FORWARDERS[@]}"; do stop_forwarder "$name"; done
        start_all
    fi
    log "fixed rate: $RATE/s, $RATE_CONNECTIONS connections, $RATE_SECS s"
    for name in "${FORWARDERS[@]}"; do
        phase "rate-$name" "$name" "${PIDS[$name]}" "${CALLBACKS[$name]}" -c "$RATE_CONNECTIONS" -r "$RATE" -d "$RATE_SECS"
    done
    if [[ $RATE_CEILING == 1 ]]; then
        phase "rate-ceiling" ceiling "$CEILING_PID" "$CEILING_ADDR" -c "$RATE_CONNECTIONS" -r "$RATE" -d "$RATE_SECS"
    fi
    if [[ $DISK == 1 && $LOADED_PROBE == 1 ]]; then
        # The disk's sync latency under the CPU load of the fixed rate: the probe beside the memory forwarder
        # (which writes nothing to disk), in a phase of its own so that the memory figures above stay unperturbed.
        log "fdatasync probe beside the memory forwarder at $RATE/s (batches of $LOADED_PROBE_BATCH)"
        (sleep "$WARMUP_SECS" && "$FSYNC_PROBE" --dir "$SPOOL_DIR" --bytes "$FRAME_BYTES" --count "$LOADED_PROBE_COUNT" \
            --batch "$LOADED_PROBE_BATCH" >"$OUT/fsync-loaded.jsonl") &
        probe_pid=$!
        STARTED_PIDS+=("$probe_pid")
        phase "rate-memory-beside-probe" memory-beside-probe "${PIDS[memory]}" "${CALLBACKS[memory]}" \
            -c "$RATE_CONNECTIONS" -r "$RATE" -d "$RATE_SECS"
        wait "$probe_pid" || log "WARNING: the fdatasync probe under load failed"
    fi
fi

log "waiting for the forwarders' delivery reports, then reading both topics back from Kafka"
for name in "${FORWARDERS[@]}"; do stop_forwarder "$name"; done
"$COUNT_TOPIC" --brokers "127.0.0.1:$BROKER_PORT" --topic "$TOPIC" --expect "$ACCEPTED" --idle-ms 5000 \
    --timeout-secs 300 >"$OUT/count-events.json" 2>>"$OUT/count.log"
"$COUNT_TOPIC" --brokers "127.0.0.1:$BROKER_PORT" --topic "$DEAD_LETTER_TOPIC" --idle-ms 3000 \
    --timeout-secs 60 >"$OUT/count-dead-letters.json" 2>>"$OUT/count.log"

jq -n --slurpfile events "$OUT/count-events.json" --slurpfile dead "$OUT/count-dead-letters.json" \
    --argjson accepted "$ACCEPTED" --argjson undelivered "$UNDELIVERED" --argjson reports "$REPORTS_OK" \
    --argjson failures "$FAILURES" --argjson instances "$INSTANCES" \
    --arg nproc "$(nproc)" --arg cpu "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')" \
    --arg loadavg "$(cut -d' ' -f1-3 /proc/loadavg)" --arg config "$LABEL" --arg forwarders "${FORWARDERS[*]}" \
    --arg forwarder_args "${FORWARDER_ENV:+$FORWARDER_ENV }${FORWARDER_ARGS:-}" \
    '{config: $config, forwarders: $forwarders, forwarder_args: $forwarder_args, forwarder_instances: $instances, accepted: $accepted,
      delivery_reports_ok: $reports, delivery_failures: $failures, undelivered_at_shutdown: $undelivered,
      events: $events[0], dead_letters: $dead[0], nproc: $nproc, cpu: $cpu, loadavg_at_end: $loadavg}' \
    >"$OUT/kafka.json"

python3 "$(dirname "$0")/summary.py" "$OUT"
