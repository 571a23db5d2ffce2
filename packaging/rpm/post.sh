# bender %post: state directory, access to HAProxy, systemd. $1: 1 install, 2 upgrade.
# data_dir of the packaged config (the unit's StateDirectory= creates it too, but only under
# systemd; `bender agent` run by hand as the user needs it as well).
mkdir -p /var/lib/bender
chown bender:bender /var/lib/bender
chmod 0750 /var/lib/bender

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
