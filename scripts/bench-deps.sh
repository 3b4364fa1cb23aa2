#!/usr/bin/env bash
# Installs, only when missing, the Debian packages `make bench` needs beyond the local provider's own
# (scripts/system-deps.sh already brings nginx, the proxy benchmark's baseline):
#   wrk   the HTTP load generator of benchmarks/proxy_speed.py (C, epoll; not the bottleneck it measures)
#   valgrind, strace   proxy_speed.py --cost (work per request)
# As root it installs them; as a normal user it only reports what is missing.
set -euo pipefail

need=()
command -v wrk >/dev/null || need+=(wrk)
# --- proxy12: proxy_speed.py --cost (make bench's proxy-cost rows): instructions by callgrind, syscalls by strace
command -v valgrind >/dev/null || need+=(valgrind)
command -v strace >/dev/null || need+=(strace)
# --- end

# shellcheck source-path=SCRIPTDIR source=apt-install-missing.sh
. "$(dirname "$0")/apt-install-missing.sh"
apt_install_missing --recommends --announce "${need[@]}"
