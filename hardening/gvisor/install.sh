#!/usr/bin/env bash
# Installs the InkMCP runtime selector (Docker's default runtime on a run server: runc for platform
# containers that match their profile, runsc for tenants, refusal for the rest) and its rendered config. Idempotent: a file is rewritten only
# when its content or mode differs, and a second run prints "unchanged" and changes nothing.
#
#   install.sh [--check] RENDERED_CONFIG [ROOT]
#
# RENDERED_CONFIG  runtime-selector.json rendered from runtime-selector.json.j2
# ROOT             install under this directory instead of / (tests, image builds)
# --check          change nothing; exit 2 and list what differs (drift), 0 when in place
#
# It does not edit daemon.json and does not restart Docker: the hardening renderer emits
#   "default-runtime": "inkmcp", "runtimes": {"inkmcp": {"path": "/usr/local/lib/inkmcp/inkmcp-runtime",
#   "runtimeArgs": ["--inkmcp-config=/etc/inkmcp/runtime-selector.json"]}}
# and reloads Docker. Containers already running keep their runtime until they are recreated.
set -euo pipefail

check=0
if [ "${1:-}" = "--check" ]; then
  check=1
  shift
fi
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  echo "usage: $0 [--check] RENDERED_CONFIG [ROOT]" >&2
  exit 64
fi
config_src=$1
root=${2:-/}
root=${root%/}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
selector_src=$here/runtime_selector.py
selector_dst=$root/usr/local/lib/inkmcp/inkmcp-runtime
module_src=$here/inkmcp_selector.py
module_dst=$root/usr/local/lib/inkmcp/inkmcp_selector.py
config_dst=$root/etc/inkmcp/runtime-selector.json

# The selector is a stdlib-only Python 3 program started as /usr/bin/python3 (its shebang).
if [ -z "$root" ] && [ ! -x /usr/bin/python3 ]; then
  if [ "$check" -eq 1 ]; then
    echo "drift: /usr/bin/python3 missing"
    exit 2
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-minimal >/dev/null
fi
# A config the selector cannot read refuses every container on the node: validate before installing
# (the keys runtime_selector.py's load_config requires, per platform entry too).
python3 - "$config_src" <<'PY' || { echo "invalid selector config: $config_src" >&2; exit 65; }
import json, sys
c = json.load(open(sys.argv[1], encoding="utf-8"))
need = ("runc", "runsc", "runsc_flags", "data_root", "state_dir", "platform", "coolify_dir")
missing = [k for k in need if k not in c]
assert not missing, f"lacks {missing}"
assert isinstance(c["platform"], list), "platform is not a list"
assert isinstance(c.get("build_mode", False), bool), "build_mode must be true or false (GvisorParams.build_mode)"
keys = ("entry", "name", "reserve", "images", "mounts", "args", "auto_remove", "forbid_label_prefixes")
for i, e in enumerate(c["platform"]):
    assert all(k in e for k in keys), f"platform entry {i} lacks {[k for k in keys if k not in e]}"
PY

drift=0
# place SRC DST MODE: copy when content or mode differ (atomic rename, root-owned).
place() {
  local src=$1 dst=$2 mode=$3
  if [ -f "$dst" ] && cmp -s "$src" "$dst" && [ "$(stat -c %a "$dst")" = "$mode" ] \
    && [ "$(stat -c %u "$dst")" = 0 ]; then
    return 0
  fi
  drift=1
  if [ "$check" -eq 1 ]; then
    echo "drift: $dst"
    return 0
  fi
  install -d -m 755 -o 0 -g 0 "$(dirname "$dst")"
  install -m "$mode" -o 0 -g 0 "$src" "$dst.new"
  mv -f "$dst.new" "$dst"
  echo "changed: $dst"
}

# The selector's rules load from bytecode: compiling them on every runtime call costs more than deciding.
# checked-hash: the interpreter verifies the .pyc against the source's hash, so a stale one is never used.
# Compiled by the interpreter the selector runs under (its shebang), or it writes its own cache on first use.
compile=0
pycs=("$(dirname "$module_dst")"/__pycache__/inkmcp_selector.*.pyc)
if ! cmp -s "$module_src" "$module_dst" || [ ! -e "${pycs[0]}" ]; then
  compile=1
fi

place "$selector_src" "$selector_dst" 755
place "$module_src" "$module_dst" 644
place "$config_src" "$config_dst" 644

if [ "$check" -eq 0 ] && [ "$compile" -eq 1 ]; then
  interp=/usr/bin/python3
  [ -x "$interp" ] || interp=python3
  "$interp" -c 'import py_compile, sys
py_compile.compile(sys.argv[1], doraise=True, invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)' \
    "$module_dst"
fi

# Docker always registers `runc` (and io.containerd.runc.v2) with the bare name "runc", resolved through
# the PATH of containerd and its shims, where /usr/local/sbin comes first. Shadowing it there means a
# tenant that asks for `--runtime runc` / compose `runtime: runc` still passes the selector. The selector
# execs the real runc by the absolute path in its config, so this cannot loop. Relative link: same
# layout under any ROOT.
shadow=$root/usr/local/sbin/runc
if [ "$(readlink "$shadow" 2>/dev/null)" != "../lib/inkmcp/inkmcp-runtime" ]; then
  drift=1
  if [ "$check" -eq 1 ]; then
    echo "drift: $shadow"
  else
    install -d -m 755 -o 0 -g 0 "$(dirname "$shadow")"
    ln -sfn ../lib/inkmcp/inkmcp-runtime "$shadow"
    echo "changed: $shadow"
  fi
fi

if [ "$drift" -eq 0 ]; then
  echo "unchanged"
elif [ "$check" -eq 1 ]; then
  exit 2
fi
