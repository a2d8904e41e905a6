#!/usr/bin/env python3
"""The fixed-count clients of bench/profile/run.sh (stdlib only).

  client.py calls HOST:PORT N C   N tools/call POSTs on C keep-alive connections (one session)
  client.py wrk HOST:PORT FILE    opens one session and writes wrk's Lua script of the same
                                  tools/call POST on it to FILE
  client.py streams HOST:PORT N   opens N SSE sessions (half legacy GET /sse, half Streamable
                                  HTTP GET /mcp), prints "open", holds them until stdin closes
  client.py ticker HOST:PORT N MS opens N `GET /ticker?interval_ms=MS&pad=256&phase_ms=F` streams
                                  (their phases F spread evenly over MS, as W2's), prints
                                  "open"; on each stdin line reads them for that many seconds
                                  and prints the events received in that time
"""
import http.client
import os
import selectors
import socket
import sys
import threading
import time

INIT = b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"profile","version":"1"}}}'
INITIALIZED = b'{"jsonrpc":"2.0","method":"notifications/initialized"}'
CALL = b'{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"get_document","arguments":{"id":"health"}}}'
# What a good answer to CALL holds.
EXPECT = b"ok"
# SSE=1: the call is `slow` for 0 seconds, which the demo server answers with an SSE stream
# (one event, then its end), as the Python SDK's server answers every POST.
if os.environ.get("SSE"):
    CALL = b'{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"slow","arguments":{"seconds":0}}}'
    EXPECT = b'"result"'
HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
# KEEPALIVE=1: every request says `Connection: keep-alive`, as the MCP SDKs' HTTP clients
# (httpx, undici) do.
if os.environ.get("KEEPALIVE"):
    HEADERS["Connection"] = "keep-alive"


def session(host, port):
    c = http.client.HTTPConnection(host, port, timeout=60)
    c.request("POST", "/mcp", INIT, HEADERS)
    r = c.getresponse()
    r.read()
    if r.status != 200:
        sys.exit(f"initialize answered {r.status}")
    sid = r.getheader("Mcp-Session-Id")
    h = dict(HEADERS, **{"Mcp-Session-Id": sid})
    c.request("POST", "/mcp", INITIALIZED, h)
    c.getresponse().read()
    return c, h


def calls(host, port, n, conns):
    c0, h = session(host, port)
    errors = []

    def worker(count):
        c = http.client.HTTPConnection(host, port, timeout=300)
        for _ in range(count):
            c.request("POST", "/mcp", CALL, h)
            r = c.getresponse()
            body = r.read()
            if r.status != 200 or EXPECT not in body:
                errors.append(r.status)
        c.close()

    threads = [threading.Thread(target=worker, args=(n // conns + (i < n % conns),)) for i in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    c0.close()
    if errors:
        sys.exit(f"{len(errors)} calls failed: {errors[:5]}")


def wrk_script(host, port, path):
    c, h = session(host, port)
    c.close()
    lines = ['wrk.method = "POST"', f"wrk.body = '{CALL.decode()}'"]
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in h.items()]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def read_until(s, marker):
    buf = b""
    while marker not in buf:
        chunk = s.recv(4096)
        if not chunk:
            sys.exit(f"stream closed before {marker!r}: {buf[:200]!r}")
        buf += chunk
    return buf


def streams(host, port, n):
    held = []
    for i in range(n):
        s = socket.create_connection((host, port))
        if i % 2 == 0:
            s.sendall(f"GET /sse HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n\r\n".encode())
            read_until(s, b"event: endpoint")
        else:
            c, h = session(host, port)
            sid = h["Mcp-Session-Id"]
            c.close()
            s.sendall(f"GET /mcp HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\nMcp-Session-Id: {sid}\r\n\r\n".encode())
            head = read_until(s, b"\r\n\r\n")
            if b" 200 " not in head.split(b"\r\n")[0]:
                sys.exit(f"GET /mcp answered {head[:100]!r}")
        held.append(s)
    print("open", flush=True)
    sys.stdin.read()


def ticker(host, port, n, ms):
    sel = selectors.DefaultSelector()
    for i in range(n):
        s = socket.create_connection((host, port))
        phase = i * ms // n
        s.sendall(f"GET /ticker?interval_ms={ms}&pad=256&phase_ms={phase} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        head = read_until(s, b"\r\n\r\n")
        if b" 200 " not in head.split(b"\r\n")[0]:
            sys.exit(f"GET /ticker answered {head[:100]!r}")
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    print("open", flush=True)
    for line in sys.stdin:
        end = time.monotonic() + float(line)
        events = 0
        while (left := end - time.monotonic()) > 0:
            for key, _ in sel.select(left):
                data = key.fileobj.recv(65536)
                if not data:
                    sys.exit("a ticker stream closed")
                events += data.count(b"ts_us")
        print(events, flush=True)


if __name__ == "__main__":
    mode, addr = sys.argv[1], sys.argv[2]
    host, port = addr.rsplit(":", 1)
    if mode == "calls":
        calls(host, int(port), int(sys.argv[3]), int(sys.argv[4]))
    elif mode == "wrk":
        wrk_script(host, int(port), sys.argv[3])
    elif mode == "ticker":
        ticker(host, int(port), int(sys.argv[3]), int(sys.argv[4]))
    else:
        streams(host, int(port), int(sys.argv[3]))
