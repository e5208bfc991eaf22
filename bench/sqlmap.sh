#!/usr/bin/env bash
# HOSTILE RULE-06: sqlmap against the query parameters of a loopback instance — as an
# anonymous caller (list rule `true`) and with the service key (no rule at all), on SQLite,
# or on Postgres with PG=postgres://postgres@127.0.0.1:5432/postgres.
#
#   bench/sqlmap.sh                 # level 3, risk 2, as HOSTILE.md asks (~2 min here)
#   LEVEL=1 RISK=1 bench/sqlmap.sh  # a quick look
#
# Not part of the test command (it takes minutes); the result is recorded in BENCHMARKS.md,
# sqlmap's output is kept in target/sqlmap/. sqlmap comes from PyPI into .sqlmap-venv. Exit status 0 only when sqlmap
# found nothing injectable and the server answered /health throughout.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ferrobase/target}"
if [ ! -x .sqlmap-venv/bin/sqlmap ]; then
  python3 -m venv .sqlmap-venv
  .sqlmap-venv/bin/pip install -q sqlmap
fi
cargo build --release -q -p ferrobase
KEY=sqlmap-service-key-0123456789
work=$(mktemp -d)
pid=
pgdb=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  [ -n "$pgdb" ] && psql -q "$PG" -c "DROP DATABASE IF EXISTS $pgdb WITH (FORCE)" || true
  rm -rf "$work"
}
trap cleanup EXIT
if [ -n "${PG:-}" ]; then
  pgdb="fb_sqlmap_$$"
  psql -q "$PG" -c "CREATE DATABASE $pgdb"
  export FERROBASE_DATABASE_URL="${PG%/*}/$pgdb"
fi
FERROBASE_LOG=warn "$CARGO_TARGET_DIR/release/ferrobase" serve --http 127.0.0.1:0 \
  --service-key "$KEY" --data-dir "$work/data" > "$work/out" 2> "$work/err" &
pid=$!
for _ in $(seq 100); do
  grep -q "ferrobase listening on" "$work/out" && break
  sleep 0.1
done
BASE=$(sed -n 's/^ferrobase listening on //p' "$work/out")
[ -n "$BASE" ] || { echo "sqlmap: the server did not start" >&2; cat "$work/err" >&2; exit 1; }
H="Authorization: Bearer $KEY"
curl -sf -H "$H" "$BASE/v1/admin/collections" --json \
  '{"name": "notes", "rules": {"list": "true", "get": "true"}, "indexes": [{"fields": ["cat", "-n"]}]}' > /dev/null
for i in $(seq 1 40); do
  curl -sf -H "$H" "$BASE/v1/db/notes" --json \
    "{\"title\": \"note $i\", \"cat\": $((i % 4)), \"n\": $i, \"secret\": \"s$i\"}" > /dev/null
done
ID=$(curl -sf -H "$H" "$BASE/v1/db/notes?limit=1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["items"][0]["_id"])')

# Every query parameter of a list, and the id in the path (marked with *).
W='%7B%22cat%22%3A1%2C%22title%22%3A%7B%22%24startsWith%22%3A%22note%22%7D%7D'
LIST="$BASE/v1/db/notes?where=$W&sort=-n&limit=5&fields=title,n&count=true"
status=0
mkdir -p target/sqlmap
run() {
  local log="target/sqlmap/$1.log"
  shift
  echo "== sqlmap $*" >&2
  .sqlmap-venv/bin/sqlmap --batch --level "${LEVEL:-3}" --risk "${RISK:-2}" --threads 2 \
    --output-dir "$work/sqlmap" --disable-coloring "$@" > "$log" 2>&1 || true
  echo "   $(grep -c "testing '" "$log") techniques tried; $(grep -c "does not seem to be injectable" "$log") parameters not injectable" >&2
  if grep -qE "sqlmap identified the following injection point|is vulnerable|appears to be .* injectable" "$log"; then
    echo "sqlmap: INJECTABLE (see $log)" >&2
    status=1
  fi
  curl -sf "$BASE/health" > /dev/null || { echo "sqlmap: /health failed" >&2; status=1; }
}
run list-anon -u "$LIST" -p "where,sort,limit,fields,count"
run list-service -u "$LIST" -p "where,sort,limit,fields,count" -H "$H"
run cursor -u "$BASE/v1/db/notes?sort=n&limit=5&cursor=$(curl -sf "$BASE/v1/db/notes?sort=n&limit=5" | python3 -c 'import json,sys; print(json.load(sys.stdin)["next_cursor"] or "")')" -p cursor
run get-by-id -u "$BASE/v1/db/notes/$ID*"
# Inside the JSON of `where`: payloads in a string value (a bound parameter) and in a field
# name (checked against the path grammar), marked with *.
run where-value -u "$BASE/v1/db/notes?where=%7B%22title%22%3A%22note%201*%22%7D&count=true"
run where-field -u "$BASE/v1/db/notes?where=%7B%22title*%22%3A%22note%201%22%7D"
run sort-field -u "$BASE/v1/db/notes?sort=n*&limit=3"
if [ "$status" = 0 ]; then
  echo "sqlmap: nothing injectable; /health 200 after every run" >&2
fi
exit "$status"
