#!/usr/bin/python3 -IS
"""InkMCP runtime selector: Docker's default OCI runtime on a run server.

dockerd (through containerd's runc shim) calls this program exactly as it would call runc. On `create`
it decides, from facts a tenant cannot forge, which real runtime owns the container:

* platform (Coolify's proxy, Sentinel, Sablier, ...) -> runc, unchanged. A container is platform only
  when BOTH its Docker name matches an allow-list entry AND its image ID (the sha256 content hash of
  the image config, read from Docker's own container record) is one of that entry's pinned IDs. A
  tenant can copy a name (compose container_name) or an image (deploy traefik:v3.6 itself), never both
  while the platform container exists, and an image ID cannot be produced by building something else.
  Labels and annotations are never consulted: tenants set those.
* everything else (tenant) -> runsc with the operator's flags (e.g. --network=host), after checks that
  REFUSE the container (create fails, nothing runs) when it has:
    - a bind mount of a host path (only Docker's own per-container files and plain named volumes pass),
      in particular the Docker socket;
    - a named volume that is itself a mount (local driver with type/device/o=bind options = host path);
    - an OCI annotation dev.gvisor.* (runsc lets those switch flags such as host-uds);
    - no network namespace of its own (--network host: with runsc --network=host it would be the host's).
  Refusing rather than silently stripping keeps the failure visible in `docker start` and in the logs.

Every later call (start, state, kill, exec, delete, ...) goes to the runtime recorded at create time.
Unknown containers and anything this program cannot read fail closed: sandboxed, or refused.
Configuration: JSON file given by --inkmcp-config=PATH (first argument, set in daemon.json runtimeArgs),
default /etc/inkmcp/runtime-selector.json relative to the install root; it must be owned by root and not
writable by others.
Standard library only; runs as root.
"""

import contextlib
import hashlib
import json
import os
import re
import stat
import subprocess
import sys
import time

# Installed as <ROOT>/usr/local/lib/inkmcp/inkmcp-runtime: the config is <ROOT>/etc/inkmcp/... (ROOT is /
# on a node). Also reached as <ROOT>/usr/local/sbin/runc, a symlink that shadows the real runc in the PATH
# of containerd, so `--runtime runc` (always registered by Docker) cannot bypass the selector.
DEFAULT_CONFIG = os.path.join(
    os.path.dirname(os.path.realpath(__file__)), "..", "..", "..", "..", "etc", "inkmcp", "runtime-selector.json"
)
CONFIG_FLAG = "--inkmcp-config="
# runc global flags that take a value (both runc and runsc accept these before the subcommand).
VALUE_FLAGS = {"--root", "--log", "--log-format", "--criu", "--rootless"}
CONTAINER_ID = re.compile(r"^[0-9a-f]{64}$")
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
# Mount types that never expose a host path.
VIRTUAL_TYPES = {"proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup", "cgroup2", "shm"}


class Refused(Exception):
    """The container must not run at all."""


def parse_args(argv):
    """Split runc-style argv into (global flags dict, subcommand, rest)."""
    flags, i = {}, 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("-"):
            return flags, arg, argv[i + 1 :]
        name, eq, value = arg.partition("=")
        if not eq and name in VALUE_FLAGS and i + 1 < len(argv):
            value = argv[i + 1]
            i += 1
        flags[name.lstrip("-")] = value if (eq or name in VALUE_FLAGS) else True
        i += 1
    return flags, None, []


def load_config(path):
    st = os.stat(path)
    if st.st_uid != 0 or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise Refused(f"config {path} must be owned by root and not group/world-writable")
    with open(path, encoding="utf-8") as f:
        cfg = json.load(f)
    for key in ("runc", "runsc", "runsc_flags", "data_root", "state_dir", "platform"):
        if key not in cfg:
            raise Refused(f"config {path} lacks {key!r}")
    me = os.path.realpath(__file__)
    for key in ("runc", "runsc"):
        if not os.path.isabs(cfg[key]) or os.path.realpath(cfg[key]) == me:
            raise Refused(f"config {key!r} must be the absolute path of the real runtime, not the selector")
    return cfg


def log_error(flags, message):
    """Tell the operator and containerd why: stderr plus runc's JSON log file, which the shim reports."""
    sys.stderr.write(f"inkmcp-runtime: {message}\n")
    log = flags.get("log")
    if isinstance(log, str) and log:
        try:
            with open(log, "a", encoding="utf-8") as f:
                entry = {"level": "error", "msg": f"inkmcp-runtime: {message}", "time": time.strftime("%FT%TZ")}
                f.write(json.dumps(entry) + "\n")
        except OSError:
            pass


def state_dir(cfg, flags):
    root = flags.get("root") if isinstance(flags.get("root"), str) else "default"
    return os.path.join(cfg["state_dir"], hashlib.sha256(root.encode()).hexdigest()[:16])


def docker_record(cfg, cid):
    """Docker's own record of the container (name, image ID), written by dockerd before start."""
    if not CONTAINER_ID.match(cid):
        return None
    path = os.path.join(cfg["data_root"], "containers", cid, "config.v2.json")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def is_platform(cfg, record):
    if not record:
        return False
    name = str(record.get("Name", "")).lstrip("/")
    image_id = str(record.get("Image", ""))
    for entry in cfg["platform"]:
        if re.fullmatch(entry["name"], name) and image_id in entry.get("image_ids", []):
            return True
    return False


def mount_points():
    points = set()
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 4:
                    points.add(parts[4].encode().decode("unicode_escape"))
    except OSError:
        pass
    return points


def shares_host_netns(path):
    """Docker's --network host hands over a path to its own namespace (.../netns/default), not a new one."""
    if not path:
        return False  # a fresh namespace is created for the container
    if os.path.basename(path) == "default":
        return True
    try:
        theirs, ours = os.stat(path), os.stat("/proc/self/ns/net")
    except OSError:
        return True  # cannot tell: fail closed
    return (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino)


def check_tenant(cfg, spec, cid):
    """Raise Refused when a tenant bundle asks for something that would weaken or bypass the sandbox."""
    for key in (spec.get("annotations") or {}):
        if key.startswith("dev.gvisor."):
            raise Refused(f"tenant container may not set OCI annotation {key!r} (it switches runsc flags)")
    netns = [ns for ns in (spec.get("linux") or {}).get("namespaces") or [] if ns.get("type") == "network"]
    if not netns or shares_host_netns(netns[0].get("path")):
        raise Refused("tenant container may not share the host network namespace")
    data_root = os.path.realpath(cfg["data_root"])
    own = os.path.join(data_root, "containers", cid) + os.sep
    volumes = os.path.join(data_root, "volumes") + os.sep
    sockets = {os.path.realpath(s) for s in cfg.get("docker_sockets", [])}
    points = None
    for m in spec.get("mounts") or []:
        dest = m.get("destination", "")
        source = m.get("source", "")
        options = m.get("options") or []
        if m.get("type") in VIRTUAL_TYPES and "bind" not in options and "rbind" not in options:
            continue
        real = os.path.realpath(source) if source else ""
        if real in sockets or os.path.basename(dest) == "docker.sock" or os.path.basename(real) == "docker.sock":
            raise Refused(f"tenant container may not mount the Docker socket ({source} -> {dest})")
        if real.startswith(own):
            continue
        if real.startswith(volumes):
            if points is None:
                points = mount_points()
            if real in points:
                raise Refused(f"tenant volume {source} is a host mount (local driver with bind/device options)")
            continue
        raise Refused(f"tenant container may not bind-mount host path {source} -> {dest}")


def runtime_cmd(cfg, runtime, argv):
    if runtime == "runsc":
        return [cfg["runsc"], *cfg["runsc_flags"], *argv]
    return [cfg["runc"], *argv]


def choose_for_create(cfg, flags, rest):
    bundle = None
    for i, arg in enumerate(rest):
        if arg in ("--bundle", "-b") and i + 1 < len(rest):
            bundle = rest[i + 1]
        elif arg.startswith("--bundle="):
            bundle = arg.split("=", 1)[1]
    cid = rest[-1] if rest else ""
    if not bundle or not SAFE_ID.match(cid):
        raise Refused("create without a bundle or with an unexpected container id")
    with open(os.path.join(bundle, "config.json"), encoding="utf-8") as f:
        spec = json.load(f)
    if is_platform(cfg, docker_record(cfg, cid)):
        runtime = "runc"
    else:
        check_tenant(cfg, spec, cid)
        runtime = "runsc"
    sdir = state_dir(cfg, flags)
    os.makedirs(sdir, mode=0o700, exist_ok=True)
    tmp = os.path.join(sdir, f".{cid}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(runtime)
    os.replace(tmp, os.path.join(sdir, cid))
    return runtime


def recorded(cfg, flags, rest):
    sdir = state_dir(cfg, flags)
    for arg in rest:
        if SAFE_ID.match(arg):
            try:
                with open(os.path.join(sdir, arg), encoding="utf-8") as f:
                    return f.read().strip(), arg
            except OSError:
                continue
    return None, None


def main(argv):
    config_path = DEFAULT_CONFIG
    if argv and argv[0].startswith(CONFIG_FLAG):
        config_path = argv[0][len(CONFIG_FLAG) :]
        argv = argv[1:]
    flags, sub, rest = parse_args(argv)
    try:
        cfg = load_config(config_path)
        if sub in ("create", "run"):  # `run` = create + start, e.g. an operator typing `runc run`
            runtime = choose_for_create(cfg, flags, rest)
        elif sub is None or sub in ("features", "list", "help", "spec"):
            runtime = "runc"  # no container involved
        else:
            runtime, cid = recorded(cfg, flags, rest)
            if runtime is None:
                runtime = "runc"  # never created through us: runc answers "does not exist"
            elif sub == "delete" and cid:
                # Forget the container only once its runtime has deleted it, so a retried delete
                # still reaches the runtime that owns it.
                rc = subprocess.run(runtime_cmd(cfg, runtime, argv), check=False).returncode
                if rc == 0:
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(state_dir(cfg, flags), cid))
                return rc
    except Refused as err:
        log_error(flags, str(err))
        return 1
    except (OSError, ValueError) as err:
        log_error(flags, f"refusing: cannot decide safely: {err}")
        return 1
    cmd = runtime_cmd(cfg, runtime, argv)
    os.execv(cmd[0], cmd)  # noqa: S606 - replacing ourselves with the chosen runtime is the point
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
