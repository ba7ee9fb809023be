#!/usr/bin/env bash
# Fuzzes the live HTTP API from its own OpenAPI document with schemathesis (PyPI): a real
# engine and gateway (`walletd serve` on a temporary data directory, the API on a free port),
# a throwaway PostgreSQL (initdb into the temporary directory, as the `postgres` user under
# root, as history/src/harness.rs does for the tests) with `walletd project postgres` following
# the data directory, so the history route is served too; a user token and an operator token,
# and the checks that every answer is documented (status, content type, body schema) and that
# no input makes the gateway fail (no 5xx).
#
#   http/schemathesis.sh [path/to/walletd]      (default: target/debug/walletd, built if missing)
#   MAX_EXAMPLES=50 http/schemathesis.sh
set -euo pipefail
cd "$(dirname "$0")/.."
walletd="${1:-target/debug/walletd}"
[ -x "$walletd" ] || cargo build -q -p walletd
command -v st >/dev/null 2>&1 || python3 -m pip install -q "schemathesis==4.32.5"

work="$(mktemp -d)"
pg_bin="$(dirname "$(command -v initdb 2>/dev/null || ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -1)")"
as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
cleanup() {
  for pid in ${project_pid:-} ${server_pid:-}; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -f "$work/pg/data/postmaster.pid" ] && as_postgres "$pg_bin/pg_ctl" -D "$work/pg/data" -m immediate -w stop >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/pg"
# Under root the server runs as `postgres`, which must reach its directory.
if [ "$(id -u)" = 0 ]; then chmod 711 "$work"; chown postgres "$work/pg"; fi
pg_port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
as_postgres "$pg_bin/initdb" -D "$work/pg/data" -U walletd --auth=trust --no-sync -E UTF8 --locale=C >/dev/null
as_postgres "$pg_bin/pg_ctl" -D "$work/pg/data" -l "$work/pg/log" -w -t 60 \
  -o "-c listen_addresses=127.0.0.1 -p $pg_port -c unix_socket_directories='$work/pg' -c fsync=off" start >/dev/null
database="host=127.0.0.1 port=$pg_port user=walletd dbname=postgres"

"$walletd" serve --data-dir "$work/data" --addr 127.0.0.1:0 --http 127.0.0.1:0 --accounts-max 65536 \
  --rate-limit-per-s 0 --history-url "$database" >"$work/out" 2>"$work/err" &
server_pid=$!
for _ in $(seq 1 300); do grep -q '^http on ' "$work/out" 2>/dev/null && break; sleep 0.1; done
url="$(sed -n 's/^http on //p' "$work/out")"
[ -n "$url" ] || { echo "the server did not start:"; cat "$work/err"; exit 1; }
for _ in $(seq 1 100); do curl -sf "$url/readyz" >/dev/null && break; sleep 0.1; done
"$walletd" project postgres --data-dir "$work/data" --database-url "$database" >/dev/null 2>"$work/project.err" &
project_pid=$!

secret="$work/data/http-dev-secret"
user="$("$walletd" http token --sub fuzzer --scope operator --secret-file "$secret")"
wallet="$(curl -sf -H "Authorization: Bearer $user" -H 'Content-Type: application/json' -d '{"currency":"USD"}' \
  "$url/v1/wallets" | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')"
# The projection has migrated the schema once the history route answers.
for _ in $(seq 1 300); do
  curl -sf -H "Authorization: Bearer $user" "$url/v1/wallets/$wallet/transactions" >/dev/null && break
  sleep 0.1
done
curl -sf -H "Authorization: Bearer $user" "$url/v1/wallets/$wallet/transactions" >/dev/null \
  || { echo "the history route does not answer:"; cat "$work/project.err"; exit 1; }

# Run from the temporary directory: schemathesis keeps its example database in the working one.
cd "$work"
st run "$url/openapi.json" \
  --header "Authorization: Bearer $user" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --max-examples "${MAX_EXAMPLES:-25}" \
  --generation-deterministic
