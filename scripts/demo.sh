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
{"texts": ["Mesh pools your own devices to run AI jobs.",
           "A private network of trusted computers shares inference work.",
           "The cat sat on the mat."]}
JSON

for backend in onnxruntime openvino tract; do
  if "$host" backends --json | python3 -c "import json,sys; sys.exit(0 if any(b['backend']=='$backend' and b['available'] for b in json.load(sys.stdin)) else 1)"; then
    echo "==> embedding 3 sentences with $backend"
    "$host" exec "$component" --input "$input" --backend "$backend" | python3 -c '
import json, sys
doc = json.load(sys.stdin)
e = doc["embeddings"]
cos = lambda a, b: sum(x * y for x, y in zip(a, b))
print(f"    {len(e)} embeddings of {len(e[0])} dimensions, {doc[\"tokens\"]} tokens")
print(f"    cosine(sentence 1, sentence 2) = {cos(e[0], e[1]):.4f} (related)")
print(f"    cosine(sentence 1, sentence 3) = {cos(e[0], e[2]):.4f} (unrelated)")
r = doc["receipt"]
print(f"    receipt: component {r[\"component\"][:19]}… model {r[\"models\"][0][\"hash\"][:19]}… output {r[\"output\"][:19]}…")
print(f"    timings: instantiate {r[\"timings\"][\"instantiate_us\"]} us, run {r[\"timings\"][\"run_us\"]} us")
'
  fi
done
