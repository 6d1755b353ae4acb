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


sat_c, sat_f = aggregate("ceiling", "closed"), aggregate("forwarder", "closed")
sat_k = aggregate("floor", "closed")
rate_f, rate_c = aggregate("forwarder", "open"), aggregate("ceiling", "open")
events = kafka["events"]
ratio = sat_f["throughput"] / sat_c["throughput"] if sat_c and sat_f else None
checks = {
    "forwarder/ceiling >= 0.8 at saturation": ratio is not None and ratio >= 0.8,
    "p99 ack <= 2 ms at the fixed rate": rate_f is not None and rate_f["p99_ms"] <= 2.0,
    "peak RSS < 64 MiB at the fixed rate": rate_f is not None and rate_f["peak_rss_mib"] < 64,
    "accepted == delivered (records consumed)": events["records"] == kafka["accepted"] and not events["timed_out"],
    "every delivered record has a distinct event_id": events["distinct_event_ids"] == events["records"],
    "no dead letters (every generated body valid)": kafka["dead_letters"]["records"] == 0,
    "no failed requests": all(a is None or a["failed"] == 0 for a in (sat_c, sat_f, sat_k, rate_f, rate_c)),
}

rate = next((p["rate"] for p in phases if p["mode"] == "open"), None)
if not (sat_c and sat_f):
    checks.pop("forwarder/ceiling >= 0.8 at saturation")
if not rate_f:
    checks.pop("p99 ack <= 2 ms at the fixed rate")
    checks.pop("peak RSS < 64 MiB at the fixed rate")
lines += [
    "",
    f"config: {kafka['config']}  forwarder args: {kafka['forwarder_args'] or '(defaults)'}",
    f"machine: {kafka['nproc']} cores, {kafka['cpu']}; load average at end {kafka['loadavg_at_end']}",
]
if sat_c and sat_f:
    lines += [
        f"saturation (closed loop): ceiling {sat_c['throughput']:.0f} req/s, forwarder {sat_f['throughput']:.0f} req/s,"
        f" ratio {ratio:.3f}",
        f"  CPU s per 1,000 callbacks: ceiling {fmt(sat_c['cpu_s_per_1k'], 3)}, forwarder {fmt(sat_f['cpu_s_per_1k'], 3)}",
    ]
if sat_c and sat_k:
    lines += [
        f"Kafka floor (the ceiling that also produces each body to Kafka): {sat_k['throughput']:.0f} req/s,"
        f" floor/ceiling {sat_k['throughput'] / sat_c['throughput']:.3f},"
        f" CPU s per 1,000 callbacks {fmt(sat_k['cpu_s_per_1k'], 3)}"
        + (f"; forwarder/floor {sat_f['throughput'] / sat_k['throughput']:.3f}" if sat_f else ""),
    ]
if rate_f:
    lines += [
        f"fixed rate {rate:.0f}/s (open loop): forwarder {rate_f['throughput']:.0f} req/s, ack p50 {rate_f['p50_ms']:.3f}"
        f" p99 {rate_f['p99_ms']:.3f} p99.9 {rate_f['p999_ms']:.3f} ms, peak RSS {rate_f['peak_rss_mib']:.1f} MiB,"
        f" {fmt(rate_f['cpu_s_per_1k'], 3)} CPU s per 1,000 callbacks",
    ]
if rate_c:
    lines += [
        f"  ceiling at the same rate: p50 {rate_c['p50_ms']:.3f} p99 {rate_c['p99_ms']:.3f} p99.9 {rate_c['p999_ms']:.3f} ms",
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
            "saturation": {"ceiling": sat_c, "forwarder": sat_f, "floor": sat_k, "ratio": ratio},
            "rate": {"rate": rate, "forwarder": rate_f, "ceiling": rate_c},
            "kafka": kafka,
            "checks": checks,
        },
        indent=2,
    )
)
(out / "summary.txt").write_text("\n".join(lines) + "\n")
