#!/usr/bin/env python3
"""Splits W2's relay latency into its hops, from a packet capture and the
per-event arrival files of `mcpflip-bench --w2-arrivals DIR`.

Every W2 event carries the upstream's send time (`"ts_us":...`). On loopback a
capture sees each event twice: upstream -> proxy, then proxy -> client (once
for `direct`). The load generator's files give the client's arrival time. So:

  upstream   wire time of the upstream's packet - ts_us (the upstream's write)
  proxy      wire time of the proxy's packet - wire time of the upstream's
  client     client arrival - wire time of the last packet before it
  total      client arrival - ts_us (what W2 reports)

and, per burst of upstream packets (closer than 100 us to the one before),
the time from the first one in to the first one out (the proxy's wake-up and
first event) and the proxy hop by position in the burst.

  taskset -c 0 tcpdump -i lo -s 200 -B 262144 -w /tmp/w2.pcap 'tcp and greater 200' &
  cargo run -p mcpflip-bench --release -- --only w2 --targets mcpflip,nginx \\
      --rounds 3 --no-profile --w2-arrivals /tmp/w2-arrivals
  kill -INT %1
  bench/profile/hops.py /tmp/w2.pcap /tmp/w2-arrivals

The capture costs CPU on both cores and moves every figure (bench/PROFILE.md
§43): compare targets within one captured run, never with an uncaptured one.
"""

import os
import re
import struct
import sys
from collections import Counter, defaultdict

EVENT = re.compile(rb'"ts_us":(\d+)')


def packets(path):
    """(time_us, src_port, [ts_us...]) for each TCP packet with events."""
    with open(path, "rb") as f:
        head = f.read(24)
        if len(head) < 24:
            sys.exit(f"{path}: not a pcap file")
        magic = struct.unpack("<I", head[:4])[0]
        if magic == 0xA1B2C3D4:
            scale = 1
        elif magic == 0xA1B23C4D:
            scale = 1000  # nanosecond timestamps
        else:
            sys.exit(f"{path}: not a little-endian pcap file (magic {magic:#x})")
        link = struct.unpack("<I", head[20:24])[0]
        if link != 1:
            sys.exit(f"{path}: link type {link}; capture on lo (Ethernet framing, 1)")
        while True:
            rec = f.read(16)
            if len(rec) < 16:
                return
            sec, frac, incl, _ = struct.unpack("<IIII", rec)
            data = f.read(incl)
            if len(data) < incl:
                return
            if len(data) < 34 or data[12:14] != b"\x08\x00":
                continue
            ip = 14
            tcp = ip + (data[ip] & 15) * 4
            if data[ip + 9] != 6 or len(data) < tcp + 20:
                continue
            sport = struct.unpack(">H", data[tcp : tcp + 2])[0]
            payload = data[tcp + (data[tcp + 12] >> 4) * 4 :]
            ts = [int(m.group(1)) for m in EVENT.finditer(payload)]
            if ts:
                yield sec * 1_000_000 + frac // scale, sport, ts


def quantile(values, p):
    if not values:
        return float("nan")
    v = sorted(values)
    return v[int(p * (len(v) - 1))]


def main():
    if len(sys.argv) != 3:
        sys.exit(f"usage: {sys.argv[0]} CAPTURE.pcap ARRIVALS_DIR")
    pcap, arrivals = sys.argv[1], sys.argv[2]
    # Each event's packets, in capture order.
    seen = defaultdict(list)
    for t, sport, tss in packets(pcap):
        for ts in tss:
            seen[ts].append((t, sport))
    if not seen:
        sys.exit(f"{pcap}: no W2 events (capture on lo with a snap length of 200 or more)")
    # The upstreams' ports: the port an event is first seen from.
    first = Counter(pkts[0][1] for pkts in seen.values())
    top = first.most_common(1)[0][1]
    upstreams = {port for port, n in first.items() if n >= top // 20}
    files = sorted(f for f in os.listdir(arrivals) if f.startswith("w2-") and f.endswith(".txt"))
    if not files:
        sys.exit(f"{arrivals}: no w2-*.txt files (mcpflip-bench --w2-arrivals {arrivals})")
    print(f"upstream ports {sorted(upstreams)}; {len(seen)} events captured; times in us")
    print(
        f"{'run':34} {'events':>7}  {'total p50/p99':>13}  {'upstream p50':>12}  "
        f"{'proxy hop p50/p90/p99':>21}  {'client p50/p90/p99':>18}  "
        f"{'burst first-in->out p50/p90/p99':>27}  proxy hop p50 by position in burst"
    )
    for name in files:
        rows = []
        for line in open(os.path.join(arrivals, name)):
            ts, at = map(int, line.split())
            pkts = seen.get(ts)
            # A ts_us two streams share (same microsecond) is ambiguous: skipped.
            if not pkts or sum(1 for _, p in pkts if p in upstreams) != 1:
                continue
            up = next(t for t, p in pkts if p in upstreams)
            out = [t for t, p in pkts if p not in upstreams]
            if len(out) > 1:
                continue
            rows.append((ts, up, out[0] if out else None, at))
        if not rows:
            print(f"{name[:-4]:34} no event of this run in the capture")
            continue
        total = [at - ts for ts, _, _, at in rows]
        upstream = [up - ts for ts, up, _, _ in rows]
        hop = [out - up for _, up, out, _ in rows if out is not None]
        client = [at - (out if out is not None else up) for _, up, out, at in rows]
        # Bursts: upstream packets less than 100 us apart.
        bursts, cur = [], []
        for r in sorted((r for r in rows if r[2] is not None), key=lambda r: r[1]):
            if cur and r[1] - cur[-1][1] > 100:
                bursts.append(cur)
                cur = []
            cur.append(r)
        if cur:
            bursts.append(cur)
        wake = [min(r[2] for r in b) - b[0][1] for b in bursts]
        by_pos = defaultdict(list)
        for b in bursts:
            for i, r in enumerate(b):
                by_pos[min(i, 30) // 10].append(r[2] - r[1])

        def three(v):
            return "/".join(f"{quantile(v, p):.0f}" for p in (0.5, 0.9, 0.99))

        pos = " ".join(f"{k * 10}+:{quantile(v, 0.5):.0f}" for k, v in sorted(by_pos.items()))
        print(
            f"{name[:-4]:34} {len(rows):>7}  {quantile(total, .5):>6.0f}/{quantile(total, .99):<6.0f}"
            f"  {quantile(upstream, .5):>12.0f}  {three(hop) if hop else '-':>21}  {three(client):>18}"
            f"  {three(wake) if hop else '-':>27}  {pos}"
        )


if __name__ == "__main__":
    main()
