#!/usr/bin/env bash
# The chat demo in one terminal: the chat upstream and demo page (cargo run --example chat),
# and wsgate on examples/chat/route.yaml. Ctrl-C stops both.
# Run from anywhere: bash examples/chat/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --bin wsgate --example chat
./target/release/examples/chat &
chat_pid=$!
trap 'kill $chat_pid 2>/dev/null' EXIT
sleep 0.3
kill -0 $chat_pid 2>/dev/null || exit 1  # it said why (a port in use)
echo "open http://127.0.0.1:8000/ (allowed) and http://localhost:8001/ (refused) in a browser"
./target/release/wsgate standalone --routes examples/chat/route.yaml \
  --listen 127.0.0.1:8080 --listen-tls 127.0.0.1:8443 --admin 127.0.0.1:9090 "$@"
