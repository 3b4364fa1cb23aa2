#!/usr/bin/env bash
# Installs, only when missing, the Debian packages the infrastructure tests need:
#   openssh-server  real sshd on loopback for the SSH path, and `sshd -t` to validate rendered configs
#   iptables        iptables-restore/-save for the DOCKER-USER egress rules in network namespaces
#   iproute2        `ip netns` / veth pairs for the kernel-firewall tests
#   docker-registry Docker's registry (distribution 2.8): the run-server box's image mirror and the build path's registry
#   nginx           TLS and per-user read/write rules in front of that registry (build path)
#   rsync           the Storage Box stand-in (sshd on port 23 with rsync) of the disaster-recovery drills
#   chromium        the web UI's browser tests (headless Chromium driven through chromium-driver)
# Idempotent and quiet: prints nothing when everything is present. As a normal user it only reports.
set -euo pipefail

need=()
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v iptables-restore >/dev/null 2>&1 || [ -x /usr/sbin/iptables-restore ] || need+=(iptables)
command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || need+=(iproute2)
[ -x /usr/bin/docker-registry ] || need+=(docker-registry)
[ -x /usr/sbin/nginx ] || need+=(nginx)
command -v rsync >/dev/null 2>&1 || need+=(rsync)
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)

# shellcheck source-path=SCRIPTDIR source=apt-install-missing.sh
. "$(dirname "$0")/apt-install-missing.sh"
apt_install_missing "${need[@]}"
