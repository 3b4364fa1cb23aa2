#!/usr/bin/env bash
# Installs Debian's netplan.io for tests/stacks/test_netplan_validates.py, only when missing, quietly.
# The test runs `netplan generate --root-dir <tmp>` on the muscle stack's rendered vSwitch file: netplan's
# own parser and systemd-networkd generator, writing only under that directory. Nothing is applied and
# no service is started or enabled. Idempotent. Exit 1 with the reason on stderr when netplan is missing
# and cannot be installed (not root, no package registry).
set -euo pipefail

if command -v netplan >/dev/null && [ -x /usr/lib/netplan/generate ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "netplan.io is not installed and installing it needs root" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# Belt and braces: a package postinst must not start services on a test machine.
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod 755 "$policy"
  made_policy=1
fi
trap 'if [ "$made_policy" -eq 1 ]; then rm -f "$policy"; fi' EXIT
apt-get install -y -qq --no-install-recommends netplan.io >/dev/null 2>&1 \
  || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends netplan.io >/dev/null 2>&1; } \
  || { echo "could not install netplan.io with apt-get" >&2; exit 1; }
command -v netplan >/dev/null || { echo "netplan.io installed but no netplan command found" >&2; exit 1; }
