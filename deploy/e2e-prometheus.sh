#!/usr/bin/env bash
# End-to-end: a real Prometheus (Debian package) scrapes a running forwarder while
# callbacks flow; Prometheus' HTTP API must then return the expected counts, every
# catalogue metric, data for every dashboard query, and the alert rules of alerts.yml
# loaded and evaluating (ImcfDeadLetters firing on the one dead letter sent, nothing
# else). The forwarder runs with --durability disk (a spool in the work directory) and
# one --route, so the spool and routing metrics carry data. Its final /metrics must
# match the catalogue exactly (deploykit check-metrics: names, types, labels, outcome
# values, both ways). Also checks the compose health-check command, a clean SIGTERM
# shutdown and the binary's shared libraries against the Dockerfile's runtime packages.
#
#   bash deploy/e2e-prometheus.sh          (from the repository root)
#
# Binary: $IMCF_BIN, default target/debug/im-callback-forwarder (cargo build first;
# IMCF_E2E_BUILD=1 builds it). The forwarder runs with --dev (embedded librdkafka mock
# cluster); everything listens on 127.0.0.1 only and the script stops what it started.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=${IMCF_BIN:-$ROOT/target/debug/im-callback-forwarder}
TOOLS=${IMCF_TOOLS_DIR:-/root/.cache/imcf-tools}
SDK_APP_ID=1400000000
TOKEN=e2e-callback-token
RATE_WINDOW=30s
SPOOL_MAX_BYTES=67108864
# Published by the --route below. To the event topic: --dev's embedded cluster creates only
# the event and dead-letter topics, and /readyz requires every route topic to exist.
ROUTED=C2C.CallbackAfterSendMsg

log() { printf '%s e2e: %s\n' "$(date +%T)" "$*"; }
die() { log "FAIL: $*"; exit 1; }

# ---------------------------------------------------------------- prerequisites
if [ ! -x "$BIN" ] && [ "${IMCF_E2E_BUILD:-0}" = 1 ]; then
  cargo build --locked --bin im-callback-forwarder
fi
[ -x "$BIN" ] || die "no forwarder binary at $BIN (cargo build, or set IMCF_BIN / IMCF_E2E_BUILD=1)"
need_apt=()
command -v prometheus >/dev/null || need_apt+=(prometheus)
command -v curl >/dev/null || need_apt+=(curl)
if [ ${#need_apt[@]} -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
PY=$TOOLS/venv/bin/python
if ! "$PY" -c 'import yaml' 2>/dev/null; then
  python3 -m venv "$TOOLS/venv"
  "$TOOLS/venv/bin/pip" install -q --disable-pip-version-check PyYAML==6.0.3
fi

WORK=$(mktemp -d)
FWD_PID=
PROM_PID=
cleanup() {
  rc=$?
  [ -n "$FWD_PID" ] && kill "$FWD_PID" 2>/dev/null && wait "$FWD_PID" 2>/dev/null
  [ -n "$PROM_PID" ] && kill "$PROM_PID" 2>/dev/null && wait "$PROM_PID" 2>/dev/null
  if [ $rc -ne 0 ]; then
    echo "---- forwarder log (last 30 lines)"; tail -n 30 "$WORK/forwarder.log" 2>/dev/null || true
    echo "---- prometheus log (last 15 lines)"; tail -n 15 "$WORK/prometheus.log" 2>/dev/null || true
    log "FAILED"
  fi
  rm -rf "$WORK"
  exit $rc
}
trap cleanup EXIT

# ---------------------------------------------------------------- forwarder
log "starting $BIN --dev --durability disk"
IMCF_LOG=info "$BIN" --dev --sdk-app-id "$SDK_APP_ID" --callback-token "$TOKEN" \
  --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --log-format json \
  --durability disk --spool-dir "$WORK/spool" --spool-max-bytes "$SPOOL_MAX_BYTES" \
  --route "$ROUTED=im.group.send-msg-exception" \
  -X statistics.interval.ms=1000 >"$WORK/forwarder.log" 2>&1 &
FWD_PID=$!
for _ in $(seq 1 100); do
  grep -q '"listening"' "$WORK/forwarder.log" 2>/dev/null && break
  kill -0 "$FWD_PID" 2>/dev/null || die "forwarder exited before listening"
  sleep 0.1
done
read -r CB ADMIN < <("$PY" -c '
import json, sys
for line in open(sys.argv[1]):
    try: e = json.loads(line)
    except ValueError: continue
    f = e.get("fields", {})
    if f.get("message") == "listening":
        print(f["callback_addr"], f["admin_addr"]); break
' "$WORK/forwarder.log")
[ -n "${ADMIN:-}" ] || die "no listening line with callback_addr/admin_addr"
log "forwarder callback=$CB admin=$ADMIN"
# Ready (200, "ready; kafka: ...") no longer waits for Kafka: also wait for imcf_kafka_up 1, so the
# exact counts below do not race the embedded cluster's first metadata.
# The scrape is read whole before grep: with pipefail, `curl | grep -q` fails when grep stops at the match and
# curl, still writing, gets SIGPIPE (a CI flake: "forwarder never saw Kafka" with imcf_kafka_up 1 exported).
kafka_up() {
  local scrape
  scrape=$(curl -s "http://$ADMIN/metrics") || return 1
  grep -qx 'imcf_kafka_up 1' <<<"$scrape"
}
for _ in $(seq 1 100); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$ADMIN/readyz")" = 200 ] && kafka_up && break
  sleep 0.2
done
case "$(curl -s "http://$ADMIN/readyz")" in
  ready*) ;;
  *) die "forwarder never became ready" ;;
esac
kafka_up || die "forwarder never saw Kafka (imcf_kafka_up 1)"

# ---------------------------------------------------------------- prometheus
PROM_PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
PROM=http://127.0.0.1:$PROM_PORT
# The compose config itself, with the target, intervals and rule file path adapted.
"$PY" - "$ROOT/deploy/prometheus/prometheus.yml" "$WORK/prometheus.yml" "$ADMIN" "$ROOT/deploy/prometheus" <<'EOF'
import sys, yaml
src, dst, admin, rules_dir = sys.argv[1:]
cfg = yaml.safe_load(open(src))
cfg["global"]["scrape_interval"] = "1s"
cfg["global"]["evaluation_interval"] = "1s"
cfg["rule_files"] = [f"{rules_dir}/{f}" for f in cfg["rule_files"]]
jobs = [j for j in cfg["scrape_configs"] if j["job_name"] == "im-callback-forwarder"]
assert len(jobs) == 1, "prometheus.yml must have the im-callback-forwarder job"
jobs[0].update(scrape_interval="1s", scrape_timeout="1s", static_configs=[{"targets": [admin]}])
cfg["scrape_configs"] = jobs
yaml.safe_dump(cfg, open(dst, "w"), sort_keys=False)
EOF
log "starting prometheus on $PROM ($(prometheus --version 2>&1 | head -1))"
prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/data" \
  --web.listen-address="127.0.0.1:$PROM_PORT" >"$WORK/prometheus.log" 2>&1 &
PROM_PID=$!
for _ in $(seq 1 150); do
  curl -sf "$PROM/-/ready" >/dev/null 2>&1 && break
  kill -0 "$PROM_PID" 2>/dev/null || die "prometheus exited"
  sleep 0.2
done
curl -sf "$PROM/-/ready" >/dev/null || die "prometheus never became ready"

q() { curl -sf --get --data-urlencode "query=$1" "$PROM/api/v1/query"; }
scalar() { # first sample's value of an instant query, or "none"
  q "$1" | "$PY" -c 'import json, sys; r = json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else "none")'
}
for _ in $(seq 1 60); do
  [ "$(scalar 'up{job="im-callback-forwarder"}')" = 1 ] && break
  sleep 0.5
done
[ "$(scalar 'up{job="im-callback-forwarder"}')" = 1 ] || die "prometheus does not scrape the forwarder (up != 1)"
log "prometheus scrapes the forwarder (up == 1)"
# Two scrapes with the counters at 0 before traffic, so rate() sees the increase.
sleep 2.5

# ---------------------------------------------------------------- callbacks
URL="http://$CB/"
QS="SdkAppid=$SDK_APP_ID&contenttype=json&ClientIP=10.0.0.1&OptPlatform=iOS"
EXC=Group.CallbackSendMsgException
sign() { printf '%s%s' "$TOKEN" "$1" | sha256sum | cut -d' ' -f1; }
body() { # ErrorCode Random [Command]
  printf '{"CallbackCommand":"%s","GroupId":"@TGS#2J4SZEAEL","Type":"Public","From_Account":"jared","Operator_Account":"admin","Random":%s,"OnlineOnlyFlag":1,"MsgBody":[{"MsgType":"TIMTextElem","MsgContent":{"Text":"red packet"}}],"CloudCustomData":"","ErrorCode":%s,"ErrorInfo":"e2e","EventTime":"1670574414123"}' "${3:-$EXC}" "$2" "$1"
}
SENT=0
send() { # expected-status method url body
  local code
  code=$(curl -s -o "$WORK/answer" -w '%{http_code}' -X "$2" -H 'Content-Type: application/json' --data-binary "$4" "$3")
  SENT=$((SENT + 1))
  [ "$code" = "$1" ] || die "$2 $3 answered $code, expected $1: $(cat "$WORK/answer")"
}
signed() { local t; t=$(date +%s); echo "Sign=$(sign "$t")&RequestTime=$t"; }

log "sending callbacks"
# 5 accepted, distinct events: 2 rate_limited (10023), content_moderated (80001), sender_muted (10017),
# unknown (99999 -> error_code "other").
R=0
for code in 10023 10023 80001 10017 99999; do
  R=$((R + 1))
  SIGNED=$(signed)
  send 200 POST "$URL?$QS&CallbackCommand=$EXC&$SIGNED" "$(body "$code" "$R")"
done
grep -q '"ActionStatus":"OK"' "$WORK/answer" || die "accepted answer is not the OK ack"
# Replay protection: the same Sign, RequestTime and body again is answered OK and not published
# twice (outcome "replayed"; not to be confused with imcf_replayed_total, spooled records re-sent).
send 200 POST "$URL?$QS&CallbackCommand=$EXC&$SIGNED" "$(body 99999 "$R")"
send 200 POST "$URL?$QS&CallbackCommand=Group.CallbackAfterSendMsg&$(signed)" "$(body 0 9 Group.CallbackAfterSendMsg)"  # ignored (no route, --unrouted ack)
send 200 POST "$URL?$QS&CallbackCommand=$ROUTED&$(signed)" \
  "{\"CallbackCommand\":\"$ROUTED\",\"From_Account\":\"jared\",\"To_Account\":\"admin\",\"MsgBody\":[]}"             # routed
send 401 POST "$URL?$QS&CallbackCommand=$EXC" "$(body 10023 10)"                                                        # missing_sign
send 401 POST "$URL?$QS&CallbackCommand=$EXC" "$(body 10023 11)"                                                        # missing_sign
T=$(date +%s)
send 401 POST "$URL?$QS&CallbackCommand=$EXC&Sign=$(sign 0)&RequestTime=$T" "$(body 10023 12)"                         # bad_sign
OLD=$(($(date +%s) - 3600))
send 401 POST "$URL?$QS&CallbackCommand=$EXC&Sign=$(sign $OLD)&RequestTime=$OLD" "$(body 10023 13)"                    # stale_request_time
send 403 POST "${URL}?SdkAppid=1400999999&contenttype=json&CallbackCommand=$EXC&$(signed)" "$(body 10023 14)"           # unknown_sdk_app_id
send 400 POST "$URL?$QS&CallbackCommand=$EXC&$(signed)" '{"CallbackCommand":'                                           # invalid_json -> dead letter
send 405 GET "$URL?$QS&CallbackCommand=$EXC" ""                                                                          # method_not_allowed
send 404 POST "http://$CB/not-the-callback-path?$QS&CallbackCommand=$EXC" "$(body 10023 15)"                            # not_found
log "sent $SENT requests, each answered with the expected status"

# ---------------------------------------------------------------- assertions via Prometheus
# Wait until Prometheus has scraped the final state (7 deliveries: 5 events + 1 routed + 1 dead letter).
for _ in $(seq 1 60); do
  [ "$(scalar 'imcf_kafka_delivered_total')" = 7 ] && break
  sleep 0.5
done
sleep 2 # a couple more scrapes and rule evaluations

# The final /metrics, straight from the forwarder: the catalogue must describe it exactly.
curl -sf "http://$ADMIN/metrics" >"$WORK/metrics.txt" || die "GET /metrics failed"
log "the catalogue vs this forwarder's /metrics (deploykit check-metrics):"
"$PY" "$ROOT/deploy/tools/deploykit.py" check-metrics --file "$WORK/metrics.txt" ||
  die "the metric catalogue (deploy/tools/deploykit.py CATALOGUE/OUTCOMES) and the binary's /metrics differ"
log "promtool check metrics on the live scrape:"
if ! lint=$(promtool check metrics <"$WORK/metrics.txt" 2>&1); then
  printf '%s\n' "$lint"
  die "promtool check metrics found problems in /metrics"
fi
log "  ok"

"$PY" - "$PROM" "$ROOT" "$RATE_WINDOW" "$SPOOL_MAX_BYTES" "$ROUTED" <<'EOF'
import json, subprocess, sys, time, urllib.parse, urllib.request
prom, root, window, spool_max, routed = sys.argv[1:]
failures, checked = [], 0

def query(expr):
    url = f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    return body["data"]["result"]

def expect(expr, want):
    global checked
    checked += 1
    res = query(expr)
    got = float(res[0]["value"][1]) if len(res) == 1 else None
    status = "ok" if got == want else "FAIL"
    print(f"  {status}: {expr} == {want}" + ("" if got == want else f" (got {[r['value'][1] for r in res]})"))
    if got != want:
        failures.append(expr)

print("counts through Prometheus' HTTP API:")
J = 'job="im-callback-forwarder"'
expect(f'up{{{J}}}', 1)
expect(f'imcf_ready{{{J}}}', 1)
want_outcomes = {"accepted": 5, "replayed": 1, "routed": 1, "ignored": 1, "missing_sign": 2, "bad_sign": 1, "stale_request_time": 1,
                 "unknown_sdk_app_id": 1, "invalid_json": 1, "method_not_allowed": 1, "not_found": 1}
for outcome, n in want_outcomes.items():
    expect(f'sum(imcf_callbacks_total{{{J}, outcome=~"{outcome}"}})', n)
expect(f'sum(imcf_callbacks_total{{{J}}})', sum(want_outcomes.values()))
for category, n in {"rate_limited": 2, "content_moderated": 1, "sender_muted": 1, "unknown": 1, "invalid_request": 0}.items():
    expect(f'imcf_exceptions_total{{{J}, category="{category}"}}', n)
expect(f'sum(imcf_exceptions_total{{{J}}})', 5)
for code, n in {"10023": 2, "80001": 1, "10017": 1, "other": 1}.items():
    expect(f'imcf_exceptions_by_code_total{{{J}, error_code="{code}"}}', n)
expect(f'imcf_dead_letters_total{{{J}}}', 1)
expect(f'imcf_kafka_delivered_total{{{J}}}', 7)
expect(f'imcf_kafka_delivery_failures_total{{{J}}}', 0)
expect(f'imcf_kafka_queue_events{{{J}}}', 0)
expect(f'imcf_delivery_duration_seconds_count{{{J}}}', 7)
# Routing: the routed command, and the unrouted (ignored) one, by command.
expect(f'imcf_routed_callbacks_total{{{J}, command="{routed}"}}', 1)
expect(f'sum(imcf_routed_callbacks_total{{{J}}})', 1)
expect(f'imcf_unrouted_callbacks_total{{{J}, command="Group.CallbackAfterSendMsg"}}', 1)
expect(f'sum(imcf_unrouted_callbacks_total{{{J}}})', 1)
# The disk spool: every record handed to Kafka (5 events, 1 routed, 1 dead letter) was written
# ahead and fsynced, and all were acknowledged; nothing replayed, quarantined or lost.
expect(f'imcf_spooled_total{{{J}, reason="write_ahead"}}', 7)
expect(f'sum(imcf_spooled_total{{{J}, reason!="write_ahead"}})', 0)
expect(f'imcf_spool_events{{{J}}}', 0)
expect(f'imcf_spool_max_bytes{{{J}}}', float(spool_max))
expect(f'imcf_replayed_total{{{J}}}', 0)
expect(f'imcf_spool_quarantined_total{{{J}}}', 0)
expect(f'imcf_events_lost_total{{{J}}}', 0)
checked += 1
fsyncs = float(query(f'imcf_spool_fsync_duration_seconds_count{{{J}}}')[0]["value"][1])
print(f"  {'ok' if 1 <= fsyncs <= 7 else 'FAIL'}: 1 <= imcf_spool_fsync_duration_seconds_count <= 7 (group commits; got {fsyncs:g})")
if not 1 <= fsyncs <= 7:
    failures.append("fsync histogram count")
checked += 1
acks = float(query(f'imcf_ack_duration_seconds_count{{{J}}}')[0]["value"][1])
print(f"  {'ok' if acks >= 5 else 'FAIL'}: imcf_ack_duration_seconds_count >= 5 (got {acks:g})")
if acks < 5:
    failures.append("ack histogram count")
expect(f'count(imcf_build_info{{{J}}} == 1)', 1)

print("every catalogue metric is exported and scraped:")
names = subprocess.run([sys.executable, f"{root}/deploy/tools/deploykit.py", "catalogue"], check=True,
                       capture_output=True, text=True).stdout.split("\n")
missing = []
for line in filter(None, names):
    name, kind = line.split()
    series = name + "_bucket" if kind == "histogram" else name
    checked += 1
    if not query(f'{series}{{{J}}}'):
        missing.append(series)
print(f"  {'ok' if not missing else 'FAIL'}: {len(names) - 1 if names[-1] == '' else len(names)} catalogue metrics"
      + (f"; missing: {missing}" if missing else " all present"))
failures += missing

print(f"every dashboard query returns data ($__rate_interval = {window}):")
out = subprocess.run([sys.executable, f"{root}/deploy/tools/deploykit.py", "dashboard-queries", window], check=True,
                     capture_output=True, text=True).stdout
for line in filter(None, out.split("\n")):
    d = json.loads(line)
    checked += 1
    res = query(d["expr"])
    values = [r["value"][1] for r in res]
    nan = sum(v in ("NaN", "+Inf", "-Inf") for v in values)
    status = "ok" if res else "FAIL"
    print(f"  {status}: {d['panel']} [{d['refId']}]: {len(res)} series" + (f" ({nan} NaN)" if nan else "")
          + f" e.g. {values[:3]}")
    if not res:
        failures.append(f"dashboard {d['panel']} {d['refId']}: {d['expr']}")

print("alert rules of alerts.yml loaded and evaluating:")
with urllib.request.urlopen(f"{prom}/api/v1/rules", timeout=10) as r:
    groups = json.load(r)["data"]["groups"]
rules = [rule for g in groups for rule in g["rules"]]
bad = [r["name"] for r in rules if r.get("health") != "ok"]
checked += 1
print(f"  {'ok' if rules and not bad else 'FAIL'}: {len(rules)} rules loaded, health ok" + (f"; unhealthy: {bad}" if bad else ""))
if not rules or bad:
    failures.append("rules health")
firing = sorted({r["metric"]["alertname"] for r in query('ALERTS{alertstate="firing"}')})
checked += 1
ok = firing == ["ImcfDeadLetters"]
print(f"  {'ok' if ok else 'FAIL'}: firing alerts {firing} (expected exactly ImcfDeadLetters, from the one dead letter)")
if not ok:
    failures.append("firing alerts")

print(f"{checked - len(failures)} passed, {len(failures)} failed")
sys.exit(1 if failures else 0)
EOF

# ---------------------------------------------------------------- compose health check command
HC=$("$PY" -c '
import sys, yaml
t = yaml.safe_load(open(sys.argv[1]))["services"]["forwarder"]["healthcheck"]["test"]
assert t[:3] == ["CMD", "bash", "-c"], t
print(t[3])' "$ROOT/docker-compose.yml")
ADMIN_PORT=${ADMIN##*:}
bash -c "${HC//9090/$ADMIN_PORT}" || die "compose health check command fails against a ready forwarder"
HC_404=${HC//9090/$ADMIN_PORT}
if bash -c "${HC_404//\/readyz/\/no-such-endpoint}"; then
  die "compose health check command passes against a 404"
fi
log "ok: compose health check (bash /dev/tcp -> /readyz) passes when ready and fails on a non-200"

# ---------------------------------------------------------------- env variables vs the binary
"$BIN" --help >"$WORK/help.txt"
"$PY" - "$WORK/help.txt" "$ROOT" <<'EOF'
import re, sys, yaml
help_text, root = open(sys.argv[1]).read(), sys.argv[2]
known = set(re.findall(r"\[env: (IMCF_[A-Z_]+)", help_text)) | {"IMCF_LOG"}  # IMCF_LOG: the log filter
compose = yaml.safe_load(open(f"{root}/docker-compose.yml"))["services"]["forwarder"]["environment"]
cm, env = [], []
for kdir, workload in (("base", "deployment.yaml"), ("overlays/disk-spool", "statefulset.yaml")):
    kust = yaml.safe_load(open(f"{root}/deploy/kubernetes/{kdir}/kustomization.yaml"))
    cm += [l.split("=", 1)[0] for g in kust["configMapGenerator"] for l in g.get("literals", [])]
    wl = yaml.safe_load(open(f"{root}/deploy/kubernetes/{kdir}/{workload}"))
    env += [e["name"] for e in wl["spec"]["template"]["spec"]["containers"][0].get("env", [])]
used = set(compose) | set(cm) | set(env)
unknown = sorted(used - known)
if unknown:
    sys.exit(f"e2e: FAIL: compose/Kubernetes set variables the binary does not read: {unknown}")
print(f"  {len(used)} IMCF_* variables set by compose, the Kubernetes base and the disk-spool overlay, all read by the binary (--help)")
EOF
log "ok: environment variables match the binary's --help"

# ---------------------------------------------------------------- runtime libraries vs Dockerfile
if command -v ldd >/dev/null && command -v dpkg >/dev/null; then
  runtime_pkgs=$(sed -n '/^FROM debian/,$p' deploy/Dockerfile | grep -o 'no-install-recommends [a-z0-9 .+-]*' |
    cut -d' ' -f2- | tr ' ' '\n' | grep -v '^$' | sort -u)
  missing=
  mapping=
  for lib in $(ldd "$BIN" | awk '/=>/ {print $3}'); do
    pkg=
    for path in "$lib" "$(readlink -f "$lib")"; do
      pkg=$(dpkg -S "$path" 2>/dev/null | head -1 | cut -d: -f1) || pkg=
      [ -n "$pkg" ] && break
    done
    mapping="$mapping ${lib##*/}=${pkg:-?}"
    case "$pkg" in
      "") missing="$missing $lib(no Debian package)" ;;
      libc6 | libgcc-s1) ;; # essential, in debian:bookworm-slim
      *) grep -qx "$pkg" <<<"$runtime_pkgs" || missing="$missing $lib($pkg)" ;;
    esac
  done
  [ -z "$missing" ] || die "the binary links libraries the runtime image does not install:$missing"
  log "ok: shared libraries$mapping: all from libc6/libgcc-s1 or the Dockerfile's runtime packages ($(echo "$runtime_pkgs" | tr '\n' ' '))"
fi

# ---------------------------------------------------------------- graceful shutdown
log "SIGTERM to the forwarder"
T0=$(date +%s%N)
kill -TERM "$FWD_PID"
set +e
wait "$FWD_PID"
RC=$?
set -e
FWD_PID=
MS=$((($(date +%s%N) - T0) / 1000000))
[ "$RC" = 0 ] || die "forwarder exited $RC after SIGTERM"
"$PY" -c '
import json, sys
for line in open(sys.argv[1]):
    try: f = json.loads(line).get("fields", {})
    except ValueError: continue
    if f.get("message") == "shutdown complete":
        assert f.get("undelivered") == 0 and f.get("spooled") == 0, f
        sys.exit(0)
sys.exit("no shutdown complete line")' "$WORK/forwarder.log" || die "no 'shutdown complete' with undelivered 0 and spooled 0"
log "ok: exit 0 after SIGTERM in ${MS} ms, shutdown complete, undelivered 0, spooled 0"
log "PASSED"
