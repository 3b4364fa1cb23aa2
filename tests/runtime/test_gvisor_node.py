"""A run server's runtime design on a real kernel, real Docker and real gVisor (see runbooks/gvisor-decision.md).

Containers are started the way Coolify starts them: on a user-defined network, named `<uuid>-<timestamp>`
(apps) or by the database's uuid, with Coolify's labels; platform containers by Coolify's fixed names and
the §4.3 profiles (stand-in images shaped like Traefik and Coolify's helper). Whether a container runs under
gVisor is read from inside it (kernel release, gVisor's dmesg banner); an attack is judged from the
attacker's side (a marker it would write on the host is absent, the Docker API does not answer).
"""

import json
import os
import secrets
import subprocess

import pytest

from .conftest import HELPER_IMAGE, PLATFORM_IMAGE, PROXY_IMAGE, PUBLIC_ADDR, PUBLIC_NAME, TENANT_IMAGE

HOST_KERNEL = os.uname().release
SANDBOX_PROBE = "uname -r; dmesg 2>&1 | head -3"


def coolify_app_args(network: str = "coolify") -> list[str]:
    uuid = secrets.token_hex(12)
    return [
        "--network", network, "--name", f"{uuid}-{secrets.randbelow(10**12):012d}",
        "-l", "coolify.managed=true", "-l", "coolify.type=application", "-l", f"coolify.applicationId={uuid}",
        "-l", "traefik.enable=true", "-l", "coolify.proxy=true",
    ]


def assert_sandboxed(out: str) -> None:
    assert out.splitlines()[0] == "4.4.0", out
    assert "gVisor" in out, out


def test_tenant_app_runs_under_gvisor(node):
    run = node.docker("run", "--rm", *coolify_app_args(), TENANT_IMAGE, "sh", "-c", SANDBOX_PROBE, check=True)
    assert_sandboxed(run.stdout)
    assert HOST_KERNEL != "4.4.0"


def test_tenant_with_docker_init_is_sandboxed(node):
    """compose `init: true`: Docker's init binary (bound read-only) is PID 1 inside the sandbox."""
    run = node.docker("run", "--rm", "--init", *coolify_app_args(), TENANT_IMAGE, "sh", "-c",
                      "tr '\\0' ' ' </proc/1/cmdline; echo; uname -r", check=True)
    assert run.stdout.splitlines() == ["/sbin/docker-init -- sh -c tr '\\0' ' ' </proc/1/cmdline; echo; uname -r ",
                                       "4.4.0"], run.stdout


@pytest.mark.parametrize("runtime", ["runc", "io.containerd.runc.v2"])
def test_tenant_asking_for_runc_by_name_still_passes_the_selector(node, runtime):
    """Docker always registers these names (path "runc", found through containerd's PATH): the selector
    shadows that runc, so a compose `runtime: runc` is sandboxed like any tenant."""
    run = node.docker("run", "--rm", "--runtime", runtime, *coolify_app_args(), TENANT_IMAGE,
                      "sh", "-c", SANDBOX_PROBE, check=True)
    assert_sandboxed(run.stdout)
    refused = node.docker("run", "--rm", "--runtime", runtime, *coolify_app_args(),
                          "-v", f"{node.sock}:/var/run/docker.sock", TENANT_IMAGE, "true")
    assert refused.returncode != 0 and "may not mount the Docker socket" in refused.stderr, refused.stderr


def proxy_args(node) -> list[str]:
    """Coolify's proxy as its compose starts it (proxy.php:268-360): fixed name, socket ro, /traefik."""
    return ["--name", "coolify-proxy", "--network", "coolify", "-v", f"{node.sock}:/var/run/docker.sock:ro",
            "-v", f"{node.coolify / 'proxy'}:/traefik", "-l", "coolify.managed=true", "-l", "coolify.proxy=true"]


def test_platform_proxy_runs_runc_and_reaches_docker_api(node):
    run = node.docker("run", "--rm", *proxy_args(node), PROXY_IMAGE, "--ping=true", "--providers.docker=true",
                      check=True)
    lines = run.stdout.splitlines()
    assert lines[0] == "flags: --ping=true --providers.docker=true" and lines[1] == HOST_KERNEL, run.stdout
    assert "200 OK" in run.stdout and run.stdout.rstrip().endswith("OK"), run.stdout


def test_sentinel_has_no_entry_and_is_refused(node):
    """Coolify's Sentinel (--pid host + socket, StartSentinel.php:51) is not platform (§4.5): refused."""
    marker = node.tmp / f"sentinel-{secrets.token_hex(4)}"
    run = node.docker("run", "--rm", "--name", "coolify-sentinel", "--pid", "host", "--network", "coolify",
                      "-v", f"{node.sock}:/var/run/docker.sock", "-v", f"{node.tmp}:/host", PLATFORM_IMAGE,
                      "sh", "-c", f"touch /host/{marker.name}; cat /proc/1/comm")
    assert run.returncode != 0 and "[T1 namespaces]" in run.stderr, run.stderr
    assert not marker.exists()


def test_reserved_platform_name_is_refused_unless_the_profile_holds(node):
    """A3 (review #6): the proxy's name is free (Coolify's `rm -f` ... `up`): a tenant takes it with the genuine
    proxy image and the socket plus the host's root. Refused, never run: the marker it would write is absent.
    A tenant image under the reserved name is refused too (before: sandboxed, holding the proxy's name)."""
    marker = node.tmp / f"a3-{secrets.token_hex(4)}"
    extra = node.docker("run", "--rm", *proxy_args(node), "-v", f"{node.tmp}:/host", PROXY_IMAGE, "--ping=true")
    assert extra.returncode != 0 and "[platform proxy]" in extra.stderr and "extra mount" in extra.stderr, extra.stderr
    shell = node.docker("run", "--rm", *proxy_args(node), "-v", f"{node.tmp}:/host", "--entrypoint", "/bin/sh",
                        PROXY_IMAGE, "-c", f"touch /host/{marker.name}; dockerping /var/run/docker.sock")
    assert shell.returncode != 0 and "[platform proxy]" in shell.stderr, shell.stderr
    assert "OK" not in shell.stdout and not marker.exists()
    tenant = node.docker("run", "--rm", "--name", "coolify-proxy", "--network", "coolify", TENANT_IMAGE,
                         "sh", "-c", f"touch /tmp/x; {SANDBOX_PROBE}")
    assert tenant.returncode != 0 and "is not a pinned image of the entry" in tenant.stderr, tenant.stderr
    assert tenant.stdout == ""
    # Not mistaken for the proxy: the genuine image under a tenant name is a tenant, sandboxed, no socket.
    sandboxed = node.docker("run", "--rm", *coolify_app_args(), PROXY_IMAGE, "--ping=true", check=True)
    assert sandboxed.stdout.splitlines()[1] == "4.4.0" and "200 OK" not in sandboxed.stdout, sandboxed.stdout


def test_joining_a_platform_containers_namespaces_is_refused(node):
    """A8 (review X1): `container:<x>` namespace joins; a tenant next to the proxy's network or processes.
    (`--ipc container:` Docker refuses by itself: the proxy's IPC namespace is not shareable.)"""
    node.docker("run", "-d", *proxy_args(node), PROXY_IMAGE, "--serve", check=True)
    try:
        for flag in ("--network", "--pid"):
            run = node.docker("run", "--rm", *coolify_app_args(network="bridge")[2:], flag, "container:coolify-proxy",
                              TENANT_IMAGE, "sh", "-c", "echo joined")
            assert run.returncode != 0 and "[T1 namespaces]" in run.stderr, (flag, run.stderr)
            assert "joined" not in run.stdout
    finally:
        node.docker("rm", "-f", "coolify-proxy", timeout=60)


@pytest.mark.parametrize(("args", "rule"), [
    pytest.param(["--cap-add", "SYS_ADMIN"], "[T2 capabilities]", id="cap-add"),
    pytest.param(["--privileged"], "[T2 capabilities]", id="privileged"),
    pytest.param(["--device", "/dev/null:/dev/xnull"], "[T3 devices]", id="device"),
    pytest.param(["--device-cgroup-rule", "c 10:200 rwm"], "[T3 devices]", id="device-cgroup-rule"),
    pytest.param(["--pid", "host"], "[T1 namespaces]", id="pid-host"),
    pytest.param(["--ipc", "host"], "[T1 namespaces]", id="ipc-host"),
    pytest.param(["--uts", "host"], "[T1 namespaces]", id="uts-host"),
])
def test_tenant_privileges_are_refused(node, args, rule):
    run = node.docker("run", "--rm", *coolify_app_args(), *args, TENANT_IMAGE, "sh", "-c", "echo ran")
    assert run.returncode != 0 and rule in run.stderr, run.stderr
    assert "ran" not in run.stdout


def test_database_binds_only_its_own_coolify_dir(node):
    """T5 (review #8): Coolify binds custom config and init scripts from the database's own dir; sandboxed, and
    the file is what the container sees. Another database's dir, or a symlink out of its own, is refused."""
    db, other = secrets.token_hex(12), secrets.token_hex(12)
    own = node.coolify / "databases" / db
    own.mkdir()
    (own / "custom.conf").write_text("max_connections = 7\n")
    (node.coolify / "databases" / other).mkdir()
    (node.coolify / "databases" / other / "docker-compose.yml").write_text("POSTGRES_PASSWORD: other-secret\n")
    labels = ["-l", "coolify.type=database", "-l", "coolify.databaseId=4"]
    run = node.docker("run", "--rm", "--network", "coolify", "--name", db, *labels,
                      "-v", f"{own / 'custom.conf'}:/etc/custom.conf:ro", TENANT_IMAGE,
                      "sh", "-c", "cat /etc/custom.conf; uname -r", check=True)
    assert run.stdout.split("\n")[:2] == ["max_connections = 7", "4.4.0"], run.stdout
    steal = node.docker("run", "--rm", "--network", "coolify", "--name", secrets.token_hex(12), *labels,
                        "-v", f"{node.coolify / 'databases' / other}:/steal:ro", TENANT_IMAGE, "cat",
                        "/steal/docker-compose.yml")
    assert steal.returncode != 0 and "another resource's dir" in steal.stderr and "other-secret" not in steal.stdout
    (own / "etc").symlink_to("/etc")
    link = node.docker("run", "--rm", "--network", "coolify", "--name", f"{db}-{secrets.randbelow(10**12):012d}",
                       "-v", f"{own / 'etc'}:/host-etc:ro", TENANT_IMAGE, "cat", "/host-etc/hostname")
    assert link.returncode != 0 and "is a symlink" in link.stderr, link.stderr


def test_deploy_helper_runs_under_runc_only_as_coolify_starts_it(node):
    """Review #2: Coolify's helper (ADJ:2164-2182: deployment uuid, --rm, socket, ~/.docker/buildx) runs under
    runc and reaches the node's Docker API; the same with a tenant's label is refused (A4)."""
    name = "k" + secrets.token_hex(12)[:23]
    mounts = ["-v", f"{node.home}/.docker/buildx:/root/.docker/buildx", "-v", f"{node.sock}:/var/run/docker.sock"]
    node.docker("run", "-d", "--network", "coolify", "--name", name, "--rm", *mounts, HELPER_IMAGE, check=True)
    try:
        inside = node.docker("exec", name, "sh", "-c", "uname -r; dockerping /var/run/docker.sock", check=True)
        assert inside.stdout.splitlines()[0] == HOST_KERNEL and "200 OK" in inside.stdout, inside.stdout
    finally:
        node.docker("rm", "-f", name, timeout=60)
    forged = node.docker("run", "-d", "--network", "coolify", "--name", "k" + secrets.token_hex(12)[:23], "--rm",
                         "-l", "coolify.type=database", *mounts, HELPER_IMAGE)
    assert forged.returncode != 0 and "[platform helper]" in forged.stderr, forged.stderr


@pytest.mark.parametrize(
    ("name_args", "image"),
    [
        pytest.param([], TENANT_IMAGE, id="tenant-image"),
        pytest.param([], PLATFORM_IMAGE, id="genuine-platform-image-under-tenant-name"),
        pytest.param(["-l", "coolify.proxy=true", "-l", "com.docker.compose.project=coolify-proxy"],
                     TENANT_IMAGE, id="copied-platform-labels"),
    ],
)
def test_tenant_mounting_docker_socket_is_refused(node, name_args, image):
    args = coolify_app_args()
    run = node.docker("run", "--rm", *args, *name_args, "-v", f"{node.sock}:/var/run/docker.sock", image,
                      "sh", "-c", "dockerping; echo ran")
    assert run.returncode != 0
    assert "ran" not in run.stdout
    assert "may not mount the Docker socket" in run.stderr, run.stderr


def test_genuine_platform_image_under_tenant_name_is_sandboxed(node):
    run = node.docker("run", "--rm", *coolify_app_args(), PLATFORM_IMAGE, "sh", "-c", SANDBOX_PROBE, check=True)
    assert_sandboxed(run.stdout)


def test_tenant_host_paths_and_host_network_are_refused(node):
    host_path = node.docker("run", "--rm", *coolify_app_args(), "-v", "/etc:/host-etc:ro", TENANT_IMAGE, "true")
    assert host_path.returncode != 0 and "may not bind-mount host path" in host_path.stderr, host_path.stderr

    vol = f"inkgv-bind-{secrets.token_hex(4)}"
    node.docker("volume", "create", "--opt", "type=none", "--opt", "o=bind", "--opt", "device=/etc", vol,
                check=True)
    bind_volume = node.docker("run", "--rm", *coolify_app_args(), "-v", f"{vol}:/data", TENANT_IMAGE, "true")
    assert bind_volume.returncode != 0 and "is a host mount" in bind_volume.stderr, bind_volume.stderr

    host_net = node.docker("run", "--rm", "--network", "host", "--name", f"inkgv-{secrets.token_hex(6)}",
                           TENANT_IMAGE, "true")
    assert host_net.returncode != 0 and "host network namespace" in host_net.stderr, host_net.stderr

    plain = f"inkgv-data-{secrets.token_hex(4)}"
    ok = node.docker("run", "--rm", *coolify_app_args(), "-v", f"{plain}:/data", TENANT_IMAGE,
                     "sh", "-c", "echo kept > /data/f && cat /data/f && uname -r", check=True)
    assert ok.stdout.split() == ["kept", "4.4.0"]


def test_gvisor_annotation_is_refused_before_any_runtime_runs(node, tmp_path):
    """Docker 20.10 cannot pass annotations (API 1.43+ can, and compose `annotations:`), so the bundle
    a newer dockerd would hand over is given to the installed selector directly."""
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    spec = {
        "ociVersion": "1.0.2", "process": {"args": ["sh"], "cwd": "/"}, "root": {"path": "rootfs"},
        "annotations": {"dev.gvisor.flag.host-uds": "all"},
        "linux": {"namespaces": [{"type": t} for t in ("network", "pid", "ipc", "uts", "mount")]},
        "mounts": [],
    }
    (bundle / "config.json").write_text(json.dumps(spec))
    cid = secrets.token_hex(32)
    log = tmp_path / "log.json"
    run = subprocess.run(
        [str(node.selector), f"--inkmcp-config={node.config}", "--root", str(tmp_path / "state"),
         "--log", str(log), "--log-format", "json", "create", "--bundle", str(bundle), cid],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert run.returncode == 1
    assert "dev.gvisor.flag.host-uds" in run.stderr
    assert "dev.gvisor.flag.host-uds" in json.loads(log.read_text().splitlines()[-1])["msg"]
    assert not (tmp_path / "state").exists(), "no runtime may have been started"


def test_tenant_resolves_database_by_name_and_public_names(node):
    db_name = secrets.token_hex(12)  # Coolify names a standalone database container by its uuid
    node.docker(
        "run", "-d", "--network", "coolify", "--name", db_name, "-l", "coolify.managed=true",
        "-l", "coolify.type=database", TENANT_IMAGE,
        "sh", "-c", "mkdir -p /www && echo db-ok > /www/index.html && exec httpd -f -p 5432 -h /www", check=True,
    )
    try:
        # busybox-static's wget resolves through static glibc's NSS, which crashes in an image without
        # libc; its nslookup has its own resolver. So: resolve with nslookup via Docker's DNS, connect by IP.
        script = (
            f"ip=$(nslookup {db_name} 127.0.0.11 | sed -n 's/^Address: *//p' | tail -1); echo db-ip=$ip; "
            "for i in 1 2 3 4 5 6 7 8 9 10; do "
            "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 $ip 5432 | grep db-ok && break; sleep 0.5; done; "
            f"nslookup {PUBLIC_NAME}; uname -r"
        )
        run = node.docker("run", "--rm", *coolify_app_args(), TENANT_IMAGE, "sh", "-c", script, check=True)
        db_ip = node.docker("inspect", "-f", "{{.NetworkSettings.Networks.coolify.IPAddress}}", db_name,
                            check=True).stdout.strip()
        assert f"db-ip={db_ip}" in run.stdout and db_ip, run.stdout
        assert "db-ok" in run.stdout, run.stdout
        assert PUBLIC_ADDR in run.stdout, run.stdout
        assert run.stdout.splitlines()[-1] == "4.4.0"

        # exec, restart and exec again: later runtime calls follow the runtime chosen at create.
        assert node.docker("exec", db_name, "uname", "-r", check=True).stdout.strip() == "4.4.0"
        node.docker("restart", "-t", "1", db_name, check=True, timeout=90)
        assert node.docker("exec", db_name, "uname", "-r", check=True).stdout.strip() == "4.4.0"
    finally:
        node.docker("rm", "-f", db_name, timeout=60)
