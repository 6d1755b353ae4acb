#!/usr/bin/env bash
# Instruction profile of the forwarder (issue 6: "profile first"), repeatable on this machine:
#
#   bench/profile.sh            # or: bench/run.sh --profile
#
# Starts tansu and the release forwarder under valgrind's callgrind (all threads: tokio workers and
# librdkafka's), warms it up, zeroes the counters, sends PROFILE_REQUESTS signed callbacks (closed loop,
# PROFILE_CONNECTIONS connections, the same body mix as bench/run.sh), waits until Kafka acknowledged them
# all, dumps the counters, and prints instructions per request and the top functions (self and inclusive).
# Background work of the idle service (metadata poll and statistics every 5 s, /metrics scrapes used to
# wait for the delivery reports) is inside the window too; it is small against thousands of requests.
#
# With PERF=1 it also samples the forwarder under real load with `perf record -e cpu-clock -g` (no hardware
# counters in this VM): closed loop, or PERF_RATE/s open loop. It shows what callgrind cannot: the kernel's
# share (syscalls, TCP, wake-ups) and the threads' shares.
#
# Environment (defaults): PROFILE_REQUESTS=5000 PROFILE_CONNECTIONS=4 CALLGRIND=1 PERF=0 PERF_SECS=10
# PERF_RATE=0 PERF_CONNECTIONS=32 FORWARDER_ARGS
# OUT SKIP_BUILD=1 TANSU.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"

PROFILE_REQUESTS=${PROFILE_REQUESTS:-5000}
PROFILE_CONNECTIONS=${PROFILE_CONNECTIONS:-4}
PERF=${PERF:-0}
CALLGRIND=${CALLGRIND:-1}
PERF_SECS=${PERF_SECS:-10}
PERF_RATE=${PERF_RATE:-0}
PERF_CONNECTIONS=${PERF_CONNECTIONS:-32}
OUT=${OUT:-$(mktemp -d /tmp/imcf-profile.XXXXXX)}
mkdir -p "$OUT"
trap cleanup EXIT
trap 'exit 130' INT TERM
command -v valgrind >/dev/null || die "valgrind is not installed (apt-get install valgrind)"

build
log "results in $OUT"
start_tansu "$OUT"
if [[ $CALLGRIND == 1 ]]; then
    START_TIMEOUT=180 start_forwarder "$OUT" valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.out.%p" \
        --dump-instr=no --collect-jumps=no
    VG_PID=$FWD_PID

    loadgen() {
        "$LOADGEN" --target "$CALLBACK_ADDR" --token "$TOKEN" --sdk-app-id "$SDK_APP_ID" -c "$PROFILE_CONNECTIONS" \
            --warmup 0 -d 600 "$@"
    }
    log "warm-up: 500 requests"
    loadgen --max-requests 500 --label profile-warmup >/dev/null 2>>"$OUT/loadgen.log"
    wait_drained 120 || true
    callgrind_control --zero "$VG_PID" >"$OUT/callgrind_control.log" 2>&1 || die "callgrind_control --zero failed"
    log "profiling $PROFILE_REQUESTS requests"
    started=$(date +%s.%N)
    loadgen --max-requests "$PROFILE_REQUESTS" --label profile >"$OUT/profile-load.json" 2>>"$OUT/loadgen.log"
    wait_drained 300 || true
    elapsed=$(calc "$(date +%s.%N) - $started")
    callgrind_control --dump=profile "$VG_PID" >>"$OUT/callgrind_control.log" 2>&1 || die "callgrind_control --dump failed"
    sleep 1
    accepted=$(jq '.ok' "$OUT/profile-load.json")
    stop_pid "$VG_PID" 600

    dump=$(grep -l '^desc: Trigger: dump profile' "$OUT"/callgrind.out.* | head -1)
    [[ -n $dump ]] || die "no callgrind dump with trigger 'profile' in $OUT"
    callgrind_annotate --inclusive=yes "$dump" >"$OUT/annotate-inclusive.txt" 2>/dev/null || true
    {
        echo "callgrind dump: $dump"
        echo "requests profiled: $PROFILE_REQUESTS ($accepted answered 200), $elapsed s under valgrind"
        echo "note: valgrind 3.19 does not emulate SHA-NI, so sha2 runs its portable code here; natively (CPU flag"
        echo "sha_ni: $(grep -qw sha_ni /proc/cpuinfo && echo present || echo absent)) SHA-256 costs several times fewer instructions."
        python3 "$(dirname "$0")/callgrind_summary.py" "$dump" "$PROFILE_REQUESTS" 25
    } | tee "$OUT/profile-summary.txt"
fi

if [[ $PERF == 1 ]]; then
    command -v perf >/dev/null || die "perf is not installed"
    log "perf: sampling the forwarder for $PERF_SECS s under load (rate $PERF_RATE/s, 0 = closed loop)"
    [[ ! -f $OUT/forwarder.log ]] || mv "$OUT/forwarder.log" "$OUT/forwarder-callgrind.log"
    start_forwarder "$OUT"
    ("$LOADGEN" --target "$CALLBACK_ADDR" --token "$TOKEN" --sdk-app-id "$SDK_APP_ID" -c "$PERF_CONNECTIONS" \
        --rate "$PERF_RATE" --warmup 1 -d "$((PERF_SECS + 2))" --label perf-load \
        >"$OUT/perf-load.json" 2>>"$OUT/loadgen.log") &
    LOAD_PID=$!
    sleep 1
    perf record -e cpu-clock -F 999 -g -p "$FWD_PID" -o "$OUT/perf.data" -- sleep "$PERF_SECS" >"$OUT/perf-record.log" 2>&1
    wait "$LOAD_PID" || true
    echo "CPU samples by thread:"
    perf report -i "$OUT/perf.data" --no-children --sort comm --stdio -g none 2>/dev/null | grep -v '^#' |
        grep -v '^$' | head -15 | tee "$OUT/perf-comm.txt"
    echo "CPU samples by binary (kernel = syscalls, TCP/loopback, scheduling):"
    perf report -i "$OUT/perf.data" --no-children --sort dso --stdio -g none 2>/dev/null | grep -v '^#' |
        grep -v '^$' | head -15 | tee "$OUT/perf-dso.txt"
    echo "CPU samples by function:"
    perf report -i "$OUT/perf.data" --no-children --sort sym --stdio -g none 2>/dev/null | grep -v '^#' |
        grep -v '^$' | head -40 | tee "$OUT/perf-sym.txt"
fi
