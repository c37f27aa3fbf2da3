#!/usr/bin/env bash
# Installs the real peers the test suite drives (shared/design/test-peers.md), pinned, into
# tests/peers/node_modules and tests/peers/.venv. Idempotent; safe to re-run.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -f package.json ]; then
  echo "tests/peers/package.json missing" >&2
  exit 1
fi
npm ci --no-audit --no-fund --loglevel=error

# gitea-mcp (PyPI, Python FastMCP): a real Forgejo-API MCP server, driven against the stand-in
# Forgejo. Pinned; reinstalled only when the pin changes.
GITEA_MCP_VERSION=0.5.1
if [ ! -x .venv/bin/gitea-mcp ] || ! .venv/bin/pip show gitea-mcp 2>/dev/null | grep -qx "Version: $GITEA_MCP_VERSION"; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check "gitea-mcp==$GITEA_MCP_VERSION"
fi
