#!/usr/bin/env bash
# A three-node bender cluster on this machine, on 127.0.0.1-3 (API :1729, gossip :1730).
# Run: examples/dev-cluster.sh        (Ctrl-C stops all three)
# Then: curl -XPOST 127.0.0.1:1729/registrations/web/1.0.0/10.0.0.1/8080
#       curl 127.0.0.3:1729/registrations
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
bin=target/release/bender
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait' EXIT INT TERM
for i in 1 2 3; do
  data=$(mktemp -d -t bender-dev-$i-XXXX)
  "$bin" agent --node-id "dev$i" --cluster-id dev \
    --api-listen "127.0.0.$i:1729" --gossip-listen "127.0.0.$i:1730" \
    --seed 127.0.0.1:1730 --seed 127.0.0.2:1730 --seed 127.0.0.3:1730 \
    --data-dir "$data" 2>&1 | sed "s/^/[dev$i] /" &
  pids+=($!)
done
wait
