#!/usr/bin/env node
// MCP test upstream on the official TypeScript SDK (@modelcontextprotocol/sdk).
//
//   node server.mjs --port N --slot NAME --transport sse|streamable-http [--stateless] [--json-response]
//
// Binds 127.0.0.1 (--port 0 picks a free port), prints `READY <port>` on stdout.
// Legacy SSE: GET /sse + POST /messages/?sessionId=..; Streamable HTTP: /mcp.
// Stateful Streamable HTTP is resumable: each session gets a small in-memory event
// store and `retry: 200` (ms), so the tool `interrupted` can close its own SSE stream
// and the client resumes with GET + Last-Event-ID. Every request carrying a
// Last-Event-ID header is logged to stderr as `RESUME <id> method=<M> session=<id or ->`.
// The SDK is loaded from $PEERS_DIR/node (default <repo>/target/peers/node), see install.sh.
import http from 'node:http';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import { parseArgs } from 'node:util';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const peersDir = process.env.PEERS_DIR || path.resolve(here, '../../target/peers');
const sdkPath = path.join(peersDir, 'node', 'sdk.mjs');
const { McpServer, SSEServerTransport, StreamableHTTPServerTransport, z } = await import(pathToFileURL(sdkPath).href)
  .catch((e) => { console.error(`server.mjs: cannot load ${sdkPath} (run tests/peers/install.sh node): ${e}`); process.exit(2); });

const { values: a } = parseArgs({
  options: {
    port: { type: 'string' }, slot: { type: 'string' }, transport: { type: 'string' },
    stateless: { type: 'boolean', default: false }, 'json-response': { type: 'boolean', default: false },
  },
});
if (!a.port || !a.slot || !['sse', 'streamable-http'].includes(a.transport)) {
  console.error('usage: server.mjs --port N --slot NAME --transport sse|streamable-http [--stateless] [--json-response]');
  process.exit(2);
}

const DOCS = {
  health: 'status: ok',
  readme: 'mcpflip is a blue-green reverse proxy for MCP servers.',
  changelog: 'v0.1: first release of the test document store.',
};
const text = (t) => ({ content: [{ type: 'text', text: t }] });
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const RETRY_MS = 200; // `retry:` of the SSE priming events: how long a client waits before resuming

// Minimal in-memory EventStore (one per session): events in arrival order, ids `<8 hex>-<n>`.
// Priming events (stored as `{}`) are valid Last-Event-IDs but are never replayed. Not the
// SDK's examples/shared/inMemoryEventStore.js: that one orders events by sorting
// `<stream>_<Date.now()>_<random>` ids, so two events of one stream stored in the same
// millisecond can be replayed out of order or skipped.
class MemoryEventStore {
  constructor() { this.prefix = randomUUID().slice(0, 8); this.count = 0; this.events = new Map(); }
  async storeEvent(streamId, message) {
    const eventId = `${this.prefix}-${++this.count}`;
    this.events.set(eventId, { streamId, message });
    if (this.events.size > 1000) this.events.delete(this.events.keys().next().value);
    return eventId;
  }
  // Lets the transport answer 400 to an unknown Last-Event-ID and 409 to a second resume of a live stream.
  async getStreamIdForEventId(eventId) { return this.events.get(eventId)?.streamId; }
  async replayEventsAfter(lastEventId, { send }) {
    const last = this.events.get(lastEventId);
    if (!last) return '';
    let after = false;
    for (const [eventId, { streamId, message }] of [...this.events]) {
      if (eventId === lastEventId) after = true;
      else if (after && streamId === last.streamId && message?.jsonrpc) await send(eventId, message);
    }
    return last.streamId;
  }
}

// One McpServer per connection/session (an McpServer can only be connected to one transport).
function makeServer() {
  const s = new McpServer({ name: `mcpflip-peer-${a.slot}`, version: '1.0.0' });
  s.registerTool('whoami', { description: "Return this upstream's slot name." }, async () => text(a.slot));
  s.registerTool('slow', { description: "Sleep `seconds`, then return 'slept'.", inputSchema: { seconds: z.number() } },
    async ({ seconds }) => { await new Promise((r) => setTimeout(r, seconds * 1000)); return text('slept'); });
  s.registerTool('interrupted', { description: 'Close this call\'s SSE stream, sleep 0.5 s, return the slot name.' },
    async (extra) => { // no inputSchema: the SDK passes only `extra`
      // Only set with an event store, an SSE response and protocol >= 2025-11-25 (not sse, --stateless, --json-response).
      extra.closeSSEStream?.();
      await sleep(500);
      return text(a.slot);
    });
  s.registerTool('get_document', { description: "Return a document's text.", inputSchema: { id: z.string() } },
    async ({ id }) => {
      if (!(id in DOCS)) throw new Error(`no such document: ${id}`);
      return text(id === 'health' ? `${DOCS[id]} (slot ${a.slot})` : DOCS[id]);
    });
  s.registerTool('list_documents', { description: 'JSON array of document ids.' },
    async () => text(JSON.stringify(Object.keys(DOCS).sort())));
  s.registerTool('search_documents', { description: 'JSON array of matching ids.', inputSchema: { query: z.string() } },
    async ({ query }) => {
      const q = query.toLowerCase();
      return text(JSON.stringify(Object.keys(DOCS).sort().filter((k) => k.includes(q) || DOCS[k].toLowerCase().includes(q))));
    });
  return s;
}

function sendError(res, status, code, message) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify({ jsonrpc: '2.0', error: { code, message }, id: null }));
}

const sessions = new Map(); // session id -> transport (SSE or stateful Streamable HTTP)

async function handle(req, res) {
  const url = new URL(req.url, 'http://127.0.0.1');
  if (req.headers['last-event-id'] !== undefined) {
    console.error(`RESUME ${req.headers['last-event-id']} method=${req.method} session=${req.headers['mcp-session-id'] ?? '-'}`);
  }
  if (a.transport === 'sse') {
    if (req.method === 'GET' && url.pathname === '/sse') {
      const t = new SSEServerTransport('/messages/', res);
      sessions.set(t.sessionId, t);
      res.on('close', () => sessions.delete(t.sessionId));
      return makeServer().connect(t);
    }
    if (req.method === 'POST' && (url.pathname === '/messages/' || url.pathname === '/messages')) {
      const t = sessions.get(url.searchParams.get('sessionId'));
      if (!t) return sendError(res, 404, -32001, 'Session not found');
      return t.handlePostMessage(req, res);
    }
    return sendError(res, 404, -32000, 'Not found');
  }

  if (url.pathname !== '/mcp') return sendError(res, 404, -32000, 'Not found');
  const enableJsonResponse = a['json-response'];
  if (a.stateless) {
    if (req.method !== 'POST') return sendError(res, 405, -32000, 'Method not allowed.');
    const t = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined, enableJsonResponse });
    const s = makeServer();
    res.on('close', () => { t.close(); s.close(); });
    await s.connect(t);
    return t.handleRequest(req, res);
  }
  const sid = req.headers['mcp-session-id'];
  if (sid) {
    const t = sessions.get(sid);
    if (!t) return sendError(res, 404, -32001, 'Session not found');
    return t.handleRequest(req, res);
  }
  if (req.method !== 'POST') return sendError(res, 400, -32000, 'Bad Request: No valid session ID provided');
  const t = new StreamableHTTPServerTransport({
    sessionIdGenerator: () => randomUUID(),
    enableJsonResponse,
    eventStore: new MemoryEventStore(),
    retryInterval: RETRY_MS,
    onsessioninitialized: (id) => sessions.set(id, t),
  });
  t.onclose = () => t.sessionId && sessions.delete(t.sessionId);
  await makeServer().connect(t);
  await t.handleRequest(req, res); // the transport itself rejects a non-initialize first request
  if (!t.sessionId) t.close();
}

const server = http.createServer((req, res) => {
  handle(req, res).catch((e) => {
    console.error('server.mjs: request failed:', e);
    if (!res.headersSent) sendError(res, 500, -32603, 'Internal server error');
  });
});
server.listen(Number(a.port), '127.0.0.1', () => {
  console.error(`server.mjs: slot=${a.slot} transport=${a.transport} stateless=${a.stateless} json=${a['json-response']}`);
  console.log(`READY ${server.address().port}`);
});
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(0));
