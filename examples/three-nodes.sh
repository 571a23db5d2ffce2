#!/usr/bin/env bash
# Three load balancers on one machine, as in production: each "host" is a Linux network
# namespace with its own HAProxy and its own bender node rendering the default template.
# Needs root, haproxy and iproute2. Run: sudo examples/three-nodes.sh   (Ctrl-C tears it down)
#
# Host i (1..3) has its API and HAProxy frontends on 10.232.1.i and gossips on 10.232.2.i;
# this shell reaches 10.232.1.0/24 through a bridge (10.232.1.254). Then, for example:
#   export BENDER_ADDR=10.232.1.1:1729,10.232.1.2:1729,10.232.1.3:1729
#   target/release/bender members
#   target/release/bender backend create web --app web --version 1
#   target/release/bender frontend create www --backend web --bind '*:80'
#   python3 -m http.server --bind 10.232.1.254 9001 &
#   target/release/bender register web 1 10.232.1.254 9001 --ttl 10s --keep &
#   curl 10.232.1.1/ ; curl 10.232.1.2/ ; curl 10.232.1.3/     # every HAProxy serves it
#   target/release/bender backend switch web --version 2        # blue/green, on all three
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root (it creates network namespaces)" >&2; exit 1; }
command -v haproxy >/dev/null || { echo "install haproxy: apt-get install -y haproxy" >&2; exit 1; }
cargo build --release --quiet
bin=$PWD/target/release/bender
template=$PWD/templates/haproxy.cfg.tera
base=/tmp/bender-three

cleanup() {
  set +e
  for i in 1 2 3; do
    [ -f "$base/h$i/haproxy.pid" ] && kill "$(cat "$base/h$i/haproxy.pid")" 2>/dev/null
    ip netns pids "bdemo$i" 2>/dev/null | xargs -r kill 2>/dev/null
    ip netns del "bdemo$i" 2>/dev/null
  done
  ip link del bdemom 2>/dev/null
  ip link del bdemoc 2>/dev/null
}
trap cleanup EXIT INT TERM
cleanup

ip link add bdemom type bridge && ip link add bdemoc type bridge
ip addr add 10.232.1.254/24 dev bdemom
ip link set bdemom up && ip link set bdemoc up
for i in 1 2 3; do
  ns=bdemo$i dir=$base/h$i
  rm -rf "$dir" && mkdir -p "$dir"
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  for kind in m c; do
    net=$([ $kind = m ] && echo 1 || echo 2)
    ip link add "bdemo$kind$i" type veth peer name eth netns "$ns"
    ip -n "$ns" link set eth name "${kind}0"
    ip link set "bdemo$kind$i" master "bdemo$kind" up
    ip -n "$ns" addr add "10.232.$net.$i/24" dev "${kind}0"
    ip -n "$ns" link set "${kind}0" up
  done
  cat > "$dir/haproxy.cfg" <<CFG
global
    stats socket $dir/admin.sock mode 660 level admin expose-fd listeners
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
CFG
  cat > "$dir/bender.toml" <<CFG
data_dir = "$dir/data"
[[template]]
name = "haproxy"
source = "$template"
destination = "$dir/haproxy.cfg"
reload = { method = "master-socket", socket = "$dir/master.sock" }
server_state = { socket = "$dir/admin.sock", file = "$dir/server-state" }
vars = { stats_socket = "$dir/admin.sock", server_state_file = "$dir/server-state", chroot = "", user = "", group = "", log = "" }
CFG
  ip netns exec "$ns" haproxy -W -D -S "$dir/master.sock" -f "$dir/haproxy.cfg" -p "$dir/haproxy.pid"
  seeds=()
  for j in 1 2 3; do [ "$j" != "$i" ] && seeds+=(--seed "10.232.2.$j:1730"); done
  ip netns exec "$ns" "$bin" agent --config "$dir/bender.toml" --node-id "lb$i" --cluster-id three-nodes \
    --api-listen "10.232.1.$i:1729" --gossip-listen "10.232.2.$i:1730" "${seeds[@]}" \
    2>&1 | sed "s/^/[lb$i] /" &
done
echo "three load balancers up: APIs on 10.232.1.{1,2,3}:1729 (see the header of $0)"
wait
