#!/usr/bin/env node
// MCP test client on the official TypeScript SDK (@modelcontextprotocol/sdk).
//
//   node client.mjs --url URL --transport sse|streamable-http
//
// Same JSON-lines protocol as client.py: {"event":"ready"} after initialize, then
// stdin commands `call TOOL [JSON-args]`, `tools`, `quit` (or EOF) -> {"event":"closed"}.
import path from 'node:path';
import readline from 'node:readline';
import { parseArgs } from 'node:util';
import { fileURLToPath, pathToFileURL } from 'node:url';

const emit = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');
const describe = (e) => (e instanceof Error ? `${e.name}: ${e.message}` : String(e));
const fail = (e) => { emit({ event: 'error', error: describe(e) }); process.exit(1); };

async function main() {
  const here = path.dirname(fileURLToPath(import.meta.url));
  const peersDir = process.env.PEERS_DIR || path.resolve(here, '../../target/peers');
  const sdkPath = path.join(peersDir, 'node', 'sdk.mjs');
  const { Client, SSEClientTransport, StreamableHTTPClientTransport } = await import(pathToFileURL(sdkPath).href)
    .catch((e) => { throw new Error(`cannot load ${sdkPath} (run tests/peers/install.sh node): ${e.message}`); });

  const { values: a } = parseArgs({ options: { url: { type: 'string' }, transport: { type: 'string' } } });
  if (!a.url || !['sse', 'streamable-http'].includes(a.transport)) {
    throw new Error('usage: client.mjs --url URL --transport sse|streamable-http');
  }
  const url = new URL(a.url);
  const transport = a.transport === 'sse' ? new SSEClientTransport(url) : new StreamableHTTPClientTransport(url);
  let protocol = null; // the Client hands the negotiated version to the transport; catch it there
  const setPV = transport.setProtocolVersion?.bind(transport);
  transport.setProtocolVersion = (v) => { protocol = v; setPV?.(v); };

  const client = new Client({ name: 'mcpflip-peer-client', version: '1.0.0' });
  await client.connect(transport);
  const sessionId = transport.sessionId ?? transport._endpoint?.searchParams.get('sessionId')
    ?? transport._endpoint?.searchParams.get('session_id') ?? null; // SSE: from the endpoint URL (private field)
  emit({ event: 'ready', protocol, session_id: sessionId });

  for await (const line of readline.createInterface({ input: process.stdin, crlfDelay: Infinity })) {
    const [cmd, ...restParts] = line.trim().split(' ');
    const rest = restParts.join(' ').trim();
    if (cmd === 'quit') break;
    if (cmd === 'tools') {
      const { tools } = await client.listTools();
      emit({ event: 'tools', names: tools.map((t) => t.name).sort() });
    } else if (cmd === 'call') {
      const sp = rest.indexOf(' ');
      const tool = sp < 0 ? rest : rest.slice(0, sp);
      try {
        const args = sp < 0 ? {} : JSON.parse(rest.slice(sp + 1));
        const res = await client.callTool({ name: tool, arguments: args });
        const text = (res.content ?? []).map((c) => c.text ?? '').join('');
        emit(res.isError ? { event: 'result', tool, ok: false, error: text || 'isError' }
                         : { event: 'result', tool, ok: true, text });
      } catch (e) {
        emit({ event: 'result', tool, ok: false, error: describe(e) });
      }
    } else if (cmd) {
      emit({ event: 'result', tool: cmd, ok: false, error: `unknown command: ${cmd}` });
    }
  }
  // DELETE /mcp like the Python client does on exit; a failure is only logged (as in Python).
  if (transport.sessionId && transport.terminateSession) {
    await transport.terminateSession().catch((e) => console.error(`client.mjs: session termination failed: ${describe(e)}`));
  }
  await client.close();
  emit({ event: 'closed' });
  process.exit(0);
}

main().catch(fail);
