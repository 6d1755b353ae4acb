#!/usr/bin/env python3
"""Summarizes one callgrind output file (bench/profile.sh) per request.

usage: bench/callgrind_summary.py CALLGRIND_OUT REQUESTS [TOP]

Prints: total instructions and per request; a breakdown by component (the source file each instruction
comes from, inlined code included, mapped to a crate or C library); the top functions by self cost
(all inlined variants of a function summed, which callgrind_annotate lists separately); and the top
functions by inclusive cost. Only the Ir event is used.
"""

import re
import sys
from collections import defaultdict

path, requests = sys.argv[1], int(sys.argv[2])
top = int(sys.argv[3]) if len(sys.argv) > 3 else 25

names = {"fl": {}, "fn": {}}  # compressed "(id) name" tables; fi/fe/cfi/cfl share the file table


def name_of(kind, value):
    table = names["fn" if kind in ("fn", "cfn") else "fl"]
    m = re.match(r"\((\d+)\)(?: (.*))?$", value)
    if not m:
        return value
    ident, text = m.groups()
    if text is not None:
        table[ident] = text
    return table.get(ident, f"?{ident}")


self_cost = defaultdict(int)  # function -> Ir
incl_calls = defaultdict(int)  # function -> Ir spent in callees
by_file = defaultdict(int)  # (source file (inlining aware), function) -> Ir
total = 0
fn = fl = cur_file = None
pending_call = False
with open(path, errors="replace") as f:
    for line in f:
        if not line or line[0] == "#":
            continue
        c = line[0]
        if c.isdigit() or c in "+-*":
            parts = line.split()
            if len(parts) < 2:
                continue
            cost = int(parts[1])
            if pending_call:
                incl_calls[fn] += cost
                pending_call = False
            else:
                self_cost[fn] += cost
                by_file[(cur_file, fn)] += cost
                total += cost
            continue
        key, _, value = line.rstrip("\n").partition("=")
        if key == "fn":
            fn = name_of("fn", value)
            cur_file = fl
        elif key == "fl":
            fl = cur_file = name_of("fl", value)
        elif key in ("fi", "fe"):
            cur_file = name_of("fl", value)
        elif key in ("cfi", "cfl"):
            name_of("fl", value)
        elif key == "cfn":
            name_of("cfn", value)
        elif key == "calls":
            pending_call = True
        elif key == "summary":
            pass


def crate_of(function):
    """The crate a Rust function belongs to, from its demangled name; None for C functions."""
    m = re.match(r"[<&\s]*(?:mut\s+|dyn\s+)*([A-Za-z_][A-Za-z0-9_]*)::", function or "")
    return m.group(1) if m else None


def component(file, function):
    if file is None:
        return "unknown"
    if "/rustc/" in file:
        # std code inlined into a function counts for the function's crate (e.g. core intrinsics in sha2).
        crate = crate_of(function)
        if crate == "im_callback_forwarder":
            return "forwarder (std code inlined)"
        if crate and crate not in ("core", "alloc", "std"):
            return "crate " + crate
    m = re.search(r"index\.crates\.io-[^/]+/([A-Za-z0-9_\-]+?)-\d+\.\d+", file)
    if m:
        return "crate " + m.group(1).replace("-", "_")
    if "/rustc/" in file:
        m = re.search(r"/library/([a-z_]+)/", file)
        return "Rust std (" + (m.group(1) if m else "?") + ")"
    if "/work/main/src/" in file or file.startswith("src/"):
        return "forwarder src/" + file.split("/src/", 1)[1]
    if "rdkafka-sys" in file:
        base = file.rsplit("/", 1)[-1]
        if base.startswith("lz4"):
            return "librdkafka lz4 compression"
        if base.startswith(("rdkafka_msg", "rdkafka_msgset")):
            return "librdkafka message/batch building"
        return "librdkafka (other)"
    if "/malloc/" in file:
        return "glibc malloc/free"
    if "/string/" in file or "multiarch" in file:
        return "glibc memcpy/memset/strings"
    if "nptl" in file or "pthread" in file:
        return "glibc threads/locks"
    if file.startswith("./") or "/sysdeps/" in file:
        return "glibc (other)"
    return "other: " + file.rsplit("/", 1)[-1]


groups = defaultdict(int)
for (file, function), cost in by_file.items():
    groups[component(file, function)] += cost


def short(name, width=150):
    name = re.sub(r"/root/\.cargo/registry/src/index\.crates\.io-[^/]+/", "", name)
    return name if len(name) <= width else name[: width - 1] + "…"


print(f"instructions (Ir, all threads): {total:,}")
print(f"requests: {requests:,}")
print(f"instructions per request: {total / requests:,.0f}")
print()
print("by component (self cost, inlined code counted where its source is):")
for name, cost in sorted(groups.items(), key=lambda kv: -kv[1])[:top]:
    print(f"  {cost / requests:>10,.0f} /req {100 * cost / total:5.1f}%  {name}")
print()
print("top functions by self cost (inlined variants summed):")
for name, cost in sorted(self_cost.items(), key=lambda kv: -kv[1])[:top]:
    print(f"  {cost / requests:>10,.0f} /req {100 * cost / total:5.1f}%  {short(name)}")
print()
print("top functions by inclusive cost:")
incl = {name: self_cost[name] + incl_calls[name] for name in set(self_cost) | set(incl_calls)}
for name, cost in sorted(incl.items(), key=lambda kv: -kv[1])[: top + 15]:
    print(f"  {cost / requests:>10,.0f} /req {100 * cost / total:5.1f}%  {short(name)}")
