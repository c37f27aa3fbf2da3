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
# Python peer (gitea-mcp) in its own venv; the sandbox tests bind it read-only.
if [ ! -x .venv/bin/gitea-mcp ]; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check gitea-mcp==0.5.1
fi
