"""InkMCP runtime selector: Docker's default OCI runtime on a run server (runbooks/gvisor-decision.md §4.2-4.3).

The logic behind hardening/gvisor/runtime_selector.py (the entry point, installed as
/usr/local/lib/inkmcp/inkmcp-runtime next to this module). dockerd (through containerd's runc shim) calls the
entry point exactly as it would call runc. On `create` it
decides, from the OCI bundle (what will actually run) and Docker's own records of the container
(config.v2.json, hostconfig.json), which real runtime owns the container, or refuses it:

* platform -> runc. A container is platform only when its Docker name matches a platform entry's name
  regex (in full) AND every check of that entry's profile passes: the image ID is one of the entry's
  pinned images (resolved on this node), the host mounts are exactly the profile's (source -> destination,
  read-only or not; Docker's own per-container files aside), the command is the one the profile allows,
  no tenant label Coolify stamps on every tenant container (coolify.applicationId/serviceId/databaseId/
  type) and none the entry forbids, AutoRemove as required, plus T1-T4 below and Docker's default
  seccomp/masked paths. A container whose name is RESERVED by an entry (it matches the entry's regex; for
  `reserve: name_and_image` entries also runs one of its pinned images) but fails a check is REFUSED,
  never quietly sandboxed: a look-alike of the proxy must not hold the proxy's name.
* everything else is a tenant -> runsc with the operator's flags, after checks that REFUSE the container
  (create fails, nothing runs):
    T1 namespaces    network, pid, ipc, uts and mount present and without `path` (host modes remove the
                     entry or point at the host's, `container:<x>` points at another container's);
    T2 capabilities  bounding/effective/permitted/inheritable/ambient within Docker's default 14;
    T3 devices       no linux.devices, no device-cgroup allow rule beyond plain `docker run`'s;
    T4 annotations   no dev.gvisor.* (runsc lets those switch flags such as host-uds);
    T5 mounts        bind sources only: the container's own Docker dir; a plain named volume (not itself a
                     mount); its own Coolify resource dir /data/coolify/{applications,services,databases}/
                     <uuid>/ (uuid from its Docker name); the Coolify CA file read-only; for backup-of-* /
                     volume-upload-* helpers files under /data/coolify/backups/ read-only; Docker's init
                     binary read-only at /sbin/docker-init (--init). No symlink in any component below the
                     allowed prefix; never a socket (the Docker socket is root).
  Refusing rather than silently stripping keeps the failure visible in `docker start` and in the logs.
* BuildKit RUN steps (dockerd runs `runc` from its PATH = this program, with a bundle under
  <data-root>/buildkit/executor/<id> and no Docker record) are tenants -> runsc. Build mode (`build_mode`,
  the build server only, runbooks/gvisor-decision.md §4.4) admits what a build needs beyond T1/T5: a step
  without its own network namespace (`docker build --network host`, how Coolify builds every image) only
  while this program runs outside PID 1's network namespace, i.e. dockerd really lives in the dedicated build
  namespace; and BuildKit's own mounts (T5 (f): its executor's resolv.conf/hosts read-only, snapshot dirs of
  the image store for `RUN --mount` and cache mounts, build secrets read-only). Without build mode (run
  servers) every BuildKit step is refused: Coolify's fallback build on a run server fails closed.
  runsc has no `run --keep` (BuildKit >= 0.10 asks runc to keep the stopped container for its own `delete`):
  the selector drops it, and the later `delete` of a container `run` through runsc (which runsc removes when
  it exits) is sent as `delete --force`, which succeeds for a container that is already gone.

Every later call (start, state, kill, exec, delete, ...) goes to the runtime recorded at create time.
Unknown containers and anything this program cannot read fail closed: sandboxed, or refused.
Labels never make a container platform (tenants set labels); they can only disqualify it.
Configuration: JSON file given by --inkmcp-config=PATH (first argument, set in daemon.json runtimeArgs),
default /etc/inkmcp/runtime-selector.json relative to the install root; it must be owned by root and not
writable by others. Standard library only; runs as root.
Start-up is most of the cost of every runtime call (benchmarks/selector_cost.py): this module is loaded from
bytecode compiled at install (compiling it on every call cost more than deciding); the modules `json` and `re`
pull in enum, functools, collections and more, so JSON is read with the C scanner `_json` directly, `re` is
imported only by `create` (which needs it), and the state-dir hash uses the builtin `_sha256`.
"""

import os
import stat
import sys

# Installed as <ROOT>/usr/local/lib/inkmcp/inkmcp-runtime: the config is <ROOT>/etc/inkmcp/... (ROOT is /
# on a node). Also reached as <ROOT>/usr/local/sbin/runc, a symlink that shadows the real runc in the PATH
# of containerd, so `--runtime runc` (always registered by Docker) cannot bypass the selector.
DEFAULT_CONFIG = os.path.join(
    os.path.dirname(os.path.realpath(__file__)), "..", "..", "..", "..", "etc", "inkmcp", "runtime-selector.json"
)
CONFIG_FLAG = "--inkmcp-config="
# runc global flags that take a value (both runc and runsc accept these before the subcommand).
VALUE_FLAGS = {"--root", "--log", "--log-format", "--criu", "--rootless"}
HEX = frozenset("0123456789abcdef")
ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
# Mount types that never expose a host path (unless bind-mounted, which the options say).
VIRTUAL_TYPES = {"proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup", "cgroup2", "shm"}
# T1: namespaces every container must have, each its own (no `path`).
REQUIRED_NAMESPACES = ("network", "pid", "ipc", "uts", "mount")
# T2: Docker's default capability set (moby oci/caps/defaults.go), identical on Docker 20.10 and 26.
DEFAULT_CAPS = frozenset(
    "CAP_" + c
    for c in (
        "CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID", "SETFCAP",
        "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE",
    )
)
# T3: the device-cgroup allow rules of a plain `docker run` (measured on Docker 20.10.24 and 26.1.5; both put
# no linux.devices in the spec, runc creates /dev/null & co. itself): c 1:3 null, 1:5 zero, 1:8 random,
# 1:9 urandom, 5:0 tty, 5:1 console. --device adds an entry and a rule; --privileged an `allow a *:*` rule.
DEFAULT_DEVICE_RULES = frozenset({("c", 1, 3), ("c", 1, 5), ("c", 1, 8), ("c", 1, 9), ("c", 5, 0), ("c", 5, 1)})
# Coolify stamps these on every container it makes for a tenant (docker.php defaultLabels /
# defaultDatabaseLabels, ADJ:3250): a container carrying one is never platform.
TENANT_LABELS = ("coolify.applicationId", "coolify.serviceId", "coolify.databaseId", "coolify.type")
RESOURCE_KINDS = ("applications", "services", "databases")
# Resource uuid from the Docker name, Coolify v4.3.11's generators (new_public_id(): 24 x [a-z0-9]):
#   compose one-off `<U>-<U>-run-<12 hex>` (StartPostgresql.php:223, compose project and service = U);
#   app `<U>`, `<U>-<His+micro, 12 digits>`, `<U>-pr-<n>` (docker.php:345-360); DB `<U>`
#   (StartPostgresql.php:28); compose app `<svc>-` + the app form (parsers.php:728); service `<svc>-<U>`
#   (parsers.php:2080). `.+-` is greedy, so a tenant-chosen service name can never supply the uuid.
UUID = "[a-z0-9]{24}"
NAME_UUID = (rf"(?P<u>{UUID})-(?P=u)-run-[0-9a-f]+", rf"(?:.+-)?(?P<u>{UUID})(?:-[0-9]{{12}}|-pr-[0-9]+)?")
BACKUP_HELPERS = ("backup-of-", "volume-upload-")
# runc flags of `create`/`run` that runsc lacks and that mean nothing under gVisor (it pivots its own root and
# has no host session keyring); `--keep` is emulated (module docstring).
RUNSC_DROPPED_FLAGS = ("--keep", "--no-pivot", "--no-new-keyring")
BUILDKIT_EXECUTOR = ("buildkit", "executor")
# T5 (f), build mode, BuildKit bundles only (measured on Docker 20.10.24 and 26.1.5; data-root relative):
# the executor's own files, read-only; graphdriver snapshots (context, stages, cache mounts); subpath
# mounts BuildKit makes in dockerd's TMPDIR (<data-root>/tmp); secrets, read-only.
BUILDKIT_FILES = r"/buildkit/executor/(resolv\.conf|resolv-host\.conf|hosts|hosts\.[a-z0-9]+)"
BUILDKIT_SNAPSHOTS = r"/overlay2/[A-Za-z0-9]+/(diff|merged)"
BUILDKIT_TMP_MOUNT = r"/tmp/buildkit-mount[0-9]+(/.+)?"  # noqa: S108 - data-root relative (dockerd's TMPDIR)
BUILDKIT_SECRET_MOUNT = r"/tmp/buildkit-secrets[0-9]+/[A-Za-z0-9]+"  # noqa: S105,S108 - a path pattern (data-root relative), no secret
# The containerd image store: snapshots of containerd's overlayfs snapshotter (dockerd's managed containerd
# keeps its root under <data-root>/containerd/daemon, a system containerd under `containerd_root`).
CONTAINERD_SNAPSHOT = r"/io\.containerd\.snapshotter\.v1\.overlayfs/snapshots/[0-9]+/fs"
FLAG_ARG = r"--[A-Za-z][A-Za-z0-9._-]*(=[^\n]*)?"
PLUGIN_MODULE = r"(?i)--experimental\.plugins\.[^.=]+\.modulename=(.*)"
ENTRY_KEYS = ("entry", "name", "reserve", "images", "mounts", "args", "auto_remove", "forbid_label_prefixes")


class Refused(Exception):
    """The container must not run at all."""


def is_container_id(value):
    """Docker's container IDs: 64 lowercase hex digits (what dockerd passes as the runc container id)."""
    return len(value) == 64 and set(value) <= HEX


def is_safe_id(value):
    """^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$ without `re`: an id we may use as a file name."""
    return 0 < len(value) <= 128 and value[0] not in "_.-" and set(value) <= ID_CHARS


def _reject_constant(name):
    raise ValueError(f"non-standard JSON constant {name}")


def loads(text):
    """json.loads for the config, the bundle and Docker's records, without importing `json` (and with it `re`,
    enum, functools, ...): the C scanner behind json, strict, nothing after the value."""
    try:
        import _json
    except ImportError:  # an interpreter without the accelerator: the pure-Python module
        import json

        return json.loads(text)

    class Context:
        strict, object_hook, object_pairs_hook = True, None, None
        parse_float, parse_int, parse_constant = float, int, staticmethod(_reject_constant)

    text = text.strip(" \t\n\r")
    try:
        value, end = _json.make_scanner(Context())(text, 0)
    except StopIteration:
        raise ValueError("not JSON") from None
    if end != len(text):
        raise ValueError(f"extra data after the JSON value at offset {end}")
    return value


def read_text(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def rx():
    """`re`, imported on first use: only `create` decisions match patterns."""
    import re

    return re


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
    cfg = loads(read_text(path))
    for key in ("runc", "runsc", "runsc_flags", "data_root", "state_dir", "platform", "coolify_dir"):
        if key not in cfg:
            raise Refused(f"config {path} lacks {key!r} (render it from runtime-selector.json.j2)")
    me = {os.path.realpath(__file__), os.path.realpath(sys.argv[0]) if sys.argv and sys.argv[0] else ""}
    for key in ("runc", "runsc"):
        if not os.path.isabs(cfg[key]) or os.path.realpath(cfg[key]) in me:
            raise Refused(f"config {key!r} must be the absolute path of the real runtime, not the selector")
    for i, entry in enumerate(cfg["platform"]):
        missing = [k for k in ENTRY_KEYS if k not in entry]
        if missing:
            raise Refused(f"config {path}: platform entry {i} lacks {missing} (render it from PlatformProfile)")
    return cfg


def log_error(flags, message):
    """Tell the operator and containerd why: stderr plus runc's JSON log file, which the shim reports."""
    sys.stderr.write(f"inkmcp-runtime: {message}\n")
    log = flags.get("log")
    if isinstance(log, str) and log:
        try:
            import json
            import time

            with open(log, "a", encoding="utf-8") as f:
                entry = {"level": "error", "msg": f"inkmcp-runtime: {message}", "time": time.strftime("%FT%TZ")}
                f.write(json.dumps(entry) + "\n")
        except OSError:
            pass


def state_dir(cfg, flags):
    try:
        from _sha256 import sha256  # builtin in Python 3.11; hashlib would load OpenSSL first
    except ImportError:
        from hashlib import sha256

    root = flags.get("root") if isinstance(flags.get("root"), str) else "default"
    return os.path.join(cfg["state_dir"], sha256(root.encode()).hexdigest()[:16])


def read_json(path):
    try:
        return loads(read_text(path))
    except (OSError, ValueError):
        return None


class Container:
    """What the decision needs: the bundle's spec and Docker's record of the container (absent for
    bundles Docker did not create, e.g. BuildKit steps, which are tenants)."""

    def __init__(self, cfg, spec, cid, bundle=""):
        self.cfg, self.spec, self.cid = cfg, spec, cid
        self.record = self.hostconfig = None
        if is_container_id(cid):
            cdir = os.path.join(cfg["data_root"], "containers", cid)
            self.record = read_json(os.path.join(cdir, "config.v2.json"))
            self.hostconfig = read_json(os.path.join(cdir, "hostconfig.json"))
        record = self.record if isinstance(self.record, dict) else {}
        self.name = str(record.get("Name", "")).lstrip("/")
        self.image_id = str(record.get("Image", ""))
        labels = (record.get("Config") or {}).get("Labels") or {}
        self.labels = labels if isinstance(labels, dict) else {}
        self.linux = spec.get("linux") or {}
        self.process = spec.get("process") or {}
        self.buildkit = self.record is None and not is_container_id(cid) and is_buildkit_bundle(cfg, bundle, cid)

    def describe(self):
        if self.name:
            return f"container {self.name!r}"
        if self.buildkit:
            return f"BuildKit step {self.cid}"
        return f"bundle {self.cid} (no Docker record)"


def build_mode(cfg):
    return cfg.get("build_mode") is True


def is_buildkit_bundle(cfg, bundle, cid):
    """BuildKit's runc executor writes each step's bundle to <data-root>/buildkit/executor/<id> (root-only)."""
    if not bundle or not is_safe_id(cid):
        return False
    real = os.path.realpath(bundle)
    return any(real == os.path.join(os.path.realpath(os.path.join(root, *BUILDKIT_EXECUTOR)), cid)
               for root in data_roots(cfg))


def netns_of(pid):
    st = os.stat(f"/proc/{pid}/ns/net")
    return st.st_dev, st.st_ino


def host_netns_refs():
    """The host's network namespace as seen from here: PID 1's and the kernel's (kthreadd, PID 2, lives in the
    initial namespace; checked too because a PID 1 may hide its namespaces, e.g. a VM's init process)."""
    refs = {}
    try:
        refs["PID 1's"] = netns_of(1)
    except OSError:
        pass
    try:
        if read_text("/proc/2/comm").strip() == "kthreadd":
            refs["the kernel's (kthreadd, PID 2)"] = netns_of(2)
    except OSError:
        pass
    return refs


def host_network_build_problem(cfg):
    """None when a BuildKit step may share dockerd's network namespace (`docker build --network host`): build
    mode is on AND this program (a child of dockerd) runs outside the host's network namespace."""
    if not build_mode(cfg):
        return ("[T1 namespaces] BuildKit step with the daemon's own network (`docker build --network host`, how "
                "Coolify builds every image) on a node whose selector is not in build mode: only the build server "
                "builds, inside its build namespace (runbooks/gvisor-decision.md §4.4). Deploy through the build "
                "server; on the build server itself set build_mode (GvisorParams.build_mode) in the selector config")
    refs = host_netns_refs()
    try:
        mine = netns_of("self")
    except OSError as err:
        refs, mine = {}, err
    if not refs:
        return (f"[T1 namespaces] build mode: cannot compare this runtime's network namespace with PID 1's or the "
                f"kernel's ({mine if isinstance(mine, OSError) else 'neither is readable'}); a `--network host` "
                f"build step is refused when that cannot be checked")
    for what, ref in refs.items():
        if mine == ref:
            return (f"[T1 namespaces] build mode is on, but dockerd runs in the host's network namespace ({what}), "
                    f"so a `--network host` build step would reach everything the host reaches: start dockerd and "
                    f"containerd inside the build namespace (inkmcp-build-netns.service and its "
                    f"NetworkNamespacePath= drop-ins, inkmcp.nodes.buildnet), then build again")
    return None


# ---------------------------------------------------------------------------------------------------
# T1-T4: the same for tenants and platform containers. Each returns a problem string or None.
# ---------------------------------------------------------------------------------------------------


def t1_namespaces(c):
    have = {}
    for ns in c.linux.get("namespaces") or []:
        have[ns.get("type")] = ns.get("path") or ""
    for kind in REQUIRED_NAMESPACES:
        if kind == "network" and kind not in have and c.buildkit:
            problem = host_network_build_problem(c.cfg)
            if problem is None:
                continue
            return problem
        if kind not in have:
            return (f"[T1 namespaces] no {kind} namespace of its own (--{kind} host shares the node's); "
                    f"run it without host namespaces")
        if have[kind]:
            return (f"[T1 namespaces] joins an existing {kind} namespace ({have[kind]}: host mode or "
                    f"`container:<other>`, e.g. --network container:coolify-proxy); give it its own "
                    f"(host network namespace and other containers' namespaces are never shared)")
    return None


def t2_capabilities(c):
    caps = c.process.get("capabilities") or {}
    extra = set()
    for kind in ("bounding", "effective", "permitted", "inheritable", "ambient"):
        extra |= set(caps.get(kind) or []) - DEFAULT_CAPS
    if extra:
        return (f"[T2 capabilities] asks for {', '.join(sorted(extra))} beyond Docker's default set "
                f"(--cap-add or --privileged); drop them")
    return None


def t3_devices(c):
    devices = c.linux.get("devices") or []
    if devices:
        paths = ", ".join(str(d.get("path")) for d in devices[:5])
        return f"[T3 devices] asks for host devices ({paths}; --device, --gpus or --privileged); remove them"
    for rule in (c.linux.get("resources") or {}).get("devices") or []:
        if not rule.get("allow"):
            continue
        key = (rule.get("type"), rule.get("major"), rule.get("minor"))
        if key not in DEFAULT_DEVICE_RULES:
            shown = f"{key[0] or 'a'} {'*' if key[1] is None else key[1]}:{'*' if key[2] is None else key[2]}"
            return (f"[T3 devices] device cgroup rule allows {shown} {rule.get('access', '')} beyond a plain "
                    f"`docker run` (--device-cgroup-rule, --device or --privileged); remove it")
    return None


def t4_annotations(c):
    for key in c.spec.get("annotations") or {}:
        if key.startswith("dev.gvisor."):
            return f"[T4 annotations] OCI annotation {key!r} switches runsc flags; remove it"
    return None


def t1_to_t4(c):
    for check in (t1_namespaces, t2_capabilities, t3_devices, t4_annotations):
        problem = check(c)
        if problem:
            return problem
    return None


# ---------------------------------------------------------------------------------------------------
# Mounts
# ---------------------------------------------------------------------------------------------------


def is_bind(m):
    options = m.get("options") or []
    return m.get("type") == "bind" or "bind" in options or "rbind" in options


def read_only(m):
    options = m.get("options") or []
    return "ro" in options or "rro" in options


def under(path, prefix):
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


def symlink_below(source, prefix):
    """The first component of `source` below `prefix` that is a symlink (or cannot be read), else None.
    A symlink there could point anywhere on the host (e.g. a tenant's own dir -> /etc)."""
    rest = source[len(prefix.rstrip("/")) :].strip("/")
    current = prefix.rstrip("/")
    for part in rest.split("/") if rest else []:
        current = f"{current}/{part}"
        try:
            if stat.S_ISLNK(os.lstat(current).st_mode):
                return current
        except OSError:
            return current
    return None


_MOUNT_POINTS = None


def mount_points():
    global _MOUNT_POINTS
    if _MOUNT_POINTS is None:
        points = set()
        try:
            with open("/proc/self/mountinfo", encoding="utf-8") as f:
                for line in f:
                    parts = line.split()
                    if len(parts) > 4:
                        points.add(rx().sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), parts[4]))
        except OSError:
            pass
        _MOUNT_POINTS = points
    return _MOUNT_POINTS


def data_roots(cfg):
    """dockerd resolves its data root's symlinks at start; accept both spellings of it."""
    configured = os.path.normpath(cfg["data_root"])
    return sorted({configured, os.path.realpath(configured)})


def own_dir_problem(cfg, source, cid):
    """None when `source` is a Docker-owned file of this container (resolv.conf, hosts, hostname, shm)."""
    for root in data_roots(cfg):
        prefix = f"{root}/containers/{cid}"
        if is_container_id(cid) and under(source, prefix):
            link = symlink_below(source, prefix)
            return f"symlink {link} in its own container dir" if link else None
    return "not its own container dir"


def volume_problem(cfg, source):
    """None when `source` is a plain named volume (`<data-root>/volumes/<v>/_data[/...]`, not a mount)."""
    for root in data_roots(cfg):
        m = rx().fullmatch(rx().escape(root) + r"/volumes/([A-Za-z0-9][A-Za-z0-9_.-]*)/_data(/.*)?", source)
        if not m:
            continue
        data = f"{root}/volumes/{m.group(1)}/_data"
        link = symlink_below(source, f"{root}/volumes/{m.group(1)}")
        if link:
            return f"symlink {link} inside volume {m.group(1)}"
        if data in mount_points():
            return (f"volume {m.group(1)} is a host mount (local driver with type/device/o=bind options = a host "
                    f"path); use a plain named volume")
        return None
    return "not a named volume"


def is_socket(source):
    try:
        return stat.S_ISSOCK(os.stat(source).st_mode)
    except OSError:
        return False


def docker_socket(cfg, m):
    source = m.get("source", "")
    sockets = {os.path.realpath(s) for s in cfg.get("docker_sockets", [])}
    real = os.path.realpath(source) if source else ""
    return real in sockets or os.path.basename(real) == "docker.sock" or \
        os.path.basename(m.get("destination", "")) == "docker.sock"


def docker_init(cfg, m):
    """Docker's own init binary, bound read-only at /sbin/docker-init by `--init` (compose `init: true`)."""
    if m.get("destination") != "/sbin/docker-init" or not read_only(m):
        return False
    real = os.path.realpath(m.get("source", ""))
    return real in {os.path.realpath(p) for p in cfg.get("docker_init_paths", [])}


def resource_uuid(name):
    for pattern in NAME_UUID:
        m = rx().fullmatch(pattern, name)
        if m:
            return m.group("u")
    return None


NOT_BUILDKIT = "not one of BuildKit's own paths"


def containerd_roots(cfg):
    """dockerd's managed containerd (no --containerd) keeps its root under the data root; a system one is
    configured (Debian's docker.io: /var/lib/containerd)."""
    roots = {f"{root}/containerd/daemon" for root in data_roots(cfg)}
    configured = os.path.normpath(cfg.get("containerd_root") or "/var/lib/containerd")
    return sorted(roots | {configured, os.path.realpath(configured)})


def buildkit_mount_problem(cfg, m, source):
    """T5 (f), build mode: None when `source` is one of the paths BuildKit itself binds into a RUN step (what the
    tenant's Dockerfile can name is only the build graph, never a host path); NOT_BUILDKIT when it is none of
    them; else what is wrong with it."""
    re = rx()
    places = []
    for root in data_roots(cfg):
        places += [(root, BUILDKIT_FILES, True), (root, BUILDKIT_SNAPSHOTS, False),
                   (root, BUILDKIT_TMP_MOUNT, False), (root, BUILDKIT_SECRET_MOUNT, True)]
    places += [(croot, CONTAINERD_SNAPSHOT, False) for croot in containerd_roots(cfg)]
    for base, pattern, ro in places:
        if not re.fullmatch(re.escape(base) + pattern, source):
            continue
        if ro and not read_only(m):
            return f"BuildKit's {source} is bound writable; BuildKit binds it read-only"
        link = symlink_below(source, base)
        if link:
            return f"{link} is a symlink (or unreadable) inside BuildKit's own paths"
        return None
    return NOT_BUILDKIT


def t5_mounts(c):
    """Tenant bind mounts (§4.2 T5); a problem string or None."""
    cfg = c.cfg
    coolify = os.path.normpath(cfg["coolify_dir"])
    uuid = resource_uuid(c.name)
    for m in c.spec.get("mounts") or []:
        source, dest = m.get("source", ""), m.get("destination", "")
        if not is_bind(m):
            if m.get("type") in VIRTUAL_TYPES:
                continue
            if c.buildkit and m.get("type") == "overlay":
                return (f"[T5 mounts] BuildKit mounts a multi-layer snapshot as an overlay at {dest} (`RUN --mount="
                        f"type=bind,from=...` on the containerd image store): runsc cannot mount an overlay from the "
                        f"bundle (the step would see an empty directory). Build on the classic overlay2 store "
                        f"(daemon.json \"features\": {{\"containerd-snapshotter\": false}}) or mount a one-layer stage")
            return f"[T5 mounts] mount type {m.get('type')!r} at {dest} is not one Docker makes for a container"
        where = f"{source} -> {dest}"
        if docker_socket(cfg, m):
            return f"[T5 mounts] tenant container may not mount the Docker socket ({where}): it is root on the node"
        if is_socket(source):
            return f"[T5 mounts] tenant container may not mount a host socket ({where})"
        if not source.startswith("/") or os.path.normpath(source) != source:
            return f"[T5 mounts] bind source {source!r} is not a clean absolute path ({where})"
        if c.buildkit and build_mode(cfg):
            problem = buildkit_mount_problem(cfg, m, source)
            if problem is None:
                continue
            if problem is not NOT_BUILDKIT:
                return f"[T5 mounts] {problem} ({where})"
        if own_dir_problem(cfg, source, c.cid) is None:
            continue
        if docker_init(cfg, m):
            continue
        problem = volume_problem(cfg, source)
        if problem is None:
            continue
        if not problem.startswith("not a"):
            return f"[T5 mounts] {problem} ({where})"
        allowed = None
        for kind in RESOURCE_KINDS:
            base = f"{coolify}/{kind}"
            if under(source, base) and source != base:
                owner = source[len(base) + 1 :].split("/", 1)[0]
                if owner != uuid:
                    mine = f"its own is {uuid!r}" if uuid else "its name carries no Coolify resource uuid"
                    return (f"[T5 mounts] {where}: {base}/{owner} is another resource's dir ({mine}, taken from "
                            f"the container name {c.name!r}); bind only the resource's own dir")
                allowed = base
        if allowed is None and source == f"{coolify}/ssl/coolify-ca.crt":
            if not read_only(m):
                return f"[T5 mounts] the Coolify CA file must be mounted read-only ({where}); add :ro"
            allowed = f"{coolify}/ssl"
        if allowed is None and c.name.startswith(BACKUP_HELPERS) and under(source, f"{coolify}/backups") \
                and source != f"{coolify}/backups":
            if not read_only(m):
                return f"[T5 mounts] backup files are mounted read-only into {c.name!r} ({where}); add :ro"
            allowed = f"{coolify}/backups"
        if allowed is None:
            return (f"[T5 mounts] tenant container may not bind-mount host path {where}; allowed are named "
                    f"volumes, its own Coolify dir {coolify}/{{applications,services,databases}}/"
                    f"{uuid or '<uuid from its name>'}/ and the Coolify CA file read-only")
        link = symlink_below(source, allowed)
        if link:
            return (f"[T5 mounts] {where}: {link} is a symlink (or unreadable); a symlink below {allowed} could "
                    f"point anywhere on the node, bind the real path")
    return None


# ---------------------------------------------------------------------------------------------------
# Platform profiles (§4.3)
# ---------------------------------------------------------------------------------------------------


def profile_images(entry):
    return {img["id"]: img for img in entry["images"] if img.get("id")}


def args_problem(entry, image, args):
    rule = entry["args"]
    entrypoint, cmd = image.get("entrypoint"), image.get("cmd")
    if entrypoint is None or cmd is None:
        return (f"the image defaults (entrypoint, cmd) of {image.get('ref') or image['id']} are not in the config; "
                "resolve the pinned images on the node (inkmcp.nodes.render.resolve_pinned_images)")
    if args[: len(entrypoint)] != entrypoint:
        return f"entrypoint overridden: runs {args[:1]}, the image's entrypoint is {entrypoint}"
    rest = args[len(entrypoint) :]
    kind = rule["kind"]
    if kind == "image":
        if rest != cmd:
            return f"command overridden: {rest}, the profile allows only the image default {cmd}"
    elif kind == "exact":
        if rest != rule["value"]:
            return f"command {rest}, the profile allows exactly {rule['value']}"
    elif kind == "flags":
        if rest == cmd:
            return None
        for arg in rest:
            if not rx().fullmatch(FLAG_ARG, arg):
                return f"argument {arg!r} is not a --flag[=value]"
            flag = arg.split("=", 1)[0].lower()
            for prefix in rule.get("forbid_prefixes") or []:
                if flag.startswith(prefix.lower()):
                    return f"flag {arg!r} is forbidden by the profile ({prefix}*)"
            m = rx().fullmatch(PLUGIN_MODULE, arg)
            if m and m.group(1) not in (rule.get("plugin_modules") or []):
                return f"plugin module {m.group(1)!r} is not allowed (allowed: {rule.get('plugin_modules') or []})"
    else:
        return f"unknown args rule {kind!r} in the config"
    return None


def mounts_problem(c, entry):
    """Host binds must be exactly the profile's; Docker's own per-container files and virtual mounts aside."""
    want = {os.path.normpath(p["destination"]): p for p in entry["mounts"]}
    seen = set()
    for m in c.spec.get("mounts") or []:
        source, dest = m.get("source", ""), os.path.normpath(m.get("destination", ""))
        if not is_bind(m):
            if m.get("type") in VIRTUAL_TYPES:
                continue
            return f"mount type {m.get('type')!r} at {dest} is not in the profile"
        if own_dir_problem(c.cfg, source, c.cid) is None:
            continue
        profile = want.get(dest)
        if profile is None:
            return f"extra mount {source} -> {dest} (the profile has {sorted(want) or 'none'})"
        if os.path.realpath(source) != os.path.realpath(profile["source"]):
            return f"mount {dest} comes from {source}, the profile says {profile['source']}"
        if read_only(m) != bool(profile["read_only"]):
            return f"mount {source} -> {dest} is {'read-only' if read_only(m) else 'writable'}, the profile says " \
                   f"{'read-only' if profile['read_only'] else 'writable'}"
        seen.add(dest)
    missing = [d for d, p in want.items() if d not in seen and not p.get("optional")]
    if missing:
        return f"missing mounts {missing}"
    return None


def profile_problem(c, entry):
    """The first profile check this container fails, or None when it is this platform entry."""
    images = profile_images(entry)
    image = images.get(c.image_id)
    if image is None:
        pinned = ", ".join(i.get("ref") or i["id"] for i in entry["images"])
        unresolved = [i["ref"] for i in entry["images"] if not i.get("id")]
        hint = f"; not resolved on this node: {unresolved}" if unresolved else ""
        return f"image {c.image_id or '?'} is not a pinned image of the entry ({pinned}{hint})"
    for key in TENANT_LABELS:
        if key in c.labels:
            return f"carries the tenant label {key} (Coolify stamps it on tenant containers)"
    for prefix in entry["forbid_label_prefixes"]:
        hits = sorted(k for k in c.labels if k.startswith(prefix))
        if hits:
            return f"carries label {hits[0]} (the profile forbids {prefix}*)"
    if entry["auto_remove"] is not None:
        have = bool((c.hostconfig or {}).get("AutoRemove"))
        if have != entry["auto_remove"]:
            return f"AutoRemove is {have}, the profile requires {entry['auto_remove']} (--rm)"
    problem = args_problem(entry, image, list(c.process.get("args") or []))
    if problem:
        return problem
    problem = mounts_problem(c, entry)
    if problem:
        return problem
    problem = t1_to_t4(c)
    if problem:
        return problem
    if not c.linux.get("seccomp") or not c.linux.get("maskedPaths"):
        return "runs without Docker's seccomp profile or masked paths (--security-opt unconfined / --privileged)"
    return None


def platform_entry(c):
    """The platform entry this container is, None for a tenant; Refused for a reserved name that fails."""
    if not c.name:
        return None
    failures = []
    for entry in c.cfg["platform"]:
        if not rx().fullmatch(entry["name"], c.name):
            continue
        problem = profile_problem(c, entry)
        if problem is None:
            return entry
        reserved = entry["reserve"] == "name" or c.image_id in profile_images(entry)
        if reserved:
            failures.append((entry, problem))
    if failures:
        entry, problem = failures[0]
        raise Refused(
            f"[platform {entry['entry']}] {c.describe()} has a name reserved for the platform entry "
            f"{entry['entry']!r} but {problem}; a reserved name is never sandboxed: start it exactly as the "
            f"profile says, or give a tenant container another name"
        )
    return None


def check_tenant(c):
    if c.buildkit and not build_mode(c.cfg):
        raise Refused(
            f"{c.describe()}: [build mode] a BuildKit RUN step on a node whose selector is not in build mode (a run "
            f"server): only the build server builds, with dockerd inside its build namespace (runbooks/gvisor-"
            f"decision.md §4.4). Deploy through the build server (Coolify: the application's build server); on the "
            f"build server itself set build_mode (GvisorParams.build_mode) in the selector config"
        )
    for check in (t1_namespaces, t2_capabilities, t3_devices, t4_annotations, t5_mounts):
        problem = check(c)
        if problem:
            raise Refused(f"{c.describe()}: {problem}")


def runtime_cmd(cfg, runtime, argv):
    if runtime == "runsc":
        return [cfg["runsc"], *cfg["runsc_flags"], *argv]
    return [cfg["runc"], *argv]


def runsc_argv(argv, at, sub, marks):
    """runc's argv as runsc takes it. `at` is the subcommand's index. create/run: runc-only flags dropped
    (RUNSC_DROPPED_FLAGS; runsc rejects unknown flags). delete of a container `run` through runsc: runsc removed
    it when it exited, so `--force` (which also succeeds for a container that is already gone) stands in for
    runc's `run --keep` + `delete`."""
    head, tail = argv[: at + 1], argv[at + 1 :]
    if sub in ("create", "run"):
        return head + [a for a in tail if a not in RUNSC_DROPPED_FLAGS]
    if sub == "delete" and "run" in marks and "--force" not in tail and "-f" not in tail:
        return [*head, "--force", *tail]
    return argv


def choose_for_create(cfg, flags, rest, sub="create"):
    bundle = None
    for i, arg in enumerate(rest):
        if arg in ("--bundle", "-b") and i + 1 < len(rest):
            bundle = rest[i + 1]
        elif arg.startswith("--bundle="):
            bundle = arg.split("=", 1)[1]
    cid = rest[-1] if rest else ""
    if not bundle or not is_safe_id(cid):
        raise Refused("create without a bundle or with an unexpected container id")
    spec = loads(read_text(os.path.join(bundle, "config.json")))
    c = Container(cfg, spec, cid, bundle)
    if platform_entry(c) is not None:
        runtime = "runc"
    else:
        check_tenant(c)
        runtime = "runsc"
    sdir = state_dir(cfg, flags)
    os.makedirs(sdir, mode=0o700, exist_ok=True)
    tmp = os.path.join(sdir, f".{cid}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        # "runsc run": the container goes away when `runsc run` returns (its later delete needs --force).
        f.write(f"{runtime} run" if runtime == "runsc" and sub == "run" else runtime)
    os.replace(tmp, os.path.join(sdir, cid))
    return runtime


def recorded(cfg, flags, rest):
    """(runtime, container id, marks) of the first argument with a record; (None, None, []) without one."""
    sdir = state_dir(cfg, flags)
    for arg in rest:
        if is_safe_id(arg):
            try:
                with open(os.path.join(sdir, arg), encoding="utf-8") as f:
                    words = f.read().split()
            except OSError:
                continue
            return (words[0] if words else ""), arg, words[1:]
    return None, None, []


def main(argv):
    config_path = DEFAULT_CONFIG
    if argv and argv[0].startswith(CONFIG_FLAG):
        config_path = argv[0][len(CONFIG_FLAG) :]
        argv = argv[1:]
    flags, sub, rest = parse_args(argv)
    at = len(argv) - len(rest) - 1  # the subcommand's index
    marks = []
    try:
        cfg = load_config(config_path)
        if sub in ("create", "run"):  # `run` = create + start: BuildKit's steps, or an operator typing `runc run`
            runtime = choose_for_create(cfg, flags, rest, sub)
        elif sub is None or sub in ("features", "list", "help", "spec"):
            runtime = "runc"  # no container involved
        else:
            runtime, cid, marks = recorded(cfg, flags, rest)
            if runtime is None:
                runtime = "runc"  # never created through us: runc answers "does not exist"
            elif runtime == "runsc":
                argv = runsc_argv(argv, at, sub, marks)
            if sub == "delete" and cid:
                # Forget the container only once its runtime has deleted it, so a retried delete
                # still reaches the runtime that owns it.
                import subprocess

                rc = subprocess.run(runtime_cmd(cfg, runtime, argv), check=False).returncode
                if rc == 0:
                    try:
                        os.unlink(os.path.join(state_dir(cfg, flags), cid))
                    except OSError:
                        pass
                return rc
    except Refused as err:
        log_error(flags, str(err))
        return 1
    except Exception as err:  # anything unexpected (a bad regex, a malformed record): fail closed
        log_error(flags, f"refusing: cannot decide safely: {err!r}")
        return 1
    if runtime == "runsc" and sub in ("create", "run"):
        argv = runsc_argv(argv, at, sub, marks)
    cmd = runtime_cmd(cfg, runtime, argv)
    os.execv(cmd[0], cmd)  # noqa: S606 - replacing ourselves with the chosen runtime is the point
    return 1  # not reached

