#!/usr/bin/env python3
"""Direct (no proxy) interop matrix of the SDK peers: every server x transport x client.

  tests/peers/selfcheck.py [--all] [--servers py1,py2,ts] [--clients py1,py2,ts]

Each client does: ready -> tools -> call whoami -> call slow {"seconds":0.2} -> call interrupted -> quit.
In stateful streamable-http mode without --json-response, `interrupted` must also have been
resumed: the server's stderr must show `RESUME ... session=<the client's session id>`.
--all also covers --json-response servers and the py2 client in --mode legacy (py2L).
Needs the peers installed (tests/peers/install.sh); honours $PEERS_DIR. stdlib only.
"""

import argparse
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEERS = Path(os.environ.get("PEERS_DIR", HERE.parent.parent / "target" / "peers"))
TOOLS = ["get_document", "interrupted", "list_documents", "search_documents", "slow", "whoami"]
PROCS: list[subprocess.Popen] = []


def server_cmd(name: str) -> list[str]:
    return ["node", str(HERE / "server.mjs")] if name == "ts" else [str(PEERS / name / "bin/python"), str(HERE / "server.py")]


def client_cmd(name: str) -> list[str]:
    if name == "ts":
        return ["node", str(HERE / "client.mjs")]
    if name == "py2L":
        return [str(PEERS / "py2/bin/python"), str(HERE / "client.py"), "--mode", "legacy"]
    return [str(PEERS / name / "bin/python"), str(HERE / "client.py")]


def spawn(cmd: list[str]) -> tuple[subprocess.Popen, "queue.Queue[str | None]"]:
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True, env={**os.environ, "PEERS_DIR": str(PEERS)})
    PROCS.append(p)
    q: "queue.Queue[str | None]" = queue.Queue()

    def pump(stream, sink):
        for line in stream:
            sink(line.rstrip("\n"))
        if stream is p.stdout:
            q.put(None)

    p.stderr_lines = []  # type: ignore[attr-defined]
    threading.Thread(target=pump, args=(p.stdout, q.put), daemon=True).start()
    threading.Thread(target=pump, args=(p.stderr, p.stderr_lines.append), daemon=True).start()  # type: ignore[attr-defined]
    return p, q


def kill(p: subprocess.Popen) -> None:
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(3)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    p.wait()


def next_line(q, timeout: float) -> str:
    line = q.get(timeout=timeout)
    if line is None:
        raise RuntimeError("process closed stdout")
    return line


def run_client(client: str, url: str, transport: str, slot: str, server: subprocess.Popen, resumable: bool) -> dict:
    p, q = spawn(client_cmd(client) + ["--url", url, "--transport", transport])
    info = {"protocol": "-", "sid": "-", "resumed": "-"}
    try:
        def expect(event: str, timeout: float = 20) -> dict:
            msg = json.loads(next_line(q, timeout))
            if msg.get("event") != event:
                raise RuntimeError(f"expected {event}, got {msg}")
            return msg

        def send(line: str) -> None:
            p.stdin.write(line + "\n")
            p.stdin.flush()

        ready = expect("ready")
        info.update(protocol=ready.get("protocol"), sid="yes" if ready.get("session_id") else "no")
        send("tools")
        names = expect("tools")["names"]
        assert names == TOOLS, f"tools: {names}"
        send("call whoami")
        r = expect("result")
        assert r["ok"] and r["text"] == slot, f"whoami: {r}"
        send('call slow {"seconds":0.2}')
        r = expect("result")
        assert r["ok"] and r["text"] == "slept", f"slow: {r}"
        send("call interrupted")
        r = expect("result")
        assert r["ok"] and r["text"] == slot, f"interrupted: {r}"
        # No session (py2 client + py2 server speak 2026-07-28: one JSON POST per request) -> nothing to resume.
        if resumable and ready.get("session_id"):
            mark = f" session={ready['session_id']}"
            deadline = time.monotonic() + 2
            while not any(ln.startswith("RESUME ") and ln.endswith(mark) for ln in server.stderr_lines):  # type: ignore[attr-defined]
                assert time.monotonic() < deadline, "interrupted: no RESUME line in server stderr"
                time.sleep(0.05)
            info["resumed"] = "yes"
        send("quit")
        expect("closed")
        rc = p.wait(10)
        assert rc == 0, f"client exit code {rc}"
        info["result"] = "PASS"
    except Exception as e:  # noqa: BLE001
        err = " | ".join(p.stderr_lines[-3:])  # type: ignore[attr-defined]
        info["result"] = f"FAIL {type(e).__name__}: {e} {err}"[:300]
    finally:
        kill(p)
    return info


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--all", action="store_true")
    ap.add_argument("--servers", default="py1,py2,ts")
    ap.add_argument("--clients", default="py1,py2,ts")
    a = ap.parse_args()
    modes = [("sse", []), ("streamable-http", []), ("streamable-http", ["--stateless"])]
    clients = a.clients.split(",")
    if a.all:
        modes += [("streamable-http", ["--json-response"]), ("streamable-http", ["--stateless", "--json-response"])]
        clients.append("py2L")
    rows, failed = [], 0
    for server in a.servers.split(","):
        for transport, flags in modes:
            mode = transport + "".join(" " + f for f in flags)
            slot = f"{server}-slot"
            sp, sq = spawn(server_cmd(server) + ["--port", "0", "--slot", slot, "--transport", transport, *flags])
            try:
                t0 = time.monotonic()
                line = next_line(sq, 30)
                assert line.startswith("READY "), line
                port = int(line.split()[1])
                print(f"  {server} {mode}: READY after {time.monotonic() - t0:.1f}s", file=sys.stderr, flush=True)
                url = f"http://127.0.0.1:{port}" + ("/sse" if transport == "sse" else "/mcp")
                for client in clients:
                    resumable = transport == "streamable-http" and not flags
                    info = run_client(client, url, transport, slot, sp, resumable)
                    failed += info["result"] != "PASS"
                    rows.append((server, mode, client, info["protocol"], info["sid"], info["resumed"], info["result"]))
                    print(f"  {server:4} {mode:38} {client:5} {info['result']}", file=sys.stderr, flush=True)
            except Exception as e:  # noqa: BLE001
                failed += 1
                rows.append((server, mode, "*", "-", "-", "-", f"FAIL server: {e}: {' | '.join(sp.stderr_lines[:3])}"[:300]))  # type: ignore[attr-defined]
            finally:
                kill(sp)

    hdr = ("server", "transport", "client", "protocol", "sid", "resumed", "result")
    widths = [max(len(str(r[i])) for r in rows + [hdr]) for i in range(6)]
    print(" | ".join(h.ljust(w) for h, w in zip(hdr, widths + [0])))
    print("-+-".join("-" * w for w in widths + [6]))
    for r in rows:
        print(" | ".join(str(c).ljust(w) for c, w in zip(r, widths + [0])))
    print(f"\n{len(rows) - failed}/{len(rows)} passed")
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        for proc in PROCS:
            kill(proc)
