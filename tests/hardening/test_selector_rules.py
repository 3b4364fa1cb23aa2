"""The runtime selector's rules (runbooks/gvisor-decision.md §4.2 T1-T5, §4.3 platform profiles), both ways.

The REAL selector program (hardening/gvisor/runtime_selector.py, run as its own executable, as containerd's
shim runs it) decides on crafted bundles: config.json starts from the spec Docker 26.1.5 wrote for a plain
`docker run` (tests/hardening/fixtures/docker26-plain-config.json, recorded on the box) and is edited the way
Docker edits it for each flag (recorded on Docker 20.10.24 and 26.1.5: host modes drop the namespace entry or
point it at `<exec-root>/netns/default`, `container:<x>` at /proc/<pid>/ns/*, --device adds linux.devices and
a cgroup rule, ...). Docker's own records of the container (config.v2.json, hostconfig.json) sit under a temp
data root, Coolify's dirs under a temp coolify_dir. The real runc/runsc are replaced by fakes that record
their argv, so "sandboxed" means the selector exec'd runsc with the operator's flags, "platform" that it
exec'd runc, and "refused" that it exited 1 having exec'd neither, with the rule named on stderr and in
runc's JSON log. The platform profiles are the renderer's own (proxy_profile, sablier_profile,
helper_profile) rendered through runtime-selector.json.j2.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import stat
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import pytest

from inkmcp.nodes.render import (
    GVISOR_DIR,
    PinnedImage,
    helper_profile,
    proxy_profile,
    sablier_profile,
)
from tests.requirements import require_root

HERE = Path(__file__).resolve().parent
SELECTOR = GVISOR_DIR / "runtime_selector.py"
FIXTURE = HERE / "fixtures" / "docker26-plain-config.json"
RUNSC_FLAGS = ["--network=host", "--host-uds=none"]

PROXY_ID, SABLIER_ID, HELPER_ID, TENANT_ID = ("sha256:" + c * 64 for c in "abcd")
PROXY_REF = "traefik:v3.6.23@sha256:" + "1" * 64
SABLIER_REF = "sablierapp/sablier:1.16.2@sha256:" + "2" * 64
HELPER_REF = "coollabsio/coolify-helper:1.0.15@sha256:" + "3" * 64
UNRESOLVED_REF = "traefik:v3.6.24@sha256:" + "4" * 64
TRAEFIK_EP, TRAEFIK_CMD = ["/entrypoint.sh"], ["traefik"]
SABLIER_EP, SABLIER_CMD = ["/etc/sablier/sablier"], ["--help"]
HELPER_EP, HELPER_CMD = ["/sbin/tini", "--"], ["tail", "-f", "/dev/null"]
# Coolify's proxy command (bootstrap/helpers/proxy.php:300-345) plus the Sablier plugin flags.
PROXY_FLAGS = [
    "--ping=true", "--ping.entrypoint=http", "--api.dashboard=true", "--entrypoints.http.address=:80",
    "--entrypoints.https.address=:443", "--entryPoints.http.http2.maxConcurrentStreams=250",
    "--providers.file.directory=/traefik/dynamic/", "--providers.file.watch=true",
    "--certificatesresolvers.letsencrypt.acme.storage=/traefik/acme.json", "--api.insecure=false",
    "--providers.docker=true", "--providers.docker.exposedbydefault=false",
    "--experimental.plugins.sablier.modulename=github.com/sablierapp/sablier-traefik-plugin",
    "--experimental.plugins.sablier.version=v1.3.0",
]
TENANT_LABELS = {"coolify.managed": "true", "coolify.type": "application", "coolify.applicationId": "7"}


def uuid() -> str:
    """A Coolify resource uuid (new_public_id(): 24 x [a-z0-9])."""
    return secrets.token_hex(12)


def deployment_uuid() -> str:
    """A deployment uuid (cuid2: a letter, then 23 x [a-z0-9])."""
    return "k" + secrets.token_hex(12)[:23]


@dataclass
class Decision:
    rc: int
    runtime: str | None  # "runc" / "runsc" when the selector exec'd it
    argv: list[str]
    stderr: str
    log: str

    def refused(self, rule: str) -> None:
        assert self.rc == 1 and self.runtime is None, f"expected a refusal, got {self}"
        assert rule in self.stderr, self.stderr
        assert rule in self.log, "runc's JSON log (what containerd reports) must carry the reason"


@dataclass
class Node:
    tmp: Path
    data_root: Path
    coolify: Path
    config: Path
    sock: Path

    def write_config(self, platform: list[dict[str, Any]], **over: Any) -> None:
        env = jinja2.Environment(  # noqa: S701 - renders JSON, every value goes through `tojson`
            loader=jinja2.FileSystemLoader(GVISOR_DIR), undefined=jinja2.StrictUndefined)
        params = {
            "runc_path": str(self.tmp / "bin/runc"), "runsc_path": str(self.tmp / "bin/runsc"),
            "runsc_flags": RUNSC_FLAGS, "data_root": str(self.data_root), "state_dir": str(self.tmp / "state"),
            "docker_sockets": [str(self.sock)], "coolify_dir": str(self.coolify), "platform": platform,
            "docker_init_paths": [str(self.tmp / "bin/docker-init")], **over,
        }
        self.config.write_text(env.get_template("runtime-selector.json.j2").render(**params))
        os.chmod(self.config, 0o644)

    def container(self, name: str | None, image: str = TENANT_ID, *, labels: dict[str, str] | None = None,
                  auto_remove: bool = False, args: list[str] | None = None, binds: list[tuple[str, str, bool]] = (),
                  ro_flag: str = "rro", edit: Callable[[dict[str, Any]], None] | None = None) -> tuple[Path, str]:
        """A bundle + Docker's record, as dockerd leaves them before calling the runtime's `create`."""
        cid = secrets.token_hex(32)
        cdir = self.data_root / "containers" / cid
        cdir.mkdir(parents=True)
        for f in ("resolv.conf", "hostname", "hosts"):
            (cdir / f).write_text("")
        text = FIXTURE.read_text().replace("@DATA_ROOT@", str(self.data_root)).replace("@ID@", cid)
        spec = json.loads(text.replace("@SHORTID@", cid[:12]))
        if args is not None:
            spec["process"]["args"] = args
        for source, dest, ro in binds:
            # What Docker writes for -v SRC:DEST[:ro]: 26.1.5 says rro (recursive read-only), 20.10.24 ro.
            options = ["rbind", ro_flag, "rprivate"] if ro else ["rbind", "rprivate"]
            spec["mounts"].append({"destination": dest, "type": "bind", "source": source, "options": options})
        if edit is not None:
            edit(spec)
        bundle = self.tmp / "bundles" / cid
        bundle.mkdir(parents=True)
        (bundle / "config.json").write_text(json.dumps(spec))
        if name is not None:
            record = {"ID": cid, "Name": "/" + name, "Image": image,
                      "Config": {"Labels": labels or {}, "Image": "whatever:latest"}}
            (cdir / "config.v2.json").write_text(json.dumps(record))
            (cdir / "hostconfig.json").write_text(json.dumps({"AutoRemove": auto_remove, "Binds": None}))
        return bundle, cid

    def create(self, bundle: Path, cid: str, *, own_netns: bool = False) -> Decision:
        """`create` as containerd's shim calls it; own_netns: the selector runs outside the host's network
        namespace (as under a dockerd in the build namespace)."""
        log = self.tmp / f"log-{cid[:8]}.json"
        calls = self.tmp / "calls"
        calls.write_text("")
        proc = subprocess.run(
            [*(["unshare", "--net"] if own_netns else []), str(SELECTOR), f"--inkmcp-config={self.config}",
             "--root", str(self.tmp / "runc-root"), "--log", str(log), "--log-format", "json", "create", "--bundle",
             str(bundle), cid],
            capture_output=True, text=True, timeout=30, check=False,
        )
        lines = calls.read_text().splitlines()
        runtime, argv = (lines[0].split(" ", 1)[0], lines[0].split(" ")[1:]) if lines else (None, [])
        return Decision(proc.returncode, runtime, argv, proc.stderr, log.read_text() if log.exists() else "")

    def decide(self, name: str | None, image: str = TENANT_ID, **kw: Any) -> Decision:
        return self.create(*self.container(name, image, **kw))

    def call(self, *argv: str) -> tuple[str | None, list[str]]:
        """A later runtime call (start, exec, ...): which fake got it."""
        calls = self.tmp / "calls"
        calls.write_text("")
        subprocess.run([str(SELECTOR), f"--inkmcp-config={self.config}", "--root", str(self.tmp / "runc-root"),
                        *argv], capture_output=True, text=True, timeout=30, check=False)
        line = calls.read_text().splitlines()[0]
        return line.split(" ", 1)[0], line.split(" ")[1:]


def images(ref: str, image_id: str, ep: list[str], cmd: list[str]) -> list[PinnedImage]:
    return [PinnedImage(ref=ref, id=image_id, entrypoint=ep, cmd=cmd)]


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    require_root("the selector accepts only a root-owned config (a node's /etc/inkmcp is root's)")
    (tmp_path / "bin").mkdir()
    for rt in ("runc", "runsc"):
        fake = tmp_path / "bin" / rt
        fake.write_text(f'#!/bin/sh\necho "{rt} $*" >> {tmp_path}/calls\n')
        fake.chmod(0o755)
    n = Node(tmp=tmp_path, data_root=tmp_path / "docker", coolify=tmp_path / "coolify",
             config=tmp_path / "runtime-selector.json", sock=tmp_path / "docker.sock")
    for d in ("containers", "volumes"):
        (n.data_root / d).mkdir(parents=True)
    for d in ("applications", "services", "databases", "ssl", "backups", "proxy"):
        (n.coolify / d).mkdir(parents=True)
    (n.coolify / "ssl/coolify-ca.crt").write_text("CA")
    home = tmp_path / "home"
    (home / ".docker/buildx").mkdir(parents=True)
    (home / ".docker/config.json").write_text("{}")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(n.sock))  # a real socket file: the "Docker socket" platform containers mount
    sock = str(n.sock)
    proxy = proxy_profile([*images(PROXY_REF, PROXY_ID, TRAEFIK_EP, TRAEFIK_CMD), PinnedImage(ref=UNRESOLVED_REF)],
                          proxy_dir=str(n.coolify / "proxy"), socket=sock)
    profiles = [proxy, sablier_profile(images(SABLIER_REF, SABLIER_ID, SABLIER_EP, SABLIER_CMD), socket=sock),
                helper_profile(images(HELPER_REF, HELPER_ID, HELPER_EP, HELPER_CMD), home=str(home), socket=sock)]
    n.write_config([p.selector_entry() for p in profiles])
    try:
        yield n
    finally:
        listener.close()


def proxy_binds(node: Node, *, sock_ro: bool = True) -> list[tuple[str, str, bool]]:
    return [(str(node.sock), "/var/run/docker.sock", sock_ro), (str(node.coolify / "proxy"), "/traefik", False)]


def helper_binds(node: Node, *, config: bool = True) -> list[tuple[str, str, bool]]:
    home = node.tmp / "home"
    binds = [(str(node.sock), "/var/run/docker.sock", False), (str(home / ".docker/buildx"), "/root/.docker/buildx",
                                                                 False)]
    return binds + ([(str(home / ".docker/config.json"), "/root/.docker/config.json", True)] if config else [])


def drop_ns(kind: str) -> Callable[[dict[str, Any]], None]:
    def edit(spec: dict[str, Any]) -> None:
        spec["linux"]["namespaces"] = [ns for ns in spec["linux"]["namespaces"] if ns["type"] != kind]
    return edit


def join_ns(kind: str, path: str) -> Callable[[dict[str, Any]], None]:
    def edit(spec: dict[str, Any]) -> None:
        for ns in spec["linux"]["namespaces"]:
            if ns["type"] == kind:
                ns["path"] = path
    return edit


# --------------------------------------------------------------------------------------------------
# Tenants: sandboxed when clean, and routed to runsc for every later call
# --------------------------------------------------------------------------------------------------


def test_plain_tenant_is_sandboxed_and_later_calls_follow(node: Node) -> None:
    bundle, cid = node.container(f"{uuid()}-101512345678", labels=TENANT_LABELS)
    d = node.create(bundle, cid)
    assert (d.rc, d.runtime) == (0, "runsc"), d
    assert d.argv[:2] == RUNSC_FLAGS and d.argv[-1] == cid and "create" in d.argv
    assert node.call("start", cid) == ("runsc", [*RUNSC_FLAGS, "--root", str(node.tmp / "runc-root"), "start", cid])


def test_bundle_without_docker_record_is_a_tenant(node: Node) -> None:
    """BuildKit steps and anything dockerd did not record: never platform."""
    assert node.decide(None).runtime == "runsc"
    node.decide(None, binds=[(str(node.sock), "/var/run/docker.sock", True)]).refused("[T5 mounts]")


# --------------------------------------------------------------------------------------------------
# T1-T4
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("edit", "what"), [
    pytest.param(drop_ns("network"), "no network namespace", id="network-host-docker26"),
    pytest.param(join_ns("network", "/var/run/docker/netns/default"), "joins an existing network",
                 id="network-host-docker20"),
    pytest.param(join_ns("network", "/proc/4242/ns/net"), "joins an existing network", id="network-container"),
    pytest.param(drop_ns("pid"), "no pid namespace", id="pid-host"),
    pytest.param(join_ns("pid", "/proc/4242/ns/pid"), "joins an existing pid", id="pid-container"),
    pytest.param(drop_ns("ipc"), "no ipc namespace", id="ipc-host"),
    pytest.param(join_ns("ipc", "/proc/4242/ns/ipc"), "joins an existing ipc", id="ipc-container"),
    pytest.param(drop_ns("uts"), "no uts namespace", id="uts-host"),
])
def test_t1_host_and_foreign_namespaces_are_refused(node: Node, edit: Callable[..., None], what: str) -> None:
    d = node.decide(uuid(), labels=TENANT_LABELS, edit=edit)
    d.refused("[T1 namespaces]")
    assert what in d.stderr


@pytest.mark.parametrize("kind", ["bounding", "effective", "permitted", "ambient"])
def test_t2_added_capability_in_any_set_is_refused(node: Node, kind: str) -> None:
    def edit(spec: dict[str, Any]) -> None:
        spec["process"]["capabilities"].setdefault(kind, []).append("CAP_SYS_ADMIN")
    d = node.decide(uuid(), edit=edit)
    d.refused("[T2 capabilities]")
    assert "CAP_SYS_ADMIN" in d.stderr


def test_t2_fewer_capabilities_are_fine(node: Node) -> None:
    def edit(spec: dict[str, Any]) -> None:
        spec["process"]["capabilities"] = {k: ["CAP_CHOWN"] for k in ("bounding", "effective", "permitted")}
    assert node.decide(uuid(), edit=edit).runtime == "runsc"


def test_t3_devices_and_device_rules_are_refused(node: Node) -> None:
    def device(spec: dict[str, Any]) -> None:  # --device /dev/null:/dev/xnull (Docker 26, recorded)
        spec["linux"]["devices"] = [{"path": "/dev/xnull", "type": "c", "major": 1, "minor": 3, "fileMode": 438}]
    node.decide(uuid(), edit=device).refused("[T3 devices]")

    def rule(spec: dict[str, Any]) -> None:  # --device-cgroup-rule 'c 10:200 rwm' (tun)
        spec["linux"]["resources"]["devices"].append({"allow": True, "type": "c", "major": 10, "minor": 200,
                                                     "access": "rwm"})
    d = node.decide(uuid(), edit=rule)
    d.refused("[T3 devices]")
    assert "c 10:200" in d.stderr

    def allow_all(spec: dict[str, Any]) -> None:  # what --privileged adds
        spec["linux"]["resources"]["devices"].append({"allow": True, "access": "rwm"})
    node.decide(uuid(), edit=allow_all).refused("[T3 devices]")


def test_t4_gvisor_annotations_are_refused_others_pass(node: Node) -> None:
    def gvisor(spec: dict[str, Any]) -> None:
        spec["annotations"] = {"dev.gvisor.flag.host-uds": "all"}
    d = node.decide(uuid(), edit=gvisor)
    d.refused("[T4 annotations]")
    assert "dev.gvisor.flag.host-uds" in d.stderr

    def other(spec: dict[str, Any]) -> None:
        spec["annotations"] = {"org.opencontainers.image.title": "x"}
    assert node.decide(uuid(), edit=other).runtime == "runsc"


# --------------------------------------------------------------------------------------------------
# T5 mounts
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["db", "app", "app-pr", "compose-app", "service", "one-off"])
def test_t5_own_resource_dir_is_allowed_for_every_coolify_name(node: Node, shape: str) -> None:
    u = uuid()
    name = {"db": u, "app": f"{u}-101512345678", "app-pr": f"{u}-pr-3", "compose-app": f"web-{u}-101512345678",
            "service": f"db-{u}", "one-off": f"{u}-{u}-run-0123456789ab"}[shape]
    kind = "databases" if shape in ("db", "one-off") else "services" if shape == "service" else "applications"
    own = node.coolify / kind / u
    (own / "initdb").mkdir(parents=True)
    (own / "custom.conf").write_text("x")
    d = node.decide(name, labels=TENANT_LABELS, binds=[(str(own / "initdb"), "/docker-entrypoint-initdb.d", False),
                                                       (str(own / "custom.conf"), "/etc/custom.conf", True)])
    assert (d.rc, d.runtime) == (0, "runsc"), d


def test_t5_another_tenants_dir_is_refused(node: Node) -> None:
    mine, victim = uuid(), uuid()
    (node.coolify / "databases" / victim).mkdir()
    (node.coolify / "databases" / victim / "docker-compose.yml").write_text("POSTGRES_PASSWORD: secret")
    d = node.decide(mine, binds=[(str(node.coolify / "databases" / victim), "/steal", True)])
    d.refused("[T5 mounts]")
    assert f"{victim} is another resource's dir" in d.stderr and repr(mine) in d.stderr
    # A tenant-chosen compose service name cannot supply the uuid: the last one in the name counts.
    node.decide(f"{victim}-{mine}", binds=[(str(node.coolify / "databases" / victim), "/x", True)]).refused(
        "another resource's dir")
    # A name without a uuid owns no dir.
    node.decide("my-app", binds=[(str(node.coolify / "databases" / victim), "/x", True)]).refused(
        "carries no Coolify resource uuid")


def test_t5_symlink_in_own_dir_is_refused(node: Node) -> None:
    u = uuid()
    own = node.coolify / "databases" / u
    own.mkdir()
    (own / "conf").symlink_to("/etc")
    d = node.decide(u, binds=[(str(own / "conf"), "/etc/postgresql", False)])
    d.refused("[T5 mounts]")
    assert f"{own}/conf is a symlink" in d.stderr
    (own / "ok").mkdir()
    (own / "ok" / "deeper").symlink_to(own)
    node.decide(u, binds=[(str(own / "ok" / "deeper"), "/x", False)]).refused("is a symlink")
    # The resource dir itself replaced by a link (e.g. to another tenant's dir).
    v = uuid()
    (node.coolify / "databases" / v).symlink_to(node.tmp)
    node.decide(v, binds=[(str(node.coolify / "databases" / v), "/x", False)]).refused("is a symlink")


def test_t5_ca_file_only_read_only(node: Node) -> None:
    ca = str(node.coolify / "ssl/coolify-ca.crt")
    assert node.decide(uuid(), binds=[(ca, "/etc/ssl/certs/coolify-ca.crt", True)]).runtime == "runsc"
    assert node.decide(uuid(), binds=[(ca, "/ca.crt", True)], ro_flag="ro").runtime == "runsc"  # Docker 20.10
    node.decide(uuid(), binds=[(ca, "/etc/ssl/certs/coolify-ca.crt", False)]).refused("read-only")
    node.decide(uuid(), binds=[(str(node.coolify / "ssl"), "/ssl", True)]).refused("may not bind-mount host path")


def test_t5_backups_only_for_backup_helpers_read_only(node: Node) -> None:
    u = uuid()
    dump = node.coolify / "backups" / "databases" / "team-0" / f"pg-{u}" / "pg-dump-1.dmp"
    dump.parent.mkdir(parents=True)
    dump.write_text("dump")
    for name in (f"backup-of-{u}", f"volume-upload-{u}"):
        assert node.decide(name, HELPER_ID, binds=[(str(dump), str(dump), True)]).runtime == "runsc", name
    node.decide(f"backup-of-{u}", HELPER_ID, binds=[(str(dump), str(dump), False)]).refused("read-only")
    node.decide(u, binds=[(str(dump), "/dump", True)]).refused("may not bind-mount host path")


def test_t5_named_volumes_yes_bind_backed_volumes_no(node: Node) -> None:
    plain = node.data_root / "volumes" / "pgdata" / "_data"
    plain.mkdir(parents=True)
    assert node.decide(uuid(), binds=[(str(plain), "/var/lib/postgresql/data", False)]).runtime == "runsc"
    backed = node.data_root / "volumes" / "hostetc" / "_data"
    backed.mkdir(parents=True)
    # `docker volume create --opt type=none --opt o=bind --opt device=/etc`: Docker mounts it on _data.
    subprocess.run(["mount", "--bind", "/etc", str(backed)], check=True)
    try:
        node.decide(uuid(), binds=[(str(backed), "/data", False)]).refused("is a host mount")
    finally:
        subprocess.run(["umount", str(backed)], check=True)


def test_t5_docker_init_only_read_only_at_its_place(node: Node) -> None:
    """`docker run --init` / compose `init: true`: Docker binds its init binary read-only at /sbin/docker-init."""
    init = node.tmp / "bin/docker-init"
    init.write_text("#!/bin/sh\n")
    assert node.decide(uuid(), binds=[(str(init), "/sbin/docker-init", True)], ro_flag="ro").runtime == "runsc"
    node.decide(uuid(), binds=[(str(init), "/sbin/docker-init", False)]).refused("may not bind-mount host path")
    node.decide(uuid(), binds=[(str(init), "/usr/bin/init", True)]).refused("may not bind-mount host path")
    node.decide(uuid(), binds=[("/usr/bin/env", "/sbin/docker-init", True)]).refused("may not bind-mount host path")


def test_t5_sockets_and_host_paths_are_refused(node: Node) -> None:
    node.decide(uuid(), binds=[(str(node.sock), "/var/run/docker.sock", True)]).refused(
        "may not mount the Docker socket")
    node.decide(uuid(), binds=[(str(node.sock), "/tmp/innocent", True)]).refused("may not mount the Docker socket")
    u = uuid()
    own = node.coolify / "applications" / u
    own.mkdir()
    os.mknod(own / "agent.sock", stat.S_IFSOCK | 0o600)  # a socket file (a listener's path is too long here)
    node.decide(u, binds=[(str(own / "agent.sock"), "/run/agent.sock", False)]).refused("a host socket")
    for source in ("/etc", "/", "/root/.ssh", str(node.coolify / "proxy"), str(node.data_root)):
        node.decide(u, binds=[(source, "/host", True)]).refused("may not bind-mount host path")
    node.decide(u, binds=[(f"{own}/../{u}", "/x", True)]).refused("not a clean absolute path")

    def block(spec: dict[str, Any]) -> None:
        spec["mounts"].append({"destination": "/disk", "type": "ext4", "source": "/dev/vda1", "options": []})
    node.decide(u, edit=block).refused("mount type 'ext4'")


# --------------------------------------------------------------------------------------------------
# Platform profiles and reserved names (§4.3)
# --------------------------------------------------------------------------------------------------


def proxy(node: Node, **kw: Any) -> Decision:
    base: dict[str, Any] = {"labels": {"coolify.managed": "true", "coolify.proxy": "true"},
                            "args": [*TRAEFIK_EP, *PROXY_FLAGS], "binds": proxy_binds(node)}
    base.update(kw)
    image = base.pop("image", PROXY_ID)
    return node.decide("coolify-proxy", image, **base)


def test_genuine_proxy_runs_under_runc(node: Node) -> None:
    d = proxy(node)
    assert (d.rc, d.runtime) == (0, "runc"), d
    assert d.argv[0] != RUNSC_FLAGS[0] and d.argv[-1] and "create" in d.argv
    assert proxy(node, args=[*TRAEFIK_EP, *TRAEFIK_CMD]).runtime == "runc"  # the image default also passes


@pytest.mark.parametrize(("change", "problem"), [
    pytest.param({"image": TENANT_ID}, "is not a pinned image of the entry", id="tenant-image"),
    pytest.param({"binds": [("/", "/host", False)]}, "extra mount / -> /host", id="only-host-root"),
    pytest.param({"extra_bind": ("/", "/host", False)}, "extra mount / -> /host", id="genuine-image-plus-host-root"),
    pytest.param({"binds": None, "sock_rw": True}, "is writable, the profile says read-only", id="socket-rw"),
    pytest.param({"binds": []}, "missing mounts", id="no-mounts"),
    pytest.param({"labels": {"coolify.type": "application"}}, "tenant label coolify.type", id="tenant-label"),
    pytest.param({"args": ["/bin/sh", "-c", "id"]}, "entrypoint overridden", id="entrypoint"),
    pytest.param({"args": [*TRAEFIK_EP, "--ping=true", "sh"]}, "is not a --flag", id="non-flag"),
    pytest.param({"args": [*TRAEFIK_EP, "--experimental.localPlugins.x.moduleName=evil"]}, "forbidden",
                 id="local-plugin"),
    pytest.param({"args": [*TRAEFIK_EP, "--experimental.plugins.x.modulename=github.com/evil/x"]},
                 "plugin module 'github.com/evil/x' is not allowed", id="foreign-plugin"),
    pytest.param({"edit": drop_ns("pid")}, "[T1 namespaces]", id="pid-host"),
    pytest.param({"edit": join_ns("network", "/proc/1/ns/net")}, "[T1 namespaces]", id="netns-join"),
    pytest.param({"edit": lambda s: s["linux"].pop("seccomp")}, "seccomp", id="seccomp-unconfined"),
])
def test_reserved_proxy_name_failing_any_check_is_refused(node: Node, change: dict[str, Any], problem: str) -> None:
    change = dict(change)
    if change.pop("sock_rw", False):
        change["binds"] = proxy_binds(node, sock_ro=False)
    if "extra_bind" in change:
        change["binds"] = [*proxy_binds(node), change.pop("extra_bind")]
    d = proxy(node, **change)
    d.refused("[platform proxy]")
    assert problem in d.stderr and "a reserved name is never sandboxed" in d.stderr


def test_unresolved_pin_admits_nothing_and_says_so(node: Node) -> None:
    """An image configured by digest but never resolved on the node: refused, naming the fix."""
    d = proxy(node, image="sha256:" + "9" * 64)
    d.refused("[platform proxy]")
    assert f"not resolved on this node: ['{UNRESOLVED_REF}']" in d.stderr


def test_sablier_exact_command(node: Node) -> None:
    binds = [(str(node.sock), "/var/run/docker.sock", False)]
    ok = node.decide("sablier", SABLIER_ID, args=[*SABLIER_EP, "start", "--provider.name=docker"], binds=binds,
                     labels={"coolify.managed": "false"})
    assert ok.runtime == "runc", ok
    node.decide("sablier", SABLIER_ID, args=[*SABLIER_EP, "start", "--provider.name=swarm"], binds=binds).refused(
        "allows exactly ['start', '--provider.name=docker']")


def test_helper_profile(node: Node) -> None:
    """Coolify's deploy helper: runc with or without ~/.docker/config.json; every deviation refused, since it
    runs the pinned helper image under a name of the helper's shape."""
    name = deployment_uuid()
    base: dict[str, Any] = {"auto_remove": True, "args": [*HELPER_EP, *HELPER_CMD]}
    assert node.decide(name, HELPER_ID, binds=helper_binds(node), **base).runtime == "runc"
    assert node.decide(deployment_uuid(), HELPER_ID, binds=helper_binds(node, config=False), **base).runtime == "runc"
    for change, problem in (
        ({"labels": {"coolify.type": "database"}}, "tenant label coolify.type"),
        ({"labels": {"coolify.managed": "true"}}, "the profile forbids coolify.*"),
        ({"auto_remove": False}, "AutoRemove is False"),
        ({"args": [*HELPER_EP, "sh", "-c", "cat /etc/shadow"]}, "command overridden"),
        ({"binds": [*helper_binds(node), ("/root/.ssh", "/root/.ssh", True)]}, "extra mount /root/.ssh"),
    ):
        d = node.decide(deployment_uuid(), HELPER_ID, **{**base, "binds": helper_binds(node), **change})
        d.refused("[platform helper]")
        assert problem in d.stderr


def test_helper_shaped_names_stay_tenants_unless_they_run_the_helper_image(node: Node) -> None:
    """A database is named by its 24-char uuid, the helper's shape: with its own image it is a tenant (the
    helper entry reserves its name only together with its image); with the helper image it is refused."""
    db = "k" + uuid()[1:]
    own = node.coolify / "databases" / db
    own.mkdir()
    d = node.decide(db, labels={"coolify.type": "database", "coolify.databaseId": "3"},
                    binds=[(str(own), "/docker-entrypoint-initdb.d", False)])
    assert (d.rc, d.runtime) == (0, "runsc"), d
    a4 = node.decide(deployment_uuid(), HELPER_ID, labels={"coolify.type": "database"}, auto_remove=True,
                     args=[*HELPER_EP, *HELPER_CMD], binds=helper_binds(node))
    a4.refused("[platform helper]")


def test_sentinel_has_no_entry(node: Node) -> None:
    """Coolify's Sentinel (--pid host + socket) is not platform: a tenant, refused."""
    d = node.decide("coolify-sentinel", PROXY_ID, binds=[(str(node.sock), "/var/run/docker.sock", False)],
                    edit=drop_ns("pid"))
    d.refused("[T1 namespaces]")


# --------------------------------------------------------------------------------------------------
# The config itself
# --------------------------------------------------------------------------------------------------


def test_config_must_be_root_owned_and_complete(node: Node) -> None:
    bundle, cid = node.container(uuid())
    os.chmod(node.config, 0o666)  # noqa: S103 - the weakness under test
    node.create(bundle, cid).refused("must be owned by root and not group/world-writable")
    cfg = json.loads(node.config.read_text())
    del cfg["platform"][0]["mounts"]
    node.config.write_text(json.dumps(cfg))
    os.chmod(node.config, 0o644)
    node.create(*node.container(uuid())).refused("platform entry 0 lacks ['mounts']")


# --------------------------------------------------------------------------------------------------
# Build mode (§4.4): BuildKit RUN steps on the build server
# --------------------------------------------------------------------------------------------------
#
# The bundles are the ones BuildKit wrote for `docker build --network host` of
#   RUN --mount=type=cache,target=/cache --mount=type=secret,id=s --mount=type=bind,source=sub,target=/s uname -r
# (recorded through a capturing `runc` on Docker 26.1.5 and 20.10.24, both on the overlay2 store), with the data
# root and the step id replaced. BuildKit calls runc as go-runc does: `--log <executor>/runc-log.json
# --log-format json run --bundle <executor>/<id> [--keep] <id>` (--keep since BuildKit 0.10, Docker 26), then
# `delete <id>` (Docker 26 only).

BUILDKIT_FIXTURES = {"docker26": HERE / "fixtures" / "docker26-buildkit-run-config.json",
                     "docker20": HERE / "fixtures" / "docker20-buildkit-run-config.json"}


@dataclass
class Step:
    node: Node
    bundle: Path
    cid: str
    spec: dict[str, Any]

    def write(self) -> None:
        (self.bundle / "config.json").write_text(json.dumps(self.spec))

    def run(self, *, own_netns: bool, keep: bool = True) -> Decision:
        """BuildKit's `runc run`; own_netns: the selector runs in a network namespace other than PID 1's, as
        under a dockerd that lives in the build namespace."""
        self.write()
        log = self.node.tmp / f"log-{self.cid[:8]}.json"
        calls = self.node.tmp / "calls"
        calls.write_text("")
        prefix = ["unshare", "--net"] if own_netns else []
        argv = [*prefix, str(SELECTOR), f"--inkmcp-config={self.node.config}", "--log", str(log), "--log-format",
                "json", "run", "--bundle", str(self.bundle), *(["--keep"] if keep else []), self.cid]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        lines = calls.read_text().splitlines()
        runtime, args = (lines[0].split(" ", 1)[0], lines[0].split(" ")[1:]) if lines else (None, [])
        return Decision(proc.returncode, runtime, args, proc.stderr, log.read_text() if log.exists() else "")

    def later(self, *argv: str) -> tuple[str | None, list[str]]:
        """A later call as BuildKit makes it (no --root)."""
        calls = self.node.tmp / "calls"
        calls.write_text("")
        subprocess.run([str(SELECTOR), f"--inkmcp-config={self.node.config}", "--log", "x.json", "--log-format",
                        "json", *argv], capture_output=True, text=True, timeout=30, check=False)
        lines = calls.read_text().splitlines()
        return (lines[0].split(" ", 1)[0], lines[0].split(" ")[1:]) if lines else (None, [])


def buildkit_step(node: Node, docker: str = "docker26", data_root: Path | None = None) -> Step:
    """A RUN step's bundle where BuildKit's runc executor writes it, and the host paths its mounts name."""
    root = data_root or node.data_root
    cid = secrets.token_hex(13)[:25]
    text = BUILDKIT_FIXTURES[docker].read_text().replace("@DATA_ROOT@", str(root)).replace("@ID@", cid)
    spec = json.loads(text)
    bundle = root / "buildkit" / "executor" / cid
    (bundle / "rootfs").mkdir(parents=True)
    for m in spec["mounts"]:
        if m["type"] == "bind":
            source = Path(m["source"])
            if m["destination"] in ("/etc/resolv.conf", "/etc/hosts", "/run/secrets/s"):
                source.parent.mkdir(parents=True, exist_ok=True)
                source.write_text("x")
            else:
                source.mkdir(parents=True, exist_ok=True)
    return Step(node=node, bundle=bundle, cid=cid, spec=spec)


def build_mode(node: Node, on: bool) -> None:
    cfg = json.loads(node.config.read_text())
    cfg["build_mode"] = on
    node.config.write_text(json.dumps(cfg))
    os.chmod(node.config, 0o644)


def add_mount(spec: dict[str, Any], source: str, dest: str, options: list[str], kind: str = "bind") -> None:
    spec["mounts"].append({"destination": dest, "type": kind, "source": source, "options": options})


@pytest.mark.parametrize("docker", ["docker26", "docker20"])
def test_build_mode_sandboxes_a_host_network_step_inside_the_build_namespace(node: Node, docker: str) -> None:
    """The build server: the step goes to runsc, `--keep` (runsc has none) is dropped, and BuildKit's later
    delete reaches runsc as `delete --force` (runsc removed the container when `run` returned)."""
    build_mode(node, True)
    step = buildkit_step(node, docker)
    d = step.run(own_netns=True, keep=docker == "docker26")
    assert (d.rc, d.runtime) == (0, "runsc"), d
    assert d.argv == [*RUNSC_FLAGS, "--log", str(node.tmp / f"log-{step.cid[:8]}.json"), "--log-format", "json",
                      "run", "--bundle", str(step.bundle), step.cid]
    assert step.later("kill", step.cid, "9") == ("runsc", [*RUNSC_FLAGS, "--log", "x.json", "--log-format", "json",
                                                          "kill", step.cid, "9"])
    assert step.later("delete", step.cid) == ("runsc", [*RUNSC_FLAGS, "--log", "x.json", "--log-format", "json",
                                                       "delete", "--force", step.cid])
    # Forgotten once deleted: the id is not routed to runsc any more.
    assert step.later("state", step.cid)[0] == "runc"


def test_build_mode_off_refuses_every_buildkit_step(node: Node) -> None:
    """A run server (build mode off): Coolify's fallback build there fails closed, whatever the network."""
    step = buildkit_step(node)
    d = step.run(own_netns=True)
    d.refused("[build mode]")
    assert f"BuildKit step {step.cid}" in d.stderr and "GvisorParams.build_mode" in d.stderr
    bridge = buildkit_step(node, "docker20")
    bridge.spec["linux"]["namespaces"].append({"type": "network"})  # `docker build` without --network host
    bridge.run(own_netns=True, keep=False).refused("[build mode]")


def test_build_mode_in_the_hosts_network_namespace_refuses_host_network(node: Node) -> None:
    """Build mode on a daemon that is NOT in the build namespace: a `--network host` step would reach everything
    the host reaches (the selector runs in PID 1's network namespace here)."""
    build_mode(node, True)
    step = buildkit_step(node)
    d = step.run(own_netns=False)
    d.refused("[T1 namespaces]")
    assert "dockerd runs in the host's network namespace (" in d.stderr
    assert "inkmcp-build-netns" in d.stderr
    # A step with a network namespace of its own (`docker build` without --network host) needs no such check.
    step.spec["linux"]["namespaces"].append({"type": "network"})
    assert step.run(own_netns=False).runtime == "runsc"


def test_build_mode_relaxes_nothing_for_docker_containers_or_foreign_bundles(node: Node) -> None:
    """Only BuildKit's own bundles (no Docker record, under <data-root>/buildkit/executor/) get build mode: a
    container on the build server is a tenant like anywhere else, even inside the build namespace."""
    build_mode(node, True)
    step = buildkit_step(node)
    resolv = next(m["source"] for m in step.spec["mounts"] if m["destination"] == "/etc/resolv.conf")
    bundle, cid = node.container(uuid(), labels=TENANT_LABELS, edit=drop_ns("network"))  # docker run --network host
    d = node.create(bundle, cid, own_netns=True)
    d.refused("[T1 namespaces]")
    assert "no network namespace of its own" in d.stderr
    node.create(*node.container(uuid(), labels=TENANT_LABELS, binds=[(resolv, "/etc/resolv.conf", True)]),
                own_netns=True).refused("may not bind-mount host path")
    # The same BuildKit spec from a bundle outside BuildKit's executor dir (no Docker record either).
    elsewhere = node.tmp / "bundles" / step.cid
    elsewhere.mkdir(parents=True)
    (elsewhere / "config.json").write_text(json.dumps(step.spec))
    d = node.create(elsewhere, step.cid, own_netns=True)
    d.refused("[T1 namespaces]")
    assert "no network namespace of its own" in d.stderr


@pytest.mark.parametrize(("change", "problem"), [
    pytest.param(lambda s, r: add_mount(s, "/etc", "/host", ["rbind", "ro"]), "may not bind-mount host path",
                 id="host-path"),
    pytest.param(lambda s, r: add_mount(s, f"{r}/volumes", "/v", ["rbind"]), "may not bind-mount host path",
                 id="data-root-dir"),
    pytest.param(lambda s, r: add_mount(s, f"{r}/buildkit/executor/resolv.conf", "/etc/x", ["rbind"]),
                 "is bound writable", id="writable-executor-file"),
    pytest.param(lambda s, r: add_mount(s, f"{r}/buildkit/content", "/c", ["rbind", "ro"]),
                 "may not bind-mount host path", id="buildkit-content-store"),
    pytest.param(lambda s, r: add_mount(s, f"{r}/overlay2/l", "/l", ["rbind", "ro"]),
                 "may not bind-mount host path", id="overlay2-link-dir"),
    pytest.param(lambda s, r: add_mount(s, f"{r}/overlay2/evil/diff", "/e", ["rbind"]), "is a symlink",
                 id="symlinked-snapshot"),
    pytest.param(lambda s, r: add_mount(s, f"{r}/tmp/buildkit-secrets1/x", "/run/secrets/x", ["rbind"]),
                 "is bound writable", id="writable-secret"),
    pytest.param(lambda s, r: add_mount(s, f"{r}/tmp/buildkit-ssh-sock1/agent", "/run/ssh", ["rbind"]),
                 "may not mount a host socket", id="ssh-agent-socket"),
    pytest.param(lambda s, r: add_mount(s, "overlay", "/o", ["lowerdir=/a:/b"], kind="overlay"),
                 "containerd-snapshotter", id="overlay-from-containerd-store"),
    pytest.param(lambda s, r: s["process"]["capabilities"]["bounding"].append("CAP_SYS_ADMIN"), "[T2 capabilities]",
                 id="security-insecure"),
    pytest.param(lambda s, r: s.setdefault("annotations", {}).update({"dev.gvisor.flag.host-uds": "all"}),
                 "[T4 annotations]", id="gvisor-annotation"),
])
def test_build_mode_still_refuses(node: Node, change: Callable[[dict[str, Any], str], None], problem: str) -> None:
    """T5 (f) admits only BuildKit's own paths, each as BuildKit binds it; T1-T4 still hold."""
    build_mode(node, True)
    r = node.data_root
    (r / "overlay2" / "l").mkdir(parents=True)
    (r / "overlay2" / "evil").symlink_to("/etc")
    (r / "tmp" / "buildkit-secrets1").mkdir(parents=True)
    (r / "tmp" / "buildkit-secrets1" / "x").write_text("s")
    (r / "buildkit" / "content").mkdir(parents=True)
    (r / "tmp" / "buildkit-ssh-sock1").mkdir()
    os.mknod(r / "tmp" / "buildkit-ssh-sock1" / "agent", stat.S_IFSOCK | 0o600)
    step = buildkit_step(node)
    change(step.spec, str(r))
    d = step.run(own_netns=True)
    d.refused(problem)


def test_build_mode_admits_containerd_store_snapshots(node: Node) -> None:
    """On the containerd image store BuildKit binds one-layer snapshots from containerd's overlayfs snapshotter:
    dockerd's managed containerd (<data-root>/containerd/daemon) or the configured system one."""
    build_mode(node, True)
    system = node.tmp / "containerd"
    cfg = json.loads(node.config.read_text())
    cfg["containerd_root"] = str(system)
    node.config.write_text(json.dumps(cfg))
    os.chmod(node.config, 0o644)
    snap = "io.containerd.snapshotter.v1.overlayfs/snapshots/{}/fs"
    for base, n in ((node.data_root / "containerd/daemon", 8), (system, 4)):
        source = base / snap.format(n)
        source.mkdir(parents=True)
        step = buildkit_step(node)
        add_mount(step.spec, str(source), "/cache", ["rw", "rbind"])
        assert step.run(own_netns=True).runtime == "runsc", source
    elsewhere = node.tmp / "other" / snap.format(1)
    elsewhere.mkdir(parents=True)
    step = buildkit_step(node)
    add_mount(step.spec, str(elsewhere), "/x", ["rbind"])
    step.run(own_netns=True).refused("may not bind-mount host path")


def test_build_mode_renders_from_gvisor_params() -> None:
    """GvisorParams.build_mode reaches the config (false unless set); only a real boolean is accepted."""
    from pydantic import ValidationError

    from inkmcp.nodes.render import GvisorParams

    assert json.loads(GvisorParams().render_config())["build_mode"] is False
    assert json.loads(GvisorParams(build_mode=True).render_config())["build_mode"] is True
    with pytest.raises(ValidationError, match="build_mode"):
        GvisorParams(build_mode="yes")
