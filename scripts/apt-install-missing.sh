#!/usr/bin/env bash
# Shared by every installer in scripts/ (system-deps.sh, bench-deps.sh, test-*.sh):
#   apt_install_missing [--recommends] [--announce] PKG...
# installs Debian packages quietly, as root, without letting any package start its service on this machine, and
# waits for the dpkg lock. As a normal user it only reports what is missing (exit status 1). No packages: nothing.
#   --recommends  install the packages' Recommends too (system-deps.sh and bench-deps.sh always did; the test
#                 installers never did)
#   --announce    say "Installing system packages: ..." first (make install's output shows what it added)
# Sourced, not run.

apt_install_missing() {
  local recommends=(--no-install-recommends) announce=0
  while [ "$#" -gt 0 ]; do
    case "$1" in
      --recommends) recommends=(); shift ;;
      --announce) announce=1; shift ;;
      *) break ;;
    esac
  done
  [ "$#" -gt 0 ] || return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "Missing system packages: $* (install them with apt-get as root)" >&2
    return 1
  fi
  if [ "$announce" -eq 1 ]; then echo "Installing system packages: $*"; fi
  export DEBIAN_FRONTEND=noninteractive
  # needrestart (if installed) would scan and print about running services after the install.
  export NEEDRESTART_SUSPEND=1
  # A package postinst must not start its service here (sshd on :22, the system dockerd, nginx on :80):
  # policy-rc.d answering 101 tells invoke-rc.d to skip starts while we install.
  local policy=/usr/sbin/policy-rc.d made_policy=0 status=0 out
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 0755 "$policy"
    made_policy=1
  fi
  # Other jobs may hold the dpkg lock: wait for it instead of failing. Stale package lists: update, then retry.
  local opts=(-o DPkg::Lock::Timeout=300 -qq)
  out=$(apt-get "${opts[@]}" install -y "${recommends[@]}" "$@" 2>&1) \
    || out=$({ apt-get "${opts[@]}" update && apt-get "${opts[@]}" install -y "${recommends[@]}" "$@"; } 2>&1) \
    || { printf '%s\ncould not install: %s\n' "$out" "$*" >&2; status=1; }
  if [ "$made_policy" -eq 1 ]; then rm -f "$policy"; fi
  return "$status"
}
