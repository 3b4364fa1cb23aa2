#!/usr/bin/env bash
# Installs, only when missing, the Debian packages the infrastructure tests need:
#   openssh-server  real sshd on loopback for the SSH path, and `sshd -t` to validate rendered configs
#   iptables        iptables-restore/-save for the DOCKER-USER egress rules in network namespaces
#   iproute2        `ip netns` / veth pairs for the kernel-firewall tests
# Idempotent and quiet: prints nothing when everything is present. As a normal user it only reports.
set -euo pipefail

need=()
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v iptables-restore >/dev/null 2>&1 || [ -x /usr/sbin/iptables-restore ] || need+=(iptables)
command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || need+=(iproute2)

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "Missing system packages for tests: ${need[*]} (install them with apt-get as root)" >&2
  exit 1
fi
echo "Installing test system packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
# needrestart (if installed) would scan and print about running services after the install: not wanted here.
export NEEDRESTART_SUSPEND=1
# An installed package must not start its service on this machine (sshd would listen on :22):
# policy-rc.d answering 101 tells invoke-rc.d to skip starts while we install.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod 0755 "$policy"
  created_policy=1
fi
cleanup() { if [ "$created_policy" -eq 1 ]; then rm -f "$policy"; fi; }
trap cleanup EXIT
# Other jobs (parallel CI steps, another make target) may hold the dpkg lock: wait for it instead of failing.
apt_opts=(-o DPkg::Lock::Timeout=300 -qq)
apt-get "${apt_opts[@]}" update
apt-get "${apt_opts[@]}" install -y --no-install-recommends "${need[@]}" >/dev/null
