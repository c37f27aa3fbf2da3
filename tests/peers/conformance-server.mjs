// The MCP server the official conformance suite (@modelcontextprotocol/conformance 0.1.16) drives
// in its server scenarios. One definition, two transports: `conformance-child.mjs` serves it over
// stdio (the broker's child), `conformance-http-harness.mjs` over the SDK's Streamable HTTP
// transport (proves the definition passes the suite without the broker in between).
//
// Each tool/resource/prompt below is named and shaped exactly as the suite's scenario
// descriptions require (`node …/conformance/dist/index.js list`, and the `description` of each
// scenario class in its bundle).
//
// Tools are served by our own `tools/list` / `tools/call` handlers on the underlying `Server`
// rather than `McpServer.registerTool`, because the json-schema-2020-12 scenario (SEP-1613)
// checks that `$schema`, `$defs` and `additionalProperties` reach the client verbatim, and the
// SDK rebuilds `inputSchema` from a zod schema (it would drop `$schema`). Resources, prompts and
// completion use `McpServer` as usual.

import { McpServer, ResourceTemplate } from '@modelcontextprotocol/sdk/server/mcp.js';
import { completable } from '@modelcontextprotocol/sdk/server/completable.js';
import {
  CallToolRequestSchema,
  CreateMessageResultSchema,
  ElicitResultSchema,
  ErrorCode,
  ListToolsRequestSchema,
  McpError,
  SetLevelRequestSchema,
  SubscribeRequestSchema,
  UnsubscribeRequestSchema,
} from '@modelcontextprotocol/sdk/types.js';
import { z } from 'zod';

// A 1x1 PNG (one opaque pixel): the suite only checks `data` and `mimeType` are present.
const PNG_1X1 =
  'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==';

// A valid 8 kHz mono 16-bit PCM WAV with 8 silent samples (RIFF header + data), built rather
// than pasted so its structure is visible. The suite checks `mimeType === 'audio/wav'`.
function tinyWav() {
  const samples = 8;
  const dataLen = samples * 2;
  const b = Buffer.alloc(44 + dataLen);
  b.write('RIFF', 0, 'ascii');
  b.writeUInt32LE(36 + dataLen, 4);
  b.write('WAVE', 8, 'ascii');
  b.write('fmt ', 12, 'ascii');
  b.writeUInt32LE(16, 16); // fmt chunk size
  b.writeUInt16LE(1, 20); // PCM
  b.writeUInt16LE(1, 22); // mono
  b.writeUInt32LE(8000, 24); // sample rate
  b.writeUInt32LE(8000 * 2, 28); // byte rate
  b.writeUInt16LE(2, 32); // block align
  b.writeUInt16LE(16, 34); // bits per sample
  b.write('data', 36, 'ascii');
  b.writeUInt32LE(dataLen, 40);
  return b.toString('base64');
}
const WAV_SILENCE = tinyWav();

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// MCP logging levels in increasing severity (spec: server/utilities/logging, RFC 5424 names).
const LOG_LEVELS = ['debug', 'info', 'notice', 'warning', 'error', 'critical', 'alert', 'emergency'];

const NO_ARGS = { type: 'object', properties: {} };

/**
 * The tools, as plain data: name, description, JSON Schema input, and a handler
 * `(args, ctx) => CallToolResult`. `ctx` carries the request's `extra` plus helpers.
 */
const TOOLS = [
  {
    name: 'test_simple_text',
    description: 'Returns a simple text content item',
    inputSchema: NO_ARGS,
    handler: () => ({
      content: [{ type: 'text', text: 'This is a simple text response for testing.' }],
    }),
  },
  {
    name: 'test_image_content',
    description: 'Returns an image content item (1x1 PNG)',
    inputSchema: NO_ARGS,
    handler: () => ({ content: [{ type: 'image', data: PNG_1X1, mimeType: 'image/png' }] }),
  },
  {
    name: 'test_audio_content',
    description: 'Returns an audio content item (short silent WAV)',
    inputSchema: NO_ARGS,
    handler: () => ({ content: [{ type: 'audio', data: WAV_SILENCE, mimeType: 'audio/wav' }] }),
  },
  {
    name: 'test_embedded_resource',
    description: 'Returns an embedded text resource',
    inputSchema: NO_ARGS,
    handler: () => ({
      content: [
        {
          type: 'resource',
          resource: {
            uri: 'test://embedded-resource',
            mimeType: 'text/plain',
            text: 'This is an embedded resource content.',
          },
        },
      ],
    }),
  },
  {
    name: 'test_multiple_content_types',
    description: 'Returns text, image and embedded resource content together',
    inputSchema: NO_ARGS,
    handler: () => ({
      content: [
        { type: 'text', text: 'Multiple content types test:' },
        { type: 'image', data: PNG_1X1, mimeType: 'image/png' },
        {
          type: 'resource',
          resource: {
            uri: 'test://mixed-content-resource',
            mimeType: 'application/json',
            text: JSON.stringify({ test: 'data', value: 123 }),
          },
        },
      ],
    }),
  },
  {
    name: 'test_tool_with_logging',
    description: 'Sends three info log notifications while it runs',
    inputSchema: NO_ARGS,
    handler: async (_args, ctx) => {
      await ctx.log('info', 'Tool execution started');
      await sleep(50);
      await ctx.log('info', 'Tool processing data');
      await sleep(50);
      await ctx.log('info', 'Tool execution completed');
      return { content: [{ type: 'text', text: 'Tool with logging executed successfully' }] };
    },
  },
  {
    name: 'test_tool_with_progress',
    description: 'Reports progress 0/100, 50/100, 100/100 when given a progress token',
    inputSchema: NO_ARGS,
    handler: async (_args, ctx) => {
      const progressToken = ctx.extra._meta?.progressToken;
      for (const [i, progress] of [0, 50, 100].entries()) {
        if (i > 0) await sleep(50);
        if (progressToken !== undefined) {
          await ctx.extra.sendNotification({
            method: 'notifications/progress',
            params: { progressToken, progress, total: 100, message: `Completed step ${i + 1} of 3` },
          });
        }
      }
      return { content: [{ type: 'text', text: 'Tool with progress executed successfully' }] };
    },
  },
  {
    name: 'test_error_handling',
    description: 'Always fails with a tool error (isError: true)',
    inputSchema: NO_ARGS,
    // A tool-level failure is a result with isError, not a JSON-RPC error (spec: server/tools,
    // "Error Handling"): the model is meant to see it.
    handler: () => ({
      isError: true,
      content: [{ type: 'text', text: 'This tool intentionally returns an error for testing' }],
    }),
  },
  {
    name: 'test_sampling',
    description: 'Asks the client to sample an LLM completion for the given prompt',
    inputSchema: {
      type: 'object',
      properties: { prompt: { type: 'string', description: 'The prompt to send to the LLM' } },
      required: ['prompt'],
    },
    handler: async (args, ctx) => {
      ctx.requireClientCapability('sampling');
      const result = await ctx.extra.sendRequest(
        {
          method: 'sampling/createMessage',
          params: {
            messages: [{ role: 'user', content: { type: 'text', text: String(args.prompt) } }],
            maxTokens: 100,
          },
        },
        CreateMessageResultSchema,
      );
      const text = result.content?.type === 'text' ? result.content.text : JSON.stringify(result.content);
      return { content: [{ type: 'text', text: `LLM response: ${text}` }] };
    },
  },
  {
    name: 'test_elicitation',
    description: 'Asks the client to elicit a username and email from the user',
    inputSchema: {
      type: 'object',
      properties: { message: { type: 'string', description: 'The message to show the user' } },
      required: ['message'],
    },
    handler: async (args, ctx) => {
      const result = await ctx.elicit(String(args.message), {
        type: 'object',
        properties: {
          username: { type: 'string', description: "User's response" },
          email: { type: 'string', description: "User's email address" },
        },
        required: ['username', 'email'],
      });
      return {
        content: [
          {
            type: 'text',
            text: `User response: action=${result.action}, content=${JSON.stringify(result.content ?? {})}`,
          },
        ],
      };
    },
  },
  {
    name: 'test_elicitation_sep1034_defaults',
    description: 'Elicitation whose schema has a default for every primitive type (SEP-1034)',
    inputSchema: NO_ARGS,
    handler: async (_args, ctx) => {
      const result = await ctx.elicit('Please review and update the form fields with defaults', {
        type: 'object',
        properties: {
          name: { type: 'string', description: 'User name', default: 'John Doe' },
          age: { type: 'integer', description: 'User age', default: 30 },
          score: { type: 'number', description: 'User score', default: 95.5 },
          status: {
            type: 'string',
            description: 'User status',
            enum: ['active', 'inactive', 'pending'],
            default: 'active',
          },
          verified: { type: 'boolean', description: 'Verification status', default: true },
        },
        required: [],
      });
      return elicitationSummary(result);
    },
  },
  {
    name: 'test_elicitation_sep1330_enums',
    description: 'Elicitation with all five enum schema variants (SEP-1330)',
    inputSchema: NO_ARGS,
    handler: async (_args, ctx) => {
      const result = await ctx.elicit('Please select options from the enum fields', {
        type: 'object',
        properties: {
          untitledSingle: {
            type: 'string',
            description: 'Untitled single-select',
            enum: ['option1', 'option2', 'option3'],
          },
          titledSingle: {
            type: 'string',
            description: 'Titled single-select',
            oneOf: [
              { const: 'value1', title: 'First Option' },
              { const: 'value2', title: 'Second Option' },
              { const: 'value3', title: 'Third Option' },
            ],
          },
          legacyEnum: {
            type: 'string',
            description: 'Legacy titled enum (enumNames, deprecated)',
            enum: ['opt1', 'opt2', 'opt3'],
            enumNames: ['Option One', 'Option Two', 'Option Three'],
          },
          untitledMulti: {
            type: 'array',
            description: 'Untitled multi-select',
            items: { type: 'string', enum: ['option1', 'option2', 'option3'] },
          },
          titledMulti: {
            type: 'array',
            description: 'Titled multi-select',
            items: {
              anyOf: [
                { const: 'value1', title: 'First Choice' },
                { const: 'value2', title: 'Second Choice' },
                { const: 'value3', title: 'Third Choice' },
              ],
            },
          },
        },
        required: [],
      });
      return elicitationSummary(result);
    },
  },
  {
    name: 'json_schema_2020_12_tool',
    description: 'Tool with JSON Schema 2020-12 features',
    inputSchema: {
      $schema: 'https://json-schema.org/draft/2020-12/schema',
      type: 'object',
      $defs: {
        address: {
          type: 'object',
          properties: { street: { type: 'string' }, city: { type: 'string' } },
        },
      },
      properties: {
        name: { type: 'string' },
        address: { $ref: '#/$defs/address' },
      },
      additionalProperties: false,
    },
    handler: (args) => ({
      content: [{ type: 'text', text: `Received: ${JSON.stringify(args)}` }],
    }),
  },
  {
    name: 'test_reconnection',
    description: 'Closes the SSE stream mid-call (where the transport allows) and then returns (SEP-1699)',
    inputSchema: NO_ARGS,
    handler: async (_args, ctx) => {
      // Over Streamable HTTP with an event store the SDK hands us `closeSSEStream`: closing the
      // POST stream makes the client reconnect with Last-Event-ID and the result is replayed on
      // the GET stream. Over stdio there is no stream to close; stream handling is the HTTP
      // front end's (the broker's) business.
      if (typeof ctx.extra.closeSSEStream === 'function') {
        await sleep(100);
        ctx.extra.closeSSEStream();
      }
      await sleep(200);
      return { content: [{ type: 'text', text: 'Reconnection test completed successfully' }] };
    },
  },
];

function elicitationSummary(result) {
  return {
    content: [
      {
        type: 'text',
        text: `Elicitation completed: action=${result.action}, content=${JSON.stringify(result.content ?? {})}`,
      },
    ],
  };
}

const STATIC_TEXT = 'This is the content of the static text resource.';

/** Builds a fresh server (one per session: the HTTP harness calls this per `initialize`). */
export function createServer() {
  const mcp = new McpServer(
    { name: 'forgejo-mcp-broker-conformance-child', version: '1.0.0' },
    {
      capabilities: {
        tools: { listChanged: false },
        resources: { subscribe: true, listChanged: false },
        prompts: { listChanged: false },
        logging: {},
        completions: {},
      },
      instructions: 'Test server for the MCP conformance suite (forgejo-mcp-broker tests).',
    },
  );
  const server = mcp.server;

  // --- logging: our own setLevel handler, so tool logs honour the level the client chose ---
  let minLevel = 'debug';
  server.setRequestHandler(SetLevelRequestSchema, (request) => {
    minLevel = request.params.level;
    return {};
  });
  const log = async (extra, level, data) => {
    if (LOG_LEVELS.indexOf(level) < LOG_LEVELS.indexOf(minLevel)) return;
    // Sent via `extra` so an HTTP transport routes it onto the tools/call's own stream.
    await extra.sendNotification({
      method: 'notifications/message',
      params: { level, logger: 'conformance-child', data },
    });
  };

  // --- tools (see the header comment for why not registerTool) ---
  const byName = new Map(TOOLS.map((t) => [t.name, t]));
  server.setRequestHandler(ListToolsRequestSchema, () => ({
    tools: TOOLS.map(({ name, description, inputSchema }) => ({ name, description, inputSchema })),
  }));
  server.setRequestHandler(CallToolRequestSchema, async (request, extra) => {
    const tool = byName.get(request.params.name);
    if (!tool) {
      throw new McpError(ErrorCode.InvalidParams, `Unknown tool: ${request.params.name}`);
    }
    const ctx = {
      extra,
      log: (level, data) => log(extra, level, data),
      requireClientCapability(cap) {
        if (!server.getClientCapabilities()?.[cap]) {
          throw new McpError(ErrorCode.InvalidRequest, `Client does not support ${cap}`);
        }
      },
      async elicit(message, requestedSchema) {
        ctx.requireClientCapability('elicitation');
        return extra.sendRequest(
          { method: 'elicitation/create', params: { message, requestedSchema } },
          ElicitResultSchema,
        );
      },
    };
    return tool.handler(request.params.arguments ?? {}, ctx);
  });

  // --- resources ---
  mcp.registerResource(
    'static-text',
    'test://static-text',
    { description: 'A static text resource', mimeType: 'text/plain' },
    (uri) => ({ contents: [{ uri: uri.href, mimeType: 'text/plain', text: STATIC_TEXT }] }),
  );
  mcp.registerResource(
    'static-binary',
    'test://static-binary',
    { description: 'A static binary resource (1x1 PNG)', mimeType: 'image/png' },
    (uri) => ({ contents: [{ uri: uri.href, mimeType: 'image/png', blob: PNG_1X1 }] }),
  );
  mcp.registerResource(
    'watched-resource',
    'test://watched-resource',
    { description: 'A resource clients may subscribe to', mimeType: 'text/plain' },
    (uri) => ({ contents: [{ uri: uri.href, mimeType: 'text/plain', text: 'Watched resource content' }] }),
  );
  mcp.registerResource(
    'template-data',
    new ResourceTemplate('test://template/{id}/data', { list: undefined }),
    { description: 'Per-id data from a URI template', mimeType: 'application/json' },
    (uri, { id }) => ({
      contents: [
        {
          uri: uri.href,
          mimeType: 'application/json',
          text: JSON.stringify({ id, templateTest: true, data: `Data for ID: ${id}` }),
        },
      ],
    }),
  );
  // Subscriptions are only tracked: nothing here changes, so no updated notification is due.
  const subscriptions = new Set();
  server.setRequestHandler(SubscribeRequestSchema, (request) => {
    subscriptions.add(request.params.uri);
    return {};
  });
  server.setRequestHandler(UnsubscribeRequestSchema, (request) => {
    subscriptions.delete(request.params.uri);
    return {};
  });

  // --- prompts (and completion for test_prompt_with_arguments) ---
  mcp.registerPrompt(
    'test_simple_prompt',
    { description: 'A simple prompt without arguments' },
    () => ({
      messages: [{ role: 'user', content: { type: 'text', text: 'This is a simple prompt for testing.' } }],
    }),
  );
  mcp.registerPrompt(
    'test_prompt_with_arguments',
    {
      description: 'A prompt with two required arguments',
      argsSchema: {
        arg1: completable(z.string().describe('First test argument'), (value) =>
          ['paris', 'park', 'party', 'test', 'testing'].filter((v) => v.startsWith(value ?? '')),
        ),
        arg2: z.string().describe('Second test argument'),
      },
    },
    ({ arg1, arg2 }) => ({
      messages: [
        {
          role: 'user',
          content: { type: 'text', text: `Prompt with arguments: arg1='${arg1}', arg2='${arg2}'` },
        },
      ],
    }),
  );
  mcp.registerPrompt(
    'test_prompt_with_embedded_resource',
    {
      description: 'A prompt embedding the resource named by its argument',
      argsSchema: { resourceUri: z.string().describe('URI of the resource to embed') },
    },
    ({ resourceUri }) => ({
      messages: [
        {
          role: 'user',
          content: {
            type: 'resource',
            resource: {
              uri: resourceUri,
              mimeType: 'text/plain',
              text: 'Embedded resource content for testing.',
            },
          },
        },
        { role: 'user', content: { type: 'text', text: 'Please process the embedded resource above.' } },
      ],
    }),
  );
  mcp.registerPrompt(
    'test_prompt_with_image',
    { description: 'A prompt with image content' },
    () => ({
      messages: [
        { role: 'user', content: { type: 'image', data: PNG_1X1, mimeType: 'image/png' } },
        { role: 'user', content: { type: 'text', text: 'Please analyze the image above.' } },
      ],
    }),
  );

  return mcp;
}
