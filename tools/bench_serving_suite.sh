#!/usr/bin/env bash
# Serves the default model, runs tools/bench_serving.py at several concurrencies
# (128 in / 128 out, streaming, ignore_eos), then stops the server.
#   tools/bench_serving_suite.sh [extra kestrel serve options...]
# Results: bench_results/serving_c{N}.json and a table on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${PORT:-8765}
CONCURRENCIES=${CONCURRENCIES:-"1 8 32"}
mkdir -p bench_results
HF_HUB_OFFLINE=1 .venv/bin/kestrel serve --port "$PORT" "$@" > bench_results/server.log 2>&1 &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 180); do
  curl -sf "http://127.0.0.1:$PORT/health" > /dev/null && break
  sleep 1
done
for c in $CONCURRENCIES; do
  n=$(( c < 4 ? 4 : c ))
  echo "== concurrency $c, $n prompts"
  .venv/bin/python -m tools.bench_serving --base-url "http://127.0.0.1:$PORT" --concurrency "$c" \
    --num-prompts "$n" --input-len 128 --output-len 128 --stream --timeout 900 \
    --result-json "bench_results/serving_c$c.json"
done
