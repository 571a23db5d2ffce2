#!/usr/bin/env bash
# Builds the bender .deb and .rpm and checks them: their contents, conffiles, systemd unit and
# maintainer scripts. Then installs the .deb on this machine, starts HAProxy the way Debian's
# haproxy.service does, runs the packaged node as its unit would (user bender, CAP_KILL only,
# the packaged config) until it answers /health and serves a frontend through HAProxy, stops
# both, reinstalls, removes and purges the package. Prints every check; exits non-zero on the
# first failure; cleans up on any exit.
#
# Run as root on a Debian machine with no HAProxy service running (CI): packaging/check.sh
#   BENDER_SKIP_BUILD=1  check the packages already in target/packages/ instead of building.
# It changes the machine while it runs (installs the .deb, adds the `bender` user, which is
# kept afterwards by design); it leaves no bender package, HAProxy or bender process or state
# behind, and puts /etc/haproxy back as it found it. Running it twice in a row passes twice.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

CARGO_DEB_VERSION=3.8.0
CARGO_GENERATE_RPM_VERSION=0.21.1
API=http://127.0.0.1:1729

checks=0
step() { printf '\n== %s\n' "$*"; }
ok() { checks=$((checks + 1)); printf '  ok   %s\n' "$*"; }
fail() { printf '  FAIL %s\n' "$*" >&2; exit 1; }
# expect_line FILE REGEX WHAT: FILE has a line matching the (extended) REGEX.
expect_line() { grep -Eq -- "$2" "$1" && ok "$3" || fail "$3: no line matching /$2/ in $1"; }
# Whether dpkg knows bender in any state but "not installed" (installed, or config-files left).
deb_present() {
    local s
    s=$(dpkg-query -W -f='${Status}' bender 2>/dev/null || true)
    [ -n "$s" ] && [ "${s##* }" != not-installed ]
}

[ "$(id -u)" = 0 ] || fail "run as root (it installs the .deb)"

work=$(mktemp -d -t bender-check-XXXXXX)
agent_pid=
haproxy_pid=
haproxy_cfg=/etc/haproxy/haproxy.cfg
# Where Debian's haproxy.service keeps HAProxy's master PID and CLI; the packaged config reloads
# HAProxy through the pidfile.
haproxy_pidfile=/run/haproxy.pid
haproxy_master=/run/haproxy-master.sock
FRONTEND_PORT=17980
FRONTEND_PORT2=17981

# stop PID SECONDS: SIGTERM, then SIGKILL after the deadline; reaps it if it is our child.
stop() {
    local pid=$1 limit=$2
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq $((limit * 10))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    status=$?
    set +e
    [ -n "$agent_pid" ] && stop "$agent_pid" 5
    if [ -n "$haproxy_pid" ]; then
        stop "$haproxy_pid" 5
        rm -f "$haproxy_pidfile" "$haproxy_master" /run/haproxy/admin.sock /run/haproxy/server-state
    fi
    if deb_present; then
        DEBIAN_FRONTEND=noninteractive dpkg --purge bender >/dev/null 2>&1
    fi
    # The packaged config renders HAProxy's config when the node runs: put the machine's back.
    # (cp -p: its content, owner and mode; the node may have replaced it with a file of its own.)
    if [ -f "$work/haproxy.cfg.orig" ]; then
        cp -p "$work/haproxy.cfg.orig" "$haproxy_cfg"
    fi
    rm -rf "$work"
    if [ "$status" = 0 ]; then
        printf '\n%d passed, 0 failed\n' "$checks"
    else
        printf '\n%d passed, 1 failed\n' "$checks"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'printf "  FAIL line %s: %s\n" "$LINENO" "$BASH_COMMAND" >&2' ERR
trap 'exit 130' INT TERM

# --- Tools ---------------------------------------------------------------------------------------
step "tools"
need=()
command -v rpm >/dev/null || need+=(rpm)
command -v curl >/dev/null || need+=(curl)
command -v objcopy >/dev/null || need+=(binutils)
command -v haproxy >/dev/null || need+=(haproxy)
if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [ "${BENDER_SKIP_BUILD:-}" != 1 ]; then
    cargo deb --version >/dev/null 2>&1 \
        || cargo install --locked "cargo-deb@$CARGO_DEB_VERSION"
    cargo generate-rpm --version >/dev/null 2>&1 \
        || cargo install --locked "cargo-generate-rpm@$CARGO_GENERATE_RPM_VERSION"
fi
ok "rpm, curl, objcopy, haproxy, cargo-deb and cargo-generate-rpm present"

# --- Build ---------------------------------------------------------------------------------------
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | sed -n 1p)
if [ "${BENDER_SKIP_BUILD:-}" != 1 ]; then
    step "build (packaging/build.sh)"
    packaging/build.sh
fi
deb=$(ls target/packages/bender_"$version"-*_*.deb 2>/dev/null | sed -n 1p)
rpmf=$(ls target/packages/bender-"$version"-*.rpm 2>/dev/null | sed -n 1p)
[ -n "$deb" ] && [ -f "$deb" ] || fail "no target/packages/bender_$version-*.deb"
[ -n "$rpmf" ] && [ -f "$rpmf" ] || fail "no target/packages/bender-$version-*.rpm"
ok "built $deb ($(du -h "$deb" | cut -f1)) and $rpmf ($(du -h "$rpmf" | cut -f1))"

# The files both packages must install, and the conffiles among them.
files_common=(/usr/bin/bender /etc/bender/bender.toml /etc/bender/templates/haproxy.cfg.tera
              /usr/share/doc/bender/README.md /usr/share/doc/bender/ARCHITECTURE.md
              /usr/share/doc/bender/templates.md /usr/share/doc/bender/security.md
              /usr/share/man/man1/bender.1.gz /usr/share/man/man1/bender-agent.1.gz
              /usr/share/man/man1/bender-backend-switch.1.gz
              /usr/share/bash-completion/completions/bender
              /usr/share/fish/vendor_completions.d/bender.fish)
conffiles=(/etc/bender/bender.toml /etc/bender/templates/haproxy.cfg.tera)
deb_unit=/lib/systemd/system/bender.service
rpm_unit=/usr/lib/systemd/system/bender.service
deb_zsh=/usr/share/zsh/vendor-completions/_bender
rpm_zsh=/usr/share/zsh/site-functions/_bender

# check_unit FILE WHAT: the unit has the lines operators and the binary rely on.
check_unit() {
    local f=$1 what=$2
    for re in '^Type=notify$' \
              '^ExecStart=/usr/bin/bender agent --config /etc/bender/bender.toml$' \
              '^ExecReload=/bin/kill -HUP \$MAINPID$' \
              '^Restart=on-failure$' \
              '^User=bender$' '^Group=bender$' '^StateDirectory=bender$' \
              '^ProtectSystem=strict$' \
              '^ReadWritePaths=/var/lib/bender -/etc/haproxy -/run/haproxy$' \
              '^NoNewPrivileges=yes$' '^ProtectHome=yes$' '^PrivateTmp=yes$' \
              '^CapabilityBoundingSet=CAP_KILL$' '^AmbientCapabilities=CAP_KILL$' \
              '^RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX$' \
              '^WantedBy=multi-user.target$'; do
        grep -Eq -- "$re" "$f" || fail "$what: no line matching /$re/"
    done
    ok "$what: Type=notify, ExecStart/ExecReload, bender user, sandbox, CAP_KILL only"
}

# --- The .deb, unopened --------------------------------------------------------------------------
step "deb contents ($deb)"
dpkg-deb -c "$deb" | awk '{print $NF}' | sed 's|^\./|/|' >"$work/deb.list"
for f in "${files_common[@]}" "$deb_unit" "$deb_zsh"; do
    grep -qx -- "$f" "$work/deb.list" || fail "deb lacks $f"
done
ok "deb installs ${files_common[*]} $deb_unit $deb_zsh"
dpkg-deb -I "$deb" conffiles >"$work/deb.conffiles" || fail "deb has no conffiles"
for f in "${conffiles[@]}"; do
    grep -qx -- "$f" "$work/deb.conffiles" || fail "deb conffiles lack $f"
done
[ "$(sort "$work/deb.conffiles" | uniq -d)" = "" ] || fail "deb conffiles list a file twice"
ok "deb conffiles: $(tr '\n' ' ' <"$work/deb.conffiles")"
dpkg-deb -f "$deb" Depends >"$work/deb.depends"
expect_line "$work/deb.depends" 'libc6' "deb Depends: on libc6 (\$auto)"
expect_line "$work/deb.depends" 'adduser' "deb Depends: on adduser (postinst)"
[ "$(dpkg-deb -f "$deb" Recommends)" = haproxy ] && ok "deb Recommends: haproxy" \
    || fail "deb Recommends is not haproxy"
mkdir "$work/deb.control" "$work/deb.root"
dpkg-deb -e "$deb" "$work/deb.control"
for s in postinst prerm postrm; do
    [ -x "$work/deb.control/$s" ] || fail "deb has no executable $s"
    sh -n "$work/deb.control/$s" || fail "deb $s: shell syntax error"
done
ok "deb maintainer scripts postinst, prerm, postrm present, executable, valid sh"
expect_line "$work/deb.control/postinst" 'adduser --system .* bender' "postinst creates the bender system user"
expect_line "$work/deb.control/postinst" 'deb-systemd-helper enable bender.service' "postinst enables the unit"
if grep -Eq 'deb-systemd-invoke (start|restart)|systemctl .*start' "$work/deb.control/postinst"; then
    fail "postinst starts the service on install"
fi
ok "postinst does not start the service (only try-restart on upgrade)"
expect_line "$work/deb.control/postrm" 'rm -rf /var/lib/bender' "postrm deletes the state directory (on purge)"
dpkg-deb -x "$deb" "$work/deb.root"
check_unit "$work/deb.root$deb_unit" "deb unit"
cmp -s "$work/deb.root$deb_unit" packaging/bender.service || fail "deb unit differs from packaging/bender.service"
if readelf -S "$work/deb.root/usr/bin/bender" | grep -c '\.debug_info' >/dev/null; then
    fail "deb binary still carries debug info"
fi
ok "deb binary is stripped ($(du -h "$work/deb.root/usr/bin/bender" | cut -f1))"

# --- The .rpm, unopened --------------------------------------------------------------------------
step "rpm contents ($rpmf)"
rpm -qlp "$rpmf" 2>/dev/null >"$work/rpm.list"
for f in "${files_common[@]}" "$rpm_unit" "$rpm_zsh"; do
    grep -qx -- "$f" "$work/rpm.list" || fail "rpm lacks $f"
done
ok "rpm installs ${files_common[*]} $rpm_unit $rpm_zsh"
rpm -qcp "$rpmf" 2>/dev/null >"$work/rpm.conffiles"
for f in "${conffiles[@]}"; do
    grep -qx -- "$f" "$work/rpm.conffiles" || fail "rpm config files lack $f"
done
ok "rpm config files: $(tr '\n' ' ' <"$work/rpm.conffiles")"
# FILEFLAGS: c = %config, n = noreplace; an operator's edits survive upgrades.
rpm -qp --qf '[%{FILENAMES} %{FILEFLAGS:fflags}\n]' "$rpmf" 2>/dev/null >"$work/rpm.flags"
for f in "${conffiles[@]}"; do
    grep -Eq "^$f c?[a-z]*n" "$work/rpm.flags" || fail "rpm: $f is not %config(noreplace)"
done
ok "rpm config files are %config(noreplace)"
rpm -qp --scripts "$rpmf" 2>/dev/null >"$work/rpm.scripts"
for s in preinstall postinstall preuninstall postuninstall; do
    expect_line "$work/rpm.scripts" "^$s scriptlet" "rpm has a $s scriptlet"
done
expect_line "$work/rpm.scripts" 'useradd --system' "rpm %pre creates the bender system user"
expect_line "$work/rpm.scripts" 'systemctl --no-reload preset bender.service' "rpm %post presets (does not start) the unit"
expect_line "$work/rpm.scripts" '/etc/bender/tokens' "rpm %post generates the API tokens"
rpm -qp --requires "$rpmf" 2>/dev/null >"$work/rpm.requires"
expect_line "$work/rpm.requires" '^shadow-utils' "rpm Requires: shadow-utils"
expect_line "$work/rpm.requires" '^libc\.so\.6' "rpm Requires: libc.so.6 (automatic)"
[ "$(rpm -qp --recommends "$rpmf" 2>/dev/null)" = haproxy ] && ok "rpm Recommends: haproxy" \
    || fail "rpm Recommends is not haproxy"
mkdir "$work/rpm.root"
# rpm2archive, not rpm2cpio: Debian's rpm2cpio 4.18 exits 1 on these (zstd) payloads.
rpm2archive - <"$rpmf" | tar -xzf - -C "$work/rpm.root"
check_unit "$work/rpm.root$rpm_unit" "rpm unit"
cmp -s "$work/rpm.root$rpm_unit" packaging/bender.service || fail "rpm unit differs from packaging/bender.service"
if readelf -S "$work/rpm.root/usr/bin/bender" | grep -c '\.debug_info' >/dev/null; then
    fail "rpm binary still carries debug info"
fi
ok "rpm binary is stripped ($(du -h "$work/rpm.root/usr/bin/bender" | cut -f1))"

# --- Install the .deb ----------------------------------------------------------------------------
step "install the deb on this machine"
if [ "$(ps -p 1 -o comm=)" = systemd ]; then
    echo "  (systemd is PID 1 here, but the node is still started by hand below)"
fi
# A run that was interrupted before its cleanup left bender installed: start from nothing.
if deb_present; then
    dpkg --purge bender >/dev/null
fi
[ -f "$haproxy_cfg" ] && cp -p "$haproxy_cfg" "$work/haproxy.cfg.orig"
haproxy_dir_before=$(stat -c '%U:%G %a' /etc/haproxy 2>/dev/null || echo absent)
for port in 1729 "$FRONTEND_PORT" "$FRONTEND_PORT2"; do
    if [ -n "$(ss -Hltn "sport = :$port")" ]; then
        fail "port $port is already in use here; stop whatever listens there and rerun"
    fi
done
if [ -s "$haproxy_pidfile" ] && kill -0 "$(head -n1 "$haproxy_pidfile")" 2>/dev/null; then
    fail "an HAProxy runs from $haproxy_pidfile: the packaged node would reconfigure it; run this where none does (CI)"
fi
DEBIAN_FRONTEND=noninteractive dpkg -i "$deb" >"$work/dpkg-i.log" 2>&1 \
    || { cat "$work/dpkg-i.log" >&2; fail "dpkg -i $deb"; }
ok "dpkg -i $(basename "$deb")"
[ "$(dpkg-query -W -f='${Status}' bender)" = "install ok installed" ] || fail "bender is not installed"
uid=$(id -u bender 2>/dev/null) || fail "no bender user"
[ "$uid" -lt 1000 ] || fail "bender user is not a system user (uid $uid)"
[ "$(getent passwd bender | cut -d: -f7)" = /usr/sbin/nologin ] || fail "bender user has a login shell"
ok "bender system user (uid $uid, no login shell) and group"
[ "$(stat -c '%U:%G %a' /var/lib/bender)" = "bender:bender 750" ] || fail "/var/lib/bender is $(stat -c '%U:%G %a' /var/lib/bender)"
ok "/var/lib/bender owned by bender, mode 750"
if getent group haproxy >/dev/null; then
    grep -qx haproxy <<<"$(id -nG bender | tr ' ' '\n')" || fail "bender is not in the haproxy group"
    ok "bender is in the haproxy group"
fi
runuser -u bender -- test -w /etc/haproxy || fail "bender cannot write /etc/haproxy (to render haproxy.cfg)"
ok "bender can write /etc/haproxy ($(stat -c '%U:%G %a' /etc/haproxy), dpkg-statoverride)"
[ -L /etc/systemd/system/multi-user.target.wants/bender.service ] || fail "unit not enabled"
ok "unit enabled (multi-user.target.wants symlink), not started"
grep -q 'generated the admin API token in /etc/bender/tokens/admin' "$work/dpkg-i.log" \
    || { cat "$work/dpkg-i.log" >&2; fail "dpkg -i did not say where the generated tokens are"; }
[ "$(stat -c '%U:%G %a' /etc/bender/tokens)" = "root:bender 750" ] \
    || fail "/etc/bender/tokens is $(stat -c '%U:%G %a' /etc/bender/tokens)"
for scope in admin register; do
    f=/etc/bender/tokens/$scope
    [ "$(stat -c '%U:%G %a' "$f")" = "root:bender 640" ] || fail "$f is $(stat -c '%U:%G %a' "$f")"
    grep -Eqx '[0-9a-f]{64}' "$f" || fail "$f does not hold one 64-hex-digit token"
    runuser -u nobody -- cat "$f" >/dev/null 2>&1 && fail "another user can read $f"
    runuser -u bender -- cat "$f" >/dev/null || fail "user bender cannot read $f"
done
[ "$(cat /etc/bender/tokens/admin)" != "$(cat /etc/bender/tokens/register)" ] || fail "the two tokens are the same"
ok "admin and register tokens generated: root:bender 0640, 64 hex digits, unreadable to other users"
admin_token=$(cat /etc/bender/tokens/admin)
register_token=$(cat /etc/bender/tokens/register)
ADMIN=(-H "Authorization: Bearer $admin_token")
REGISTER=(-H "Authorization: Bearer $register_token")
[ -f "$deb_unit" ] || fail "$deb_unit not installed"
if systemd-analyze verify "$deb_unit" >"$work/verify.log" 2>&1; then
    ok "systemd-analyze verify $deb_unit"
else
    cat "$work/verify.log" >&2
    fail "systemd-analyze verify $deb_unit"
fi
bender --version >"$work/version" || fail "bender --version"
[ "$(cat "$work/version")" = "bender $version" ] || fail "bender --version printed $(cat "$work/version")"
ok "bender --version: $(cat "$work/version")"

# --- HAProxy, as its unit runs it ---------------------------------------------------------------
step "start HAProxy as Debian's haproxy.service does (root master, $haproxy_pidfile)"
# systemd is not PID 1 here, so start it by hand with the unit's command line, plus the master
# socket options README-section.md recommends (group haproxy may use it). The node must render
# into /etc/haproxy and reload this root-owned master as user bender.
haproxy -Ws -f "$haproxy_cfg" -p "$haproxy_pidfile" -S "$haproxy_master,mode,660,group,haproxy" \
    >"$work/haproxy.log" 2>&1 &
haproxy_pid=$!
deadline=$((SECONDS + 10))
until [ "$(head -n1 "$haproxy_pidfile" 2>/dev/null)" = "$haproxy_pid" ]; do
    kill -0 "$haproxy_pid" 2>/dev/null || { cat "$work/haproxy.log" >&2; haproxy_pid=; fail "HAProxy did not start"; }
    [ "$SECONDS" -lt "$deadline" ] || { cat "$work/haproxy.log" >&2; fail "HAProxy wrote no $haproxy_pidfile within 10 s"; }
    sleep 0.1
done
ok "HAProxy master $haproxy_pid (root) running with the machine's $haproxy_cfg"

# --- Run the packaged node -----------------------------------------------------------------------
step "run bender agent --config /etc/bender/bender.toml as user bender"
# As the unit runs it: user bender (with its groups), only CAP_KILL, no new privileges.
setpriv --reuid=bender --regid=bender --init-groups \
    --inh-caps=-all,+kill --ambient-caps=+kill --bounding-set=-all,+kill --no-new-privs \
    -- env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin BENDER_LOG=info \
    /usr/bin/bender agent --config /etc/bender/bender.toml >"$work/agent.log" 2>&1 &
agent_pid=$!
deadline=$((SECONDS + 30))
until curl -fsS --max-time 1 "$API/health" >"$work/health" 2>/dev/null; do
    if ! kill -0 "$agent_pid" 2>/dev/null; then
        wait "$agent_pid" && code=0 || code=$?
        agent_pid=
        cat "$work/agent.log" >&2
        fail "bender agent exited (status $code) before answering $API/health"
    fi
    [ "$SECONDS" -lt "$deadline" ] || { cat "$work/agent.log" >&2; fail "no answer from $API/health within 30 s"; }
    sleep 0.1
done
ok "GET /health: $(cat "$work/health")"
[ "$(stat -c %U /proc/"$agent_pid")" = bender ] || fail "agent does not run as bender"
[ "$(awk '/^CapEff:/ {print $2}' /proc/"$agent_pid"/status)" = 0000000000000020 ] \
    || fail "the agent's effective capabilities are not exactly CAP_KILL"
ok "the agent runs as user bender with CAP_KILL only"
code=$(curl -sS --max-time 5 -o "$work/refused" -w '%{http_code}' -X POST -H 'content-type: application/json' \
    -d '{"name":"evil","app":"evil","version":"1"}' "$API/backends")
[ "$code" = 401 ] && grep -q '"code":"UNAUTHORIZED"' "$work/refused" \
    || fail "an unauthenticated POST /backends got $code: $(cat "$work/refused")"
code=$(curl -sS --max-time 5 -o "$work/refused" -w '%{http_code}' -X POST "${REGISTER[@]}" \
    -H 'content-type: application/json' -d '{"name":"evil","app":"evil","version":"1"}' "$API/backends")
[ "$code" = 403 ] || fail "a register token's POST /backends got $code: $(cat "$work/refused")"
grep -q 'API write refused.*client=127.0.0.1' "$work/agent.log" || fail "no log line for the refused writes"
ok "writes without a token are 401, with too little scope 403, and logged with the client address"
# The register token may not point an app at the LB itself (loopback is nobody's own address):
# every LB would send that app's traffic to its own API. The admin token may.
code=$(curl -sS --max-time 5 -o "$work/refused" -w '%{http_code}' -X POST "${REGISTER[@]}" \
    "$API/registrations/web/1.0.0/127.0.0.1/8080")
[ "$code" = 403 ] && grep -q 'the LB itself' "$work/refused" \
    || fail "a register token registering 127.0.0.1 got $code: $(cat "$work/refused")"
curl -fsS --max-time 5 -X POST "${ADMIN[@]}" "$API/registrations/web/1.0.0/127.0.0.1/8080" >/dev/null \
    || fail "POST /registrations/web/1.0.0/127.0.0.1/8080"
regs=$(curl -fsS --max-time 5 "${ADMIN[@]}" "$API/registrations/web") || fail "GET /registrations/web"
grep -q '"port":8080' <<<"$regs" || fail "the registration is not listed by GET /registrations/web: $regs"
ok "registration round trip through the packaged node (loopback refused to the register token)"

step "the node drives HAProxy: frontend 127.0.0.1:$FRONTEND_PORT -> the node's own API"
json() { curl -fsS --max-time 5 -X "$1" "${ADMIN[@]}" -H 'content-type: application/json' -d "$3" "$API$2" >/dev/null; }
json POST /backends '{"name":"check","app":"check","version":"1"}' || fail "POST /backends"
json POST /frontends "{\"name\":\"check\",\"backend\":\"check\",\"bind\":\"127.0.0.1:$FRONTEND_PORT\"}" \
    || fail "POST /frontends"
# The backend's one server is the node's API: a request through HAProxy comes back from /health.
deadline=$((SECONDS + 30))
until curl -fsS --max-time 1 "http://127.0.0.1:$FRONTEND_PORT/health" >"$work/through" 2>/dev/null; do
    curl -fsS --max-time 2 -X POST "${ADMIN[@]}" "$API/registrations/check/1/127.0.0.1/1729" >/dev/null \
        || fail "POST /registrations/check/1/127.0.0.1/1729"
    if [ "$SECONDS" -ge "$deadline" ]; then
        cat "$work/agent.log" "$work/haproxy.log" >&2
        curl -sS --max-time 2 "${ADMIN[@]}" "$API/v1/status" >&2 || true
        fail "nothing served on 127.0.0.1:$FRONTEND_PORT within 30 s"
    fi
    sleep 0.5
done
ok "GET http://127.0.0.1:$FRONTEND_PORT/health through HAProxy: $(cat "$work/through")"
grep -q 'Rendered by bender' "$haproxy_cfg" || fail "$haproxy_cfg was not rendered by bender"
[ "$(stat -c '%U %a' "$haproxy_cfg")" = "bender 644" ] || fail "$haproxy_cfg is $(stat -c '%U %a' "$haproxy_cfg")"
ok "$haproxy_cfg rendered by the node (owner bender, mode 644), checked, and HAProxy reloaded by SIGUSR2"
kill -0 "$haproxy_pid" 2>/dev/null || fail "the HAProxy master died"
[ -f /run/haproxy/server-state ] || fail "no server state saved to /run/haproxy/server-state (admin.sock not reachable?)"
ok "server state saved through /run/haproxy/admin.sock (group haproxy) to /run/haproxy/server-state"

step "verified reloads: master_socket in the config, SIGHUP, a second frontend"
sed -i 's|^reload = { method = "pidfile", pidfile = "/run/haproxy.pid" }$|reload = { method = "pidfile", pidfile = "/run/haproxy.pid", master_socket = "/run/haproxy-master.sock" }|' \
    /etc/bender/bender.toml
grep -q '^reload = .*master_socket' /etc/bender/bender.toml || fail "no active reload line to add master_socket to"
kill -HUP "$agent_pid"
deadline=$((SECONDS + 10))
until grep -q 'config reloaded' "$work/agent.log"; do
    [ "$SECONDS" -lt "$deadline" ] || { cat "$work/agent.log" >&2; fail "no \"config reloaded\" in the log 10 s after SIGHUP"; }
    sleep 0.1
done
ok "SIGHUP (the unit's ExecReload): the node re-read /etc/bender/bender.toml"
json POST /frontends "{\"name\":\"check2\",\"backend\":\"check\",\"bind\":\"127.0.0.1:$FRONTEND_PORT2\"}" \
    || fail "POST /frontends (check2)"
deadline=$((SECONDS + 30))
until curl -fsS --max-time 1 "http://127.0.0.1:$FRONTEND_PORT2/health" >/dev/null 2>&1 \
    && grep -q 'applied a new config.*verified=true' "$work/agent.log"; do
    curl -fsS --max-time 2 -X POST "${ADMIN[@]}" "$API/registrations/check/1/127.0.0.1/1729" >/dev/null \
        || fail "POST /registrations/check/1/127.0.0.1/1729"
    if [ "$SECONDS" -ge "$deadline" ]; then
        cat "$work/agent.log" "$work/haproxy.log" >&2
        fail "no verified apply serving 127.0.0.1:$FRONTEND_PORT2 within 30 s"
    fi
    sleep 0.5
done
ok "reload verified on the master CLI (show proc) as user bender; 127.0.0.1:$FRONTEND_PORT2 served"

kill -TERM "$agent_pid"
deadline=$((SECONDS + 20))
while kill -0 "$agent_pid" 2>/dev/null; do
    [ "$SECONDS" -lt "$deadline" ] || { cat "$work/agent.log" >&2; fail "agent still running 20 s after SIGTERM"; }
    sleep 0.1
done
wait "$agent_pid" && code=0 || code=$?
agent_pid=
[ "$code" = 0 ] || { cat "$work/agent.log" >&2; fail "agent exited with status $code after SIGTERM"; }
ok "SIGTERM: the agent exited with status 0"
# Informational: what the node warned about (e.g. that a pidfile reload is not verified).
grep -E ' (WARN|ERROR) ' "$work/agent.log" | sed 's/^/       agent: /' || true
[ -f /var/lib/bender/snapshot.json ] && [ "$(stat -c %U /var/lib/bender/snapshot.json)" = bender ] \
    || fail "no snapshot written by bender in /var/lib/bender"
ok "snapshot written to /var/lib/bender (data_dir of the packaged config)"
stop "$haproxy_pid" 10
haproxy_pid=
rm -f "$haproxy_pidfile" "$haproxy_master" /run/haproxy/admin.sock /run/haproxy/server-state
if [ -f "$work/haproxy.cfg.orig" ]; then cp -p "$work/haproxy.cfg.orig" "$haproxy_cfg"; fi
ok "HAProxy stopped, the machine's $haproxy_cfg put back"

# --- Reinstall keeps an operator's config --------------------------------------------------------
step "reinstall over an edited config"
printf '\n# edited by check.sh\n' >>/etc/bender/bender.toml
DEBIAN_FRONTEND=noninteractive dpkg -i "$deb" </dev/null >"$work/dpkg-i2.log" 2>&1 \
    || { cat "$work/dpkg-i2.log" >&2; fail "dpkg -i over an installed bender"; }
grep -q '^# edited by check.sh$' /etc/bender/bender.toml || fail "reinstall replaced the edited conffile"
ok "reinstall (postinst configure with the old version) kept the edited /etc/bender/bender.toml"
[ "$(cat /etc/bender/tokens/admin)" = "$admin_token" ] && [ "$(cat /etc/bender/tokens/register)" = "$register_token" ] \
    || fail "reinstall replaced the generated tokens"
ok "reinstall kept the generated tokens"

# --- Remove, then purge --------------------------------------------------------------------------
step "dpkg --remove, then dpkg --purge"
dpkg --remove bender >/dev/null
[ ! -e /usr/bin/bender ] || fail "/usr/bin/bender left after remove"
[ ! -e "$deb_unit" ] || fail "$deb_unit left after remove"
[ -d /var/lib/bender ] && [ -f /etc/bender/bender.toml ] || fail "remove deleted the state or the config"
ok "remove: binary and unit gone; config and /var/lib/bender kept"
dpkg --purge bender >/dev/null
! deb_present || fail "bender still known to dpkg after purge"
for f in /usr/bin/bender "$deb_unit" /etc/bender /var/lib/bender \
         /etc/systemd/system/multi-user.target.wants/bender.service; do
    [ ! -e "$f" ] && [ ! -L "$f" ] || fail "$f left after purge"
done
ok "purge: binary, unit, enable symlink, /etc/bender and /var/lib/bender gone"
! dpkg-statoverride --list /etc/haproxy >/dev/null || fail "dpkg-statoverride on /etc/haproxy left after purge"
[ "$(stat -c '%U:%G %a' /etc/haproxy 2>/dev/null || echo absent)" = "$haproxy_dir_before" ] \
    || fail "/etc/haproxy is $(stat -c '%U:%G %a' /etc/haproxy), was $haproxy_dir_before"
ok "purge: /etc/haproxy back to $haproxy_dir_before, no stat override"
getent passwd bender >/dev/null || fail "purge deleted the bender user"
ok "purge: the bender user is kept (it owns the rendered haproxy.cfg; same uid on reinstall)"
