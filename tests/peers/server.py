#!/usr/bin/env python3
"""MCP test upstream on the official Python SDK (works with mcp 1.x and 2.x).

  server.py --port N --slot NAME --transport sse|streamable-http [--stateless] [--json-response] [--modern-only]

Binds 127.0.0.1 (--port 0 picks a free port) and prints `READY <port>` on stdout
once listening. Legacy SSE: GET /sse + POST /messages/?session_id=..;
Streamable HTTP: /mcp. All logging goes to stderr, nothing else to stdout.

Stateful Streamable HTTP (not --stateless) is resumable: each session gets a
small in-memory event store and SSE events carry `retry: 200`, so the tool
`interrupted` can close its own SSE stream and the client resumes with
GET + Last-Event-ID. Every request carrying a Last-Event-ID header is logged
to stderr as `RESUME <last-event-id> method=<METHOD> session=<id or ->`.
"""

import argparse
import json
import sys
import uuid
from collections import OrderedDict
from importlib.metadata import version

import anyio
import uvicorn
from mcp.server.streamable_http import EventMessage, EventStore

MCP_VERSION = version("mcp")
MCP_MAJOR = int(MCP_VERSION.split(".")[0])

DOCS = {
    "health": "status: ok",
    "readme": "mcpflip is a blue-green reverse proxy for MCP servers.",
    "changelog": "v0.1: first release of the test document store.",
}


RETRY_MS = 200  # `retry:` of the SSE priming events: how long a client waits before resuming


class MemoryEventStore(EventStore):
    """Minimal in-memory EventStore: events in arrival order, ids `<8 hex>-<n>`.

    A priming event is stored with message None; it is a valid Last-Event-ID but
    is never replayed. The newest MAX_EVENTS events are kept.
    """

    MAX_EVENTS = 1000

    def __init__(self) -> None:
        self._prefix = uuid.uuid4().hex[:8]
        self._count = 0
        self._events: OrderedDict[str, tuple[str, object]] = OrderedDict()  # event id -> (stream id, message)

    async def store_event(self, stream_id, message):
        self._count += 1
        event_id = f"{self._prefix}-{self._count}"
        self._events[event_id] = (stream_id, message)
        if len(self._events) > self.MAX_EVENTS:
            self._events.popitem(last=False)
        return event_id

    async def replay_events_after(self, last_event_id, send_callback):
        if last_event_id not in self._events:
            return None  # unknown or evicted: nothing to replay
        stream_id = self._events[last_event_id][0]
        after = False
        for event_id, (sid, message) in list(self._events.items()):
            if event_id == last_event_id:
                after = True
            elif after and sid == stream_id and message is not None:
                await send_callback(EventMessage(message, event_id))
        return stream_id


def one_event_store_per_session() -> None:
    """The SDK hands the one configured EventStore to every session, and the Python
    SDK's stream ids are the JSON-RPC request ids ("1", "2", ...), which repeat
    across sessions, so a shared store could replay another session's response.
    Give each session transport a fresh MemoryEventStore instead."""
    import mcp.server.streamable_http_manager as manager

    base = manager.StreamableHTTPServerTransport

    class Transport(base):
        def __init__(self, *args, **kwargs):
            if kwargs.get("event_store") is not None:
                kwargs["event_store"] = MemoryEventStore()
            super().__init__(*args, **kwargs)

    manager.StreamableHTTPServerTransport = Transport


def log_resumes(app):
    """ASGI wrapper: prints `RESUME <last-event-id> method=M session=S` to stderr."""
    async def wrapped(scope, receive, send):
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            if b"last-event-id" in headers:
                sid = headers.get(b"mcp-session-id", b"-").decode("latin-1")
                print(f"RESUME {headers[b'last-event-id'].decode('latin-1')} method={scope['method']} session={sid}",
                      file=sys.stderr, flush=True)
        await app(scope, receive, send)
    return wrapped


def modern_only(app):
    """ASGI wrapper: a server that speaks 2026-07-28 only. Requests without an
    `Mcp-Method` header (every pre-2026 client's, `initialize` included) get 400."""
    async def wrapped(scope, receive, send):
        if scope["type"] == "http" and b"mcp-method" not in dict(scope["headers"]):
            body = json.dumps({"jsonrpc": "2.0", "id": None, "error": {
                "code": -32600, "message": "this server speaks protocol 2026-07-28 only"}}).encode()
            await send({"type": "http.response.start", "status": 400,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": body})
            return
        await app(scope, receive, send)
    return wrapped


def build_app(a: argparse.Namespace):
    name = f"mcpflip-peer-{a.slot}"
    resumable = a.transport == "streamable-http" and not a.stateless
    event_store = MemoryEventStore() if resumable else None
    retry_interval = RETRY_MS if resumable else None
    if resumable:
        one_event_store_per_session()
    if MCP_MAJOR >= 2:  # 2.x renamed FastMCP -> MCPServer; transport options moved to *_app()
        from mcp.server.mcpserver import Context, MCPServer
        from mcp.server.mcpserver.exceptions import ToolError

        mcp = MCPServer(name, log_level="WARNING")
    else:
        from mcp.server.fastmcp import Context, FastMCP
        from mcp.server.fastmcp.exceptions import ToolError

        mcp = FastMCP(name, host="127.0.0.1", port=a.port, log_level="WARNING",
                      stateless_http=a.stateless, json_response=a.json_response,
                      event_store=event_store, retry_interval=retry_interval)

    @mcp.tool()
    def whoami() -> str:
        """Return this upstream's slot name."""
        return a.slot

    @mcp.tool()
    async def slow(seconds: float) -> str:
        """Sleep `seconds`, then return 'slept'."""
        await anyio.sleep(seconds)
        return "slept"

    @mcp.tool()
    async def interrupted(ctx: Context) -> str:
        """Close this call's SSE stream, sleep 0.5 s, return the slot name (resumed via Last-Event-ID)."""
        # No-op where the SDK passes no close callback: sse, --stateless, --json-response,
        # protocol < 2025-11-25, and py2's 2026-07-28 path (one JSON POST per request).
        await ctx.close_sse_stream()
        await anyio.sleep(0.5)
        return a.slot

    @mcp.tool()
    def get_document(id: str) -> str:
        """Return a document's text ('health' -> contains 'ok')."""
        if id not in DOCS:
            raise ToolError(f"no such document: {id}")  # 2.x hides other exceptions' text
        return f"{DOCS[id]} (slot {a.slot})" if id == "health" else DOCS[id]

    @mcp.tool()
    def list_documents() -> str:
        """JSON array of document ids."""
        return json.dumps(sorted(DOCS))

    @mcp.tool()
    def search_documents(query: str) -> str:
        """JSON array of ids whose id or text contains `query` (case-insensitive)."""
        q = query.lower()
        return json.dumps(sorted(k for k, v in DOCS.items() if q in k.lower() or q in v.lower()))

    if a.transport == "sse":
        app = mcp.sse_app(host="127.0.0.1") if MCP_MAJOR >= 2 else mcp.sse_app()
    elif MCP_MAJOR >= 2:
        app = mcp.streamable_http_app(host="127.0.0.1", stateless_http=a.stateless, json_response=a.json_response,
                                      event_store=event_store, retry_interval=retry_interval)
    else:
        app = mcp.streamable_http_app()
    if a.modern_only:
        app = modern_only(app)
    return log_resumes(app)


class Server(uvicorn.Server):
    async def startup(self, sockets=None):
        await super().startup(sockets)
        if self.started:
            port = self.servers[0].sockets[0].getsockname()[1]
            print(f"READY {port}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--slot", required=True)
    p.add_argument("--transport", choices=["sse", "streamable-http"], required=True)
    p.add_argument("--stateless", action="store_true")
    p.add_argument("--json-response", action="store_true")
    p.add_argument("--modern-only", action="store_true",
                   help="refuse pre-2026-07-28 requests (mcp 2.x): a server that speaks 2026-07-28 only")
    a = p.parse_args()
    print(f"server.py: mcp {MCP_VERSION} slot={a.slot} transport={a.transport}"
          f" stateless={a.stateless} json={a.json_response}", file=sys.stderr, flush=True)
    cfg = uvicorn.Config(build_app(a), host="127.0.0.1", port=a.port, log_level="warning",
                         access_log=False, timeout_graceful_shutdown=1, lifespan="on")
    Server(cfg).run()


if __name__ == "__main__":
    main()
