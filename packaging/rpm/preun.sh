# bender %preun, as %systemd_preun: on the last erase ($1 = 0), disable and stop the node.
# On an upgrade ($1 = 1) it keeps running; %postun restarts it on the new binary.
if [ "$1" -eq 0 ] && [ -x /usr/bin/systemctl ]; then
    systemctl --no-reload disable --now bender.service >/dev/null 2>&1 || :
fi
exit 0
