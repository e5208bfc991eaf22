#!/usr/bin/env bash
# Document benchmarks (issue 2): create / get / filtered+sorted list with count, 32 clients,
# on SQLite with group commit on and off, and on Postgres. Prints Markdown tables.
#
#   bench/docs.sh                 # 10 s per scenario, 100k documents
#   SECONDS_PER=5 DOCS=20000 bench/docs.sh
#   PG=postgres://postgres@127.0.0.1:5432/postgres bench/docs.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ferrobase/target}"
cargo build --release -q -p ferrobase -p ferrobase-bench
T="$CARGO_TARGET_DIR/release"
S="${SECONDS_PER:-10}"
D="${DOCS:-100000}"
PG="${PG:-postgres://postgres@127.0.0.1:5432/postgres}"
echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(nproc) cores, $(uname -r)"
"$T/fbbench" docs --bin "$T/ferrobase" --seconds "$S" --docs "$D" --group-commit true
"$T/fbbench" docs --bin "$T/ferrobase" --seconds "$S" --docs "$D" --group-commit false
if pg_isready -q -h 127.0.0.1 -p 5432; then
  "$T/fbbench" docs --bin "$T/ferrobase" --seconds "$S" --docs "$D" --group-commit true --postgres "$PG"
  "$T/fbbench" docs --bin "$T/ferrobase" --seconds "$S" --docs "$D" --group-commit false --postgres "$PG"
else
  echo "(Postgres not reachable: skipped)"
fi
