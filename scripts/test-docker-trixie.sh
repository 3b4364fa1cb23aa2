#!/usr/bin/env bash
# Fetches the modern Docker that `inkmcp nodes sandbox` runs (inkmcp/nodes/sandbox.py), without
# installing anything and without touching the system's apt configuration:
#   Debian trixie: docker.io (dockerd 26), docker-cli, containerd 1.7, runsc (gVisor 2024-07), the CLI plugins
#     docker-compose 2.26 and docker-buildx 0.13 (Coolify runs `docker compose` on the node and in its helper)
#   Debian bookworm (the system's own lists): runc 1.1 (trixie's runc needs glibc 2.38); redis-tools 7.0 with
#     libjemalloc2 and liblzf1 for the box's redis stand-in image (inkmcp/nodes/standins.py: a real redis-server,
#     not in this host's package set; bookworm's because it links against this host's glibc and OpenSSL)
# Why trixie packages: Debian 12's Docker 20.10 predates behaviour that matters on real nodes (Docker >= 23
# hands any `io.containerd.<x>.v<N>` runtime to containerd; review finding 1).
#
#   test-docker-trixie.sh [CACHE]      CACHE defaults to $INKMCP_TRIXIE_CACHE or /var/cache/inkmcp-trixie
#
# Afterwards CACHE/debs.list holds the absolute paths of the verified .debs, one per line.
# A separate sources list (CACHE/trixie.list, same mirror as the system's) and private apt state under
# CACHE are used; the trixie index is fetched once, a .deb whose SHA256 matches that index is never
# fetched again (seeded from /tmp/trixie-apt/debs when its hash matches). Idempotent and quiet: prints
# nothing on success, the reason on stderr and exit 1 on failure (not root, no registry).
set -euo pipefail

cache=${1:-${INKMCP_TRIXIE_CACHE:-/var/cache/inkmcp-trixie}}
trixie_pkgs=(docker.io docker-cli containerd runsc docker-compose docker-buildx)
bookworm_pkgs=(runc redis-tools libjemalloc2 liblzf1)
seed=/tmp/trixie-apt/debs

die() { echo "test-docker-trixie.sh: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "run as root (apt-get download needs the archive keyring and a private apt state under $cache)"
command -v apt-get >/dev/null || die "apt-get not found: this fetch needs a Debian host"

install -d -m 755 "$cache" "$cache/debs" "$cache/lists/partial" "$cache/apt/archives/partial"
exec 9>"$cache/lock"
flock 9

# The mirror the system already uses (deb822 sources of Debian 12, else the one-line format).
mirror=${INKMCP_DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
  mirror=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
fi
if [ -z "$mirror" ] && [ -f /etc/apt/sources.list ]; then
  mirror=$(awk '$1 == "deb" && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' \
    /etc/apt/sources.list || true)
fi
[ -n "$mirror" ] || die "no Debian mirror found in /etc/apt/sources.list{,.d}: set INKMCP_DEBIAN_MIRROR=http://deb.debian.org/debian"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[ -f "$keyring" ] || die "$keyring missing: install debian-archive-keyring"
printf 'deb [signed-by=%s] %s trixie main\n' "$keyring" "$mirror" >"$cache/trixie.list.new"
cmp -s "$cache/trixie.list.new" "$cache/trixie.list" 2>/dev/null && rm -f "$cache/trixie.list.new" \
  || { mv -f "$cache/trixie.list.new" "$cache/trixie.list"; rm -f "$cache/lists/"*_Packages*; }

apt_trixie=(-o "Dir::Etc::SourceList=$cache/trixie.list" -o Dir::Etc::SourceParts=- -o "Dir::State::Lists=$cache/lists"
  -o "Dir::Cache=$cache/apt" -o APT::Get::List-Cleanup=false)
if ! compgen -G "$cache/lists/*trixie*_Packages*" >/dev/null; then
  apt-get -qq "${apt_trixie[@]}" update >/dev/null 2>"$cache/update.err" \
    || die "apt-get update for trixie failed: $(tail -n 3 "$cache/update.err")"
fi

# fetch SUITE_OPTS... -- PKG...: each candidate's .deb into $cache/debs unless a file with the index's
# SHA256 is already there (or in the seed directory); prints the .debs' paths. One apt-cache call per
# suite: each call parses the whole index (~1 s).
fetch() {
  local -a opts=()
  while [ "$1" != -- ]; do opts+=("$1"); shift; done
  shift
  local index pkg file sha have found
  index=$(apt-cache "${opts[@]}" show --no-all-versions "$@" 2>/dev/null \
    | awk '/^Package:/ {p = $2} /^Filename:/ {f = $2} /^SHA256:/ {print p, f, $2}') \
    || die "$*: not all in the package index (apt-cache show failed)"
  for pkg in "$@"; do
    read -r _ file sha < <(awk -v p="$pkg" '$1 == p {print; exit}' <<<"$index") || true
    [ -n "${file:-}" ] && [ -n "${sha:-}" ] || die "$pkg: not in the package index"
    file=$(basename "$file")
    found=
    for have in "$cache/debs/$file" "$seed/$file"; do
      if [ -f "$have" ] && [ "$(sha256sum "$have" | cut -d' ' -f1)" = "$sha" ]; then
        if [ "$have" != "$cache/debs/$file" ]; then
          cp "$have" "$cache/debs/$file.new" && mv -f "$cache/debs/$file.new" "$cache/debs/$file"
        fi
        found=1
        break
      fi
    done
    if [ -z "$found" ]; then
      # Into an empty directory: apt-get names the file after the version with its epoch (5%3a7.0...),
      # the index's Filename has none; the one file it leaves is renamed to the index's name.
      rm -rf "$cache/debs/.dl" && install -d -m 755 "$cache/debs/.dl"
      (cd "$cache/debs/.dl" && apt-get -qq "${opts[@]}" download "$pkg" >/dev/null 2>"$cache/download.err") \
        || die "apt-get download $pkg failed: $(tail -n 3 "$cache/download.err")"
      mv -f "$cache/debs/.dl/"*.deb "$cache/debs/$file" && rmdir "$cache/debs/.dl"
      [ "$(sha256sum "$cache/debs/$file" | cut -d' ' -f1)" = "$sha" ] || die "$file: SHA256 differs from the index"
    fi
    echo "$cache/debs/$file"
    file= sha=
  done
}

{
  fetch "${apt_trixie[@]}" -- "${trixie_pkgs[@]}"
  # bookworm = the system's suite: its own (already verified) lists, no private update needed.
  fetch -- "${bookworm_pkgs[@]}"
} >"$cache/debs.list.new"
mv -f "$cache/debs.list.new" "$cache/debs.list"
