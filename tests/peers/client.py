#!/usr/bin/env python3
"""MCP test client on the official Python SDK (works with mcp 1.x and 2.x).

  client.py --url URL --transport sse|streamable-http [--mode auto|legacy]

Talks to the parent as JSON lines: prints {"event":"ready",...} after the
handshake, then reads commands from stdin, one per line:
  call TOOL [JSON-args]   -> {"event":"result","tool":..,"ok":true,"text":..} | ok:false + error
  tools                   -> {"event":"tools","names":[...]}
  listen                  -> {"event":"listening"} once a `subscriptions/listen` stream is
                             acknowledged (mcp 2.x at protocol 2026-07-28 only)
  unlisten                -> {"event":"unlistened"} once that stream is closed
  quit / EOF              -> {"event":"closed"}, exit 0
Any fatal exception -> {"event":"error","error":..}, exit 1.
--mode only matters on mcp 2.x: "auto" (the SDK default) first probes
server/discover (protocol 2026-07-28) and falls back to initialize; "legacy"
always does the initialize handshake.
"""

import argparse
import json
import sys
from contextlib import AsyncExitStack
from importlib.metadata import version

import anyio

MCP_MAJOR = int(version("mcp").split(".")[0])


def emit(**obj) -> None:
    print(json.dumps(obj), flush=True)


def describe(e: BaseException) -> str:
    while isinstance(e, BaseExceptionGroup) and len(e.exceptions) == 1:
        e = e.exceptions[0]
    return f"{type(e).__name__}: {e}"


def session_id_hook(state: dict):
    async def on_response(resp) -> None:  # streamable HTTP: remember Mcp-Session-Id
        sid = resp.headers.get("mcp-session-id")
        if sid:
            state["session_id"] = sid
    return on_response


async def connect(stack: AsyncExitStack, a, state: dict):
    """Returns an object with call_tool/list_tools, after the handshake."""
    from mcp.client.sse import sse_client
    from mcp.client.streamable_http import streamable_http_client

    on_sid = lambda sid: state.__setitem__("session_id", sid)  # noqa: E731
    if MCP_MAJOR >= 2:
        from mcp import Client
        from mcp.shared._httpx_utils import create_mcp_http_client

        if a.transport == "sse":
            transport = sse_client(a.url, on_session_created=on_sid)
        else:
            http = await stack.enter_async_context(create_mcp_http_client())
            http.event_hooks["response"].append(session_id_hook(state))
            transport = streamable_http_client(a.url, http_client=http)
        client = await stack.enter_async_context(Client(transport, mode=a.mode))
        state["protocol"] = client.protocol_version
        return client

    from mcp import ClientSession
    from mcp.shared._httpx_utils import create_mcp_http_client

    if a.transport == "sse":
        read, write = await stack.enter_async_context(sse_client(a.url, on_session_created=on_sid))
    else:
        http = await stack.enter_async_context(create_mcp_http_client())
        http.event_hooks["response"].append(session_id_hook(state))
        read, write, _ = await stack.enter_async_context(streamable_http_client(a.url, http_client=http))
    session = await stack.enter_async_context(ClientSession(read, write))
    state["protocol"] = (await session.initialize()).protocolVersion
    return session


class Listener:
    """One `subscriptions/listen` stream held open in the background."""

    def __init__(self, tg) -> None:
        self.tg = tg
        self.stop: anyio.Event | None = None
        self.closed: anyio.Event | None = None

    async def start(self, client) -> None:
        ready = anyio.Event()
        self.stop, self.closed = anyio.Event(), anyio.Event()
        error: list[str] = []

        async def hold() -> None:
            try:
                async with client.listen(tools_list_changed=True):
                    ready.set()
                    await self.stop.wait()
            except Exception as e:  # reported as the listen command's result
                error.append(describe(e))
            finally:
                ready.set()
                self.closed.set()

        self.tg.start_soon(hold)
        await ready.wait()
        if error:
            emit(event="result", tool="listen", ok=False, error=error[0])
        else:
            emit(event="listening")

    async def close(self) -> None:
        if self.stop is None or self.closed is None:
            emit(event="result", tool="unlisten", ok=False, error="not listening")
            return
        self.stop.set()
        await self.closed.wait()
        self.stop = self.closed = None
        emit(event="unlistened")


async def handle(client, line: str, listener: "Listener") -> bool:
    """Runs one command; returns False on quit."""
    cmd, _, rest = line.strip().partition(" ")
    if cmd == "quit":
        return False
    if cmd == "listen":
        await listener.start(client)
        return True
    if cmd == "unlisten":
        await listener.close()
        return True
    if cmd == "tools":
        names = sorted(t.name for t in (await client.list_tools()).tools)
        emit(event="tools", names=names)
    elif cmd == "call":
        tool, _, args = rest.strip().partition(" ")
        try:
            res = await client.call_tool(tool, json.loads(args) if args.strip() else {})
            text = "".join(getattr(c, "text", "") for c in res.content)
            if getattr(res, "is_error", None) or getattr(res, "isError", None):
                emit(event="result", tool=tool, ok=False, error=text or "isError")
            else:
                emit(event="result", tool=tool, ok=True, text=text)
        except Exception as e:  # a failed call must not kill the client
            emit(event="result", tool=tool, ok=False, error=describe(e))
    elif cmd:
        emit(event="result", tool=cmd, ok=False, error=f"unknown command: {cmd}")
    return True


async def run(a) -> None:
    state: dict = {}
    async with AsyncExitStack() as stack:
        client = await connect(stack, a, state)
        emit(event="ready", protocol=state.get("protocol"), session_id=state.get("session_id"))
        async with anyio.create_task_group() as tg:
            listener = Listener(tg)
            while True:
                line = await anyio.to_thread.run_sync(sys.stdin.readline)
                if not line or not await handle(client, line, listener):
                    break
            if listener.stop is not None:
                listener.stop.set()
    emit(event="closed")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--transport", choices=["sse", "streamable-http"], required=True)
    p.add_argument("--mode", choices=["auto", "legacy"], default="auto")
    a = p.parse_args()
    try:
        anyio.run(run, a)
    except BaseException as e:  # noqa: BLE001
        emit(event="error", error=describe(e))
        sys.exit(1)


if __name__ == "__main__":
    main()
