// Re-exports what server.mjs / client.mjs need from the TypeScript MCP SDK.
// install.sh copies this file into $PEERS_DIR/node/ (next to node_modules) so
// the bare imports below resolve there; the scripts import it by absolute path.
export { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
export { SSEServerTransport } from '@modelcontextprotocol/sdk/server/sse.js';
export { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
export { Client } from '@modelcontextprotocol/sdk/client/index.js';
export { SSEClientTransport } from '@modelcontextprotocol/sdk/client/sse.js';
export { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
export { z } from 'zod';
