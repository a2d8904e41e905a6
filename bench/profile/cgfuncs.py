#!/usr/bin/env python3
"""Per-function figures from a callgrind dump, divided by a count (events, requests).

    bench/profile/cgfuncs.py self  DUMP N [TOP=40]        # self cost per function: Ir, L1 misses
    bench/profile/cgfuncs.py calls DUMP N [REGEX]          # calls per caller -> callee (>= 0.3 per N)

`callgrind_annotate --inclusive=no` (valgrind 3.19) charges these dumps' whole cost to the
libc start file; this reads the format itself: a cost line after `calls=` is the call's
inclusive cost (not the caller's own), every other cost line is the current function's own.
"""
import collections
import re
import sys


def parse(path):
    names = {}

    def name(s):
        m = re.match(r"\((\d+)\)(?: (.*))?", s)
        if not m:
            return s
        if m.group(2):
            names[m.group(1)] = m.group(2)
        return names.get(m.group(1), s)

    events, fn, cfn, after_call = [], None, None, False
    own = collections.defaultdict(lambda: [0] * len(events))
    calls = collections.Counter()
    for line in open(path):
        if line.startswith("events:"):
            events = line.split()[1:]
        elif line.startswith("fn="):
            fn = name(line[3:].strip())
        elif line.startswith("cfn="):
            cfn = name(line[4:].strip())
        elif line.startswith(("cfi=", "cfl=", "cob=")):
            continue
        elif line.startswith("calls="):
            calls[(fn, cfn)] += int(line[6:].split()[0])
            after_call = True
        elif line[:1].isdigit() or line[:1] in "+-*":
            if after_call:
                after_call = False
                continue
            acc = own[fn]
            for i, v in enumerate(line.split()[1:]):
                acc[i] += int(v)
    return events, own, calls


def main():
    mode, path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    events, own, calls = parse(path)
    if mode == "self":
        top = int(sys.argv[4]) if len(sys.argv) > 4 else 40
        col = {e: i for i, e in enumerate(events)}
        total = [sum(v[i] for v in own.values()) for i in range(len(events))]
        print(f"per {n:,}: Ir {total[0] / n:,.0f}", end="")
        for e in ("I1mr", "D1mr", "D1mw"):
            if e in col:
                print(f", {e} {total[col[e]] / n:.2f}", end="")
        print()
        for f, v in sorted(own.items(), key=lambda kv: -kv[1][0])[:top]:
            misses = "".join(f" {v[col[e]] / n:6.2f} {e}" for e in ("I1mr", "D1mr") if e in col)
            print(f"{v[0] / n:9.1f} Ir{misses}  {f}")
    elif mode == "calls":
        pat = re.compile(sys.argv[4]) if len(sys.argv) > 4 else None
        for (f, c), k in sorted(calls.items(), key=lambda kv: -kv[1]):
            if k / n >= 0.3 and (pat is None or pat.search(c)):
                print(f"{k / n:7.2f}  {f}  ->  {c}")
    else:
        sys.exit(f"unknown mode {mode!r}: self or calls")


if __name__ == "__main__":
    main()
