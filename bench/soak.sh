#!/usr/bin/env bash
# Soak benchmark of im-callback-forwarder (issue 3): signed callbacks at a fixed rate for N minutes against a
# release build, with the tansu broker killed and restarted every M seconds. Reports accepted (200 OK) vs
# delivered (distinct accepted event ids read back from Kafka) vs duplicates, and the forwarder's peak RSS.
#
#   bench/soak.sh                                  # 5 minutes at 1000/s, a bounce every 30 s
#   SOAK_MINUTES=2 bench/soak.sh
#   FORWARDER_ARGS="--durability disk" bench/soak.sh
#
# The work is done by examples/soak.rs, which starts tansu and the forwarder itself on 127.0.0.1 (temp
# ports), kills both (by pid) when it ends, and exits 1 if an accepted event is missing. Loopback only;
# bounded by SOAK_MINUTES (at most 60) plus SETTLE_SECS.
#
# Environment (defaults): SOAK_MINUTES=5 RATE=1000 BOUNCE_EVERY=30 DOWN_SECS=2 SENDERS=32 SETTLE_SECS=120
# FORWARDER_ARGS (extra forwarder flags; a spool in OUT/spool is always configured, memory durability unless
# given) TANSU=/path/to/tansu (a build with the memory storage engine) OUT (result folder; default a new
# /tmp/imcf-soak.* folder) SKIP_BUILD=1.
set -euo pipefail
[[ $# == 0 ]] || { echo "usage: [SOAK_MINUTES=5 RATE=1000 BOUNCE_EVERY=30 ...] $0" >&2; exit 2; }

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SOAK_MINUTES=${SOAK_MINUTES:-5}
RATE=${RATE:-1000}
BOUNCE_EVERY=${BOUNCE_EVERY:-30}
DOWN_SECS=${DOWN_SECS:-2}
SENDERS=${SENDERS:-32}
SETTLE_SECS=${SETTLE_SECS:-120}
FORWARDER_ARGS=${FORWARDER_ARGS:-}
OUT=${OUT:-$(mktemp -d /tmp/imcf-soak.XXXXXX)}
TANSU=${TANSU:-${TANSU_BIN:-$HOME/.cache/imcf-tools/tansu-0.6.0-dynostore/bin/tansu}}

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[[ $SOAK_MINUTES =~ ^[0-9]+$ && $SOAK_MINUTES -ge 1 && $SOAK_MINUTES -le 60 ]] || die "SOAK_MINUTES must be 1..60"
[[ -x $TANSU ]] || die "tansu not found at $TANSU (set TANSU=/path/to/tansu, a build with memory storage)"
mkdir -p "$OUT/bin"

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    log "building the release forwarder and examples/soak"
    (cd "$ROOT" && cargo build --release --quiet --bin im-callback-forwarder --example soak) || die "cargo build failed"
fi
# Private copies: a concurrent `cargo build` cannot replace them mid-run, and the forwarder's process name
# matches no one else's pattern.
cp "$ROOT/target/release/im-callback-forwarder" "$OUT/bin/imcf-soak-forwarder"
cp "$ROOT/target/release/examples/soak" "$OUT/bin/soak"

log "soak: ${SOAK_MINUTES} min at ${RATE}/s, broker bounced every ${BOUNCE_EVERY} s (down ${DOWN_SECS} s); results in $OUT"
status=0
"$OUT/bin/soak" \
    --forwarder "$OUT/bin/imcf-soak-forwarder" --tansu "$TANSU" --out "$OUT" \
    --duration-secs $((SOAK_MINUTES * 60)) --rate "$RATE" --bounce-every-secs "$BOUNCE_EVERY" \
    --down-secs "$DOWN_SECS" --senders "$SENDERS" --settle-secs "$SETTLE_SECS" \
    --forwarder-args "$FORWARDER_ARGS" >"$OUT/summary.json" 2> >(tee "$OUT/soak.log" >&2) || status=$?

if [[ -s $OUT/summary.json ]] && command -v jq >/dev/null; then
    jq -r '"accepted   \(.accepted) of \(.requests) requests (refused \(.refused_by_status), no answer \(.transport_errors))",
           "delivered  \(.delivered) distinct accepted event ids read back (missing \(.missing))",
           "duplicates \(.duplicates) extra copies of accepted events (\(.records_read) records read)",
           "bounces    \(.bounces) (forwarder frozen at most \(.freeze_secs_max * 100 | round / 100) s per bounce)",
           "peak RSS   \(.peak_rss_mib * 10 | round / 10) MiB (VmHWM)",
           "max ack    \(.max_ack_latency_ms) ms",
           "metrics    \(.metrics)"' "$OUT/summary.json"
fi
log "summary: $OUT/summary.json, logs: $OUT/soak.log $OUT/forwarder.log $OUT/tansu-*.log"
exit "$status"
