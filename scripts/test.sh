#!/usr/bin/env bash
# Runs every Mesh test on a fresh machine: installs what the tests need (wasm target, Python
# wheels, models, native inference runtimes), starts PostgreSQL, then runs the workspace tests.
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add wasm32-wasip2 >/dev/null
# The NAT tests build network namespaces with iproute2 and iptables (root only).
if [ "$(id -u)" = 0 ] && ! command -v iptables >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iptables iproute2 >/dev/null \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iptables iproute2 >/dev/null; }
fi
bash scripts/setup.sh
MESH_TEST_POSTGRES_URL="$(bash scripts/postgres.sh)"
export MESH_TEST_POSTGRES_URL

# One build of everything with the same feature resolution `cargo test` uses (all targets,
# dev-dependencies included), so nothing is compiled twice: benchmarks (not run here, but
# they must keep compiling), every binary the end-to-end tests start (mesh-relay has no tests
# of its own), and `mesh-host-faulty`, the agent with fault injection for the adversarial
# tests (the feature never reaches a release build). `cargo test` then rebuilds only the
# mesh-host targets, without fault injection.
cargo build --workspace --all-targets --features mesh-host/fault-injection
cargo test --workspace "$@"
