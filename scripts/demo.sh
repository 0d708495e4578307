#!/usr/bin/env bash
# The main job: a local mesh on the embedded defaults. Prepares models and inference runtimes,
# builds everything, starts a control plane (SQLite), a relay and two hosts on loopback,
# publishes the embeddings component, runs real embeddings jobs across the hosts (through the
# gateway, device to device, and the OpenAI-compatible endpoint), and shows where each job
# ran, the checked receipts, the credits that moved and the verification (VRF-selected
# re-executions on the other owner's host). Cleans up after itself.
#
# On a fresh clone most of the time is the first build; cargo shows its progress, and every
# step says how long it took. The build is the tests' build minus the tract backend (the demo
# runs on ONNX Runtime and OpenVINO from setup), so `scripts/test.sh` afterwards reuses every
# dependency it compiled.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

demo_started=$(date +%s)
step_started=$demo_started
step() { # closes the previous step with its time, then announces the next
  local now; now=$(date +%s)
  [ -n "${step_name:-}" ] && echo "    ($step_name: $((now - step_started)) s)"
  step_name=$1; step_started=$now
  echo "==> $1"
}

step "installing the wasm32-wasip2 target"
rustup target add wasm32-wasip2 2>&1 | sed 's/^/    /'
step "setup: Python venv, inference runtimes and models"
bash scripts/setup.sh

step "building the embeddings component (wasm32-wasip2)"
cargo build --release --manifest-path workloads/Cargo.toml --target wasm32-wasip2 -p embeddings
component=$root/workloads/target/wasm32-wasip2/release/embeddings.wasm

step "building mesh-control-plane, mesh-relay, mesh-host and mesh (the first build takes a few minutes)"
cargo build -p mesh-control-plane -p mesh-relay -p mesh-host -p mesh-cli --no-default-features
bin=$root/target/debug

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
export XDG_CONFIG_HOME=$work/config NO_COLOR=1 RUST_LOG=${RUST_LOG:-info,libp2p=warn}
export MESH_RELAY_SECRET=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
free_port() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_for() { # file pattern seconds
  for _ in $(seq $((${3} * 10))); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "timed out waiting for '$2' in $1:"; tail -n 20 "$1"; exit 1
}

step "starting the control plane (SQLite in $work/cp) and the relay"
relay_port=$(free_port)
relay_peer=$("$bin/mesh-relay" --data-dir "$work/relay" --print-peer-id)
relay_addr=/ip4/127.0.0.1/udp/$relay_port/quic-v1/p2p/$relay_peer
token=$("$bin/mesh-control-plane" --data-dir "$work/cp" init --name you)
"$bin/mesh-control-plane" --data-dir "$work/cp" serve --listen 127.0.0.1:0 --addr-file "$work/cp.addr" \
  --relay "$relay_addr" 2>"$work/cp.log" &
pids+=($!)
wait_for "$work/cp.log" "listening on" 30
export MESH_SERVER=http://$(cat "$work/cp.addr") MESH_TOKEN=$token
"$bin/mesh-relay" --data-dir "$work/relay" --control-plane "$MESH_SERVER" --allow-list-interval 1 \
  --listen "/ip4/127.0.0.1/udp/$relay_port/quic-v1" --listen "/ip4/127.0.0.1/tcp/$relay_port" 2>"$work/relay.log" &
pids+=($!)
wait_for "$work/relay.log" "allow-list loaded" 30
echo "    control plane $MESH_SERVER, relay $relay_addr"

echo "==> creating a network"
"$bin/mesh" network create home --no-device-approval

backends=$("$bin/mesh-host" backends --json | python3 -c 'import json,sys; print(" ".join(b["backend"] for b in json.load(sys.stdin) if b["available"]))')
host_backends=(onnxruntime openvino)
code() { python3 -c 'import json,sys; print(json.load(sys.stdin)["code"])'; }
# A friend joins as an admin and brings the second host: results are re-checked only on
# another owner's device, so verification needs two owners.
echo "==> a friend joins the network"
friend_invite=$("$bin/mesh" --json network invite --admin | code)
friend() { env -u MESH_TOKEN MESH_CONFIG="$work/friend.toml" "$bin/mesh" "$@"; }
friend login --invite "$friend_invite" --name friend | sed 's/^/    /'
for i in 1 2; do
  backend=${host_backends[$((i - 1))]}
  if [[ " $backends " != *" $backend "* ]]; then
    echo "error: the $backend backend is not available (setup installs it):" >&2
    "$bin/mesh-host" backends >&2
    exit 1
  fi
  owner=you; [ "$i" = 2 ] && owner=friend
  echo "==> host$i ($owner's, backend $backend) joins and starts"
  if [ "$i" = 2 ]; then
    invite=$(friend --json network invite --device | code)
  else
    invite=$("$bin/mesh" --json network invite --device | code)
  fi
  "$bin/mesh-host" join "$invite" --control-plane "$MESH_SERVER" --name "host$i" --config "$work/host$i.toml" \
    --data-dir "$work/host$i" --listen /ip4/127.0.0.1/udp/0/quic-v1 --listen /ip4/127.0.0.1/tcp/0 --backend "$backend" --slots 1
  "$bin/mesh-host" run --config "$work/host$i.toml" 2>"$work/host$i.log" &
  pids+=($!)
done
for i in 1 2; do wait_for "$work/host$i.log" "reservation accepted" 30; done
echo "    both hosts hold a relay reservation"
"$bin/mesh" device list

echo "==> publishing the embeddings component"
"$bin/mesh" workload publish "$component"

echo "==> mesh embed: three sentences through the gateway (control plane -> relay -> a host)"
"$bin/mesh" embed "A man is playing a guitar." "Someone is playing a musical instrument." "The stock market fell sharply today."

echo "==> mesh job submit: five more jobs, spread over the hosts"
for i in 1 2 3 4 5; do
  echo "{\"texts\": [\"Job number $i of the demo.\", \"Private meshes pool trusted devices.\"]}" >"$work/in$i.json"
  "$bin/mesh" job submit embeddings --input "$work/in$i.json" 2>&1 >/dev/null | sed 's/^/    /'
done

echo "==> device to device: host1 asks the control plane for an executor and sends the job itself"
echo '{"texts": ["Sent from one device to another."]}' >"$work/d2d.json"
"$bin/mesh-host" submit --config "$work/host1.toml" --workload "$("$bin/mesh" --json workload list | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["hash"])')" \
  --input "$work/d2d.json" 2>/dev/null | python3 -c '
import json, sys
d = json.load(sys.stdin)
path = "relayed" if d["relayed"] else "direct"
print("    {}  {}  ran on {} ({})  receipt output {}...".format(d["job"], d["state"], d["executor"], path, d["receipt"]["output"][:19]))'

echo "==> OpenAI-compatible endpoint: POST /v1/embeddings"
python3 - "$MESH_SERVER" "$MESH_TOKEN" <<'PY'
import json, sys, urllib.request
server, token = sys.argv[1], sys.argv[2]
body = json.dumps({"model": "sentence-transformers/all-MiniLM-L6-v2", "input": ["What is a mesh?"]}).encode()
req = urllib.request.Request(server + "/v1/embeddings", body, {"Authorization": "Bearer " + token, "Content-Type": "application/json"})
doc = json.load(urllib.request.urlopen(req))
print(f"    {doc['object']}: {len(doc['data'])} embedding of {len(doc['data'][0]['embedding'])} floats, {doc['usage']['prompt_tokens']} tokens")
PY

echo "==> where the jobs ran"
"$bin/mesh" --json job list | python3 -c '
import collections, json, sys
jobs = json.load(sys.stdin)
by = collections.Counter(j["executor"] for j in jobs)
for device, n in by.items():
    print("    {}: {} jobs".format(device, n))
done = all(j["state"] == "done" for j in jobs)
print("    all {} jobs done: {}; each receipt was checked by its requester (executor signature, job, ticket, input and output hashes)".format(len(jobs), done))'

echo "==> credits"
"$bin/mesh" credits history | head -n 6 | sed 's/^/    /'
"$bin/mesh" credits balance | sed 's/^/    /'
echo "    (what you paid as requester went to the owner of the host that ran it; verifiers are paid by the network)"

echo "==> verification: the control plane's VRF picked jobs to re-execute on the other owner's host"
sleep 3
"$bin/mesh" --json job list | python3 -c '
import json, sys
for j in json.load(sys.stdin):
    if j["price"] > 0:
        print(j["id"])' | while read -r job; do
  "$bin/mesh" --json job verify "$job" | python3 -c '
import json, sys
d = json.load(sys.stdin)
c = d["check"]
s = c["selection"]
print("    {}  VRF proof {}  {}  check: {}".format(c["job"], "valid" if d["selection_valid"] else "INVALID",
      "selected at {:.1f}%".format(s["rate_ppm"] / 1e4) if s["selected"] else "not selected", c["state"]))'
done
"$bin/mesh" device list | sed 's/^/    /'
echo "    (anyone can re-check a selection offline: mesh job verify <job>)"
step "done; stopping the mesh"
echo "    the demo took $(($(date +%s) - demo_started)) s in all"
