#!/usr/bin/env bash
# Starts the echo upstream and wsgate on the bundled example routes, in one terminal.
# Ctrl-C stops both. Run from the repository root: bash examples/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin wsgate --example echo
./target/release/examples/echo 127.0.0.1:9001 &
echo_pid=$!
trap 'kill $echo_pid 2>/dev/null' EXIT
./target/release/wsgate standalone --routes examples/routes --listen 127.0.0.1:8080 \
  --listen-tls 127.0.0.1:8443 "$@"
