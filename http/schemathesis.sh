#!/usr/bin/env bash
# Fuzzes the live HTTP API from its own OpenAPI document with schemathesis (PyPI): a real
# engine and gateway (`walletd serve` on a temporary data directory, the API on a free port),
# a user token and an operator token, and the checks that every answer is documented (status,
# content type, body schema) and that no input makes the gateway fail (no 5xx). The history
# route is left out: it answers 501 until the PostgreSQL projection exists.
#
#   http/schemathesis.sh [path/to/walletd]      (default: target/debug/walletd, built if missing)
#   MAX_EXAMPLES=50 http/schemathesis.sh
set -euo pipefail
cd "$(dirname "$0")/.."
walletd="${1:-target/debug/walletd}"
[ -x "$walletd" ] || cargo build -q -p walletd
command -v st >/dev/null 2>&1 || python3 -m pip install -q "schemathesis==4.32.5"

work="$(mktemp -d)"
cleanup() { [ -n "${server_pid:-}" ] && kill "$server_pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
"$walletd" serve --data-dir "$work/data" --addr 127.0.0.1:0 --http 127.0.0.1:0 --accounts-max 65536 \
  --rate-limit-per-s 0 >"$work/out" 2>"$work/err" &
server_pid=$!
for _ in $(seq 1 300); do grep -q '^http on ' "$work/out" 2>/dev/null && break; sleep 0.1; done
url="$(sed -n 's/^http on //p' "$work/out")"
[ -n "$url" ] || { echo "the server did not start:"; cat "$work/err"; exit 1; }
for _ in $(seq 1 100); do curl -sf "$url/readyz" >/dev/null && break; sleep 0.1; done

secret="$work/data/http-dev-secret"
user="$("$walletd" http token --sub fuzzer --scope operator --secret-file "$secret")"
curl -sf -H "Authorization: Bearer $user" -H 'Content-Type: application/json' -d '{"currency":"USD"}' \
  "$url/v1/wallets" >/dev/null

# Run from the temporary directory: schemathesis keeps its example database in the working one.
cd "$work"
st run "$url/openapi.json" \
  --header "Authorization: Bearer $user" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --exclude-path '/v1/wallets/{id}/transactions' \
  --max-examples "${MAX_EXAMPLES:-25}" \
  --generation-deterministic
