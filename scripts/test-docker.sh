#!/usr/bin/env bash
# Installs what the real-Docker/gVisor tests (tests/runtime/) need, only when missing, quietly:
# Debian's docker.io (dockerd, containerd, runc), runsc, busybox-static (test image rootfs),
# iptables + iproute2 (test network namespace, Docker's chains) and gcc (a static socket probe).
# Idempotent; never starts or configures the system Docker daemon. Exit 1 when something is
# missing and cannot be installed (not root, no package registry).
set -euo pipefail

need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v runsc >/dev/null || need+=(runsc)
[ -x /bin/busybox ] || need+=(busybox-static)
command -v iptables >/dev/null || need+=(iptables)
command -v ip >/dev/null || need+=(iproute2)
command -v nsenter >/dev/null || need+=(util-linux)
command -v gcc >/dev/null || need+=(gcc)
[ -f /usr/lib/x86_64-linux-gnu/libc.a ] || [ -n "$(find /usr/lib -name libc.a -print -quit 2>/dev/null)" ] \
  || need+=(libc6-dev)

# shellcheck source-path=SCRIPTDIR source=apt-install-missing.sh
. "$(dirname "$0")/apt-install-missing.sh"
apt_install_missing "${need[@]}"
