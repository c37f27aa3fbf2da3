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
