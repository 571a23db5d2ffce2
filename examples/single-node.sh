#!/usr/bin/env bash
# One bender node driving a real HAProxy on this machine with the default template.
# Run: examples/single-node.sh   (needs haproxy: apt-get install -y haproxy; Ctrl-C stops both)
# Then, in another shell:
#   curl -XPOST -H 'content-type: application/json' localhost:1729/backends \
#        -d '{"name":"web","app":"web","version":"1"}'
#   curl -XPOST -H 'content-type: application/json' localhost:1729/frontends \
#        -d '{"name":"www","backend":"web","bind":"127.0.0.1:8080"}'
#   python3 -m http.server 9001 &            # an app server
#   target/release/bender register web 1 127.0.0.1 9001 --keep &   # registered, renewed until Ctrl-C
#   curl localhost:8080/                      # served through HAProxy
#   cat /tmp/bender-single/haproxy.cfg        # what bender rendered
set -euo pipefail
cd "$(dirname "$0")/.."
command -v haproxy >/dev/null || { echo "haproxy is not installed: apt-get install -y haproxy" >&2; exit 1; }
echo "building bender (release; the first build takes a few minutes)..." >&2
cargo build --release --quiet
dir=/tmp/bender-single
# Every run starts clean: the backends and registrations of an earlier run would otherwise
# come back from its snapshot (and the quick start's creates would answer 409).
rm -rf "$dir"
mkdir -p "$dir"
# A minimal config to start HAProxy's master with; bender replaces it on its first apply.
cat > "$dir/haproxy.cfg" <<CFG
global
    stats socket $dir/admin.sock mode 660 level admin expose-fd listeners
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
CFG
haproxy -W -D -S "$dir/master.sock" -f "$dir/haproxy.cfg" -p "$dir/haproxy.pid"
trap 'kill "$(cat "$dir/haproxy.pid")" 2>/dev/null || true' EXIT
cat > "$dir/bender.toml" <<CFG
data_dir = "$dir/data"

[[template]]
name = "haproxy"
source = "templates/haproxy.cfg.tera"
destination = "$dir/haproxy.cfg"
reload = { method = "master-socket", socket = "$dir/master.sock" }
server_state = { socket = "$dir/admin.sock", file = "$dir/server-state" }
runtime = { socket = "$dir/admin.sock", drain = "2s" }
# Not running as root in a package: no chroot, no user switch, no syslog.
vars = { stats_socket = "$dir/admin.sock", server_state_file = "$dir/server-state", chroot = "", user = "", group = "", log = "" }
CFG
target/release/bender agent --config "$dir/bender.toml" \
  --api-listen 127.0.0.1:1729 --gossip-listen 127.0.0.1:1730
