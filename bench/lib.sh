# shellcheck shell=bash
# Helpers shared by bench/run.sh and bench/profile.sh (sourced, not run).
# Everything here talks to 127.0.0.1 only, and every wait is bounded.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TANSU=${TANSU:-$HOME/.cache/imcf-tools/tansu-0.6.0-dynostore/bin/tansu}
RELEASE_DIR=${RELEASE_DIR:-$ROOT/target/release}
FORWARDER=$RELEASE_DIR/im-callback-forwarder
CEILING=$RELEASE_DIR/examples/ceiling
LOADGEN=$RELEASE_DIR/examples/loadgen
COUNT_TOPIC=$RELEASE_DIR/examples/count_topic
FSYNC_PROBE=$RELEASE_DIR/examples/fsync_probe
TOPIC=${TOPIC:-im.group.send-msg-exception}
DEAD_LETTER_TOPIC=${DEAD_LETTER_TOPIC:-$TOPIC.dead-letter}
PARTITIONS=${PARTITIONS:-3}
TOKEN=${TOKEN:-bench-callback-token}
SDK_APP_ID=${SDK_APP_ID:-1400000000}
CLK_TCK=$(getconf CLK_TCK)

STARTED_PIDS=()
FWD_LOG=forwarder.log

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Stops every process this script started, by PID: SIGTERM, up to 40 s for the forwarder's flush, then SIGKILL.
cleanup() {
    local pid i
    for pid in "${STARTED_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${STARTED_PIDS[@]}"; do
        for ((i = 0; i < 400; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    STARTED_PIDS=()
}

# stop_pid PID TENTHS: SIGTERM, wait up to TENTHS/10 s; once it is gone, forget it (its number may be reused).
stop_pid() {
    local pid=$1 tenths=$2 i
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < tenths; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if ! kill -0 "$pid" 2>/dev/null; then
        wait "$pid" 2>/dev/null || true
        local kept=() p
        for p in "${STARTED_PIDS[@]}"; do [[ $p == "$pid" ]] || kept+=("$p"); done
        STARTED_PIDS=("${kept[@]}")
    fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

build() {
    local built_from="the working tree of $ROOT"
    if [[ -n ${REV:-} ]]; then
        # The forwarder of one commit, built from a pristine export (others' uncommitted work left out);
        # the bench examples still come from the working tree.
        local sha src target=${BENCH_TARGET_DIR:-/tmp/imcf-bench-target}
        sha=$(git -C "$ROOT" rev-parse --short "$REV") || die "unknown REV $REV"
        src=/tmp/imcf-bench-src-$sha
        if [[ ! -f $src/Cargo.toml ]]; then
            mkdir -p "$src"
            git -C "$ROOT" archive "$sha" | tar -x -C "$src" || die "git archive $sha failed"
        fi
        log "building the forwarder of commit $sha in $src (target $target)"
        (cd "$src" && CARGO_TARGET_DIR=$target cargo build --release --locked --quiet --bin im-callback-forwarder) ||
            die "cargo build of $sha failed"
        FORWARDER=$target/release/im-callback-forwarder
        built_from="commit $sha (git archive, no uncommitted changes)"
    fi
    if [[ ${SKIP_BUILD:-0} == 1 ]]; then
        log "SKIP_BUILD=1: using existing binaries in $RELEASE_DIR"
    else
        log "building release binaries (forwarder, ceiling, loadgen, count_topic, fsync_probe)"
        local bins=(--example ceiling --example loadgen --example count_topic --example fsync_probe)
        [[ -n ${REV:-} ]] || bins+=(--bin im-callback-forwarder)
        (cd "$ROOT" && cargo build --release --quiet "${bins[@]}") || die "cargo build failed"
    fi
    for bin in "$FORWARDER" "$CEILING" "$LOADGEN" "$COUNT_TOPIC" "$FSYNC_PROBE"; do
        [[ -x $bin ]] || die "missing $bin"
    done
    # Private copies: a concurrent `cargo build` cannot replace them mid-run, and the names match no one
    # else's process pattern (the forwarder runs as imcf-bench-forwarder).
    mkdir -p "$OUT/bin"
    local forwarder_built=$FORWARDER
    cp "$FORWARDER" "$OUT/bin/imcf-bench-forwarder"
    cp "$CEILING" "$LOADGEN" "$COUNT_TOPIC" "$FSYNC_PROBE" "$OUT/bin/"
    FORWARDER=$OUT/bin/imcf-bench-forwarder
    CEILING=$OUT/bin/ceiling
    LOADGEN=$OUT/bin/loadgen
    COUNT_TOPIC=$OUT/bin/count_topic
    FSYNC_PROBE=$OUT/bin/fsync_probe
    {
        echo "forwarder built from: $built_from"
        echo "HEAD: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
        if [[ -z ${REV:-} ]]; then
            echo "uncommitted changes under src/ when built:"
            git -C "$ROOT" status --short -- src Cargo.toml Cargo.lock 2>/dev/null | sed 's/^/  /'
        fi
        echo "forwarder binary: built $(stat -c "%y" "$forwarder_built"), sha256 $(sha256sum "$FORWARDER" | cut -c1-16)"
    } >"$OUT/build-info.txt"
}

# Waits (bounded) until FILE has a line matching REGEX; prints that line.
wait_for_line() {
    local file=$1 regex=$2 seconds=$3 pid=${4:-} i line
    for ((i = 0; i < seconds * 10; i++)); do
        line=$(grep -m1 -E "$regex" "$file" 2>/dev/null || true)
        if [[ -n $line ]]; then
            printf '%s\n' "$line"
            return 0
        fi
        if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
            return 1
        fi
        sleep 0.1
    done
    return 1
}

# create_topic OUT_DIR NAME PARTITIONS: creates a topic on the running tansu (log in OUT_DIR/tansu-topics.log).
create_topic() {
    local out=$1 name=$2 partitions=$3
    "$TANSU" topic create "$name" --broker "tcp://127.0.0.1:$BROKER_PORT" --partitions "$partitions" \
        >>"$out/tansu-topics.log" 2>&1 || die "could not create $name (see $out/tansu-topics.log)"
}

# start_tansu OUT_DIR: sets BROKER_PORT, TANSU_PID; creates both topics.
start_tansu() {
    local out=$1
    [[ -x $TANSU ]] || die "tansu not found at $TANSU (set TANSU=/path/to/tansu)"
    BROKER_PORT=$(free_port)
    "$TANSU" broker --listener-url "tcp://127.0.0.1:$BROKER_PORT" \
        --advertised-listener-url "tcp://127.0.0.1:$BROKER_PORT" \
        --storage-engine memory://tansu/ >"$out/tansu.log" 2>&1 &
    TANSU_PID=$!
    STARTED_PIDS+=("$TANSU_PID")
    local i
    for ((i = 0; i < 100; i++)); do
        kill -0 "$TANSU_PID" 2>/dev/null || { tail -5 "$out/tansu.log" >&2; die "tansu exited (a build without the memory storage engine? see $out/tansu.log)"; }
        (exec 3<>"/dev/tcp/127.0.0.1/$BROKER_PORT") 2>/dev/null && break
        sleep 0.1
    done
    create_topic "$out" "$TOPIC" "$PARTITIONS"
    create_topic "$out" "$DEAD_LETTER_TOPIC" 1
    log "tansu on 127.0.0.1:$BROKER_PORT (pid $TANSU_PID), topics $TOPIC ($PARTITIONS partitions), $DEAD_LETTER_TOPIC"
}

# start_forwarder OUT_DIR [WRAPPER...]: sets FWD_PID, CALLBACK_ADDR, ADMIN_ADDR; waits for /readyz.
start_forwarder() {
    local out=$1
    shift
    # shellcheck disable=SC2086 # FORWARDER_ARGS is a list of extra flags
    # shellcheck disable=SC2086 # FORWARDER_ENV is a list of NAME=VALUE words
    env IMCF_LOG="${IMCF_LOG:-info}" ${FORWARDER_ENV:-} "$@" "$FORWARDER" \
        --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
        --sdk-app-id "$SDK_APP_ID" --callback-token "$TOKEN" \
        --kafka-brokers "127.0.0.1:$BROKER_PORT" --topic "$TOPIC" --dead-letter-topic "$DEAD_LETTER_TOPIC" \
        --log-format json --shutdown-timeout 30 ${FORWARDER_ARGS:-} >"$out/$FWD_LOG" 2>&1 &
    FWD_PID=$!
    STARTED_PIDS+=("$FWD_PID")
    local line
    line=$(wait_for_line "$out/$FWD_LOG" '"message":"listening"' "${START_TIMEOUT:-60}" "$FWD_PID") ||
        { tail -5 "$out/$FWD_LOG" >&2; die "forwarder did not log \"listening\""; }
    CALLBACK_ADDR=$(jq -r '.fields.callback_addr' <<<"$line")
    ADMIN_ADDR=$(jq -r '.fields.admin_addr' <<<"$line")
    local i
    # Ready, and (readiness does not follow Kafka) Kafka seen with every topic: the load starts on a warm producer.
    # Builds older than that change (REV=) answer a bare "ready" only once Kafka is up.
    local kafka_ok="ready; kafka: Kafka reachable, every topic exists" answer
    warm() { [[ $answer == "$kafka_ok" || ($answer == ready* && $answer != *kafka:*) ]]; }
    for ((i = 0; i < ${START_TIMEOUT:-60} * 2; i++)); do
        answer=$(curl -s "http://$ADMIN_ADDR/readyz" || true)
        warm && break
        kill -0 "$FWD_PID" 2>/dev/null || die "forwarder exited (see $out/$FWD_LOG)"
        sleep 0.5
    done
    warm || die "forwarder not ready: $answer"
    log "forwarder on $CALLBACK_ADDR, admin $ADMIN_ADDR (pid $FWD_PID), ready"
}

# metric NAME_WITH_LABELS: value from the forwarder's /metrics (0 if absent).
metric() {
    curl -s "http://$ADMIN_ADDR/metrics" | awk -v name="$1" '$1 == name { v = $2 } END { print (v == "" ? 0 : v) }'
}

# Waits (bounded) until the forwarder has no record waiting for a delivery report.
wait_drained() {
    local seconds=${1:-120} i q
    for ((i = 0; i < seconds; i++)); do
        q=$(metric imcf_kafka_queue_events)
        [[ $q == 0 ]] && return 0
        sleep 1
    done
    log "WARNING: $q records still awaiting delivery reports after $seconds s"
    return 1
}

# CPU seconds (user+system, all threads) of PID so far.
cpu_seconds() {
    local stat
    stat=$(<"/proc/$1/stat")
    stat=${stat##*) }
    # shellcheck disable=SC2086
    set -- $stat
    # after "pid (comm) ", field 3 of /proc/PID/stat is $1: utime is field 14 -> $12, stime $13.
    calc "(${12} + ${13}) / $CLK_TCK"
}

# calc EXPR: floating-point arithmetic, 3 decimals (awk, so that values below 1 keep their leading 0 for jq).
calc() { awk "BEGIN { printf \"%.3f\", $* }"; }

# CPU seconds all processes of the machine spent busy so far (user, nice, system, irq, softirq, steal).
machine_busy_seconds() {
    awk -v tck="$CLK_TCK" '$1 == "cpu" { printf "%.3f", ($2 + $3 + $4 + $7 + $8 + $9) / tck; exit }' /proc/stat
}

# Peak RSS (VmHWM) of PID in KiB; reset_hwm makes the peak start over (Linux clear_refs 5).
hwm_kib() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"; }
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
reset_hwm() { echo 5 >"/proc/$1/clear_refs" 2>/dev/null; }
