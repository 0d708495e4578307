#!/usr/bin/env bash
# The main job: prepares models and inference runtimes, builds the embeddings component and
# `mesh-host`, and embeds sample sentences through `mesh-host exec` on each available backend.
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add wasm32-wasip2 >/dev/null
bash scripts/setup.sh

echo "==> building the embeddings component (wasm32-wasip2)"
cargo build --quiet --release --manifest-path workloads/Cargo.toml --target wasm32-wasip2 -p embeddings
component=workloads/target/wasm32-wasip2/release/embeddings.wasm

echo "==> building mesh-host"
cargo build --quiet --release -p mesh-host
host=target/release/mesh-host

echo "==> inference backends on this device"
"$host" backends

input=$(mktemp)
trap 'rm -f "$input"' EXIT
cat >"$input" <<'JSON'
{"texts": ["A man is playing a guitar.",
           "Someone is playing a musical instrument.",
           "The stock market fell sharply today."]}
JSON

for backend in onnxruntime openvino tract; do
  if "$host" backends --json | python3 -c "import json,sys; sys.exit(0 if any(b['backend']=='$backend' and b['available'] for b in json.load(sys.stdin)) else 1)"; then
    echo "==> embedding 3 sentences with $backend"
    "$host" exec "$component" --input "$input" --backend "$backend" | python3 scripts/show_embeddings.py
  fi
done
