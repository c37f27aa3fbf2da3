#!/usr/bin/env node
// stdio MCP server for the official conformance suite's server scenarios, run as the broker's
// child: `node tests/peers/conformance-child.mjs`. The definition lives in conformance-server.mjs
// (shared with conformance-http-harness.mjs, which proves it passes the suite without the broker).
// stdout carries JSON-RPC only; nothing else may be written there.

import { StdioServerTransport } from '@modelcontextprotocol/sdk/server/stdio.js';
import { createServer } from './conformance-server.mjs';

const server = createServer();
const transport = new StdioServerTransport();
// Exit when the broker closes our stdin (session end), rather than lingering as an orphan.
transport.onclose = () => process.exit(0);
process.stdin.on('end', () => process.exit(0));
await server.connect(transport);
