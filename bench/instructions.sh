#!/usr/bin/env bash
# Instructions per `tools/call` in the bench process (client + bridge), per arm, counted by
# valgrind's callgrind: unlike seconds, the same for the same binary and inputs whatever else
# the machine is doing, so a change to the per-call path can be judged on a noisy machine.
#
#   bash bench/instructions.sh            # broker, bare bridge, direct stdio (echo child)
#   ARMS=broker bash bench/instructions.sh
#
# Each arm runs twice under callgrind (32 sessions, 100 calls each per round; 1 round, then 3):
# the difference is the cost of 6,400 calls with start-up and shutdown taken out. The
# children run natively (callgrind does not follow them). valgrind 3.19 has no SHA-NI, so
# SHA-256 runs its portable code here: the token, session-id and audit-chain hashes count
# several times what they cost on a CPU with the extension.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind > /dev/null || { echo "valgrind is not installed" >&2; exit 1; }
ARMS=${ARMS:-broker bare direct}
cargo bench -p bench --bench mcp_latency --no-run > /dev/null 2>&1 \
    || cargo bench -p bench --bench mcp_latency --no-run
BINARY=$(cargo bench -p bench --bench mcp_latency --no-run --message-format=json 2> /dev/null \
    | sed -n 's/.*"executable":"\([^"]*mcp_latency[^"]*\)".*/\1/p' | tail -n 1)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
CALLS=$((2 * 32 * 100))
count() { # arm rounds -> total instructions
    valgrind --tool=callgrind --callgrind-out-file="$WORK/out" "$BINARY" --bench --echo-only \
        --quick --profile "$1" --rounds "$2" > "$WORK/log" 2>&1
    sed -n 's/^==[0-9]*== Collected : \([0-9]*\)$/\1/p' "$WORK/log"
}
declare -A PER_CALL
for arm in $ARMS; do
    one=$(count "$arm" 1)
    three=$(count "$arm" 3)
    PER_CALL[$arm]=$(((three - one) / CALLS))
    printf '%-8s %8d instructions per call (client + bridge)\n' "$arm" "${PER_CALL[$arm]}"
done
if [[ -n ${PER_CALL[broker]:-} && -n ${PER_CALL[bare]:-} ]]; then
    printf 'the broker over the bare bridge: %d instructions per call\n' \
        $((PER_CALL[broker] - PER_CALL[bare]))
fi
