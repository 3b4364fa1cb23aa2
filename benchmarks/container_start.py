"""Container start to first byte on a run server: the InkMCP selector vs plain runsc vs plain runc.

Issue 7: "container start-to-first-byte under the chosen design vs plain runsc vs runc, measured side by side
in one run". One box (`inkmcp nodes sandbox`, Docker 26 + containerd 1.7 + runsc 20240729) serves all
variants: the benchmark adds two extra runtime entries to the box's daemon.json for the comparison only
(`bench-runsc` = runsc with the selector's own flags, `bench-runc` = runc) and reloads the daemon with
SIGHUP (runtimes are reloadable, moby daemon/reload.go). A node never has those entries: they would let a
tenant pick a runtime; here they exist only inside a throw-away box.

Variants, interleaved round by round so load and drift hit all alike:
  selector   the default runtime (the selector decides: tenant -> runsc)   = what every tenant gets
  runsc      runsc directly, same flags                                     = gVisor without the selector
  runc       runc directly                                                  = no sandbox at all

Per round and variant: `docker run -d` of a busybox httpd on the box's bridge, then GET / on the container's
address from inside the box's network namespace, polled every millisecond, until the first byte arrives;
then `docker rm -f` (not timed). Prints a markdown table (p50/p90/mean, ratio to runc) on stdout, progress on
stderr. Root only.

    .venv/bin/python benchmarks/container_start.py [--rounds 15] [--dir /var/tmp/inkmcp-bench-box]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from inkmcp.nodes import sandbox  # noqa: E402
from inkmcp.nodes.render import render_plan  # noqa: E402

IMAGE = "inkmcp/bench-httpd:local"
VARIANTS = ("selector", "runsc", "runc")
CLONE_NEWNET = 0x40000000


def _docker(box: Path, host: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sandbox.docker_cli(box), "-H", host, *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def _build_image(box: Path, host: str) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-rootfs-") as tmp:
        root = Path(tmp)
        for d in ("bin", "www", "tmp", "proc", "sys", "dev", "etc"):
            (root / d).mkdir()
        busybox = shutil.which("busybox") or "/bin/busybox"
        shutil.copy2(busybox, root / "bin/busybox")
        for applet in ("sh", "httpd", "uname"):
            (root / "bin" / applet).symlink_to("busybox")
        (root / "www/index.html").write_text("ok\n")
        tar = subprocess.run(["tar", "-C", tmp, "-c", "."], capture_output=True, check=True).stdout
    proc = subprocess.run([sandbox.docker_cli(box), "-H", host, "import", "-c",
                           'CMD ["/bin/httpd", "-f", "-p", "8080", "-h", "/www"]', "-", IMAGE],
                          input=tar, capture_output=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"docker import failed: {proc.stderr.decode(errors='replace')}")


def _add_bench_runtimes(box: Path, state: sandbox.SandboxState) -> None:
    selector_cfg = _selector_config(box)
    path = box / "root/etc/docker/daemon.json"
    daemon = json.loads(path.read_text())
    daemon.setdefault("runtimes", {})
    daemon["runtimes"]["bench-runsc"] = {"path": selector_cfg["runsc"], "runtimeArgs": selector_cfg["runsc_flags"]}
    daemon["runtimes"]["bench-runc"] = {"path": selector_cfg["runc"]}
    path.write_text(json.dumps(daemon, indent=2))
    os.kill(int((box / "run/docker.pid").read_text()), signal.SIGHUP)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        info = _docker(box, state.docker_host, "info", "--format", "{{json .Runtimes}}")
        if info.returncode == 0 and "bench-runsc" in info.stdout:
            return
        time.sleep(0.2)
    raise SystemExit("the box did not pick up the benchmark runtimes after SIGHUP")


def _selector_config(box: Path) -> dict:
    """The selector config the box's hardening rendered: the real runc/runsc and the tenant flags."""
    plan = render_plan(sandbox.host_params(box))
    path = next(p for p in plan.files if p.endswith("/etc/inkmcp/runtime-selector.json"))
    return json.loads(Path(path).read_text())


def _enter_netns(name: str) -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
    finally:
        os.close(fd)


def _first_byte(addr: str, deadline: float) -> bool:
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((addr, 8080), timeout=0.5) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            if s.recv(1):
                return True
        time.sleep(0.001)
    return False


def _one(box: Path, host: str, variant: str, n: int) -> float:
    name = f"bench-{variant}-{n}"
    runtime = [] if variant == "selector" else ["--runtime", f"bench-{variant}"]
    t0 = time.monotonic()
    run = _docker(box, host, "run", "-d", "--name", name, *runtime, IMAGE)
    if run.returncode != 0:
        raise SystemExit(f"{variant}: docker run failed: {run.stderr}")
    addr = _docker(box, host, "inspect", "-f", "{{.NetworkSettings.IPAddress}}", name).stdout.strip()
    ok = _first_byte(addr, t0 + 60)
    elapsed = time.monotonic() - t0
    kernel = _docker(box, host, "exec", name, "uname", "-r").stdout.strip()
    _docker(box, host, "rm", "-f", name)
    if not ok:
        raise SystemExit(f"{variant}: no first byte from {addr}:8080 within 60 s")
    want_gvisor = variant != "runc"
    if (kernel == "4.4.0") != want_gvisor:
        raise SystemExit(f"{variant}: ran with kernel {kernel}, which is not what this variant means")
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--dir", type=Path, default=None, help="box directory (default: a fresh temp dir)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root: the box needs namespaces, cgroups and iptables", file=sys.stderr)
        return 2
    box = (args.dir or Path(tempfile.mkdtemp(prefix="inkmcp-bench-box-"))).resolve()
    state = sandbox.up(box)
    print(f"box up in {state.up_seconds} s", file=sys.stderr)
    try:
        _add_bench_runtimes(box, state)
        _build_image(box, state.docker_host)
        _enter_netns(state.netns)
        times: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for v in VARIANTS:  # warm-up, not counted: first start pays for page cache and image unpacking
            _one(box, state.docker_host, v, -1)
        for n in range(args.rounds):
            order = VARIANTS if n % 2 == 0 else tuple(reversed(VARIANTS))
            for v in order:
                times[v].append(_one(box, state.docker_host, v, n))
            print(f"round {n + 1}/{args.rounds}: " + ", ".join(f"{v} {times[v][-1] * 1000:.0f} ms" for v in VARIANTS),
                  file=sys.stderr)
    finally:
        sandbox.down(box)
        if args.dir is None:
            shutil.rmtree(box, ignore_errors=True)
    base = statistics.median(times["runc"])
    print(f"\nContainer start to first byte, {args.rounds} interleaved rounds (Docker 26.1.5, runsc 20240729)\n")
    print("| variant | p50 ms | p90 ms | mean ms | p50 / runc |")
    print("|---|---|---|---|---|")
    for v in VARIANTS:
        xs = sorted(times[v])
        p90 = xs[min(len(xs) - 1, round(0.9 * (len(xs) - 1)))]
        print(f"| {v} | {statistics.median(xs) * 1000:.0f} | {p90 * 1000:.0f} | {statistics.mean(xs) * 1000:.0f} "
              f"| {statistics.median(xs) / base:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
