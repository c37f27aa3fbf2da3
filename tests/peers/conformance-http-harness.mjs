#!/usr/bin/env node
// Serves conformance-server.mjs over the TypeScript SDK's Streamable HTTP transport, so the
// conformance suite can be run against the child's server definition WITHOUT the broker:
//
//   node tests/peers/conformance-http-harness.mjs [--port N] [--stdio]  # prints "listening <url>"
//   bash tests/peers/run-conformance.sh <url>
//
// Default: the server runs in this process. `--stdio`: each session instead spawns
// conformance-child.mjs (the very file the broker runs; with $CONFORMANCE_CHILD_NODE, default this
// Node) and relays JSON-RPC between it and the HTTP transport — a naive stand-in for the broker
// that shows the stdio child itself passes, and what relaying needs (see `relatedTo` below).
//
// Session-based (Mcp-Session-Id, one server + transport per initialize), resumable (an in-memory
// event store: priming events, Last-Event-ID replay), and DNS-rebinding protected: requests whose
// Host or Origin is not loopback get 403 (spec basic/transports "Security Warning"; the
// dns-rebinding-protection scenario). Test-only: binds 127.0.0.1, keeps sessions in memory.

import { createServer as createHttpServer } from 'node:http';
import { randomUUID } from 'node:crypto';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { InMemoryEventStore } from '@modelcontextprotocol/sdk/examples/shared/inMemoryEventStore.js';
import {
  isInitializeRequest,
  LATEST_PROTOCOL_VERSION,
  SUPPORTED_PROTOCOL_VERSIONS,
} from '@modelcontextprotocol/sdk/types.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { createServer } from './conformance-server.mjs';

const portArg = process.argv.indexOf('--port');
const port = portArg > 0 ? Number(process.argv[portArg + 1]) : 0;
const viaStdio = process.argv.includes('--stdio');
const CHILD = new URL('./conformance-child.mjs', import.meta.url).pathname;

/**
 * Connects `transport` (one HTTP session) to a fresh conformance-child.mjs over stdio, relaying
 * messages both ways unchanged (ids included: one client per child, so the two id spaces never
 * mix). The only routing the HTTP side needs is which client request a child→client message
 * belongs to, so it travels on that request's POST SSE stream (`relatedRequestId`) rather than
 * the standalone GET stream: a progress notification goes with the request that carried its
 * progressToken; any other notification or request (logging, sampling, elicitation) with the
 * newest request still in flight; with none in flight, on the GET stream.
 */
async function bridgeToStdioChild(transport) {
  const child = new StdioClientTransport({
    command: process.env.CONFORMANCE_CHILD_NODE ?? process.execPath,
    args: [CHILD],
    stderr: 'inherit',
  });
  const inflight = new Map(); // client request id -> progressToken (insertion-ordered)
  const relatedTo = (msg) => {
    const token = msg.method === 'notifications/progress' ? msg.params?.progressToken : undefined;
    if (token !== undefined) {
      for (const [id, t] of inflight) if (t === token) return id;
    }
    return [...inflight.keys()].at(-1);
  };
  child.onmessage = (msg) => {
    const isResponse = msg.id !== undefined && msg.method === undefined;
    if (isResponse) {
      inflight.delete(msg.id);
      transport.send(msg).catch(() => {});
    } else {
      transport.send(msg, { relatedRequestId: relatedTo(msg) }).catch(() => {});
    }
  };
  child.onclose = () => transport.close().catch(() => {});
  transport.onmessage = (msg) => {
    if (msg.method !== undefined && msg.id !== undefined) inflight.set(msg.id, msg.params?._meta?.progressToken);
    child.send(msg).catch(() => {});
  };
  const onclose = transport.onclose;
  transport.onclose = () => {
    onclose?.();
    child.close().catch(() => {});
  };
  await child.start();
  await transport.start();
}
const LOOPBACK = new Set(['localhost', '127.0.0.1', '[::1]', '::1']);

/** True when `host` (a Host header value or URL host, with optional port) names loopback. */
function isLoopbackHost(host) {
  try {
    return LOOPBACK.has(new URL(`http://${host}`).hostname.toLowerCase());
  } catch {
    return false;
  }
}
function isLoopbackOrigin(origin) {
  try {
    return LOOPBACK.has(new URL(origin).hostname.toLowerCase());
  } catch {
    return false;
  }
}

function jsonError(res, status, code, message) {
  res.writeHead(status, { 'Content-Type': 'application/json' });
  res.end(JSON.stringify({ jsonrpc: '2.0', error: { code, message }, id: null }));
}

/** Replaces a request header's value in both views Node keeps (the SDK reads `rawHeaders`). */
function setHeader(req, name, value) {
  req.headers[name] = value;
  for (let i = 0; i + 1 < req.rawHeaders.length; i += 2) {
    if (req.rawHeaders[i].toLowerCase() === name) req.rawHeaders[i + 1] = value;
  }
}

async function readJson(req) {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  return JSON.parse(Buffer.concat(chunks).toString('utf8'));
}

const sessions = new Map(); // session id -> { transport, version }

const http = createHttpServer(async (req, res) => {
  try {
    if (new URL(req.url, 'http://x').pathname !== '/mcp') return jsonError(res, 404, -32000, 'Not found');
    const origin = req.headers.origin;
    if (!isLoopbackHost(req.headers.host ?? '') || (origin !== undefined && !isLoopbackOrigin(origin))) {
      return jsonError(res, 403, -32000, 'Forbidden: non-loopback Host or Origin');
    }
    const sid = req.headers['mcp-session-id'];
    if (sid !== undefined) {
      const session = sessions.get(sid);
      if (!session) return jsonError(res, 404, -32001, 'Session not found');
      const { transport, version } = session;
      // The session's protocol version is the one negotiated at initialize; the SDK transport
      // instead reads each request's MCP-Protocol-Version header to decide whether the client
      // can take SSE priming events (empty data, >= 2025-11-25) and resumable streams. The
      // suite's server-sse-polling scenario negotiates 2025-11-25 with the SDK client and then
      // sends raw requests headed `2025-03-26` (spec 2025-11-25 transports: the header SHOULD be
      // the negotiated version). A session-based server knows what it negotiated, so this
      // harness goes by the session (as the broker should): a header naming another *supported*
      // version is replaced by the negotiated one. Unsupported versions still reach the
      // transport unchanged and get its 400.
      const hdr = req.headers['mcp-protocol-version'];
      if (hdr !== undefined && hdr !== version && SUPPORTED_PROTOCOL_VERSIONS.includes(hdr)) {
        setHeader(req, 'mcp-protocol-version', version);
      }
      const body = req.method === 'POST' ? await readJson(req) : undefined;
      return await transport.handleRequest(req, res, body);
    }
    if (req.method !== 'POST') return jsonError(res, 400, -32000, 'Bad Request: no session');
    const body = await readJson(req);
    if (!isInitializeRequest(body)) return jsonError(res, 400, -32000, 'Bad Request: no session');
    // What the SDK server will answer (server/index.js _oninitialize): the requested version
    // if supported, else the latest.
    const requested = body.params.protocolVersion;
    const version = SUPPORTED_PROTOCOL_VERSIONS.includes(requested) ? requested : LATEST_PROTOCOL_VERSION;
    const transport = new StreamableHTTPServerTransport({
      sessionIdGenerator: () => randomUUID(),
      eventStore: new InMemoryEventStore(),
      retryInterval: 500,
      onsessioninitialized: (id) => sessions.set(id, { transport, version }),
    });
    transport.onclose = () => {
      if (transport.sessionId) sessions.delete(transport.sessionId);
    };
    if (viaStdio) await bridgeToStdioChild(transport);
    else await createServer().connect(transport);
    await transport.handleRequest(req, res, body);
  } catch (err) {
    if (!res.headersSent) {
      const parse = err instanceof SyntaxError;
      jsonError(res, parse ? 400 : 500, parse ? -32700 : -32603, parse ? 'Parse error' : 'Internal error');
    } else {
      res.end();
    }
  }
});

http.listen(port, '127.0.0.1', () => {
  console.log(`listening http://127.0.0.1:${http.address().port}/mcp`);
});
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    for (const { transport } of sessions.values()) transport.close().catch(() => {});
    http.close(() => process.exit(0));
  });
}
