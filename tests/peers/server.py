#!/usr/bin/env python3
"""MCP test upstream on the official Python SDK (works with mcp 1.x and 2.x).

  server.py --port N --slot NAME --transport sse|streamable-http [--stateless] [--json-response]

Binds 127.0.0.1 (--port 0 picks a free port) and prints `READY <port>` on stdout
once listening. Legacy SSE: GET /sse + POST /messages/?session_id=..;
Streamable HTTP: /mcp. All logging goes to stderr, nothing else to stdout.
"""

import argparse
import json
import sys
from importlib.metadata import version

import anyio
import uvicorn

MCP_VERSION = version("mcp")
MCP_MAJOR = int(MCP_VERSION.split(".")[0])

DOCS = {
    "health": "status: ok",
    "readme": "mcpflip is a blue-green reverse proxy for MCP servers.",
    "changelog": "v0.1: first release of the test document store.",
}


def build_app(a: argparse.Namespace):
    name = f"mcpflip-peer-{a.slot}"
    if MCP_MAJOR >= 2:  # 2.x renamed FastMCP -> MCPServer; transport options moved to *_app()
        from mcp.server.mcpserver import MCPServer
        from mcp.server.mcpserver.exceptions import ToolError

        mcp = MCPServer(name, log_level="WARNING")
    else:
        from mcp.server.fastmcp import FastMCP
        from mcp.server.fastmcp.exceptions import ToolError

        mcp = FastMCP(name, host="127.0.0.1", port=a.port, log_level="WARNING",
                      stateless_http=a.stateless, json_response=a.json_response)

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
        return mcp.sse_app(host="127.0.0.1") if MCP_MAJOR >= 2 else mcp.sse_app()
    if MCP_MAJOR >= 2:
        return mcp.streamable_http_app(host="127.0.0.1", stateless_http=a.stateless, json_response=a.json_response)
    return mcp.streamable_http_app()


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
    a = p.parse_args()
    print(f"server.py: mcp {MCP_VERSION} slot={a.slot} transport={a.transport}"
          f" stateless={a.stateless} json={a.json_response}", file=sys.stderr, flush=True)
    cfg = uvicorn.Config(build_app(a), host="127.0.0.1", port=a.port, log_level="warning",
                         access_log=False, timeout_graceful_shutdown=1, lifespan="on")
    Server(cfg).run()


if __name__ == "__main__":
    main()
