#!/usr/bin/env bash
# Installs the Debian packages InkMCP's local provider and its tests need, only when missing.
# Runs as root on CI and fresh machines; as a normal user it only reports what is missing.
set -euo pipefail

need=()
command -v git >/dev/null || need+=(git)
/usr/bin/python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
command -v useradd >/dev/null || need+=(passwd)
# The local provider's proxy: Debian's nginx, configured and started by InkMCP (its headers-more module makes
# the answers nginx gives itself say `Server: inkmcp`); INKMCP_PROXY_ENGINE=python runs without them.
[ -x /usr/sbin/nginx ] || need+=(nginx)
[ -f /usr/lib/nginx/modules/ngx_http_headers_more_filter_module.so ] || need+=(libnginx-mod-http-headers-more-filter)
# The Redis add-on (database={"type":"redis"}): Debian's redis-server binary, one process per project started by
# InkMCP (inkmcp/providers/database/redis.py); the package's own service is stopped below, like nginx's.
command -v redis-server >/dev/null || need+=(redis-server)
# A C compiler and static libc: the local provider's exec wrapper (inkmcp-spawn) is compiled at install.
{ command -v cc >/dev/null && [ -f "$(cc -print-file-name=libc.a)" ]; } || need+=(gcc libc6-dev)

# --- quota: the local provider's disk per project (diskquota.py): an ext4 image per project, made with mkfs.ext4
# (e2fsprogs) and loop-mounted with mount/losetup (mount); both are in a standard Debian, checked all the same.
command -v mkfs.ext4 >/dev/null || [ -x /sbin/mkfs.ext4 ] || need+=(e2fsprogs)
{ command -v losetup >/dev/null || [ -x /sbin/losetup ]; } || need+=(mount)
# --- end

# --- egress: the local provider's tenant egress rules (inkmcp/providers/compute/local/egress.py) are loaded with nft
command -v nft >/dev/null || [ -x /usr/sbin/nft ] || need+=(nftables)
# --- end

# --- proxy6: InkMCP's nginx module (inkmcp/providers/compute/local/nginx_module), built by `make install` for the
# installed nginx from the nginx-dev source of its exact version (apt-get download, unpacked, not installed: the
# package's own Depends are ~56 packages only Debian's module builds need). nginx's configure needs these headers.
[ -f /usr/include/pcre2.h ] || need+=(libpcre2-dev)
[ -f /usr/include/openssl/ssl.h ] || need+=(libssl-dev)
[ -f /usr/include/zlib.h ] || need+=(zlib1g-dev)
command -v make >/dev/null || need+=(make)
# --- end

# shellcheck source-path=SCRIPTDIR source=apt-install-missing.sh
. "$(dirname "$0")/apt-install-missing.sh"
apt_install_missing --recommends --announce "${need[@]}"
# Debian's package also enables its own nginx (the default site on port 80; apt_install_missing keeps it from
# starting now). InkMCP runs a private instance of the binary and needs none of that, so the service this script
# just installed is disabled (and stopped, should it run); an nginx that was installed before is never touched
# (nginx is in `need` only when it was missing).
if [[ " ${need[*]} " == *" nginx "* ]] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
  systemctl disable --now nginx.service >/dev/null 2>&1 || true
fi
# Same for redis-server: its packaged service (port 6379, no password) is not InkMCP's and is switched off.
if [[ " ${need[*]} " == *" redis-server "* ]] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
  systemctl disable --now redis-server.service >/dev/null 2>&1 || true
fi
