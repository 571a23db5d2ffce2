# bender %pre: the system user and group, before the files are laid down. $1: 1 install, 2 upgrade.
getent group bender >/dev/null || groupadd --system bender
getent passwd bender >/dev/null || \
    useradd --system --gid bender --home-dir /var/lib/bender --no-create-home \
        --shell /sbin/nologin --comment "bender service registry" bender
exit 0
