#!/usr/bin/env bash
# Runs every Mesh test on a fresh machine: installs what the tests need (wasm target, Python
# wheels, models, native inference runtimes, Chromium for the console), starts PostgreSQL, then
# runs the workspace tests.
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add wasm32-wasip2 >/dev/null
# The NAT tests build network namespaces with iproute2 and iptables (root only).
if [ "$(id -u)" = 0 ] && ! command -v iptables >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iptables iproute2 >/dev/null \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iptables iproute2 >/dev/null; }
fi
# The web console's tests drive Debian's headless Chromium through its chromedriver.
if [ "$(id -u)" = 0 ] && ! { command -v chromium && command -v chromedriver; } >/dev/null; then
  echo "installing chromium and chromium-driver for the console's browser tests (apt)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }
fi
bash scripts/setup.sh
MESH_TEST_POSTGRES_URL="$(bash scripts/postgres.sh)"
export MESH_TEST_POSTGRES_URL

# One build of everything with the feature resolution `cargo test` uses (all targets,
# dev-dependencies included, fault injection on), so nothing is compiled twice: benchmarks
# (not run here, but they must keep compiling), every binary the end-to-end tests start, and
# the host's fault injection for the adversarial tests (in-process faulty agents, and the
# `mesh-host-faulty` binary; the feature never reaches a release build, and does nothing
# unless a test asks for a fault). After the demo, this reuses every dependency the demo built.
features=(--features mesh-host/fault-injection,mesh-e2e/fault-injection)
cargo build --workspace --all-targets "${features[@]}"
cargo test --workspace "${features[@]}" "$@"
