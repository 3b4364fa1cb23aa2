#!/usr/bin/env bash
# Build benchmarks/nginx_module (an experiment for benchmarks/proxy_speed.py --module) for the installed nginx.
#
#   benchmarks/nginx_module/build.sh OUT.so [NGINX_SRC]
#
# NGINX_SRC: the source of the installed nginx as Debian's nginx-dev ships it (default /usr/share/nginx/src, with
# its `conf_flags`: a dynamic module loads only if built with the binary's version and configure flags). Its
# configure needs libpcre2-dev, libssl-dev and zlib1g-dev. Without installing nginx-dev (its Depends pull ~56
# packages on Debian 12), the two .debs can be unpacked instead:
#   apt-get download nginx-dev libpcre2-dev && for d in *.deb; do dpkg -x "$d" /tmp/ngx; done
#   NGINX_MODULE_CC_OPT=-I/tmp/ngx/usr/include NGINX_MODULE_LD_OPT=-L/tmp/ngx/usr/lib/x86_64-linux-gnu \
#     benchmarks/nginx_module/build.sh /tmp/ngx_http_inkmcp_module.so /tmp/ngx/usr/share/nginx/src
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 OUT.so [NGINX_SRC]" >&2; exit 2; }
out=$(realpath -m "$1")
src=${2:-/usr/share/nginx/src}
here=$(cd "$(dirname "$0")" && pwd)
[ -x "$src/configure" ] && [ -f "$src/conf_flags" ] || { echo "no nginx source with conf_flags at $src (apt-get install nginx-dev)" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$src"/. "$work"/
cd "$work"
# shellcheck disable=SC1091
. ./conf_flags
opts=()
[ -n "${NGINX_MODULE_CC_OPT:-}" ] && opts+=("--with-cc-opt=$NGINX_MODULE_CC_OPT")
[ -n "${NGINX_MODULE_LD_OPT:-}" ] && opts+=("--with-ld-opt=$NGINX_MODULE_LD_OPT")
./configure "${NGX_CONF_FLAGS[@]}" "${opts[@]}" --add-dynamic-module="$here" >configure.log 2>&1 || { tail -20 configure.log >&2; exit 1; }
make -f objs/Makefile modules >make.log 2>&1 || { tail -20 make.log >&2; exit 1; }
cp objs/ngx_http_inkmcp_module.so "$out"
echo "$out"
