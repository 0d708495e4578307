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

# Benchmarks are not run here (cargo bench runs them), but they must keep compiling.
cargo test --workspace --all-targets --no-run
# The end-to-end tests start the binaries themselves (mesh-relay has no tests of its own, so
# `cargo test` would not build it).
cargo build --workspace --bins
# The adversarial tests run a lying host: the agent built with fault injection (a separate
# binary, never part of a release build).
cargo build -p mesh-host --features fault-injection --bin mesh-host-faulty
cargo test --workspace "$@"
