// The official TypeScript MCP SDK, doing the whole OAuth flow against the broker the way a
// real client does: 401 → discovery → DCR (or CIMD) → authorize → the broker's consent page
// (the form is submitted) → Forgejo login → callback → token → initialize → tools/list →
// tools/call; then a token refresh and another call; then revocation and a 401.
//
// Usage: node oauth-client.mjs --url http://127.0.0.1:PORT/mcp [--cimd https://…/client.json]
//          [--tool NAME] [--args JSON] [--expect-text SUBSTRING]
//          [--calls '[{"name": …, "arguments": {…}, "expect": "…", "allowError": false}, …]']
// Prints one JSON object per step on stdout ({"step": …}); exits non-zero on the first failure.
// The Rust integration test (tests/it/e2e) parses these lines and asserts on them.

import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { UnauthorizedError } from '@modelcontextprotocol/sdk/client/auth.js';
import { randomBytes } from 'node:crypto';

const args = parseArgs(process.argv.slice(2));
const mcpUrl = new URL(args.url);
// The client's redirect URI: a loopback URL nobody listens on. The broker must accept any port
// for loopback redirects; the script stops following redirects when it sees this prefix.
const redirectUrl = `http://127.0.0.1:${args['redirect-port'] ?? '33418'}/callback`;

function emit(step, extra = {}) {
  process.stdout.write(JSON.stringify({ step, ...extra }) + '\n');
}

function parseArgs(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, '');
    out[key] = argv[i + 1];
  }
  if (!out.url) throw new Error('--url is required');
  return out;
}

/** A browser stand-in: a cookie jar and manual redirect following. */
class Browser {
  constructor() {
    this.jar = new Map(); // origin -> Map(name -> value)
  }
  cookieHeader(url) {
    const cookies = this.jar.get(new URL(url).origin);
    if (!cookies) return undefined;
    return [...cookies].map(([k, v]) => `${k}=${v}`).join('; ');
  }
  store(url, response) {
    const origin = new URL(url).origin;
    const setCookies = response.headers.getSetCookie ? response.headers.getSetCookie() : [];
    for (const line of setCookies) {
      const [pair] = line.split(';');
      const eq = pair.indexOf('=');
      if (eq < 0) continue;
      if (!this.jar.has(origin)) this.jar.set(origin, new Map());
      this.jar.get(origin).set(pair.slice(0, eq).trim(), pair.slice(eq + 1).trim());
    }
  }
  async request(url, init = {}) {
    const headers = new Headers(init.headers ?? {});
    const cookie = this.cookieHeader(url);
    if (cookie) headers.set('cookie', cookie);
    const response = await fetch(url, { ...init, headers, redirect: 'manual' });
    this.store(url, response);
    return response;
  }
}

/** Extracts the consent form and the approve button from the broker's consent page. */
function parseConsentForm(html, pageUrl) {
  const form = html.match(/<form\b[^>]*>([\s\S]*?)<\/form>/i);
  if (!form) throw new Error('consent page has no form');
  const formTag = form[0].match(/<form\b[^>]*>/i)[0];
  const action = (formTag.match(/\baction="([^"]*)"/i) ?? [])[1] ?? pageUrl;
  const fields = new URLSearchParams();
  for (const input of form[1].matchAll(/<input\b[^>]*>/gi)) {
    const name = (input[0].match(/\bname="([^"]*)"/i) ?? [])[1];
    const value = (input[0].match(/\bvalue="([^"]*)"/i) ?? [])[1] ?? '';
    const type = ((input[0].match(/\btype="([^"]*)"/i) ?? [])[1] ?? 'text').toLowerCase();
    if (name && type !== 'submit') fields.set(name, decodeEntities(value));
  }
  let approve = null;
  for (const button of form[1].matchAll(/<(button|input)\b[^>]*>/gi)) {
    const tag = button[0];
    const isSubmit = /^<button/i.test(tag) || /type="submit"/i.test(tag);
    const name = (tag.match(/\bname="([^"]*)"/i) ?? [])[1];
    const value = (tag.match(/\bvalue="([^"]*)"/i) ?? [])[1];
    if (isSubmit && name && value && /approve|allow|grant|accept|consent/i.test(value)) {
      approve = [name, decodeEntities(value)];
    }
  }
  if (approve) fields.set(approve[0], approve[1]);
  return { action: new URL(decodeEntities(action), pageUrl).toString(), fields };
}

function decodeEntities(s) {
  return s
    .replace(/&amp;/g, '&')
    .replace(/&quot;/g, '"')
    .replace(/&#39;/g, "'")
    .replace(/&#x27;/g, "'")
    .replace(/&lt;/g, '<')
    .replace(/&gt;/g, '>');
}

class InMemoryProvider {
  constructor(browser, cimdUrl) {
    this.browser = browser;
    this._tokens = undefined;
    this._client = undefined;
    this._verifier = undefined;
    this.code = undefined;
    this.authorizations = 0;
    this.refusesAuthorization = false;
    if (cimdUrl) this.clientMetadataUrl = cimdUrl;
  }
  get redirectUrl() {
    return redirectUrl;
  }
  // The SDK sends `state` only when the provider supplies one; real clients do.
  state() {
    return randomBytes(16).toString('base64url');
  }
  get clientMetadata() {
    return {
      client_name: 'forgejo-mcp-broker e2e (TypeScript SDK)',
      redirect_uris: [redirectUrl],
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'none',
    };
  }
  clientInformation() {
    return this._client;
  }
  saveClientInformation(info) {
    this._client = info;
    emit('client_information_saved', { client_id: info.client_id, registered: !this.clientMetadataUrl });
  }
  tokens() {
    return this._tokens;
  }
  saveTokens(tokens) {
    const refreshed = this._tokens !== undefined;
    this._tokens = tokens;
    emit(refreshed ? 'tokens_refreshed' : 'tokens_saved', {
      token_type: tokens.token_type,
      expires_in: tokens.expires_in,
      has_refresh_token: Boolean(tokens.refresh_token),
    });
  }
  saveCodeVerifier(v) {
    this._verifier = v;
  }
  codeVerifier() {
    return this._verifier;
  }
  async redirectToAuthorization(authorizationUrl) {
    if (this.refusesAuthorization) {
      emit('authorization_requested_after_revocation');
      return;
    }
    this.authorizations += 1;
    const url = new URL(authorizationUrl);
    emit('authorize', {
      endpoint: `${url.origin}${url.pathname}`,
      code_challenge_method: url.searchParams.get('code_challenge_method'),
      resource: url.searchParams.get('resource'),
      has_state: url.searchParams.has('state'),
    });
    this.code = await followToCallback(this.browser, url.toString(), url.searchParams.get('state'));
  }
}

/** Follows redirects like a browser, submits the consent form once, stops at the redirect URI. */
async function followToCallback(browser, startUrl, expectedState) {
  let url = startUrl;
  let consentSubmitted = false;
  for (let hop = 0; hop < 20; hop += 1) {
    if (url.startsWith(redirectUrl)) {
      const callback = new URL(url);
      if (callback.searchParams.get('error')) {
        throw new Error(`authorization failed: ${callback.searchParams.get('error')}`);
      }
      if (expectedState && callback.searchParams.get('state') !== expectedState) {
        throw new Error('state was not round-tripped');
      }
      emit('callback', { state_round_tripped: true, consent_submitted: consentSubmitted });
      return callback.searchParams.get('code');
    }
    const response = await browser.request(url);
    if (response.status >= 300 && response.status < 400) {
      const location = response.headers.get('location');
      emit('redirect', { from: new URL(url).pathname, status: response.status });
      url = new URL(location, url).toString();
      continue;
    }
    if (response.status === 200 && !consentSubmitted) {
      const html = await response.text();
      const { action, fields } = parseConsentForm(html, url);
      emit('consent_page', {
        names_redirect_host: html.includes(new URL(redirectUrl).hostname),
        csp: response.headers.get('content-security-policy'),
      });
      const submit = await browser.request(action, {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: fields.toString(),
      });
      consentSubmitted = true;
      if (submit.status < 300 || submit.status >= 400) {
        throw new Error(`consent submission answered ${submit.status}: ${await submit.text()}`);
      }
      url = new URL(submit.headers.get('location'), action).toString();
      emit('consent_submitted');
      continue;
    }
    throw new Error(`unexpected ${response.status} at ${new URL(url).pathname}: ${await response.text()}`);
  }
  throw new Error('too many redirects');
}

async function connect(provider) {
  const client = new Client({ name: 'forgejo-mcp-broker-e2e', version: '1.0.0' });
  const transport = new StreamableHTTPClientTransport(mcpUrl, { authProvider: provider });
  await client.connect(transport);
  return { client, transport };
}

const calls = args.calls
  ? JSON.parse(args.calls)
  : args.tool
    ? [{ name: args.tool, arguments: args.args ? JSON.parse(args.args) : {}, expect: args['expect-text'] }]
    : [];

async function callTool(client, { name, arguments: toolArgs = {}, expect, allowError = false }) {
  const result = await client.callTool({ name, arguments: toolArgs });
  const text = (result.content ?? []).filter((c) => c.type === 'text').map((c) => c.text).join('\n');
  if (result.isError && !allowError) throw new Error(`tool ${name} failed: ${text}`);
  if (expect && !text.includes(expect)) {
    throw new Error(`tool ${name} result does not contain ${expect}: ${text}`);
  }
  return text;
}

async function main() {
  const browser = new Browser();
  const provider = new InMemoryProvider(browser, args.cimd);

  // 1. Unauthenticated request: the broker must answer 401 with resource metadata.
  const probe = await fetch(mcpUrl, {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream' },
    body: JSON.stringify({ jsonrpc: '2.0', id: 0, method: 'ping' }),
  });
  emit('unauthenticated', {
    status: probe.status,
    www_authenticate: probe.headers.get('www-authenticate'),
  });

  // 2. Connect: the SDK discovers, registers, and calls redirectToAuthorization.
  try {
    await connect(provider);
    throw new Error('connected without authorization');
  } catch (error) {
    if (!(error instanceof UnauthorizedError)) throw error;
  }
  if (!provider.code) throw new Error('no authorization code obtained');
  const first = new StreamableHTTPClientTransport(mcpUrl, { authProvider: provider });
  await first.finishAuth(provider.code);
  emit('authorized');

  // 3. initialize → tools/list → tools/call.
  let { client, transport } = await connect(provider);
  emit('initialized', {
    server: client.getServerVersion()?.name,
    session: Boolean(transport.sessionId),
    protocol_version: transport.protocolVersion,
  });
  const tools = await client.listTools();
  emit('tools_listed', { names: tools.tools.map((t) => t.name) });
  for (const call of calls) emit('tool_called', { name: call.name, text: await callTool(client, call) });

  // 4. Refresh: make the access token unusable; the SDK must refresh with the refresh token
  //    (rotation: the refresh token changes) and retry.
  const before = provider.tokens();
  provider._tokens = { ...before, access_token: 'expired-or-garbage' };
  await client.close();
  ({ client, transport } = await connect(provider));
  const after = provider.tokens();
  if (after.access_token === 'expired-or-garbage') throw new Error('token was not refreshed');
  emit('refreshed', {
    access_token_changed: after.access_token !== before.access_token,
    refresh_token_rotated: after.refresh_token !== before.refresh_token,
    reauthorized: provider.authorizations > 1,
  });
  if (calls.length > 0) {
    emit('tool_called_after_refresh', { name: calls[0].name, text: await callTool(client, calls[0]) });
  }
  await client.close();

  // 5. Revoke (RFC 7009) both tokens; the next request must get 401 and no refresh may succeed.
  const metadata = await (await fetch(new URL('/.well-known/oauth-authorization-server', mcpUrl))).json();
  for (const [token, hint] of [
    [after.refresh_token, 'refresh_token'],
    [after.access_token, 'access_token'],
  ]) {
    const body = new URLSearchParams({ token, token_type_hint: hint, client_id: provider.clientInformation().client_id });
    const response = await fetch(metadata.revocation_endpoint, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body,
    });
    emit('revoked', { hint, status: response.status });
  }
  const denied = await fetch(mcpUrl, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      accept: 'application/json, text/event-stream',
      authorization: `Bearer ${after.access_token}`,
    },
    body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'ping' }),
  });
  emit('after_revocation', {
    status: denied.status,
    www_authenticate: denied.headers.get('www-authenticate'),
  });
  provider.refusesAuthorization = true;
  emit('done');
}

main().catch((error) => {
  emit('failed', { message: String(error?.stack ?? error) });
  process.exit(1);
});
