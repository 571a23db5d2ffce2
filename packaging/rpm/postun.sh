# bender %postun, as %systemd_postun_with_restart. $1: 0 erase, 1 upgrade.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -ge 1 ]; then
        systemctl try-restart bender.service >/dev/null 2>&1 || :
    fi
fi
# On erase, give /etc/haproxy back to root if %post had given it to bender. RPM has no purge:
# /var/lib/bender (the node's snapshot), /etc/bender/tokens (the API tokens) and the bender user
# are kept, as RPM packages do; remove them by hand if the host is leaving the cluster for good.
if [ "$1" -eq 0 ] && [ -d /etc/haproxy ] && [ "$(stat -c %U:%G /etc/haproxy)" = root:bender ]; then
    chgrp root /etc/haproxy && chmod 0755 /etc/haproxy
fi
exit 0
