#!/usr/bin/env node
// MCP server for the official conformance suite's server scenarios
// (@modelcontextprotocol/conformance, `conformance server --url ...`), built on the
// official TypeScript SDK's low-level `Server` (@modelcontextprotocol/sdk).
//
//   tests/peers/conformance.sh server [--port N]     # the usual way (Node 22 from $PEERS_DIR/conformance)
//
// conformance.sh copies this file to $PEERS_DIR/conformance/server.mjs, next to the
// node_modules it imports from. It binds 127.0.0.1 (--port 0, the default, picks a free
// port), prints exactly one stdout line `READY <port>`, and serves stateful Streamable HTTP
// on POST/GET/DELETE /mcp. Errors go to stderr. SIGTERM/SIGINT: exit 0 at once.
//
// What the scenarios of conformance 0.1.16 ask for, and how this server answers:
// - tools `test_simple_text`, `test_image_content`, `test_audio_content`,
//   `test_embedded_resource`, `test_multiple_content_types`, `test_tool_with_logging`
//   (3 log notifications, 50 ms apart), `test_tool_with_progress` (0/50/100 of 100),
//   `test_error_handling` (isError result), `test_sampling`, `test_elicitation`,
//   `test_elicitation_sep1034_defaults`, `test_elicitation_sep1330_enums`,
//   `test_reconnection` (closes its own POST SSE stream, answers 100 ms later; the client
//   resumes with GET + Last-Event-ID), `json_schema_2020_12_tool` (raw 2020-12 schema).
// - resources `test://static-text`, `test://static-binary`, `test://watched-resource`
//   (subscribe/unsubscribe), template `test://template/{id}/data`.
// - prompts `test_simple_prompt`, `test_prompt_with_arguments`,
//   `test_prompt_with_embedded_resource`, `test_prompt_with_image`.
// - logging/setLevel (the SDK's own handler), completion/complete (empty list), ping.
// - SSE resumability: an in-memory event store per session and `retry: 1000` on the
//   priming events (SEP-1699).
// - DNS rebinding: the SDK's `createMcpExpressApp({ host: '127.0.0.1' })`, i.e. its default
//   localhost Host-header validation (Host must be localhost / 127.0.0.1 / [::1], any port;
//   anything else gets 403). Origin is not checked, as in the SDK default.
import { randomUUID } from 'node:crypto';
import { parseArgs } from 'node:util';
import { Server } from '@modelcontextprotocol/sdk/server/index.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { createMcpExpressApp } from '@modelcontextprotocol/sdk/server/express.js';
import {
  CallToolRequestSchema, CompleteRequestSchema, CreateMessageResultSchema, ElicitResultSchema,
  GetPromptRequestSchema, ListPromptsRequestSchema, ListResourceTemplatesRequestSchema,
  ListResourcesRequestSchema, ListToolsRequestSchema, McpError, ErrorCode, ReadResourceRequestSchema,
  SubscribeRequestSchema, UnsubscribeRequestSchema, isInitializeRequest,
} from '@modelcontextprotocol/sdk/types.js';

const { values: a } = parseArgs({ options: { port: { type: 'string', default: '0' } } });
const RETRY_MS = 1000;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const log = (msg) => process.stderr.write(`conformance-server: ${msg}\n`);

// 1x1 PNG and a 44-byte empty WAV, base64.
const PNG = 'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==';
const WAV = 'UklGRiQAAABXQVZFZm10IBAAAAABAAEAQB8AAIA+AAACABAAZGF0YQAAAAA=';
const text = (t) => ({ type: 'text', text: t });
const noArgs = { type: 'object', properties: {} };

// In-memory EventStore (one per session): ids `<8 hex>-<n>` in arrival order, so replay
// order never depends on clock resolution. Priming events are stored as `{}` and skipped.
class MemoryEventStore {
  constructor() { this.prefix = randomUUID().slice(0, 8); this.count = 0; this.events = new Map(); }
  async storeEvent(streamId, message) {
    const eventId = `${this.prefix}-${++this.count}`;
    this.events.set(eventId, { streamId, message });
    if (this.events.size > 1000) this.events.delete(this.events.keys().next().value);
    return eventId;
  }
  async getStreamIdForEventId(eventId) { return this.events.get(eventId)?.streamId; }
  async replayEventsAfter(lastEventId, { send }) {
    const streamId = this.events.get(lastEventId)?.streamId;
    if (streamId === undefined) return '';
    let after = false;
    for (const [id, ev] of this.events) {
      if (id === lastEventId) { after = true; continue; }
      if (after && ev.streamId === streamId && Object.keys(ev.message).length > 0) await send(id, ev.message);
    }
    return streamId;
  }
}

const TOOLS = [
  ['test_simple_text', 'Returns one text block', noArgs],
  ['test_image_content', 'Returns one image block (PNG)', noArgs],
  ['test_audio_content', 'Returns one audio block (WAV)', noArgs],
  ['test_embedded_resource', 'Returns one embedded text resource', noArgs],
  ['test_multiple_content_types', 'Returns text, image and an embedded resource', noArgs],
  ['test_tool_with_logging', 'Sends 3 info log notifications, 50 ms apart', noArgs],
  ['test_tool_with_progress', 'Sends progress 0, 50, 100 of 100, 50 ms apart', noArgs],
  ['test_error_handling', 'Always fails with an isError result', noArgs],
  ['test_reconnection', 'Closes its own SSE stream, answers 100 ms later (SEP-1699)', noArgs],
  ['test_sampling', 'Asks the client for sampling/createMessage',
    { type: 'object', properties: { prompt: { type: 'string', description: 'The prompt to send to the LLM' } }, required: ['prompt'] }],
  ['test_elicitation', 'Asks the client for elicitation/create',
    { type: 'object', properties: { message: { type: 'string', description: 'The message to show the user' } }, required: ['message'] }],
  ['test_elicitation_sep1034_defaults', 'Elicitation with defaults for every primitive type (SEP-1034)', noArgs],
  ['test_elicitation_sep1330_enums', 'Elicitation with the 5 enum schema variants (SEP-1330)', noArgs],
  ['json_schema_2020_12_tool', 'Input schema uses JSON Schema 2020-12 keywords (SEP-1613)', {
    $schema: 'https://json-schema.org/draft/2020-12/schema',
    type: 'object',
    $defs: { address: { type: 'object', properties: { street: { type: 'string' }, city: { type: 'string' } } } },
    properties: { name: { type: 'string' }, address: { $ref: '#/$defs/address' } },
    additionalProperties: false,
  }],
].map(([name, description, inputSchema]) => ({ name, description, inputSchema }));

const RESOURCES = {
  'test://static-text': { name: 'static-text', description: 'A static text resource', mimeType: 'text/plain',
    text: 'This is the content of the static text resource.' },
  'test://static-binary': { name: 'static-binary', description: 'A static binary resource (PNG)', mimeType: 'image/png',
    blob: PNG },
  'test://watched-resource': { name: 'watched-resource', description: 'A resource that can be subscribed to', mimeType: 'text/plain',
    text: 'Watched resource content' },
};
const TEMPLATE = /^test:\/\/template\/([^/]+)\/data$/;

const PROMPTS = [
  { name: 'test_simple_prompt', description: 'A prompt without arguments' },
  { name: 'test_prompt_with_arguments', description: 'A prompt with two required arguments',
    arguments: [{ name: 'arg1', description: 'First test argument', required: true },
      { name: 'arg2', description: 'Second test argument', required: true }] },
  { name: 'test_prompt_with_embedded_resource', description: 'A prompt that embeds a resource',
    arguments: [{ name: 'resourceUri', description: 'URI of the resource to embed', required: true }] },
  { name: 'test_prompt_with_image', description: 'A prompt with image content' },
];

const SEP1034_SCHEMA = {
  type: 'object',
  properties: {
    name: { type: 'string', description: 'User name', default: 'John Doe' },
    age: { type: 'integer', description: 'User age', default: 30 },
    score: { type: 'number', description: 'User score', default: 95.5 },
    status: { type: 'string', description: 'User status', enum: ['active', 'inactive', 'pending'], default: 'active' },
    verified: { type: 'boolean', description: 'Verification status', default: true },
  },
  required: [],
};
const SEP1330_SCHEMA = {
  type: 'object',
  properties: {
    untitledSingle: { type: 'string', description: 'Pick one', enum: ['option1', 'option2', 'option3'] },
    titledSingle: { type: 'string', description: 'Pick one (titled)', oneOf: [
      { const: 'value1', title: 'First Option' }, { const: 'value2', title: 'Second Option' },
      { const: 'value3', title: 'Third Option' }] },
    legacyEnum: { type: 'string', description: 'Pick one (legacy enumNames)', enum: ['opt1', 'opt2', 'opt3'],
      enumNames: ['Option One', 'Option Two', 'Option Three'] },
    untitledMulti: { type: 'array', description: 'Pick several', minItems: 1, maxItems: 3,
      items: { type: 'string', enum: ['option1', 'option2', 'option3'] } },
    titledMulti: { type: 'array', description: 'Pick several (titled)', minItems: 1, maxItems: 3,
      items: { anyOf: [{ const: 'value1', title: 'First Choice' }, { const: 'value2', title: 'Second Choice' },
        { const: 'value3', title: 'Third Choice' }] } },
  },
  required: [],
};

async function callTool(name, args, extra) {
  const notify = (method, params) => extra.sendNotification({ method, params });
  const elicit = async (message, requestedSchema, prefix) => {
    const r = await extra.sendRequest({ method: 'elicitation/create', params: { mode: 'form', message, requestedSchema } },
      ElicitResultSchema);
    return { content: [text(`${prefix}: action=${r.action}, content=${JSON.stringify(r.content ?? {})}`)] };
  };
  switch (name) {
    case 'test_simple_text':
      return { content: [text('This is a simple text response for testing.')] };
    case 'test_image_content':
      return { content: [{ type: 'image', data: PNG, mimeType: 'image/png' }] };
    case 'test_audio_content':
      return { content: [{ type: 'audio', data: WAV, mimeType: 'audio/wav' }] };
    case 'test_embedded_resource':
      return { content: [{ type: 'resource', resource: { uri: 'test://embedded-resource', mimeType: 'text/plain',
        text: 'This is an embedded resource content.' } }] };
    case 'test_multiple_content_types':
      return { content: [text('Multiple content types test:'), { type: 'image', data: PNG, mimeType: 'image/png' },
        { type: 'resource', resource: { uri: 'test://mixed-content-resource', mimeType: 'application/json',
          text: JSON.stringify({ test: 'data', value: 123 }) } }] };
    case 'test_tool_with_logging':
      for (const [i, msg] of ['Tool execution started', 'Tool processing data', 'Tool execution completed'].entries()) {
        if (i > 0) await sleep(50);
        await notify('notifications/message', { level: 'info', logger: 'conformance-server', data: msg });
      }
      return { content: [text('Tool with logging executed successfully')] };
    case 'test_tool_with_progress': {
      const token = extra._meta?.progressToken;
      for (const [i, progress] of [0, 50, 100].entries()) {
        if (i > 0) await sleep(50);
        if (token !== undefined) {
          await notify('notifications/progress', { progressToken: token, progress, total: 100,
            message: `Completed step ${progress} of 100` });
        }
      }
      return { content: [text(`Progress reported (token ${JSON.stringify(token ?? null)})`)] };
    }
    case 'test_error_handling':
      return { isError: true, content: [text('This tool intentionally returns an error for testing')] };
    case 'test_reconnection':
      extra.closeSSEStream?.();
      await sleep(100);
      return { content: [text('Reconnection test completed successfully.')] };
    case 'test_sampling': {
      const r = await extra.sendRequest({ method: 'sampling/createMessage', params: {
        messages: [{ role: 'user', content: text(String(args?.prompt ?? '')) }], maxTokens: 100 } },
        CreateMessageResultSchema);
      return { content: [text(`LLM response: ${r.content?.type === 'text' ? r.content.text : JSON.stringify(r.content)}`)] };
    }
    case 'test_elicitation':
      return elicit(String(args?.message ?? ''), { type: 'object', properties: {
        username: { type: 'string', description: "User's response" },
        email: { type: 'string', description: "User's email address" } }, required: ['username', 'email'] },
      'User response');
    case 'test_elicitation_sep1034_defaults':
      return elicit('Please review and update the form fields with defaults', SEP1034_SCHEMA, 'Elicitation completed');
    case 'test_elicitation_sep1330_enums':
      return elicit('Please select options from the enum fields', SEP1330_SCHEMA, 'Elicitation completed');
    case 'json_schema_2020_12_tool':
      return { content: [text(`JSON Schema 2020-12 tool called with: ${JSON.stringify(args ?? {})}`)] };
    default:
      throw new McpError(ErrorCode.InvalidParams, `Unknown tool: ${name}`);
  }
}

function getPrompt(name, args) {
  const user = (content) => ({ role: 'user', content });
  switch (name) {
    case 'test_simple_prompt':
      return { messages: [user(text('This is a simple prompt for testing.'))] };
    case 'test_prompt_with_arguments':
      return { messages: [user(text(`Prompt with arguments: arg1='${args?.arg1}', arg2='${args?.arg2}'`))] };
    case 'test_prompt_with_embedded_resource':
      return { messages: [
        user({ type: 'resource', resource: { uri: args?.resourceUri ?? 'test://example-resource', mimeType: 'text/plain',
          text: 'Embedded resource content for testing.' } }),
        user(text('Please process the embedded resource above.'))] };
    case 'test_prompt_with_image':
      return { messages: [user({ type: 'image', data: PNG, mimeType: 'image/png' }),
        user(text('Please analyze the image above.'))] };
    default:
      throw new McpError(ErrorCode.InvalidParams, `Unknown prompt: ${name}`);
  }
}

function newServer() {
  const server = new Server({ name: 'mcpflip-conformance-server', version: '1.0.0' }, {
    capabilities: {
      tools: { listChanged: true }, resources: { subscribe: true, listChanged: true },
      prompts: { listChanged: true }, logging: {}, completions: {},
    },
  });
  const subscriptions = new Set();
  server.setRequestHandler(ListToolsRequestSchema, async () => ({ tools: TOOLS }));
  server.setRequestHandler(CallToolRequestSchema, async (req, extra) => callTool(req.params.name, req.params.arguments, extra));
  server.setRequestHandler(ListResourcesRequestSchema, async () => ({
    resources: Object.entries(RESOURCES).map(([uri, r]) => ({ uri, name: r.name, description: r.description, mimeType: r.mimeType })),
  }));
  server.setRequestHandler(ListResourceTemplatesRequestSchema, async () => ({
    resourceTemplates: [{ uriTemplate: 'test://template/{id}/data', name: 'template',
      description: 'A resource template with parameter substitution', mimeType: 'application/json' }],
  }));
  server.setRequestHandler(ReadResourceRequestSchema, async (req) => {
    const { uri } = req.params;
    const r = RESOURCES[uri];
    if (r) {
      return { contents: [r.blob ? { uri, mimeType: r.mimeType, blob: r.blob } : { uri, mimeType: r.mimeType, text: r.text }] };
    }
    const m = TEMPLATE.exec(uri);
    if (m) {
      return { contents: [{ uri, mimeType: 'application/json',
        text: JSON.stringify({ id: m[1], templateTest: true, data: `Data for ID: ${m[1]}` }) }] };
    }
    throw new McpError(-32002, `Resource not found: ${uri}`);
  });
  server.setRequestHandler(SubscribeRequestSchema, async (req) => { subscriptions.add(req.params.uri); return {}; });
  server.setRequestHandler(UnsubscribeRequestSchema, async (req) => { subscriptions.delete(req.params.uri); return {}; });
  server.setRequestHandler(ListPromptsRequestSchema, async () => ({ prompts: PROMPTS }));
  server.setRequestHandler(GetPromptRequestSchema, async (req) => getPrompt(req.params.name, req.params.arguments));
  server.setRequestHandler(CompleteRequestSchema, async () => ({ completion: { values: [], total: 0, hasMore: false } }));
  return server;
}

const transports = new Map(); // session id -> transport
const app = createMcpExpressApp({ host: '127.0.0.1' });
const rpcError = (res, status, code, message) => res.status(status).json({ jsonrpc: '2.0', error: { code, message }, id: null });

app.post('/mcp', async (req, res) => {
  const sid = req.headers['mcp-session-id'];
  try {
    let transport = sid ? transports.get(sid) : undefined;
    if (!transport) {
      if (sid) return rpcError(res, 404, -32001, 'Session not found');
      if (!isInitializeRequest(req.body)) return rpcError(res, 400, -32000, 'Bad Request: no session ID and not an initialize request');
      const server = newServer();
      transport = new StreamableHTTPServerTransport({
        sessionIdGenerator: () => randomUUID(),
        eventStore: new MemoryEventStore(),
        retryInterval: RETRY_MS,
        onsessioninitialized: (id) => { transports.set(id, transport); },
      });
      transport.onclose = () => { if (transport.sessionId) transports.delete(transport.sessionId); };
      await server.connect(transport);
    }
    await transport.handleRequest(req, res, req.body);
  } catch (e) {
    log(`POST failed: ${e?.stack ?? e}`);
    if (!res.headersSent) rpcError(res, 500, -32603, 'Internal server error');
  }
});

const bySession = async (req, res) => {
  const sid = req.headers['mcp-session-id'];
  const transport = sid ? transports.get(sid) : undefined;
  if (!transport) return sid ? rpcError(res, 404, -32001, 'Session not found') : rpcError(res, 400, -32000, 'Missing session ID');
  try {
    await transport.handleRequest(req, res);
  } catch (e) {
    log(`${req.method} failed: ${e?.stack ?? e}`);
    if (!res.headersSent) rpcError(res, 500, -32603, 'Internal server error');
  }
};
app.get('/mcp', bySession);
app.delete('/mcp', bySession);

const httpServer = app.listen(Number(a.port), '127.0.0.1', () => {
  process.stdout.write(`READY ${httpServer.address().port}\n`);
});
httpServer.on('error', (e) => { log(`listen failed: ${e}`); process.exit(1); });
const stop = () => process.exit(0);
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
