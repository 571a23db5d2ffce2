# bender %post: state directory, access to HAProxy, systemd. $1: 1 install, 2 upgrade.
# data_dir of the packaged config (the unit's StateDirectory= creates it too, but only under
# systemd; `bender agent` run by hand as the user needs it as well).
mkdir -p /var/lib/bender
chown bender:bender /var/lib/bender
chmod 0750 /var/lib/bender

# API tokens, generated once and kept across upgrades: admin for operators (and the CLI run
# as root, which reads it by default), register for app servers. Root and the bender group
# may read them; no other user. Never regenerated over an existing file.
install -d -m 0750 -o root -g bender /etc/bender/tokens
for scope in admin register; do
    f=/etc/bender/tokens/$scope
    if [ ! -e "$f" ]; then
        (
            umask 077
            od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >"$f.new"
            echo >>"$f.new"
        )
        chown root:bender "$f.new"
        chmod 0640 "$f.new"
        mv "$f.new" "$f"
        echo "bender: generated the $scope API token in $f (readable by root and group bender)"
    fi
done

# HAProxy's runtime API socket belongs to group haproxy.
if getent group haproxy >/dev/null; then
    usermod --append --groups haproxy bender || :
fi

# bender renders /etc/haproxy/haproxy.cfg with a temp file in /etc/haproxy renamed over the old
# one, so the bender group needs write access to the directory. Only when it is HAProxy's
# root:root (an admin's own ownership is left alone). `rpm -V haproxy` reports the change, and an
# HAProxy upgrade resets it: reinstall bender (or repeat these two commands) after one.
if [ -d /etc/haproxy ] && [ "$(stat -c %U:%G /etc/haproxy)" = root:root ]; then
    chgrp bender /etc/haproxy && chmod 0775 /etc/haproxy
fi

# What %systemd_post does: on a first install apply the distribution's preset (which on
# Fedora/RHEL leaves a new service disabled); never start. `systemctl enable --now bender` once
# the config is ready. Works without a running systemd.
if [ "$1" -eq 1 ] && [ -x /usr/bin/systemctl ]; then
    systemctl --no-reload preset bender.service >/dev/null 2>&1 || :
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
exit 0
