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
# shellcheck source-path=SCRIPTDIR source=apt-install-missing.sh
. "$(dirname "$0")/apt-install-missing.sh"
apt_install_missing netplan.io
command -v netplan >/dev/null || { echo "netplan.io installed but no netplan command found" >&2; exit 1; }
