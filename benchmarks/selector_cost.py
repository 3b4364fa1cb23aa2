"""What the gVisor runtime selector itself costs per runtime call (runbooks/gvisor-decision.md §3: "~20 ms").

Every container create, start, exec, kill and delete on a run server goes through
hardening/gvisor/runtime_selector.py before the real runc/runsc runs. This times the selector alone: the real
program as hardening/gvisor/install.sh installs it (entry point + rules module with compiled bytecode), started
the way containerd's shim starts it (a fresh process per call), deciding on a bundle built
from the spec Docker 26.1.5 writes for a plain `docker run` (tests/hardening/fixtures/), with Docker's records
under a temp data root and the real runtimes replaced by /bin/true, so the figure is the decision plus the
exec of the runtime, nothing of runc or runsc. For scale it also times /bin/true itself (process spawn) and
a bare `python3 -IS -c pass` (interpreter start, the floor of any Python selector).

Cases: a tenant app binding two files of its own Coolify dir (T1-T5 checks); the genuine proxy against its
§4.3 profile (runc); a later call (`state <id>`) that only looks up the recorded runtime; and the tenant
decision once more with the rules compiled on every call (no bytecode: how a single-file selector runs).

    sudo .venv/bin/python benchmarks/selector_cost.py            # 200 runs per case
    sudo .venv/bin/python benchmarks/selector_cost.py --runs 500

Prints a markdown table: wall p50/p95/mean and CPU p50 in ms (CPU: what the machine's load does not inflate).
Must run as root: the selector accepts only a root-owned config.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import jinja2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inkmcp.nodes.render import GVISOR_DIR, PinnedImage, helper_profile, proxy_profile, sablier_profile

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "tests/hardening/fixtures/docker26-plain-config.json"
PROXY_ID, TENANT_ID = "sha256:" + "a" * 64, "sha256:" + "d" * 64


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Bench:
    """A temp node: data root with Docker's records, Coolify dirs, selector config, /bin/true as both runtimes."""

    def __init__(self, tmp: Path) -> None:
        self.tmp, self.data_root, self.coolify = tmp, tmp / "docker", tmp / "coolify"
        (self.data_root / "containers").mkdir(parents=True)
        for d in ("applications", "services", "databases", "proxy", "ssl", "backups"):
            (self.coolify / d).mkdir(parents=True)
        self.sock = tmp / "docker.sock"
        self.sock.touch()
        true = shutil.which("true") or "/bin/true"
        images = [PinnedImage(ref="traefik:v3.6.23@sha256:" + "1" * 64, id=PROXY_ID, entrypoint=["/entrypoint.sh"],
                              cmd=["traefik"])]
        sock = str(self.sock)
        profiles = [proxy_profile(images, proxy_dir=str(self.coolify / "proxy"), socket=sock),
                    sablier_profile([PinnedImage(id="sha256:" + "b" * 64, entrypoint=[], cmd=[])], socket=sock),
                    helper_profile([PinnedImage(id="sha256:" + "c" * 64, entrypoint=[], cmd=[])], socket=sock)]
        env = jinja2.Environment(  # noqa: S701 - JSON, every value goes through `tojson`
            loader=jinja2.FileSystemLoader(GVISOR_DIR), undefined=jinja2.StrictUndefined)
        rendered = tmp / "rendered-selector.json"
        rendered.write_text(env.get_template("runtime-selector.json.j2").render(
            runc_path=true, runsc_path=true, runsc_flags=["--network=host", "--host-uds=none"],
            data_root=str(self.data_root), state_dir=str(tmp / "state"), docker_sockets=[str(self.sock)],
            coolify_dir=str(self.coolify), platform=[p.selector_entry() for p in profiles]))
        root = tmp / "root"
        subprocess.run(["bash", str(GVISOR_DIR / "install.sh"), str(rendered), str(root)], check=True,
                       capture_output=True)
        self.entry = root / "usr/local/lib/inkmcp/inkmcp-runtime"
        self.config = root / "etc/inkmcp/runtime-selector.json"
        # The same two files without bytecode, run with -B so none is written: compiled on every call.
        self.nocache = tmp / "nocache"
        self.nocache.mkdir()
        shutil.copy2(GVISOR_DIR / "runtime_selector.py", self.nocache / "inkmcp-runtime")
        shutil.copy2(GVISOR_DIR / "inkmcp_selector.py", self.nocache / "inkmcp_selector.py")

    def bundle(self, name: str, image: str, args: list[str], binds: list[tuple[str, str, bool]],
               labels: dict[str, str]) -> tuple[Path, str]:
        cid = secrets.token_hex(32)
        cdir = self.data_root / "containers" / cid
        cdir.mkdir()
        for f in ("resolv.conf", "hostname", "hosts"):
            (cdir / f).write_text("")
        spec = json.loads(FIXTURE.read_text().replace("@DATA_ROOT@", str(self.data_root)).replace("@ID@", cid)
                          .replace("@SHORTID@", cid[:12]))
        spec["process"]["args"] = args
        for source, dest, ro in binds:
            spec["mounts"].append({"destination": dest, "type": "bind", "source": source,
                                   "options": ["rbind", "rro", "rprivate"] if ro else ["rbind", "rprivate"]})
        bundle = self.tmp / "bundles" / cid
        bundle.mkdir(parents=True)
        (bundle / "config.json").write_text(json.dumps(spec))
        (cdir / "config.v2.json").write_text(json.dumps({"Name": "/" + name, "Image": image,
                                                         "Config": {"Labels": labels}}))
        (cdir / "hostconfig.json").write_text(json.dumps({"AutoRemove": False}))
        return bundle, cid

    def selector(self, *argv: str, compiled: bool = True) -> list[str]:
        nocache = ["/usr/bin/python3", "-IS", "-B", str(self.nocache / "inkmcp-runtime")]
        entry = [str(self.entry)] if compiled else nocache
        return [*entry, f"--inkmcp-config={self.config}", "--root", str(self.tmp / "runc-root"), *argv]


def time_one(argv: list[str]) -> tuple[float, float]:
    """(wall, CPU) ms of one fresh process; a failure stops the benchmark (a refusal is not a decision). CPU
    time (user + system of the child) hardly moves with the machine's load; wall time is what a start waits."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, check=False)
    elapsed = (time.perf_counter() - start) * 1000
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:1])} failed: {proc.stderr.decode()[-500:]}")
    cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000
    return elapsed, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200, help="fresh selector processes per case (default 200)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root: the selector accepts only a root-owned config", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="selcost-") as tmp_name:
        b = Bench(Path(tmp_name))
        uuid = secrets.token_hex(12)
        own = b.coolify / "databases" / uuid
        own.mkdir()
        (own / "custom.conf").write_text("x")
        (own / "initdb").mkdir()
        tenant = b.bundle(uuid, TENANT_ID, ["postgres"], [(str(own / "custom.conf"), "/etc/custom.conf", True),
                                                           (str(own / "initdb"), "/docker-entrypoint-initdb.d", False)],
                          {"coolify.type": "database", "coolify.databaseId": "3"})
        proxy = b.bundle("coolify-proxy", PROXY_ID, ["/entrypoint.sh", "--ping=true", "--providers.docker=true"],
                         [(str(b.sock), "/var/run/docker.sock", True), (str(b.coolify / "proxy"), "/traefik", False)],
                         {"coolify.managed": "true", "coolify.proxy": "true"})
        cases: list[tuple[str, Callable[[], list[str]]]] = [
            ("/bin/true (process spawn)", lambda: [shutil.which("true") or "/bin/true"]),
            ("python3 -IS -c pass (interpreter start)", lambda: ["/usr/bin/python3", "-IS", "-c", "pass"]),
            ("selector create: tenant DB, T1-T5, 2 own-dir binds -> runsc",
             lambda: b.selector("create", "--bundle", str(tenant[0]), tenant[1])),
            ("selector create: coolify-proxy against its profile -> runc",
             lambda: b.selector("create", "--bundle", str(proxy[0]), proxy[1])),
            ("selector state <id>: recorded runtime lookup", lambda: b.selector("state", tenant[1])),
            ("same tenant create, rules compiled on every call (no bytecode)",
             lambda: b.selector("create", "--bundle", str(tenant[0]), tenant[1], compiled=False)),
        ]
        argvs = [argv() for _title, argv in cases]
        for argv in argvs:
            time_one(argv)  # warm the page cache
        # Round robin, one process at a time: load on a busy machine hits every case alike.
        wall: list[list[float]] = [[] for _ in cases]
        cpu: list[list[float]] = [[] for _ in cases]
        for _ in range(args.runs):
            for i, argv in enumerate(argvs):
                w, c = time_one(argv)
                wall[i].append(w)
                cpu[i].append(c)
        load = os.getloadavg()[0]
        print(f"| case ({args.runs} runs each, interleaved; load {load:.1f} on {os.cpu_count()} CPUs) "
              "| wall p50 ms | wall p95 ms | wall mean ms | CPU p50 ms |")
        print("|---|---:|---:|---:|---:|")
        for (title, _argv), w, c in zip(cases, wall, cpu, strict=True):
            print(f"| {title} | {pct(w, 0.5):.1f} | {pct(w, 0.95):.1f} | {statistics.fmean(w):.1f} | "
                  f"{pct(c, 0.5):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
