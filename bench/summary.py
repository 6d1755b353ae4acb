#!/usr/bin/env python3
"""Summary table of one bench/run.sh result folder: phases.jsonl (one loadgen run + server figures per line)
and kafka.json (accepted vs records read back). Usage: bench/summary.py OUT_DIR. Also writes OUT_DIR/summary.json."""

import json
import sys
from pathlib import Path

out = Path(sys.argv[1])
phases = [json.loads(line) for line in (out / "phases.jsonl").read_text().splitlines() if line.strip()]
kafka = json.loads((out / "kafka.json").read_text())


def fmt(v, digits=2):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def mib(kib):
    return kib / 1024 if kib is not None else None


rows = []
for p in phases:
    requests = p["sent_total"]
    rows.append(
        [
            p["label"],
            p["mode"] + (f" {p['rate']:.0f}/s" if p["mode"] == "open" else ""),
            str(p["connections"]),
            fmt(p["throughput"], 0),
            fmt(p["p50_ms"], 3),
            fmt(p["p99_ms"], 3),
            fmt(p["p999_ms"], 3),
            fmt(p["max_ms"], 2),
            str(p["non_ok"] + p["errors"]),
            fmt(p["server_cpu_s"] * 1000 / requests if requests else None, 3),
            fmt(p["server_cpu_s"] / p["wall_s"] if p["wall_s"] else None, 2),
            fmt(mib(p["server_peak_rss_kib"]), 1),
            fmt(p["tansu_cpu_s"] / p["wall_s"] if p["wall_s"] else None, 2),
            fmt(p["loadgen_cpu_s"] / p["wall_s"] if p["wall_s"] else None, 2),
            fmt(p["machine_cpu_s"] / p["wall_s"] if "machine_cpu_s" in p and p["wall_s"] else None, 2),
            fmt(
                (p["machine_cpu_s"] - p["server_cpu_s"] - p["tansu_cpu_s"] - p["loadgen_cpu_s"]) / p["wall_s"]
                if "machine_cpu_s" in p and p["wall_s"]
                else None,
                2,
            ),
        ]
    )
header = [
    "phase",
    "mode",
    "conns",
    "req/s",
    "p50 ms",
    "p99 ms",
    "p99.9 ms",
    "max ms",
    "failed",
    "CPU s/1k",
    "srv cores",
    "peak RSS MiB",
    "tansu cores",
    "gen cores",
    "machine cores",
    "others",
]
widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
lines = [
    " | ".join(h.ljust(w) for h, w in zip(header, widths)),
    "-+-".join("-" * w for w in widths),
]
lines += [" | ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]


def aggregate(server, mode):
    sel = [p for p in phases if p["server"] == server and p["mode"] == mode]
    if not sel:
        return None
    measured = sum(p["measured"] for p in sel)
    window = sum(p["window_s"] for p in sel)
    cpu = sum(p["server_cpu_s"] for p in sel)
    sent = sum(p["sent_total"] for p in sel)
    return {
        "throughput": measured / window,
        "p50_ms": max(p["p50_ms"] for p in sel),
        "p99_ms": max(p["p99_ms"] for p in sel),
        "p999_ms": max(p["p999_ms"] for p in sel),
        "cpu_s_per_1k": cpu * 1000 / sent if sent else None,
        "peak_rss_mib": max(mib(p["server_peak_rss_kib"]) for p in sel),
        "failed": sum(p["non_ok"] + p["errors"] + p["bad_ack"] for p in sel),
    }


sat_c, sat_f = aggregate("ceiling", "closed"), aggregate("memory", "closed")
sat_d, sat_k = aggregate("disk", "closed"), aggregate("floor", "closed")
rate_f, rate_d, rate_c = aggregate("memory", "open"), aggregate("disk", "open"), aggregate("ceiling", "open")
events = kafka["events"]
probe = {}
if (out / "fsync.jsonl").exists():
    probe = {p["file"]: p for p in (json.loads(line) for line in (out / "fsync.jsonl").read_text().splitlines() if line)}
loaded = {}
if (out / "fsync-loaded.jsonl").exists():
    loaded = {
        p["file"]: p for p in (json.loads(line) for line in (out / "fsync-loaded.jsonl").read_text().splitlines() if line)
    }
# The spool's segments are preallocated (issue 13): their syncs are what the preallocated file measures.
sync = probe.get("preallocated")
sync_loaded = loaded.get("preallocated")


def ratio_of(a, b):
    return a["throughput"] / b["throughput"] if a and b else None


ratio = ratio_of(sat_f, sat_c)
disk_ratio = ratio_of(sat_d, sat_f)
floor_ratio = ratio_of(sat_f, sat_k)
disk_p99_limit = rate_f["p99_ms"] + 2 * sync["p99_ms"] if rate_f and sync else None
checks = {}
if ratio is not None:
    checks["memory/ceiling >= 0.8 at saturation (issue 6)"] = ratio >= 0.8
if floor_ratio is not None:
    checks["memory/floor >= 0.8 at saturation (issue 13)"] = floor_ratio >= 0.8
if disk_ratio is not None:
    checks["disk/memory >= 0.85 at saturation (issue 13)"] = disk_ratio >= 0.85
if sat_d:
    checks["disk peak RSS at saturation < 48 MiB (issue 13)"] = sat_d["peak_rss_mib"] < 48
if rate_f:
    checks["memory p99 ack <= 2 ms at the fixed rate (issue 6)"] = rate_f["p99_ms"] <= 2.0
    checks["memory peak RSS < 64 MiB at the fixed rate (issue 6)"] = rate_f["peak_rss_mib"] < 64
if rate_d and disk_p99_limit is not None:
    checks["disk p99 <= memory p99 + 2 x fdatasync p99 at the fixed rate (issue 13)"] = rate_d["p99_ms"] <= disk_p99_limit
checks["accepted == delivered (records consumed)"] = events["records"] == kafka["accepted"] and not events["timed_out"]
checks["every delivered record has a distinct event_id"] = events["distinct_event_ids"] == events["records"]
checks["no dead letters (every generated body valid)"] = kafka["dead_letters"]["records"] == 0
checks["no failed requests"] = all(
    a is None or a["failed"] == 0 for a in (sat_c, sat_f, sat_d, sat_k, rate_f, rate_d, rate_c)
)

rate = next((p["rate"] for p in phases if p["mode"] == "open"), None)
RATE_LABEL = f"{rate:.0f}/s" if rate else "the fixed rate"
lines += [
    "",
    f"config: {kafka['config']}  forwarders: {kafka.get('forwarders', 'memory')}"
    f"  extra args: {kafka['forwarder_args'] or '(defaults)'}",
    f"machine: {kafka['nproc']} cores, {kafka['cpu']}; load average at end {kafka['loadavg_at_end']}",
]
for when, probes in (("before the load", probe), (f"beside the memory forwarder at {RATE_LABEL}", loaded)):
    for name, p in probes.items():
        lines += [
            f"fdatasync probe {when} ({name} file, {p['batch']} x {p['bytes']} bytes + fdatasync, {p['count']} times):"
            f" p50 {p['p50_ms']:.3f} p99 {p['p99_ms']:.3f} max {p['max_ms']:.3f} ms"
        ]
if sat_c:
    lines += [f"saturation (closed loop): ceiling {sat_c['throughput']:.0f} req/s, CPU s/1k {fmt(sat_c['cpu_s_per_1k'], 3)}"]
for name, agg in (("memory", sat_f), ("disk", sat_d), ("Kafka floor", sat_k)):
    if agg:
        lines += [
            f"  {name}: {agg['throughput']:.0f} req/s"
            + (f", /ceiling {agg['throughput'] / sat_c['throughput']:.3f}" if sat_c else "")
            + f", CPU s/1k {fmt(agg['cpu_s_per_1k'], 3)}, peak RSS {agg['peak_rss_mib']:.1f} MiB"
        ]
if floor_ratio is not None:
    lines += [f"  memory/floor {floor_ratio:.3f}"]
if disk_ratio is not None:
    lines += [f"  disk/memory {disk_ratio:.3f}"]
for name, agg in (("memory", rate_f), ("disk", rate_d), ("ceiling", rate_c)):
    if agg:
        lines += [
            f"fixed rate {rate:.0f}/s (open loop), {name}: {agg['throughput']:.0f} req/s, ack p50 {agg['p50_ms']:.3f}"
            f" p99 {agg['p99_ms']:.3f} p99.9 {agg['p999_ms']:.3f} ms, peak RSS {agg['peak_rss_mib']:.1f} MiB,"
            f" {fmt(agg['cpu_s_per_1k'], 3)} CPU s per 1,000 callbacks"
        ]
if disk_p99_limit is not None and rate_d:
    lines += [
        f"  disk p99 {rate_d['p99_ms']:.3f} ms vs the limit memory p99 + 2 x fdatasync p99 (preallocated, before the"
        f" load) = {rate_f['p99_ms']:.3f} + 2 x {sync['p99_ms']:.3f} = {disk_p99_limit:.3f} ms"
    ]
    if sync_loaded:
        lines += [
            f"  (with the probe's p99 under the same load instead: {rate_f['p99_ms']:.3f} + 2 x"
            f" {sync_loaded['p99_ms']:.3f} = {rate_f['p99_ms'] + 2 * sync_loaded['p99_ms']:.3f} ms; not a target)"
        ]
lines += [
    f"Kafka: accepted {kafka['accepted']} (imcf_callbacks_total, {kafka.get('forwarder_instances', 1)} forwarder processes),"
    f" delivery reports ok {kafka['delivery_reports_ok']},"
    f" failures {kafka['delivery_failures']}, undelivered at shutdown {kafka['undelivered_at_shutdown']}",
    f"  consumed back: {events['records']} records, {events['distinct_event_ids']} distinct event_ids,"
    f" per partition {events['per_partition']}, {kafka['dead_letters']['records']} dead letters",
    "",
]
lines += [f"  [{'PASS' if ok else 'FAIL'}] {name}" for name, ok in checks.items()]
print("\n".join(lines))
(out / "summary.json").write_text(
    json.dumps(
        {
            "fsync_probe": probe,
            "fsync_probe_under_load": loaded,
            "saturation": {
                "ceiling": sat_c,
                "memory": sat_f,
                "disk": sat_d,
                "floor": sat_k,
                "memory_over_ceiling": ratio,
                "memory_over_floor": floor_ratio,
                "disk_over_memory": disk_ratio,
            },
            "rate": {"rate": rate, "memory": rate_f, "disk": rate_d, "ceiling": rate_c, "disk_p99_limit_ms": disk_p99_limit},
            "kafka": kafka,
            "checks": checks,
        },
        indent=2,
    )
)
(out / "summary.txt").write_text("\n".join(lines) + "\n")
