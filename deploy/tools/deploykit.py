#!/usr/bin/env python3
"""Checks and generators for the deploy kit (run by .ci/check-deploy).

Needs PyYAML, kubernetes-validate and promql-parser (the venv .ci/check-deploy
makes). Subcommands:

  gen-prometheusrule [--check]   write deploy/kubernetes/base/prometheusrule.yaml from
                                 deploy/prometheus/alerts.yml (--check: fail if stale)
  check-rule-tests               every alert has a firing and a quiet case in alerts_test.yml
  check-queries                  alert and dashboard PromQL: parses, uses only catalogue
                                 metrics and known outcome/category label values
  dashboard-rules OUT            dashboard JSON sanity + its PromQL as recording rules in
                                 OUT, for `promtool check rules`
  dashboard-queries              print the dashboard's PromQL, one JSON object per line,
                                 with Grafana variables replaced (used by e2e)
  check-dockerfile               deploy/Dockerfile structure (stages, --locked, non-root,
                                 OCI labels, ports, runtime libraries)
  check-compose CONFIG           the output of `docker-compose config`: services, mounts,
                                 topics, env and ports consistent with the rest of the kit
  check-docs RENDERED             what README (Kubernetes, Durability, Alerts) and the
                                 manifest comments must say: memory budget, emptyDir spool,
                                 base -> disk-spool migration (--prune), spool resize,
                                 Secret handling, runbooks naming the memory limit
  selftest RENDERED COMPOSE [DISK_RENDERED]
                                 seed known mistakes into copies of the inputs and check
                                 that each check above catches them
  catalogue                      print the catalogue's metric names (used by e2e)
  check-metrics --bin BINARY | --file EXPOSITION
                                 compare the catalogue (names, types, label names, and the
                                 outcome/category/reason/percentile values) with what the binary
                                 exports on /metrics: --bin starts BINARY --dev and scrapes it
                                 once librdkafka statistics arrived; fails listing every
                                 difference both ways
  check-env --bin BINARY         the IMCF_* variables the kit knows == the binary's --help
  validate-k8s RENDERED [--base BASE_RENDERED]
                                 kubernetes-validate (strict) of the rendered kustomize
                                 output, cross-resource checks, and PrometheusRule ==
                                 alerts.yml; writes the CRD objects to RENDERED.crds.json.
                                 The workload is the base's Deployment or the disk-spool
                                 overlay's StatefulSet (then also: spool volume claim at
                                 IMCF_SPOOL_DIR, durability disk, volume > spool max; with
                                 --base, the same pod as the base's but for the spool)
"""

import json
import os
import re
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ALERTS = os.path.join(ROOT, "deploy/prometheus/alerts.yml")
ALERTS_TEST = os.path.join(ROOT, "deploy/prometheus/alerts_test.yml")
PROMRULE = os.path.join(ROOT, "deploy/kubernetes/base/prometheusrule.yaml")
DASHBOARD = os.path.join(ROOT, "deploy/grafana/dashboards/im-callback-forwarder.json")

# The metric catalogue of the service (SPEC "Metrics" + "ADDED"; README "Operate"): name -> (type, labels).
# `check-metrics` compares it, both ways, with what the binary really exports on /metrics
# (.ci/check-deploy runs it when target/debug/im-callback-forwarder exists; the e2e runs it too).
CATALOGUE = {
    "imcf_callbacks_total": ("counter", ["outcome"]),
    "imcf_exceptions_total": ("counter", ["category"]),
    "imcf_exceptions_by_code_total": ("counter", ["error_code"]),
    "imcf_dead_letters_total": ("counter", []),
    "imcf_kafka_delivered_total": ("counter", []),
    "imcf_kafka_delivery_failures_total": ("counter", []),
    "imcf_kafka_queue_events": ("gauge", []),
    "imcf_ack_duration_seconds": ("histogram", []),
    "imcf_delivery_duration_seconds": ("histogram", []),
    "imcf_ready": ("gauge", []),
    "imcf_kafka_metadata_last_success_timestamp_seconds": ("gauge", []),
    # Kafka's state, now that readiness no longer follows it (issue 15).
    "imcf_kafka_up": ("gauge", []),
    "imcf_kafka_ready": ("gauge", ["reason"]),
    "imcf_kafka_topics_missing": ("gauge", []),
    "imcf_kafka_producer_restarts_total": ("counter", []),
    "imcf_build_info": ("gauge", ["version"]),
    # Live reload of --apps-file and --callback-token-file (issue 12).
    "imcf_config_reloads_total": ("counter", ["result"]),
    "imcf_config_last_reload_success_timestamp_seconds": ("gauge", []),
    # Durability (the disk spool) and data loss.
    "imcf_events_lost_total": ("counter", []),
    "imcf_spool_events": ("gauge", []),
    "imcf_spool_bytes": ("gauge", []),
    "imcf_spool_max_bytes": ("gauge", []),
    "imcf_spooled_total": ("counter", ["reason"]),
    "imcf_replayed_total": ("counter", []),
    "imcf_replay_deferred_total": ("counter", ["reason"]),
    "imcf_spool_quarantined_total": ("counter", []),
    "imcf_spool_fsync_duration_seconds": ("histogram", []),
    # Routing of other callback commands (--route / --unrouted).
    "imcf_routed_callbacks_total": ("counter", ["command"]),
    "imcf_unrouted_callbacks_total": ("counter", ["command"]),
    # librdkafka statistics.
    "imcf_kafka_producer_queue_messages": ("gauge", []),
    "imcf_kafka_producer_queue_bytes": ("gauge", []),
    "imcf_kafka_broker_rtt_seconds": ("gauge", ["broker", "percentile"]),
    "imcf_kafka_broker_up": ("gauge", ["broker"]),
    "imcf_kafka_broker_request_errors_total": ("counter", ["broker"]),
    "imcf_kafka_broker_request_retries_total": ("counter", ["broker"]),
    "imcf_kafka_broker_request_timeouts_total": ("counter", ["broker"]),
    # The prometheus crate's process collector (Linux).
    "process_resident_memory_bytes": ("gauge", []),
    "process_virtual_memory_bytes": ("gauge", []),
    "process_cpu_seconds_total": ("counter", []),
    "process_open_fds": ("gauge", []),
    "process_max_fds": ("gauge", []),
    "process_threads": ("gauge", []),
    "process_start_time_seconds": ("gauge", []),
}
# Series Prometheus itself makes for every target.
PROMETHEUS_SERIES = {"up"}
# Series of other exporters that the group im-callback-forwarder.kubernetes of alerts.yml reads
# (what the forwarder cannot see: spool claims without a pod, the ingress' own answers), with
# the label values the alerts may select.
EXTERNAL_SERIES = {
    "kube_persistentvolumeclaim_info": "kube-state-metrics",
    "kube_pod_spec_volumes_persistentvolumeclaims_info": "kube-state-metrics",
    "kube_pod_status_phase": "kube-state-metrics",
    "nginx_ingress_controller_requests": "ingress-nginx",
}
# Every value of imcf_callbacks_total{outcome} (SPEC table + "ADDED"); all pre-initialised at 0.
OUTCOMES = [
    "accepted", "ignored", "not_found", "method_not_allowed", "body_too_large", "body_read_failed",
    "repeated_parameter", "missing_sdk_app_id", "unknown_sdk_app_id", "missing_sign", "bad_sign",
    "stale_request_time", "invalid_json", "duplicate_field", "missing_field", "invalid_field",
    "missing_command", "command_mismatch", "unavailable",
    # Routing, replay cache, source allowlist, read timeouts, content type, disk spool.
    "routed", "replayed", "before_refused", "unrouted", "source_not_allowed", "body_timeout",
    "unsupported_content_type", "spool_full", "head_too_large",
]
# Outcomes answered 200 (the others are refusals; `unrouted` is a 404 with --unrouted reject, and
# `before_refused` is a 200 that tells Tencent to refuse the user's action, not a refused callback).
OK_OUTCOMES = ["accepted", "routed", "ignored", "replayed", "before_refused"]
CATEGORIES = [
    "rate_limited", "content_moderated", "message_too_large", "sender_muted", "permission_denied",
    "group_unavailable", "invalid_request", "blocked_by_callback", "internal_error", "unknown",
]
SPOOL_REASONS = ["write_ahead", "queue_full", "produce_failed", "delivery_failed", "shutdown"]
# imcf_replay_deferred_total{reason}: why the replayer left a spooled record for later.
REPLAY_DEFER_REASONS = ["topic_unavailable", "produce_error", "producer_fatal", "read_error"]
# imcf_kafka_ready{reason}: a state set, exactly one is 1.
KAFKA_READY_REASONS = ["ok", "no_metadata_yet", "metadata_failed", "metadata_stale", "topic_missing"]
# imcf_config_reloads_total{result}: reloads of the apps and token files.
RELOAD_RESULTS = ["ok", "failed"]
# Not `quantile`: Prometheus reserves that label for summaries, and promtool check metrics says so.
BROKER_PERCENTILES = ["p50", "p99"]
# Label values by label name, for any catalogue metric with that label (`reason` differs by
# metric: see ENUMERATED_LABELS, which wins).
KNOWN_LABEL_VALUES = {"outcome": OUTCOMES, "category": CATEGORIES, "reason": SPOOL_REASONS,
                      "percentile": BROKER_PERCENTILES}
# Label values the binary pre-initialises (or, for percentile, always sets together), compared
# both ways with /metrics by check-metrics: metric -> (label, values).
ENUMERATED_LABELS = {
    "imcf_callbacks_total": ("outcome", OUTCOMES),
    "imcf_exceptions_total": ("category", CATEGORIES),
    "imcf_spooled_total": ("reason", SPOOL_REASONS),
    "imcf_kafka_broker_rtt_seconds": ("percentile", BROKER_PERCENTILES),
    "imcf_kafka_ready": ("reason", KAFKA_READY_REASONS),
    "imcf_replay_deferred_total": ("reason", REPLAY_DEFER_REASONS),
    "imcf_config_reloads_total": ("result", RELOAD_RESULTS),
}

failures = []


def fail(msg):
    failures.append(msg)
    print(f"  FAIL: {msg}")


def ok(msg):
    print(f"  ok: {msg}")


def finish():
    if failures:
        print(f"{len(failures)} problem(s)")
        sys.exit(1)


def load_yaml(path):
    with open(path) as f:
        return yaml.safe_load(f)


def load_yaml_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


# ---------------------------------------------------------------- PrometheusRule

PROMRULE_HEADER = """\
# GENERATED from deploy/prometheus/alerts.yml by
#   python3 deploy/tools/deploykit.py gen-prometheusrule
# Do not edit: change alerts.yml (and alerts_test.yml), then regenerate.
# .ci/check-deploy fails when this file and alerts.yml differ.
# Add the label your Prometheus selects rules by (kube-prometheus-stack:
# release: <helm release>) in an overlay.
"""


def prometheusrule_doc():
    alerts = load_yaml(ALERTS)
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "im-callback-forwarder",
            "labels": {
                "app.kubernetes.io/name": "im-callback-forwarder",
                "app.kubernetes.io/component": "forwarder",
                "app.kubernetes.io/part-of": "im-callback-forwarder",
            },
        },
        "spec": {"groups": alerts["groups"]},
    }


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper, s):
    if "\n" in s:
        return dumper.represent_scalar("tag:yaml.org,2002:str", s, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", s)


_Dumper.add_representer(str, _str)


def prometheusrule_text():
    return PROMRULE_HEADER + yaml.dump(prometheusrule_doc(), Dumper=_Dumper, sort_keys=False, width=100000,
                                       allow_unicode=True, default_flow_style=False)


def cmd_gen_prometheusrule(args):
    text = prometheusrule_text()
    if "--check" in args:
        current = open(PROMRULE).read() if os.path.exists(PROMRULE) else ""
        if current != text:
            fail(f"{os.path.relpath(PROMRULE, ROOT)} is stale: run python3 deploy/tools/deploykit.py gen-prometheusrule")
        else:
            ok(f"{os.path.relpath(PROMRULE, ROOT)} is what gen-prometheusrule makes of alerts.yml")
    else:
        with open(PROMRULE, "w") as f:
            f.write(text)
        print(f"wrote {os.path.relpath(PROMRULE, ROOT)}")


# ---------------------------------------------------------------- rule tests

def alert_names():
    return [r["alert"] for g in load_yaml(ALERTS)["groups"] for r in g["rules"] if "alert" in r]


def cmd_check_rule_tests(_args):
    tests = load_yaml(ALERTS_TEST)
    fires, quiet = set(), set()
    for t in tests["tests"]:
        for c in t.get("alert_rule_test", []):
            (fires if c.get("exp_alerts") else quiet).add(c["alertname"])
    names = alert_names()
    for name in names:
        if name not in fires:
            fail(f"alerts_test.yml has no case where {name} fires")
        if name not in quiet:
            fail(f"alerts_test.yml has no case where {name} stays quiet")
    for name in (fires | quiet) - set(names):
        fail(f"alerts_test.yml tests {name}, which alerts.yml does not define")
    if not failures:
        ok(f"each of the {len(names)} alerts has a firing and a quiet case: {', '.join(names)}")
    alerts = load_yaml(ALERTS)
    for g in alerts["groups"]:
        for r in g["rules"]:
            if "alert" not in r:
                continue
            missing = {"summary", "description", "runbook"} - set(r.get("annotations", {}))
            if missing:
                fail(f"alert {r['alert']} lacks annotation(s) {sorted(missing)}")
            if r.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
                fail(f"alert {r['alert']} has no severity label critical|warning|info")
    if not failures:
        ok("every alert has summary, description, runbook and a severity")


# ---------------------------------------------------------------- PromQL

GRAFANA_DURATIONS = {"__rate_interval": "1m", "__interval": "30s", "__range": "1h"}


def substitute_grafana(expr, durations=None, regex_default=".*"):
    durations = durations or GRAFANA_DURATIONS

    def repl(m):
        name = m.group(1) or m.group(2)
        if name in durations:
            return durations[name]
        return regex_default

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", repl, expr)


def check_expr(where, expr, recorded):
    import promql_parser
    try:
        ast = promql_parser.parse(expr)
    except Exception as e:  # the parser raises ValueError with the position
        fail(f"{where}: PromQL does not parse: {e}: {expr}")
        return set()
    used = set()

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector):
            name = node.name
            if not name:
                for m in node.matchers.matchers:
                    if m.name == "__name__":
                        name = m.value
            used.add(name)
            base = re.sub(r"_(bucket|sum|count)$", "", name or "")
            if name in CATALOGUE:
                if CATALOGUE[name][0] == "histogram":
                    fail(f"{where}: histogram {name} must be used as {name}_bucket/_sum/_count")
            elif base in CATALOGUE and CATALOGUE[base][0] == "histogram":
                pass
            elif name in PROMETHEUS_SERIES or name in recorded:
                pass
            elif name in EXTERNAL_SERIES:
                if "group im-callback-forwarder.kubernetes:" not in where:
                    fail(f"{where}: {name} is {EXTERNAL_SERIES[name]}'s metric: only the group "
                         "im-callback-forwarder.kubernetes of alerts.yml may use it")
                return True
            else:
                fail(f"{where}: metric {name!r} is not in the catalogue")
            enum = ENUMERATED_LABELS.get(name)
            for m in node.matchers.matchers:
                values = enum[1] if enum and enum[0] == m.name else KNOWN_LABEL_VALUES.get(m.name)
                if m.name == "reason" and not enum:
                    values = None
                if values is None:
                    continue
                literal = m.value
                alternatives = literal.split("|") if "Re" in str(m.op) else [literal]
                if m.name == "outcome" and "NotRe" in str(m.op) and set(alternatives) != set(OK_OUTCOMES):
                    fail(f"{where}: outcome!~ must exclude exactly the outcomes answered 200 {OK_OUTCOMES}, "
                         f"got {alternatives}")
                for alt in alternatives:
                    if alt not in values and alt not in (".*", ".+", ""):
                        fail(f"{where}: {m.name}={alt!r} is not a value the service exports")
        return True

    promql_parser.walk(ast, visit)
    check_timestamp_guard(where, expr)
    return used


# Gauges holding a Unix time that is 0 until the first success: `time() - x` is then ~1.7e9 s.
ZERO_UNTIL_SET = ("imcf_kafka_metadata_last_success_timestamp_seconds",)


def check_timestamp_guard(where, expr):
    """Every use of a zero-until-set timestamp is compared with 0 right away: `(x > 0)` to
    read it as a time, or `x == 0` to find the instances that never set it."""
    for name in ZERO_UNTIL_SET:
        for m in re.finditer(re.escape(name) + r"(\{[^}]*\})?", expr):
            rest = expr[m.end():].lstrip()
            if not re.match(r"(>|==)\s*0(?![.\d])", rest):
                fail(f"{where}: {name} is 0 until the first success: compare it with 0 where it is "
                     f"read ((x > 0) for its age, x == 0 for 'never'), got ...{expr[m.start():m.end() + 20]!r}")


def dashboard_targets():
    dash = json.load(open(DASHBOARD))
    out = []

    def panels(ps):
        for p in ps:
            yield p
            yield from panels(p.get("panels", []))

    for p in panels(dash.get("panels", [])):
        for t in p.get("targets", []):
            out.append((p, t))
    return dash, out


def cmd_check_queries(_args):
    alerts = load_yaml(ALERTS)
    recorded = {r["record"] for g in alerts["groups"] for r in g["rules"] if "record" in r}
    n = 0
    for g in alerts["groups"]:
        for r in g["rules"]:
            check_expr(f"alerts.yml group {g['name']}: {r.get('alert') or r.get('record')}", r["expr"], recorded)
            n += 1
    _, targets = dashboard_targets()
    for p, t in targets:
        check_expr(f"dashboard panel {p['id']} {p['title']!r} target {t.get('refId')}",
                   substitute_grafana(t.get("expr", "")), set())
        n += 1
    if not failures:
        ok(f"{n} PromQL expressions parse and use only catalogue metrics and known label values")


def cmd_dashboard_rules(args):
    out_path = args[0]
    dash, targets = dashboard_targets()
    for key in ("title", "uid", "panels", "schemaVersion"):
        if key not in dash:
            fail(f"dashboard lacks {key!r}")
    ids = [p["id"] for p in dash["panels"]]
    if len(ids) != len(set(ids)):
        fail("dashboard panel ids are not unique")
    variables = {v["name"] for v in dash.get("templating", {}).get("list", [])}
    rules = []
    for p, t in targets:
        expr = t.get("expr", "")
        if not expr.strip():
            fail(f"panel {p['id']} {p['title']!r} has a target without expr")
            continue
        ds = t.get("datasource") or p.get("datasource") or {}
        if ds.get("uid") != "${datasource}":
            fail(f"panel {p['id']} {p['title']!r} does not use the ${{datasource}} variable")
        for var in re.findall(r"\$\{?(\w+)", expr):
            if var not in variables and var not in GRAFANA_DURATIONS:
                fail(f"panel {p['id']} {p['title']!r} uses undefined variable ${var}")
        rules.append({"record": f"dashboard:panel_{p['id']}:{t.get('refId', 'A')}", "expr": substitute_grafana(expr)})
    # Titles the issue asks for.
    titles = " | ".join(p["title"].lower() for p in dash["panels"])
    for want in ("outcome", "category", "error code", "ack latency", "delivery latency", "queue depth",
                 "kafka up", "metadata age",
                 "round-trip", "resident memory", "events lost", "spool events", "spool bytes vs max",
                 "spooled by reason", "replayed", "fsync latency", "routed callbacks by command",
                 "unrouted callbacks by command"):
        if want not in titles:
            fail(f"dashboard has no panel about {want!r}")
    with open(out_path, "w") as f:
        yaml.safe_dump({"groups": [{"name": "dashboard-queries", "rules": rules}]}, f, sort_keys=False, width=100000)
    if not failures:
        ok(f"dashboard JSON parses: {len(dash['panels'])} panels, {len(rules)} queries -> {out_path}")


def cmd_dashboard_queries(args):
    rate_interval = args[0] if args else "1m"
    durations = dict(GRAFANA_DURATIONS, __rate_interval=rate_interval, __range=rate_interval)
    _, targets = dashboard_targets()
    for p, t in targets:
        print(json.dumps({"panel": p["title"], "refId": t.get("refId"), "expr": substitute_grafana(t["expr"], durations)}))


# ---------------------------------------------------------------- catalogue vs the binary

SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\S+)?$')
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?\s*')


def parse_exposition(text):
    """Prometheus text format -> {family: {"type": t, "labels": {name: set(values)}, "samples": n}}."""
    families = {}
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 4 and parts[1] == "TYPE":
                families.setdefault(parts[2], {"type": None, "labels": {}, "samples": 0})["type"] = parts[3].strip()
            continue
        m = SAMPLE_RE.match(line)
        if not m:
            raise ValueError(f"not a sample line: {line!r}")
        name, labels = m.group(1), m.group(2) or ""
        family = name
        if name not in families:
            for suffix in ("_bucket", "_sum", "_count"):
                if name.endswith(suffix) and name[: -len(suffix)] in families:
                    family = name[: -len(suffix)]
        f = families.setdefault(family, {"type": "untyped", "labels": {}, "samples": 0})
        f["samples"] += 1
        for lname, lvalue in LABEL_RE.findall(labels):
            if lname == "le" and f["type"] == "histogram":
                continue
            f["labels"].setdefault(lname, set()).add(lvalue)
    return families


def compare_catalogue(families, where):
    """Every difference between the catalogue and an exposition, both ways."""
    exported, catalogued = set(families), set(CATALOGUE)
    for name in sorted(exported - catalogued):
        f = families[name]
        fail(f"{where} exports {name} ({f['type']}, labels {sorted(f['labels'])}), which the catalogue lacks")
    for name in sorted(catalogued - exported):
        hint = " (a broker-labelled metric: did librdkafka statistics arrive?)" if "broker" in CATALOGUE[name][1] else ""
        fail(f"the catalogue has {name} ({CATALOGUE[name][0]}), which {where} does not export{hint}")
    for name in sorted(exported & catalogued):
        kind, labels = CATALOGUE[name]
        f = families[name]
        if f["type"] != kind:
            fail(f"{name}: {where} exports it as {f['type']}, the catalogue says {kind}")
        if set(f["labels"]) != set(labels):
            fail(f"{name}: {where} exports labels {sorted(f['labels'])}, the catalogue says {sorted(labels)}")
        if f["samples"] == 0:
            fail(f"{name}: {where} declares it but exports no sample")
    for name, (label, values) in ENUMERATED_LABELS.items():
        got = families.get(name, {}).get("labels", {}).get(label)
        if got is None:
            continue  # already reported above
        extra, missing = sorted(got - set(values)), sorted(set(values) - got)
        if extra:
            fail(f"{name}{{{label}}}: {where} exports value(s) {extra}, which the catalogue lacks")
        if missing:
            fail(f"{name}{{{label}}}: the catalogue has value(s) {missing}, which {where} does not export")


def scrape_dev_binary(binary, timeout=20.0):
    """Starts BINARY --dev on free ports, waits for librdkafka statistics, returns /metrics."""
    import signal
    import subprocess
    import time
    import urllib.request
    cmd = [binary, "--dev", "--sdk-app-id", "1400000000", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
           "--log-format", "json", "-X", "statistics.interval.ms=200"]
    env = dict(os.environ, IMCF_LOG="warn,im_callback_forwarder=info")
    for k in list(env):  # only the flags above configure it
        if k.startswith("IMCF_") and k != "IMCF_LOG":
            del env[k]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    text, log = "", []
    try:
        admin, deadline = None, time.monotonic() + timeout
        for line in proc.stdout:
            log.append(line)
            try:
                fields = json.loads(line).get("fields", {})
            except ValueError:
                continue
            if fields.get("message") == "listening":
                admin = fields["admin_addr"]
                break
        if not admin:
            raise RuntimeError("the forwarder exited without a 'listening' line:\n" + "".join(log[-20:]))
        import threading
        threading.Thread(target=lambda: log.extend(proc.stdout), daemon=True).start()  # keep the pipe drained
        broker_metrics = [n for n, (_t, labels) in CATALOGUE.items() if "broker" in labels]
        import urllib.error
        while True:
            try:
                with urllib.request.urlopen(f"http://{admin}/metrics", timeout=5) as r:
                    text = r.read().decode()
            except urllib.error.HTTPError as e:  # the admin listener answers before the app is built
                if time.monotonic() > deadline:
                    raise
                log.append(f"/metrics answered {e.code}; asking again\n")
                time.sleep(0.2)
                continue
            have = parse_exposition(text)
            # Every broker metric, not any: a scrape can fall in the middle of folding a statistics report into
            # the registry (seen in CI: _up and _timeouts_total there, _errors_total and _retries_total not yet),
            # and the first reports carry no RTT until a request has been answered.
            if all(n in have for n in broker_metrics) or time.monotonic() > deadline:
                break  # statistics arrived, or report what there is
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return text, " ".join(cmd)


def cmd_check_metrics(args):
    """check-metrics --bin BINARY | --file EXPOSITION: catalogue == what the binary exports."""
    if len(args) != 2 or args[0] not in ("--bin", "--file"):
        print("usage: deploykit.py check-metrics --bin BINARY | --file EXPOSITION")
        sys.exit(2)
    if args[0] == "--bin":
        text, how = scrape_dev_binary(args[1])
        where = "the binary"
        print(f"  scraped /metrics of: {how}")
    else:
        text, where = open(args[1]).read(), os.path.basename(args[1])
    families = parse_exposition(text)
    compare_catalogue(families, where)
    if not failures:
        enum = ", ".join(f"{len(v)} {label}" for label, v in ENUMERATED_LABELS.values())
        ok(f"{where} exports exactly the catalogue's {len(CATALOGUE)} metric families (names, types, label names) "
           f"and label values ({enum})")


def catalogue_exposition():
    """The exposition the catalogue describes (for the self-test of check-metrics)."""
    lines = []
    for name, (kind, labels) in CATALOGUE.items():
        lines.append(f"# TYPE {name} {kind}")
        enum = ENUMERATED_LABELS.get(name)
        values = {label: (enum[1] if enum and enum[0] == label else ["x"]) for label in labels}
        combos = [{}]
        for label in labels:
            combos = [dict(c, **{label: v}) for c in combos for v in values[label]]
        for c in combos:
            ls = ",".join(f'{k}="{v}"' for k, v in c.items())
            if kind == "histogram":
                for le in ("0.1", "+Inf"):
                    lines.append(f'{name}_bucket{{{ls + "," if ls else ""}le="{le}"}} 0')
                lines += [f"{name}_sum{{{ls}}} 0" if ls else f"{name}_sum 0", f"{name}_count{{{ls}}} 0" if ls else f"{name}_count 0"]
            else:
                lines.append(f"{name}{{{ls}}} 0" if ls else f"{name} 0")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- Kubernetes

CRD_GROUPS = ("monitoring.coreos.com/",)
# The oldest Kubernetes the kit supports, and the newest schema kubernetes-validate ships. 1.27:
# the PDB's unhealthyPodEvictionPolicy (beta, on by default, since 1.27) and the spread
# constraints' nodeTaintsPolicy (1.26) are not in older schemas.
K8S_VERSIONS = ("1.27.0", "1.37.0")


def by_kind(docs, kind):
    return [d for d in docs if d.get("kind") == kind]


def one(docs, kind):
    found = by_kind(docs, kind)
    if len(found) != 1:
        fail(f"expected exactly one {kind}, found {len(found)}")
        return {}
    return found[0]


def matches(selector, labels):
    return all(labels.get(k) == v for k, v in (selector or {}).items())


_SCHEMA_CACHE = {}


def cmd_validate_k8s(args):
    import kubernetes_validate
    rendered = args[0]
    docs = load_yaml_all(rendered)
    crds = []
    for d in docs:
        kn = f"{d.get('kind')}/{d.get('metadata', {}).get('name')}"
        if d.get("apiVersion", "").startswith(CRD_GROUPS):
            crds.append(d)
            continue
        for version in K8S_VERSIONS:
            key = (json.dumps(d, sort_keys=True), version)
            if key not in _SCHEMA_CACHE:  # the self-test validates the same objects many times
                try:
                    kubernetes_validate.validate(d, version, strict=True)
                    _SCHEMA_CACHE[key] = None
                except kubernetes_validate.SchemaNotFoundError as e:
                    _SCHEMA_CACHE[key] = f"{kn}: no schema ({e})"
                except Exception as e:
                    _SCHEMA_CACHE[key] = f"{kn}: invalid against Kubernetes {version} schema (strict): {e}"
            if _SCHEMA_CACHE[key]:
                fail(_SCHEMA_CACHE[key])
                break
        else:
            ok(f"{kn} valid against the Kubernetes {' and '.join(K8S_VERSIONS)} JSON schemas (strict)")
    with open(rendered + ".crds.json", "w") as f:
        json.dump(crds, f)
    print(f"  ({len(crds)} prometheus-operator objects left to the CRD schema check: "
          f"{', '.join(d['kind'] for d in crds)})")

    kinds = sorted({d["kind"] for d in docs})
    want = {"Service", "Ingress", "ConfigMap", "PodDisruptionBudget",
            "NetworkPolicy", "ServiceMonitor", "PrometheusRule"}
    if want - set(kinds):
        fail(f"rendered output lacks {sorted(want - set(kinds))}")
    workloads = by_kind(docs, "Deployment") + by_kind(docs, "StatefulSet")
    if len(workloads) != 1:
        fail(f"expected exactly one Deployment or StatefulSet, found {[w['kind'] for w in workloads]}")
        return
    dep = workloads[0]
    wkind = dep["kind"]
    hpas = by_kind(docs, "HorizontalPodAutoscaler")
    if wkind == "Deployment" and not hpas:
        fail("the Deployment variant lacks its HorizontalPodAutoscaler")

    svc, ing = one(docs, "Service"), one(docs, "Ingress")
    cm, pdb = one(docs, "ConfigMap"), one(docs, "PodDisruptionBudget")
    np, sm, pr = one(docs, "NetworkPolicy"), one(docs, "ServiceMonitor"), one(docs, "PrometheusRule")
    if failures:
        return
    pod = dep["spec"]["template"]
    spec = pod["spec"]
    pod_labels = pod["metadata"]["labels"]
    c = spec["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    env_cm = cm["data"]

    # The workload (Deployment or StatefulSet)
    if not matches(dep["spec"]["selector"]["matchLabels"], pod_labels):
        fail(f"{wkind} selector does not match its pod labels")
    if set(ports) != {"callback", "admin"}:
        fail(f"container ports must be callback and admin, got {ports}")
    if ports.get("callback") != int(env_cm["IMCF_LISTEN"].rsplit(":", 1)[1]) or \
            ports.get("admin") != int(env_cm["IMCF_ADMIN_LISTEN"].rsplit(":", 1)[1]):
        fail("container ports do not match IMCF_LISTEN / IMCF_ADMIN_LISTEN")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        g = c.get(probe, {}).get("httpGet", {})
        if g.get("path") != path or g.get("port") not in ("admin", ports.get("admin")):
            fail(f"{probe} must be GET {path} on the admin port, got {g}")
    sc, psc = c.get("securityContext", {}), spec.get("securityContext", {})
    if not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
        fail("runAsNonRoot is not set")
    if (sc.get("runAsUser") or psc.get("runAsUser") or 0) == 0:
        fail("runAsUser must be a non-zero UID")
    if sc.get("readOnlyRootFilesystem") is not True:
        fail("readOnlyRootFilesystem is not true")
    if sc.get("allowPrivilegeEscalation") is not False:
        fail("allowPrivilegeEscalation is not false")
    if sc.get("capabilities", {}).get("drop") != ["ALL"]:
        fail("capabilities.drop is not [ALL]")
    check_resources(c, env_cm)
    check_per_ip(env_cm)
    cmd = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    pre_stop = int(cmd[1]) if len(cmd) == 2 and cmd[0] == "sleep" else None
    if pre_stop is None:
        fail(f"preStop must be exec [sleep, N], got {cmd}")
    else:
        grace = spec.get("terminationGracePeriodSeconds", 30)
        shutdown = int(env_cm.get("IMCF_SHUTDOWN_TIMEOUT", 30))
        if grace < pre_stop + shutdown + GRACE_MARGIN:
            fail(f"terminationGracePeriodSeconds {grace} < preStop {pre_stop} + IMCF_SHUTDOWN_TIMEOUT {shutdown} "
                 f"+ {GRACE_MARGIN} (process exit, librdkafka teardown, kubelet delays)")
        else:
            ok(f"terminationGracePeriodSeconds {grace} >= preStop sleep {pre_stop} + IMCF_SHUTDOWN_TIMEOUT {shutdown} + {GRACE_MARGIN}")
    check_startup(c, env_cm)
    check_placement(wkind, spec, pod_labels)
    cm_refs = [e["configMapRef"]["name"] for e in c.get("envFrom", []) if "configMapRef" in e]
    if cm_refs != [cm["metadata"]["name"]]:
        fail(f"envFrom must reference the generated ConfigMap {cm['metadata']['name']}, got {cm_refs}")
    check_secret(docs, c, spec, env_cm)
    for k in env_cm:
        if not k.startswith("IMCF_"):
            fail(f"ConfigMap key {k} is not an IMCF_* variable")
    for required in ("IMCF_SDK_APP_ID", "IMCF_KAFKA_BROKERS", "IMCF_CALLBACK_PATH", "IMCF_SHUTDOWN_TIMEOUT"):
        if required not in env_cm:
            fail(f"ConfigMap lacks {required}")

    # Service
    sports = {p["name"]: p for p in svc["spec"]["ports"]}
    if set(sports) != {"callback", "admin"} or sports["callback"]["port"] == sports["admin"]["port"]:
        fail(f"Service must have separate callback and admin ports, got {list(sports)}")
    if not matches(svc["spec"]["selector"], pod_labels):
        fail("Service selector does not select the pods")

    # Ingress: only the callback path, only the callback port.
    paths = [(r.get("host"), p) for r in ing["spec"]["rules"] for p in r["http"]["paths"]]
    for host, p in paths:
        b = p["backend"]["service"]
        if p["path"] != env_cm["IMCF_CALLBACK_PATH"] or p.get("pathType") != "Exact":
            fail(f"Ingress path {p['path']} ({p.get('pathType')}) is not exactly IMCF_CALLBACK_PATH {env_cm['IMCF_CALLBACK_PATH']}")
        if b["name"] != svc["metadata"]["name"] or b["port"] not in ({"name": "callback"}, {"number": sports["callback"]["port"]}):
            fail(f"Ingress backend {b} is not the Service's callback port")
    if "defaultBackend" in ing["spec"]:
        fail("Ingress must not have a defaultBackend")
    if paths and not failures:
        ok(f"Ingress exposes only {env_cm['IMCF_CALLBACK_PATH']} (Exact) on the callback port")

    # PDB, HPA
    if not matches(pdb["spec"]["selector"]["matchLabels"], pod_labels):
        fail("PodDisruptionBudget selector does not select the pods")
    check_disruption(dep, pdb, hpas)
    check_ingress_edge(ing, env_cm)
    check_prune_labels(docs, dep)

    check_spool(dep, c, spec, env_cm, svc, hpas)

    # NetworkPolicy: admin only from the monitoring namespace.
    if not matches(np["spec"]["podSelector"]["matchLabels"], pod_labels):
        fail("NetworkPolicy does not select the pods")
    for rule in np["spec"].get("ingress", []):
        rports = [p.get("port") for p in rule.get("ports", [])]
        if not rports:
            fail("a NetworkPolicy ingress rule allows every port")
        admin = {"admin", ports["admin"]} & set(rports)
        if admin:
            froms = rule.get("from", [])
            if not froms or any(f.get("namespaceSelector", {}).get("matchLabels") !=
                                {"kubernetes.io/metadata.name": "monitoring"} or "ipBlock" in f for f in froms):
                fail("NetworkPolicy lets the admin port be reached from outside the monitoring namespace")
    if not failures:
        ok("NetworkPolicy: admin port only from namespace monitoring")

    # ServiceMonitor -> Service admin port; job label = the name the alerts expect.
    if not matches(sm["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"]):
        fail("ServiceMonitor selector does not select the Service")
    if [e.get("port") for e in sm["spec"]["endpoints"]] != ["admin"]:
        fail("ServiceMonitor must scrape only the Service's admin port")
    job = svc["metadata"]["labels"].get(sm["spec"].get("jobLabel", ""), svc["metadata"]["name"])
    if job != "im-callback-forwarder":
        fail(f"scrape job would be {job!r}, the alert rules expect im-callback-forwarder")
    if not failures:
        ok("ServiceMonitor scrapes the Service's admin port as job im-callback-forwarder")

    # PrometheusRule carries exactly the rules of alerts.yml.
    alerts = load_yaml(ALERTS)
    if pr["spec"]["groups"] != alerts["groups"]:
        fail("rendered PrometheusRule spec.groups differ from deploy/prometheus/alerts.yml")
    else:
        n = sum(len(g["rules"]) for g in alerts["groups"])
        ok(f"rendered PrometheusRule carries exactly the {n} rules of alerts.yml")

    if "--base" in args:
        compare_with_base(docs, load_yaml_all(args[args.index("--base") + 1]), dep, cm)


# ---------------------------------------------------------------- Kubernetes: the SRE rules (issue 15)

GRACE_MARGIN = 15  # s beyond preStop + --shutdown-timeout: process exit, librdkafka teardown, kubelet
PRUNE_LABEL = ("app.kubernetes.io/part-of", "im-callback-forwarder")
# The slowest spool recovery the startup probe must wait for: a full spool read at this rate.
SPOOL_RECOVERY_BYTES_PER_S = 4 * 1024 * 1024
DEFAULT_SPOOL_MAX_BYTES = 1 << 30
DEFAULT_MAX_CONNECTIONS_PER_IP = 256  # the binary's --max-connections-per-ip default
# The memory budget (README "Memory budget"), in bytes.
MiB, KiB = 1024 * 1024, 1024
MEMORY_BUDGET = {
    "replay cache (2 generations x 9 MiB)": 18 * MiB,
    "base (code, runtime, metrics, librdkafka threads and buffers, spool writer)": 40 * MiB,
}
# Per callback connection, worst case, besides 2 x IMCF_MAX_BODY_BYTES (the body, read into one buffer of at most
# that size, and the event built from it, about the body's size): hyper's read buffer, at most 2 x MAX_HEAD_BYTES =
# 128 KiB (src/http/mod.rs), + ~1 KiB of event envelope + ~31 KiB of connection state, task and answer. From the
# edge hardening's estimate (issue 11; README "Memory"): 160 KiB + 2 x IMCF_MAX_BODY_BYTES, 288 KiB at 64 KiB bodies.
CONNECTION_FIXED_BYTES = 160 * KiB
# librdkafka's own overhead per queued message (its rd_kafka_msg_t and the record's headers), about 300 B, on top of
# queue.buffering.max.kbytes of payload, for up to queue.buffering.max.messages: ~29 MiB at the default 100000.
KAFKA_MESSAGE_OVERHEAD_BYTES = 300
KAFKA_DEFAULT_KBYTES = 65536        # librdkafka's queue.buffering.max.kbytes default (64 MiB)
KAFKA_DEFAULT_MESSAGES = 100000     # librdkafka's queue.buffering.max.messages default
PLACEHOLDER_RE = re.compile(r"change-?me|placeholder|example|<[^>]*>|xxx", re.I)


def alert_expr(name):
    for g in load_yaml(ALERTS)["groups"]:
        for r in g["rules"]:
            if r.get("alert") == name:
                return r["expr"]
    return None


def quantity_bytes(q):
    return spool_bytes_of(q)


def cpu_millis(q):
    q = str(q)
    return int(q[:-1]) if q.endswith("m") else int(float(q) * 1000)


def memory_budget(env_cm):
    """The pod's worst-case memory from its configuration: {item: bytes}."""
    kbytes, messages = KAFKA_DEFAULT_KBYTES, KAFKA_DEFAULT_MESSAGES
    for line in env_cm.get("IMCF_KAFKA_PROPERTY", "").splitlines():
        key, _, value = line.strip().partition("=")
        if key.strip() == "queue.buffering.max.kbytes":
            kbytes = int(value)
        elif key.strip() == "queue.buffering.max.messages":
            messages = int(value)
    conns = int(env_cm.get("IMCF_MAX_CONNECTIONS", 10000))
    body = int(env_cm.get("IMCF_MAX_BODY_BYTES", 65536))
    budget = {f"producer queue (queue.buffering.max.kbytes {kbytes})": kbytes * KiB,
              f"producer queue overhead (queue.buffering.max.messages {messages} x {KAFKA_MESSAGE_OVERHEAD_BYTES} B)":
                  messages * KAFKA_MESSAGE_OVERHEAD_BYTES}
    budget.update(MEMORY_BUDGET)
    budget[f"IMCF_MAX_CONNECTIONS {conns} x ({CONNECTION_FIXED_BYTES // KiB} KiB + 2 x IMCF_MAX_BODY_BYTES {body})"] = \
        conns * (CONNECTION_FIXED_BYTES + 2 * body)
    return budget


def check_resources(c, env_cm):
    """Guaranteed QoS (requests == limits for cpu and memory), and a memory limit that holds
    the budget computed from the ConfigMap."""
    res = c.get("resources", {})
    req, lim = res.get("requests", {}), res.get("limits", {})
    for r in ("cpu", "memory"):
        if r not in req or r not in lim:
            fail(f"resources must set {r} requests and limits (Guaranteed QoS), got {res}")
            return
    if cpu_millis(req["cpu"]) != cpu_millis(lim["cpu"]) or quantity_bytes(req["memory"]) != quantity_bytes(lim["memory"]):
        fail(f"requests {req} != limits {lim}: not Guaranteed QoS (the memory it needs is then not promised)")
    budget = memory_budget(env_cm)
    total = sum(budget.values())
    limit = quantity_bytes(lim["memory"])
    if limit < total:
        fail(f"memory limit {lim['memory']} < the memory budget {total / MiB:.0f} MiB "
             f"({', '.join(f'{k} {v / MiB:.0f} MiB' for k, v in budget.items())})")
    if not failures:
        ok(f"Guaranteed QoS (requests == limits: cpu {lim['cpu']}, memory {lim['memory']}), memory limit >= "
           f"budget {total / MiB:.0f} MiB")


def check_per_ip(env_cm):
    """Behind the Ingress every callback connection comes from one of a few ingress controller pods: unless they are
    IMCF_TRUSTED_PROXY (exempt from it), IMCF_MAX_CONNECTIONS_PER_IP must not hold one of them below
    IMCF_MAX_CONNECTIONS (the surplus would be closed at accept)."""
    conns = int(env_cm.get("IMCF_MAX_CONNECTIONS", 10000))
    per_ip = int(env_cm.get("IMCF_MAX_CONNECTIONS_PER_IP", DEFAULT_MAX_CONNECTIONS_PER_IP))
    if env_cm.get("IMCF_TRUSTED_PROXY"):
        ok(f"the ingress controllers (IMCF_TRUSTED_PROXY) are exempt from IMCF_MAX_CONNECTIONS_PER_IP {per_ip}")
    elif per_ip < conns:
        fail(f"IMCF_MAX_CONNECTIONS_PER_IP {per_ip} < IMCF_MAX_CONNECTIONS {conns} without IMCF_TRUSTED_PROXY: one "
             "ingress controller pod, which carries many clients' connections, would be closed at accept past it")
    else:
        ok(f"IMCF_MAX_CONNECTIONS_PER_IP {per_ip} >= IMCF_MAX_CONNECTIONS {conns} (one ingress controller pod may "
           "carry them all)")


def check_startup(c, env_cm):
    """A startup probe on /healthz whose window covers recovering the largest spool."""
    sp = c.get("startupProbe", {})
    g = sp.get("httpGet", {})
    if g.get("path") != "/healthz" or g.get("port") != "admin":
        fail(f"startupProbe must be GET /healthz on the admin port (the listener is bound before the spool "
             f"is recovered), got {sp}")
        return
    window = sp.get("periodSeconds", 10) * sp.get("failureThreshold", 3)
    max_bytes = int(env_cm.get("IMCF_SPOOL_MAX_BYTES", DEFAULT_SPOOL_MAX_BYTES))
    need = max_bytes / SPOOL_RECOVERY_BYTES_PER_S
    if window < need:
        fail(f"startupProbe window {window} s < {need:.0f} s to recover a {max_bytes}-byte spool at "
             f"{SPOOL_RECOVERY_BYTES_PER_S // MiB} MiB/s")
    elif c.get("livenessProbe", {}).get("initialDelaySeconds", 0):
        fail("livenessProbe.initialDelaySeconds is redundant with the startupProbe")
    else:
        ok(f"startupProbe GET /healthz, window {window} s >= {need:.0f} s (a {max_bytes}-byte spool at "
           f"{SPOOL_RECOVERY_BYTES_PER_S // MiB} MiB/s)")


def check_placement(wkind, spec, pod_labels):
    """Spread over nodes (DoNotSchedule) and zones; leave a dead node within a minute."""
    tsc = {t.get("topologyKey"): t for t in spec.get("topologySpreadConstraints", [])}
    host, zone = tsc.get("kubernetes.io/hostname"), tsc.get("topology.kubernetes.io/zone")
    if not host or host.get("whenUnsatisfiable") != "DoNotSchedule" or host.get("maxSkew") != 1:
        fail(f"topologySpreadConstraints: kubernetes.io/hostname with maxSkew 1 and DoNotSchedule needed, got {host}")
    if not zone:
        fail("topologySpreadConstraints: no topology.kubernetes.io/zone constraint")
    for t in (host, zone):
        if t and not matches(t.get("labelSelector", {}).get("matchLabels"), pod_labels):
            fail(f"topologySpreadConstraint {t['topologyKey']} does not select the pods")
    tol = {t.get("key"): t for t in spec.get("tolerations", [])}
    for key in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"):
        t = tol.get(key)
        if not t or t.get("effect") != "NoExecute" or not (0 < t.get("tolerationSeconds", 300) <= 60):
            fail(f"toleration {key} NoExecute with tolerationSeconds <= 60 needed (the default keeps callbacks "
                 f"routed to a dead node for 300 s), got {t}")
    if not failures:
        ok(f"{wkind}: spread over nodes (DoNotSchedule) and zones; not-ready/unreachable tolerated "
           f"{tol['node.kubernetes.io/unreachable']['tolerationSeconds']} s")


def check_secret(docs, c, spec, env_cm):
    """No Secret values in the kit; the token is a file from the Secret; kafka properties from it."""
    for sec in by_kind(docs, "Secret"):
        name = sec["metadata"]["name"]
        fail(f"the kit renders Secret {name}: applying it overwrites the real one; ship no Secret values "
             "(deploy/kubernetes/examples/ shows the keys)")
        import base64
        values = dict(sec.get("stringData", {}))
        for k, v in sec.get("data", {}).items():
            values[k] = base64.b64decode(v).decode("utf-8", "replace")
        for k, v in values.items():
            if PLACEHOLDER_RE.search(v):
                fail(f"Secret {name} key {k} holds a placeholder value")
    kustomizations = [os.path.join(d, f) for d, _s, fs in os.walk(os.path.join(ROOT, "deploy/kubernetes"))
                      for f in fs if f == "kustomization.yaml"]
    for k in kustomizations:
        kz = load_yaml(k) or {}
        refs = [r if isinstance(r, str) else r.get("path", "") for key in ("resources", "components", "patches",
                "patchesStrategicMerge") for r in kz.get(key, []) or []]
        if any("examples" in r for r in refs):
            fail(f"{os.path.relpath(k, ROOT)} references deploy/kubernetes/examples/ (example values)")
    env = {e["name"]: e for e in c.get("env", [])}
    if "IMCF_CALLBACK_TOKEN" in env or "IMCF_CALLBACK_TOKEN" in env_cm:
        fail("IMCF_CALLBACK_TOKEN is set: mount the token as a file (IMCF_CALLBACK_TOKEN_FILE) instead of an "
             "environment variable")
    path = env_cm.get("IMCF_CALLBACK_TOKEN_FILE")
    vols = {v["name"]: v for v in spec.get("volumes", [])}
    found = False
    for m in c.get("volumeMounts", []):
        sv = vols.get(m["name"], {}).get("secret")
        if not sv or not path:
            continue
        for item in sv.get("items", []):
            if os.path.join(m["mountPath"], item["path"]) == path and item["key"] == "callback-token":
                found = sv.get("secretName") == "im-callback-forwarder" and m.get("readOnly") is True
    if not found:
        fail(f"IMCF_CALLBACK_TOKEN_FILE ({path}) must be the key callback-token of Secret im-callback-forwarder, "
             "mounted read-only")
    ref = env.get("IMCF_KAFKA_PROPERTY", {}).get("valueFrom", {}).get("secretKeyRef", {})
    if ref.get("name") != "im-callback-forwarder" or ref.get("key") != "kafka-properties":
        fail("IMCF_KAFKA_PROPERTY must come from Secret im-callback-forwarder key kafka-properties")
    if not failures:
        ok(f"no Secret values shipped; the token is the file {path} from Secret im-callback-forwarder; "
           "kafka-properties from the same Secret")


def check_disruption(wl, pdb, hpas):
    """No replicas where an HPA owns the count; a PDB that lets one pod go at a time and never
    lets unhealthy pods block a drain."""
    for hpa in hpas:
        ref = hpa["spec"]["scaleTargetRef"]
        if ref["kind"] != wl["kind"] or ref["name"] != wl["metadata"]["name"]:
            fail(f"HorizontalPodAutoscaler targets {ref['kind']}/{ref['name']}, not the {wl['kind']}")
        elif "replicas" in wl["spec"]:
            fail(f"{wl['kind']} sets replicas: {wl['spec']['replicas']} while HorizontalPodAutoscaler "
                 f"{hpa['metadata']['name']} owns it: every apply resets a scaled-out fleet")
        if hpa["spec"].get("minReplicas", 1) < 2:
            fail("HPA minReplicas must be at least 2 (one pod may be disrupted at a time)")
    ps = pdb["spec"]
    if "minAvailable" in ps or ps.get("maxUnavailable") != 1:
        fail(f"PodDisruptionBudget must set maxUnavailable: 1 (not minAvailable, which lets all but N go at "
             f"once), got {ps}")
    if ps.get("unhealthyPodEvictionPolicy") != "AlwaysAllow":
        fail("PodDisruptionBudget needs unhealthyPodEvictionPolicy: AlwaysAllow (unready pods must not block drains)")
    if not hpas and wl["spec"].get("replicas", 1) < 2:
        fail(f"{wl['kind']} replicas must be at least 2")
    if not failures:
        ok(f"{'HPA owns the replica count (none set); ' if hpas else ''}PDB maxUnavailable 1, unhealthy pods evictable")


def check_ingress_edge(ing, env_cm):
    """Retry a refused callback on another pod, fail fast on connect, no access log (the query
    carries Sign), and the edge alert watches this Ingress."""
    a = ing["metadata"].get("annotations", {})
    pre = "nginx.ingress.kubernetes.io/"
    nxt = set(a.get(pre + "proxy-next-upstream", "").split())
    if not {"error", "timeout", "http_503", "non_idempotent"} <= nxt:
        fail(f"Ingress proxy-next-upstream must include error timeout http_503 non_idempotent, got {sorted(nxt)}")
    if a.get(pre + "proxy-next-upstream-tries") != "2":
        fail("Ingress proxy-next-upstream-tries must be \"2\"")
    if int(a.get(pre + "proxy-connect-timeout", "60")) > 1:
        fail("Ingress proxy-connect-timeout must be at most 1 s (Tencent waits 2 s; a retry needs the rest)")
    if a.get(pre + "enable-access-log") != "false":
        fail("Ingress must set enable-access-log: \"false\": $request carries Sign and ClientIP into the logs")
    body = a.get(pre + "proxy-body-size", "1m")
    if quantity_bytes(body.upper().replace("K", "Ki").replace("M", "Mi")) != int(env_cm.get("IMCF_MAX_BODY_BYTES", 65536)):
        fail(f"Ingress proxy-body-size {body} differs from IMCF_MAX_BODY_BYTES")
    expr = alert_expr("ImcfIngressErrors") or ""
    m = re.search(r'nginx_ingress_controller_requests\{[^}]*ingress="([^"]+)"', expr)
    if not m or m.group(1) != ing["metadata"]["name"]:
        fail(f"alert ImcfIngressErrors must select nginx_ingress_controller_requests{{ingress=\"{ing['metadata']['name']}\"}}")
    if not failures:
        ok("Ingress: retries error/timeout/503 once on another pod, connect timeout 1 s, no access log, "
           "watched by ImcfIngressErrors")


def check_prune_labels(docs, wl):
    """Every applied object carries the prune label; spool claims never do."""
    key, value = PRUNE_LABEL
    for d in docs:
        if d.get("metadata", {}).get("labels", {}).get(key) != value:
            fail(f"{d['kind']}/{d['metadata']['name']} lacks the label {key}={value}: "
                 f"`kubectl apply -k --prune -l {key}={value}` would skip (not apply) it")
    for t in wl["spec"].get("volumeClaimTemplates", []):
        labels = t["metadata"].get("labels", {})
        if labels.get(key) == value or matches(wl["spec"]["selector"]["matchLabels"], labels):
            fail(f"volumeClaimTemplate {t['metadata']['name']} carries {key}={value} or the pod labels: "
                 f"`--prune -l` would delete spool claims (they are not in the rendered output)")
    if not failures:
        ok(f"every object carries {key}={value} (prune selector); spool claims do not")


def spool_bytes_of(quantity):
    """A Kubernetes storage quantity (2Gi, 1500M, 1073741824) in bytes."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGTPE]i?|k)?", str(quantity))
    if not m:
        raise ValueError(f"unsupported quantity {quantity!r}")
    unit = m.group(2) or ""
    mult = {"": 1, "k": 1000, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4, "P": 1000**5, "E": 1000**6,
            "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4, "Pi": 1024**5, "Ei": 1024**6}[unit]
    return int(float(m.group(1)) * mult)


def check_spool(wl, c, spec, env_cm, svc, hpas):
    """The spool directory is a volume (the root filesystem is read-only); disk durability
    needs a StatefulSet whose volumeClaimTemplate is mounted at IMCF_SPOOL_DIR."""
    durability = env_cm.get("IMCF_DURABILITY", "memory")
    spool_dir = env_cm.get("IMCF_SPOOL_DIR")
    mounts = {m["mountPath"].rstrip("/"): m["name"] for m in c.get("volumeMounts", [])}
    claims = {t["metadata"]["name"]: t for t in wl["spec"].get("volumeClaimTemplates", [])}
    pod_volumes = {v["name"] for v in spec.get("volumes", [])}
    if durability not in ("memory", "disk"):
        fail(f"IMCF_DURABILITY={durability!r}: must be memory or disk")
    if durability == "disk" and not spool_dir:
        fail("IMCF_DURABILITY=disk needs IMCF_SPOOL_DIR")
    if wl["kind"] == "StatefulSet" and durability != "disk":
        fail("the StatefulSet variant must run IMCF_DURABILITY=disk")
    if durability == "disk" and wl["kind"] != "StatefulSet":
        fail(f"IMCF_DURABILITY=disk in a {wl['kind']}: a replaced pod starts with an empty spool; use the "
             "StatefulSet of overlays/disk-spool (one PersistentVolumeClaim per pod)")
    if not spool_dir:
        if claims:
            fail(f"volumeClaimTemplates {sorted(claims)} but no IMCF_SPOOL_DIR")
        return
    if not spool_dir.startswith("/"):
        fail(f"IMCF_SPOOL_DIR {spool_dir!r} is not an absolute path")
    vol = mounts.get(spool_dir.rstrip("/"))
    if vol is None:
        fail(f"no volume is mounted at IMCF_SPOOL_DIR {spool_dir} (the root filesystem is read-only)")
        return
    if wl["kind"] != "StatefulSet":
        return
    if vol not in claims:
        fail(f"the volume {vol!r} at IMCF_SPOOL_DIR is not a volumeClaimTemplate of the StatefulSet")
        return
    if vol in pod_volumes:
        fail(f"the pod also defines a volume {vol!r}, which would shadow the claim of the same name")
    claim = claims[vol]["spec"]
    if not set(claim.get("accessModes", [])) & {"ReadWriteOnce", "ReadWriteOncePod"}:
        fail(f"spool claim accessModes {claim.get('accessModes')}: one pod's spool is ReadWriteOnce(Pod)")
    size = spool_bytes_of(claim.get("resources", {}).get("requests", {}).get("storage", "0"))
    max_bytes = int(env_cm.get("IMCF_SPOOL_MAX_BYTES", 1 << 30))
    if size <= max_bytes:
        fail(f"spool claim requests {size} bytes, not more than IMCF_SPOOL_MAX_BYTES {max_bytes}: "
             "the volume fills before the spool's own limit")
    policy = wl["spec"].get("persistentVolumeClaimRetentionPolicy", {})
    if "Delete" in (policy.get("whenScaled"), policy.get("whenDeleted")):
        fail(f"persistentVolumeClaimRetentionPolicy {policy} deletes spools that may hold acknowledged events")
    if wl["spec"].get("serviceName") != svc["metadata"]["name"]:
        fail(f"StatefulSet serviceName {wl['spec'].get('serviceName')!r} is not the rendered Service")
    if hpas:
        fail("the disk-spool StatefulSet must not be autoscaled: scaling down parks the removed pods' spools")
    # The parked-spool alert must recognise this StatefulSet's claims (spool-<name>-<ordinal>).
    m = re.search(r'persistentvolumeclaim=~"([^"]+)"', alert_expr("ImcfSpoolParked") or "")
    claim_name = f"{vol}-{wl['metadata']['name']}-0"
    if not m or not re.fullmatch(m.group(1), claim_name):
        fail(f"alert ImcfSpoolParked does not match the claim {claim_name} "
             f"(persistentvolumeclaim=~{m.group(1) if m else None!r})")
    if not failures:
        ok(f"StatefulSet: claim {vol!r} ({claim['resources']['requests']['storage']}, "
           f"{'/'.join(claim['accessModes'])}) mounted at IMCF_SPOOL_DIR {spool_dir}, IMCF_DURABILITY=disk, "
           f"volume > IMCF_SPOOL_MAX_BYTES {max_bytes}, claims retained, read-only root filesystem")


def compare_with_base(docs, base_docs, wl, cm):
    """The overlay's pod is the base's pod plus the spool volume; the rest of the base is kept as is."""
    import copy
    base_wl = [d for d in base_docs if d["kind"] in ("Deployment", "StatefulSet")][0]
    base_cm = next(d for d in base_docs if d["kind"] == "ConfigMap")

    def normalised(w, configmap_name):
        t = copy.deepcopy(w["spec"]["template"])
        claims = {v["metadata"]["name"] for v in w["spec"].get("volumeClaimTemplates", [])}
        for ctr in t["spec"]["containers"]:
            ctr["volumeMounts"] = [m for m in ctr.get("volumeMounts", []) if m["name"] not in claims]
            for e in ctr.get("envFrom", []):
                if e.get("configMapRef", {}).get("name") == configmap_name:
                    e["configMapRef"]["name"] = "<generated ConfigMap>"
        return t

    a, b = normalised(base_wl, base_cm["metadata"]["name"]), normalised(wl, cm["metadata"]["name"])
    if a != b:
        diffs = sorted(k for k in set(a["spec"]) | set(b["spec"]) if a["spec"].get(k) != b["spec"].get(k))
        ca, cb = a["spec"]["containers"][0], b["spec"]["containers"][0]
        cdiffs = sorted(k for k in set(ca) | set(cb) if ca.get(k) != cb.get(k))
        fail(f"the {wl['kind']}'s pod differs from the base {base_wl['kind']}'s beyond the spool volume: "
             f"pod spec {diffs}, container {cdiffs}, metadata {a['metadata'] != b['metadata']}")
    else:
        ok(f"the {wl['kind']}'s pod template is the base {base_wl['kind']}'s plus the spool volume")
    changed = {k: (v, cm["data"].get(k)) for k, v in base_cm["data"].items() if cm["data"].get(k) != v}
    if changed:
        fail(f"the overlay changes base ConfigMap settings: {changed}")
    else:
        added = sorted(set(cm["data"]) - set(base_cm["data"]))
        ok(f"ConfigMap: the base's settings plus {added}")
    skip = {"Deployment", "StatefulSet", "HorizontalPodAutoscaler", "ConfigMap"}
    key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
    base_rest = {key(d): d for d in base_docs if d["kind"] not in skip}
    rest = {key(d): d for d in docs if d["kind"] not in skip}
    if base_rest != rest:
        fail(f"the overlay changes other base resources: {sorted(k for k in set(base_rest) | set(rest) if base_rest.get(k) != rest.get(k))}")
    else:
        ok(f"the other {len(rest)} resources are the base's, unchanged")


# ---------------------------------------------------------------- Dockerfile, compose

DOCKERFILE = os.path.join(ROOT, "deploy/Dockerfile")
# Every flag's environment variable (SPEC "Command line" + "ADDED"), plus the log filter.
# `check-env --bin` compares it, both ways, with the binary's --help.
IMCF_ENV = {
    "IMCF_LISTEN", "IMCF_ADMIN_LISTEN", "IMCF_SDK_APP_ID", "IMCF_CALLBACK_TOKEN", "IMCF_CALLBACK_PATH",
    "IMCF_KAFKA_BROKERS", "IMCF_TOPIC", "IMCF_DEAD_LETTER_TOPIC", "IMCF_KAFKA_PROPERTY", "IMCF_MAX_BODY_BYTES",
    "IMCF_SHUTDOWN_TIMEOUT", "IMCF_LOG_FORMAT", "IMCF_DEV", "IMCF_LOG",
    "IMCF_APP", "IMCF_APPS_FILE", "IMCF_CALLBACK_TOKEN_FILE", "IMCF_ALLOW_CIDR", "IMCF_TRUSTED_PROXY",
    "IMCF_ROUTE", "IMCF_UNROUTED", "IMCF_REFUSE_BEFORE_CALLBACKS", "IMCF_HEADER_READ_TIMEOUT",
    "IMCF_BODY_READ_TIMEOUT", "IMCF_KEEP_ALIVE_TIMEOUT", "IMCF_MAX_CONNECTIONS", "IMCF_HTTP2",
    "IMCF_MAX_CLOCK_SKEW", "IMCF_DURABILITY", "IMCF_SPOOL_DIR", "IMCF_SPOOL_MAX_BYTES",
    "IMCF_ALLOW_UNSIGNED", "IMCF_MAX_CONNECTIONS_PER_IP",
}


def cmd_check_env(args):
    """check-env --bin BINARY: IMCF_ENV == the variables the binary's --help names (+ IMCF_LOG)."""
    import subprocess
    if len(args) != 2 or args[0] != "--bin":
        print("usage: deploykit.py check-env --bin BINARY")
        sys.exit(2)
    help_text = subprocess.run([args[1], "--help"], check=True, capture_output=True, text=True).stdout
    known = set(re.findall(r"\[env: (IMCF_[A-Z0-9_]+)", help_text)) | {"IMCF_LOG"}
    for name in sorted(known - IMCF_ENV):
        fail(f"the binary reads {name} (--help), which deploykit's IMCF_ENV lacks")
    for name in sorted(IMCF_ENV - known):
        fail(f"deploykit's IMCF_ENV has {name}, which the binary's --help does not name")
    if not failures:
        ok(f"IMCF_ENV is exactly the {len(known)} variables the binary reads (--help, plus the log filter IMCF_LOG)")
# Runtime packages the binary needs beyond debian:bookworm-slim (ldd: libssl.so.3,
# libcrypto.so.3 -> libssl3; TLS roots -> ca-certificates). zlib1g is in the base image
# but is listed explicitly because the binary links libz.so.1.
RUNTIME_PACKAGES = {"ca-certificates", "libssl3", "zlib1g"}


def cmd_check_dockerfile(_args):
    from dockerfile_parse import DockerfileParser
    df = DockerfileParser(path=DOCKERFILE)
    instr = df.structure
    args = {}
    for i in instr:
        if i["instruction"] == "ARG" and "=" in i["value"]:
            k, v = i["value"].split("=", 1)
            args.setdefault(k, v)

    def subst(s):
        return re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), s)

    froms = [subst(i["value"]) for i in instr if i["instruction"] == "FROM"]
    if len(froms) != 2 or not froms[0].startswith("rust:1.95-bookworm") or not froms[1].startswith("debian:bookworm-slim"):
        fail(f"expected stages FROM rust:1.95-bookworm ... and FROM debian:bookworm-slim, got {froms}")
    runs = [i["value"] for i in instr if i["instruction"] == "RUN"]
    if not any("cargo build --release --locked" in r for r in runs):
        fail("no RUN with cargo build --release --locked")
    runtime_start = max(n for n, i in enumerate(instr) if i["instruction"] == "FROM")
    runtime = instr[runtime_start:]
    installed = set()
    for i in runtime:
        if i["instruction"] == "RUN" and "apt-get install" in i["value"]:
            installed |= set(re.findall(r"(?<![-\w])([a-z0-9][a-z0-9.+-]+)", i["value"].split("apt-get install", 1)[1].split("&&")[0]))
    if not RUNTIME_PACKAGES <= installed:
        fail(f"runtime stage does not install {sorted(RUNTIME_PACKAGES - installed)}")
    users = [i["value"] for i in runtime if i["instruction"] == "USER"]
    if not users or not re.fullmatch(r"[1-9][0-9]*(:[1-9][0-9]*)?", users[-1].strip()):
        fail(f"runtime must end with a numeric non-root USER, got {users}")
    labels = df.labels
    for key in ("title", "description", "licenses", "version", "revision", "created"):
        if f"org.opencontainers.image.{key}" not in labels:
            fail(f"missing LABEL org.opencontainers.image.{key}")
    exposed = set(" ".join(i["value"] for i in runtime if i["instruction"] == "EXPOSE").split())
    if exposed != {"8080", "9090"}:
        fail(f"EXPOSE must be 8080 9090, got {sorted(exposed)}")
    entry = [i["value"] for i in runtime if i["instruction"] == "ENTRYPOINT"]
    if not entry or "im-callback-forwarder" not in entry[-1]:
        fail("ENTRYPOINT does not run im-callback-forwarder")
    if not failures:
        ok(f"Dockerfile: {froms[0]} -> {froms[1]}, cargo build --release --locked, USER {users[-1]}, "
           f"EXPOSE 8080 9090, OCI labels, runtime packages {sorted(RUNTIME_PACKAGES)}")


def env_true(v):
    """A boolean flag's environment value as clap reads it: false only for n, no, f, false, off, 0 and ''."""
    return v is not None and str(v).strip().lower() not in ("n", "no", "f", "false", "off", "0", "")


def starts_unsigned_ok(env):
    """Whether the binary would start: an app without a token (issue 11) needs a token source, --allow-cidr, or
    --allow-unsigned (implied by --dev). An apps file or an IMCF_APP list may still hold a tokenless app: not
    judged here."""
    token = any(env.get(k) for k in ("IMCF_CALLBACK_TOKEN", "IMCF_CALLBACK_TOKEN_FILE", "IMCF_APPS_FILE")) \
        or ":" in str(env.get("IMCF_APP", ""))
    return token or bool(env.get("IMCF_ALLOW_CIDR")) or env_true(env.get("IMCF_ALLOW_UNSIGNED")) \
        or env_true(env.get("IMCF_DEV"))


def cmd_check_compose(args):
    cfg = load_yaml(args[0])
    services = cfg.get("services", {})
    for name in ("kafka", "kafka-init", "forwarder", "prometheus", "grafana"):
        if name not in services:
            fail(f"compose has no service {name}")
    if failures:
        return
    kafka, init, fwd, prom, graf = (services[n] for n in ("kafka", "kafka-init", "forwarder", "prometheus", "grafana"))
    if not str(kafka.get("image", "")).startswith("apache/kafka:"):
        fail("kafka must use the apache/kafka image")
    kenv = kafka.get("environment", {})
    if "controller" not in str(kenv.get("KAFKA_PROCESS_ROLES", "")) or "broker" not in str(kenv.get("KAFKA_PROCESS_ROLES", "")):
        fail("kafka must run KRaft combined broker,controller")
    env = fwd.get("environment", {})
    unknown = set(env) - IMCF_ENV
    if unknown:
        fail(f"forwarder environment has unknown variables {sorted(unknown)}")
    build = fwd.get("build", {})
    if os.path.relpath(os.path.join(build.get("context", ""), build.get("dockerfile", "")), ROOT) != "deploy/Dockerfile":
        fail(f"forwarder must build deploy/Dockerfile with the repository root as context, got {build}")
    topics = {env.get("IMCF_TOPIC", "im.group.send-msg-exception")}
    topics.add(env.get("IMCF_DEAD_LETTER_TOPIC", next(iter(topics)) + ".dead-letter"))
    script = " ".join(map(str, (init.get("command") or []) + (init.get("entrypoint") or [])))
    for t in topics:
        if t not in script:
            fail(f"kafka-init does not create topic {t}")
    if "/opt/kafka/bin/kafka-topics.sh" not in script or init.get("image") != kafka.get("image"):
        fail("kafka-init must run the kafka image's /opt/kafka/bin/kafka-topics.sh")
    if fwd.get("depends_on", {}).get("kafka-init", {}).get("condition") != "service_completed_successfully":
        fail("forwarder must wait for kafka-init to complete")
    broker_host = env.get("IMCF_KAFKA_BROKERS", "").split(",")[0].split(":")[0]
    if broker_host != "kafka" or "kafka:9092" not in str(kenv.get("KAFKA_ADVERTISED_LISTENERS")):
        fail("IMCF_KAFKA_BROKERS must point at the kafka service's advertised listener")
    admin_port = env.get("IMCF_ADMIN_LISTEN", "0.0.0.0:9090").rsplit(":", 1)[1]
    # Prometheus: mounts deploy/prometheus, and scrapes the forwarder's admin port.
    mounts = {os.path.relpath(v["source"], ROOT): v["target"] for v in prom.get("volumes", []) if v.get("type") == "bind"} \
        if prom.get("volumes") and isinstance(prom["volumes"][0], dict) else \
        {os.path.relpath(v.split(":")[0], ROOT): v.split(":")[1] for v in prom.get("volumes", []) if v.startswith(("/", "."))}
    if mounts.get("deploy/prometheus") != "/etc/prometheus":
        fail(f"prometheus must mount deploy/prometheus at /etc/prometheus, got {mounts}")
    pcfg = load_yaml(os.path.join(ROOT, "deploy/prometheus/prometheus.yml"))
    job = [j for j in pcfg["scrape_configs"] if j["job_name"] == "im-callback-forwarder"]
    targets = [t for j in job for s in j.get("static_configs", []) for t in s["targets"]]
    if targets != [f"forwarder:{admin_port}"]:
        fail(f"prometheus.yml must scrape forwarder:{admin_port} as job im-callback-forwarder, got {targets}")
    if "alerts.yml" not in pcfg.get("rule_files", []):
        fail("prometheus.yml does not load alerts.yml")
    # Grafana: provisioning and dashboards mounted where the provider looks.
    gm = {os.path.relpath(v["source"], ROOT): v["target"] for v in graf.get("volumes", []) if isinstance(v, dict) and v.get("type") == "bind"} \
        or {os.path.relpath(v.split(":")[0], ROOT): v.split(":")[1] for v in graf.get("volumes", []) if isinstance(v, str) and v.startswith(("/", "."))}
    provider = load_yaml(os.path.join(ROOT, "deploy/grafana/provisioning/dashboards/im-callback-forwarder.yml"))
    dpath = provider["providers"][0]["options"]["path"]
    if gm.get("deploy/grafana/provisioning") != "/etc/grafana/provisioning" or gm.get("deploy/grafana/dashboards") != dpath:
        fail(f"grafana must mount deploy/grafana/provisioning at /etc/grafana/provisioning and the dashboards at {dpath}, got {gm}")
    ds = load_yaml(os.path.join(ROOT, "deploy/grafana/provisioning/datasources/prometheus.yml"))["datasources"][0]
    if ds["url"] != "http://prometheus:9090" or ds["type"] != "prometheus":
        fail(f"grafana datasource must be http://prometheus:9090, got {ds['url']}")
    home = graf.get("environment", {}).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH", "")
    if home and os.path.basename(home) not in os.listdir(os.path.join(ROOT, "deploy/grafana/dashboards")):
        fail(f"GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH {home} is not a provisioned dashboard")
    hc = " ".join(map(str, fwd.get("healthcheck", {}).get("test", [])))
    if f"/dev/tcp/127.0.0.1/{admin_port}" not in hc or "/readyz" not in hc:
        fail("forwarder healthcheck must ask /readyz on the admin port")
    # Disk durability: the spool is a named volume at IMCF_SPOOL_DIR, and the image creates that
    # directory owned by its USER (a new named volume copies the owner; the root fs is read-only).
    spool_dir = env.get("IMCF_SPOOL_DIR")
    if env.get("IMCF_DURABILITY", "memory") == "disk" and not spool_dir:
        fail("IMCF_DURABILITY=disk needs IMCF_SPOOL_DIR")
    if spool_dir:
        named = {}
        for v in fwd.get("volumes", []):
            if isinstance(v, dict):
                if v.get("type") == "volume":
                    named[v["target"].rstrip("/")] = v.get("source")
            elif not v.startswith(("/", ".")) and ":" in v:
                named[v.split(":")[1].rstrip("/")] = v.split(":")[0]
        vol = named.get(spool_dir.rstrip("/"))
        if not vol or vol not in (cfg.get("volumes") or {}):
            fail(f"IMCF_SPOOL_DIR {spool_dir} is not a named volume of the forwarder (got {named}): "
                 "the spool must outlive the container")
        runtime = open(DOCKERFILE).read().split("AS runtime", 1)[-1]
        if not re.search(r"install -d -o 10001 -g 10001 (?:-m \d+ )?" + re.escape(spool_dir.rstrip("/")) + r"\b", runtime):
            fail(f"deploy/Dockerfile's runtime stage must create {spool_dir} owned by 10001:10001 (install -d -o 10001 -g 10001)")
    if not starts_unsigned_ok(env):
        fail("the forwarder has no callback token (IMCF_CALLBACK_TOKEN, _FILE, IMCF_APP ID:TOKEN, IMCF_APPS_FILE), "
             "no IMCF_ALLOW_CIDR and no IMCF_ALLOW_UNSIGNED: the binary refuses to start unsigned")
    grace = fwd.get("stop_grace_period", "10s")
    if int(str(grace).rstrip("s")) < int(env.get("IMCF_SHUTDOWN_TIMEOUT", 30)) + GRACE_MARGIN:
        fail(f"forwarder stop_grace_period {grace} must be at least IMCF_SHUTDOWN_TIMEOUT + {GRACE_MARGIN} s")
    if not failures:
        ok(f"compose: KRaft kafka, topics {sorted(topics)} created before the forwarder, Prometheus scrapes "
           f"forwarder:{admin_port} with alerts.yml, Grafana provisioned (datasource + dashboard)"
           + (f", spool {spool_dir} on a named volume ({env.get('IMCF_DURABILITY', 'memory')} durability)" if spool_dir else ""))


# ---------------------------------------------------------------- the README and manifests say it

README = os.path.join(ROOT, "README.md")


def readme_section(text, title, level="###"):
    start = text.find(f"\n{level} {title}")
    if start < 0:
        return ""
    end = re.search(r"\n#{2,3} ", text[start + 1:])
    return text[start: start + 1 + end.start()] if end else text[start:]


def cmd_check_docs(args):
    """check-docs RENDERED_BASE: what the README (Kubernetes, Durability, Alerts) and the manifest
    comments must say, where the kit alone cannot enforce it."""
    docs = load_yaml_all(args[0])
    text = open(README).read()
    k8s = readme_section(text, "Kubernetes")
    durability = readme_section(text, "Durability: memory or disk")
    alerts_md = readme_section(text, "Alerts")
    wl = next(d for d in docs if d["kind"] in ("Deployment", "StatefulSet"))
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    limit = wl["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"]
    total = sum(memory_budget(cm["data"]).values())
    checks = [
        ("the README's memory budget: the sum and the limit", k8s,
         [rf"\b{total / MiB:.0f} MiB\b", rf"\b{re.escape(limit)}\b", r"queue\.buffering\.max\.kbytes"]),
        ("what an emptyDir spool survives and what it does not", durability,
         [r"emptyDir", r"survives", r"does not survive"]),
        ("how to move from the base to overlays/disk-spool without leaving the Deployment and HPA behind",
         k8s, [r"--prune\b", r"-l app\.kubernetes\.io/part-of=im-callback-forwarder",
               r"--prune-allowlist=apps/v1/Deployment", r"--prune-allowlist=autoscaling/v2/HorizontalPodAutoscaler"]),
        ("resizing the spool (expand each claim, recreate the StatefulSet with --cascade=orphan)", k8s,
         [r"patch pvc", r"--cascade=orphan", r"allowVolumeExpansion"]),
        ("the Secret: none in the base, made by the user, and how a change reaches the pods", k8s,
         [r"secretGenerator", r"rollout restart", r"examples/secret\.example\.yaml"]),
        ("the parked spool alert's runbook", alerts_md, [r"ImcfSpoolParked", r"scale"]),
    ]
    for label, where, patterns in checks:
        missing = [p for p in patterns if not re.search(p, where)]
        if missing:
            fail(f"README does not say {label}: no match for {missing}")
        else:
            ok(f"README says {label}")
    if re.search(r"--prune-allowlist=core/v1/PersistentVolumeClaim", text):
        fail("README prunes PersistentVolumeClaims: spool claims hold acknowledged events")
    manifest = open(os.path.join(ROOT, "deploy/kubernetes/base/deployment.yaml")).read()
    if not re.search(r"emptyDir[\s\S]*does NOT survive the pod", manifest):
        fail("deployment.yaml does not say what an emptyDir spool does not survive")
    else:
        ok("deployment.yaml says what an emptyDir spool survives and what it does not")
    # Whoever suggests raising the producer queue names the memory limit with it.
    for g in load_yaml(ALERTS)["groups"]:
        for r in g["rules"]:
            for k, v in r.get("annotations", {}).items():
                if "queue.buffering.max.kbytes" in v and not re.search(rf"memory limit|{re.escape(limit)}", v):
                    fail(f"alert {r.get('alert')} {k} suggests raising queue.buffering.max.kbytes without the memory limit ({limit})")
    for line in alerts_md.splitlines():
        if "queue.buffering.max.kbytes" in line and limit not in line:
            fail(f"README Alerts suggests raising queue.buffering.max.kbytes without the memory limit {limit}: {line[:60]}...")
    if not failures:
        ok(f"every suggestion to raise queue.buffering.max.kbytes names the memory limit {limit}")


# ---------------------------------------------------------------- self-test

def cmd_selftest(args):
    """Each check must catch a seeded mistake, or its 'ok' proves nothing."""
    global failures, ALERTS_TEST
    import contextlib
    import copy
    import io
    import tempfile
    rendered, compose = args[0], args[1]
    disk = args[2] if len(args) > 2 else None
    tmp = tempfile.mkdtemp()
    n = [0]

    def caught(label, fn, *fargs):
        global failures
        saved, failures = failures, []
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                fn(*fargs)
            except Exception as e:  # a crash on bad input also counts as caught, but say so
                failures.append(f"raised {type(e).__name__}: {e}")
        got, failures = failures, saved
        if got:
            ok(f"catches {label}: {got[0][:110]}")
        else:
            fail(f"does NOT catch {label}")

    def dump_docs(docs):
        n[0] += 1
        path = os.path.join(tmp, f"mut{n[0]}.yaml")
        with open(path, "w") as f:
            yaml.safe_dump_all(docs, f, sort_keys=False)
        return path

    base = load_yaml_all(rendered)

    def mutate(kind, fn):
        docs = copy.deepcopy(base)
        fn(next(d for d in docs if d["kind"] == kind))
        return dump_docs(docs)

    for label, expr in (("an unknown metric", "rate(imcf_callback_total[5m])"),
                        ("an unknown outcome value", 'imcf_callbacks_total{outcome=~"accepted|bad_signature"}'),
                        ("a PromQL syntax error", "sum(rate(imcf_callbacks_total[5m])"),
                        ("a bare histogram name", "imcf_ack_duration_seconds > 1"),
                        ("an unknown spooled reason", 'imcf_spooled_total{reason="disk_full"}'),
                        ("a refusal regex counting a 200 outcome as refused",
                         'imcf_callbacks_total{outcome!~"accepted|routed|ignored|replayed"}'),
                        ("a metadata age without the > 0 guard (1.7e9 s before the first success)",
                         "time() - max by (instance) (imcf_kafka_metadata_last_success_timestamp_seconds)"),
                        ("an unknown Kafka readiness reason", 'imcf_kafka_ready{reason="kafka_down"} == 1'),
                        ("an ingress-nginx metric outside the kubernetes alert group",
                         'nginx_ingress_controller_requests{status=~"5.."}')):
        caught(label, check_expr, "selftest", expr, set())

    def c0(d):
        return d["spec"]["template"]["spec"]["containers"][0]
    k8s = [
        ("a grace period shorter than preStop + shutdown timeout + 15 s",
         mutate("Deployment", lambda d: d["spec"]["template"]["spec"].update(terminationGracePeriodSeconds=50))),
        ("replicas on the HPA's target", mutate("Deployment", lambda d: d["spec"].update(replicas=2))),
        ("a PDB with minAvailable", mutate("PodDisruptionBudget", lambda d: (d["spec"].pop("maxUnavailable"), d["spec"].update(minAvailable=1)))),
        ("a PDB where unready pods block drains", mutate("PodDisruptionBudget", lambda d: d["spec"].pop("unhealthyPodEvictionPolicy"))),
        ("a hostname spread that only prefers", mutate("Deployment", lambda d: d["spec"]["template"]["spec"]["topologySpreadConstraints"][0].update(whenUnsatisfiable="ScheduleAnyway"))),
        ("no zone spread", mutate("Deployment", lambda d: d["spec"]["template"]["spec"]["topologySpreadConstraints"].pop(1))),
        ("the default 300 s on an unreachable node", mutate("Deployment", lambda d: d["spec"]["template"]["spec"].pop("tolerations"))),
        ("no startup probe", mutate("Deployment", lambda d: c0(d).pop("startupProbe"))),
        ("a startup probe too short for a full spool", mutate("Deployment", lambda d: c0(d)["startupProbe"].update(failureThreshold=12))),
        ("Burstable QoS (memory request < limit)", mutate("Deployment", lambda d: c0(d)["resources"]["requests"].update(memory="64Mi"))),
        ("a memory limit below the budget (10000 connections)", mutate("ConfigMap", lambda d: d["data"].update(IMCF_MAX_CONNECTIONS="10000"))),
        ("a per-address limit below IMCF_MAX_CONNECTIONS behind the Ingress", mutate("ConfigMap", lambda d: d["data"].pop("IMCF_MAX_CONNECTIONS_PER_IP"))),
        ("a memory limit below the budget (queue.buffering.max.messages 1000000: 286 MiB of overhead)",
         mutate("ConfigMap", lambda d: d["data"].update(IMCF_KAFKA_PROPERTY="queue.buffering.max.messages=1000000"))),
        ("the token as an environment variable",
         mutate("Deployment", lambda d: c0(d)["env"].append({"name": "IMCF_CALLBACK_TOKEN", "valueFrom": {"secretKeyRef": {"name": "im-callback-forwarder", "key": "callback-token"}}}))),
        ("a token file path that is not the mounted Secret key", mutate("ConfigMap", lambda d: d["data"].update(IMCF_CALLBACK_TOKEN_FILE="/etc/imcf/token"))),
        ("an Ingress logging the query string (Sign)", mutate("Ingress", lambda d: d["metadata"]["annotations"].pop("nginx.ingress.kubernetes.io/enable-access-log"))),
        ("an Ingress that does not retry a 503", mutate("Ingress", lambda d: d["metadata"]["annotations"].update({"nginx.ingress.kubernetes.io/proxy-next-upstream": "error timeout"}))),
        ("an Ingress connect timeout of 2 s", mutate("Ingress", lambda d: d["metadata"]["annotations"].update({"nginx.ingress.kubernetes.io/proxy-connect-timeout": "2"}))),
        ("a ConfigMap without the prune label", mutate("ConfigMap", lambda d: d["metadata"].pop("labels"))),
        ("a writable root filesystem", mutate("Deployment", lambda d: c0(d)["securityContext"].update(readOnlyRootFilesystem=False))),
        ("a misspelt Deployment field (schema, strict)", mutate("Deployment", lambda d: c0(d).update(readinesProbe=c0(d).pop("readinessProbe")))),
        ("liveness on the wrong path", mutate("Deployment", lambda d: c0(d)["livenessProbe"]["httpGet"].update(path="/readyz"))),
        ("an Ingress exposing every path", mutate("Ingress", lambda d: d["spec"]["rules"][0]["http"]["paths"][0].update(path="/", pathType="Prefix"))),
        ("an Ingress to the admin port", mutate("Ingress", lambda d: d["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"].update(port={"name": "admin"}))),
        ("the admin port open to every namespace", mutate("NetworkPolicy", lambda d: d["spec"]["ingress"][1].pop("from"))),
        ("a ServiceMonitor on the callback port", mutate("ServiceMonitor", lambda d: d["spec"]["endpoints"][0].update(port="callback"))),
        ("a PrometheusRule that drifted from alerts.yml", mutate("PrometheusRule", lambda d: d["spec"]["groups"][1]["rules"][0].update({"for": "10m"}))),
        ("a Service selecting no pod", mutate("Service", lambda d: d["spec"]["selector"].update(extra="x"))),
    ]
    for label, path in k8s:
        caught(label, cmd_validate_k8s, [path])
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "im-callback-forwarder", "labels": {"app.kubernetes.io/part-of": "im-callback-forwarder"}},
              "stringData": {"callback-token": "CHANGE-ME", "kafka-properties": "sasl.password=CHANGE-ME"}}
    caught("a Secret with placeholder values in the kit", cmd_validate_k8s, [dump_docs(copy.deepcopy(base) + [secret])])
    caught("IMCF_DURABILITY=disk in the Deployment (no volume kept per pod)",
           cmd_validate_k8s, [mutate("ConfigMap", lambda d: d["data"].update(IMCF_DURABILITY="disk", IMCF_SPOOL_DIR="/tmp"))])

    if disk:
        dbase = load_yaml_all(disk)

        def dmutate(kind, fn):
            docs = copy.deepcopy(dbase)
            fn(next(d for d in docs if d["kind"] == kind))
            return dump_docs(docs)

        def sts_c0(d):
            return d["spec"]["template"]["spec"]["containers"][0]

        def claim(d):
            return d["spec"]["volumeClaimTemplates"][0]["spec"]
        disk_cases = [
            ("a StatefulSet without the spool mounted at IMCF_SPOOL_DIR",
             dmutate("StatefulSet", lambda d: sts_c0(d).update(volumeMounts=[m for m in sts_c0(d)["volumeMounts"] if m["name"] != "spool"]))),
            ("the spool at another path than IMCF_SPOOL_DIR",
             dmutate("ConfigMap", lambda d: d["data"].update(IMCF_SPOOL_DIR="/var/lib/imcf"))),
            ("the StatefulSet running IMCF_DURABILITY=memory", dmutate("ConfigMap", lambda d: d["data"].update(IMCF_DURABILITY="memory"))),
            ("a spool volume smaller than IMCF_SPOOL_MAX_BYTES", dmutate("StatefulSet", lambda d: claim(d)["resources"]["requests"].update(storage="512Mi"))),
            ("spool claims deleted on scale-down",
             dmutate("StatefulSet", lambda d: d["spec"].update(persistentVolumeClaimRetentionPolicy={"whenDeleted": "Retain", "whenScaled": "Delete"}))),
            ("a writable root filesystem in the StatefulSet", dmutate("StatefulSet", lambda d: sts_c0(d)["securityContext"].update(readOnlyRootFilesystem=False))),
            ("a StatefulSet pod that drifted from the base's (probe)",
             dmutate("StatefulSet", lambda d: sts_c0(d)["readinessProbe"].update(periodSeconds=30))),
            ("a StatefulSet with the base image not rewritten", dmutate("StatefulSet", lambda d: sts_c0(d).update(image="im-callback-forwarder"))),
            ("spool claims carrying the prune label (--prune -l would delete them)",
             dmutate("StatefulSet", lambda d: d["spec"]["volumeClaimTemplates"][0]["metadata"]["labels"].update({"app.kubernetes.io/part-of": "im-callback-forwarder"}))),
            ("claims the parked-spool alert does not recognise", dmutate("StatefulSet", lambda d: d["metadata"].update(name="imcf"))),
        ]
        for label, path in disk_cases:
            caught(f"disk-spool overlay: {label}", cmd_validate_k8s, [path, "--base", rendered])

    # check-metrics: the catalogue's own exposition passes; each kind of drift is caught.
    good = catalogue_exposition()
    saved, failures = failures, []
    compare_catalogue(parse_exposition(good), "selftest")
    got, failures = failures, saved
    if got:
        fail(f"check-metrics rejects the catalogue's own exposition: {got[0]}")
    else:
        ok("check-metrics accepts an exposition that matches the catalogue")

    def drift(fn):
        return lambda: compare_catalogue(parse_exposition(fn(good)), "selftest")

    for label, fn in (
            ("a metric the catalogue lacks", lambda t: t + "# TYPE imcf_new_thing_total counter\nimcf_new_thing_total 0\n"),
            ("a catalogue metric not exported", lambda t: re.sub(r"(?m)^(# TYPE )?imcf_replayed_total.*\n", "", t)),
            ("an outcome value the catalogue lacks", lambda t: t + 'imcf_callbacks_total{outcome="brand_new"} 0\n'),
            ("a catalogue outcome not exported", lambda t: t.replace('imcf_callbacks_total{outcome="spool_full"} 0\n', "")),
            ("a spooled reason not exported", lambda t: t.replace('imcf_spooled_total{reason="shutdown"} 0\n', "")),
            ("a changed metric type", lambda t: t.replace("# TYPE imcf_spool_events gauge", "# TYPE imcf_spool_events counter")),
            ("an extra label", lambda t: t.replace("imcf_events_lost_total 0", 'imcf_events_lost_total{topic="x"} 0'))):
        caught(f"drift: {label}", drift(fn))

    tests = load_yaml(ALERTS_TEST)
    for t in tests["tests"]:
        t["alert_rule_test"] = [c for c in t["alert_rule_test"] if not (c["alertname"] == "ImcfDeadLetters" and not c["exp_alerts"])]
    path = os.path.join(tmp, "alerts_test.yml")
    with open(path, "w") as f:
        yaml.safe_dump(tests, f)
    real, ALERTS_TEST = ALERTS_TEST, path
    caught("an alert without a quiet test case", cmd_check_rule_tests, [])
    ALERTS_TEST = real

    # check-docs: each statement removed from a copy of the README is missed.
    global README
    real_readme, text = README, open(README).read()
    for label, needle in (("no spool resize procedure", "--cascade=orphan"),
                          ("a prune without the HPA in its allowlist", "--prune-allowlist=autoscaling/v2/HorizontalPodAutoscaler"),
                          ("no word on what an emptyDir spool does not survive", "does not survive"),
                          ("no memory budget total",
                           f"{sum(memory_budget(next(d for d in load_yaml_all(rendered) if d['kind'] == 'ConfigMap')['data']).values()) / MiB:.0f} MiB")):
        README = os.path.join(tmp, "README.md")
        with open(README, "w") as f:
            f.write(text.replace(needle, "..."))
        caught(f"a README with {label}", cmd_check_docs, [rendered])
        README = real_readme

    cbase = load_yaml(compose)
    for label, fn in (("an unknown IMCF_ variable", lambda c: c["services"]["forwarder"]["environment"].update(IMCF_LISTN="x")),
                      ("a topic kafka-init does not create", lambda c: c["services"]["forwarder"]["environment"].update(IMCF_TOPIC="other")),
                      ("a forwarder that does not wait for topic creation", lambda c: c["services"]["forwarder"].pop("depends_on")),
                      ("a spool not on a named volume", lambda c: c["services"]["forwarder"].pop("volumes", None)),
                      ("disk durability without a spool dir", lambda c: c["services"]["forwarder"]["environment"].pop("IMCF_SPOOL_DIR")),
                      ("no token and no IMCF_ALLOW_UNSIGNED (the binary refuses to start)",
                       lambda c: c["services"]["forwarder"]["environment"].pop("IMCF_ALLOW_UNSIGNED")),
                      ("IMCF_ALLOW_UNSIGNED: \"false\" without a token",
                       lambda c: c["services"]["forwarder"]["environment"].update(IMCF_ALLOW_UNSIGNED="false")),
                      ("a stop grace period under IMCF_SHUTDOWN_TIMEOUT + 15 s", lambda c: c["services"]["forwarder"].update(stop_grace_period="40s"))):
        c = copy.deepcopy(cbase)
        fn(c)
        path = os.path.join(tmp, "compose.yml")
        with open(path, "w") as f:
            yaml.safe_dump(c, f)
        caught(label, cmd_check_compose, [path])


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        sys.exit(2)
    cmd, args = sys.argv[1], sys.argv[2:]
    commands = {
        "gen-prometheusrule": cmd_gen_prometheusrule,
        "check-rule-tests": cmd_check_rule_tests,
        "check-queries": cmd_check_queries,
        "dashboard-rules": cmd_dashboard_rules,
        "dashboard-queries": cmd_dashboard_queries,
        "validate-k8s": cmd_validate_k8s,
        "check-dockerfile": cmd_check_dockerfile,
        "check-compose": cmd_check_compose,
        "check-docs": cmd_check_docs,
        "selftest": cmd_selftest,
        "check-metrics": cmd_check_metrics,
        "check-env": cmd_check_env,
        "catalogue": lambda _a: print("\n".join(f"{n} {t}" for n, (t, _l) in CATALOGUE.items())),
    }
    if cmd not in commands:
        print(__doc__)
        sys.exit(2)
    commands[cmd](args)
    finish()


if __name__ == "__main__":
    main()
