#!/usr/bin/env bash
# Installs, only when missing, the Debian packages `make bench` needs beyond the local provider's own
# (scripts/system-deps.sh already brings nginx, the proxy benchmark's baseline):
#   wrk   the HTTP load generator of benchmarks/proxy_speed.py (C, epoll; not the bottleneck it measures)
# As root it installs them; as a normal user it only reports what is missing.
set -euo pipefail

need=()
command -v wrk >/dev/null || need+=(wrk)

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "Missing system packages for the benchmarks: ${need[*]} (install them with apt-get as root)" >&2
  exit 1
fi
echo "Installing system packages for the benchmarks: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${need[@]}" >/dev/null
