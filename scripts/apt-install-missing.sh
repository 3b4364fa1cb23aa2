#!/usr/bin/env bash
# Shared by the test-*.sh installers: `apt_install_missing PKG...` installs Debian packages quietly, as
# root, without letting any package start its service on this machine, and waits for the dpkg lock.
# Sourced, not run.

apt_install_missing() {
  [ "$#" -gt 0 ] || return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing packages: $* (install them with apt-get as root)" >&2
    return 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  # needrestart (if installed) would scan and print about running services after the install.
  export NEEDRESTART_SUSPEND=1
  # A package postinst must not start its service here (sshd on :22, the system dockerd):
  # policy-rc.d answering 101 tells invoke-rc.d to skip starts while we install.
  local policy=/usr/sbin/policy-rc.d made_policy=0 status=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 0755 "$policy"
    made_policy=1
  fi
  # Other jobs may hold the dpkg lock: wait for it instead of failing.
  local opts=(-o DPkg::Lock::Timeout=300 -qq)
  apt-get "${opts[@]}" install -y --no-install-recommends "$@" >/dev/null 2>&1 \
    || { apt-get "${opts[@]}" update >/dev/null 2>&1 \
         && apt-get "${opts[@]}" install -y --no-install-recommends "$@" >/dev/null 2>&1; } \
    || { echo "could not install: $*" >&2; status=1; }
  if [ "$made_policy" -eq 1 ]; then rm -f "$policy"; fi
  return "$status"
}
