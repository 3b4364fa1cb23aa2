"""The box's stand-in images behave as Coolify's commands expect, as tenants under gVisor.

Issue 7 item 2. Coolify's database, proxy and helper operations succeed only if the image honours its
contract: the postgres image runs /docker-entrypoint-initdb.d and applies a custom config_file, its
healthcheck `psql ... -c 'SELECT 1'` passes, `pg_dump`/`pg_dumpall` produce dumps; Redis enforces
--requirepass; Traefik answers /ping on its entrypoints (the compose healthcheck `up --wait` waits on).
Each test runs the stand-in in the box (sandboxed by the selector: `uname -r` inside is gVisor's 4.4.0)
and asserts the contract from outside and inside. Config and init scripts come through named volumes,
which the selector admits for tenants; Coolify's own bind mounts are the replay's business.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from inkmcp.nodes import sandbox
from inkmcp.nodes.replay import load_replay
from tests.requirements import is_root, requires

pytestmark = [
    pytest.mark.slow,
    requires("root", is_root(), "the box needs network/mount namespaces, cgroups and iptables"),
]

GVISOR_KERNEL = "4.4.0"


def _sh(box: Path, script: str, timeout: float = 300) -> str:
    got = sandbox.exec_in_box(box, script, timeout=timeout)
    assert got.returncode == 0, f"exit {got.returncode}\n{got.stderr}\n{got.stdout}"
    return got.stdout


def _wait_healthy(box: Path, name: str, deadline_s: float = 120) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        got = sandbox.exec_in_box(box, f"docker inspect -f '{{{{.State.Status}}}}:{{{{.State.Health.Status}}}}' {name}",
                                  timeout=30)
        status = got.stdout.strip()
        if got.returncode != 0:
            pytest.fail(f"{name} does not exist: {got.stderr.strip()}")
        if status == "running:healthy":
            return
        if status.startswith(("exited", "dead")):
            logs = sandbox.exec_in_box(box, f"docker logs {name} 2>&1 | tail -n 30", timeout=30).stdout
            pytest.fail(f"{name} stopped ({status}):\n{logs}")
        time.sleep(0.5)
    pytest.fail(f"{name} not healthy within {deadline_s:.0f} s")


@pytest.fixture
def names(run_server_box) -> Iterator[dict[str, str]]:
    """Unique container/volume names for one test; everything named is removed afterwards."""
    tag = secrets.token_hex(4)
    made: dict[str, str] = {k: f"{k}-{tag}" for k in ("db", "conf", "init", "app", "proxy", "client")}
    yield made
    sandbox.exec_in_box(run_server_box, "\n".join(
        [f"docker rm -f {n} >/dev/null 2>&1 || true" for n in made.values()]
        + [f"docker volume rm -f {n} >/dev/null 2>&1 || true" for n in made.values()]), timeout=120)


def test_postgres_standin_keeps_the_images_contract(run_server_box, names):
    n = names
    _sh(run_server_box, f"""
docker network create --attachable coolify >/dev/null 2>&1 || true
docker volume create {n['conf']} >/dev/null
docker volume create {n['init']} >/dev/null
docker run --rm -v {n['conf']}:/c -v {n['init']}:/i nginx:1.27-alpine sh -ec '
  printf "listen_addresses = '"'"'*'"'"'\\nmax_connections = 37\\n" > /c/postgresql.conf
  echo "CREATE TABLE marker(x int); INSERT INTO marker VALUES (42);" > /i/01-marker.sql
  printf "#!/bin/sh\\necho ran > \\$PGDATA/init-sh-ran\\n" > /i/02-mark.sh; chmod +x /i/02-mark.sh'
docker run -d --name {n['db']} --network coolify -e POSTGRES_USER=app -e PGUSER=app -e POSTGRES_PASSWORD=s3cr3t \
  -e POSTGRES_DB=appdb -v {n['conf']}:/etc/postgresql:ro -v {n['init']}:/docker-entrypoint-initdb.d:ro \
  --health-cmd "psql -U app -d appdb -c 'SELECT 1'" --health-interval 1s --health-retries 120 \
  postgres:16-alpine postgres -c config_file=/etc/postgresql/postgresql.conf >/dev/null
""")
    _wait_healthy(run_server_box, n["db"])
    out = _sh(run_server_box, f"""
docker exec {n['db']} uname -r
docker exec {n['db']} psql -U app -d appdb -Atc 'SHOW max_connections' -c 'SELECT x FROM marker'
docker exec {n['db']} cat /var/lib/postgresql/data/init-sh-ran
docker exec {n['db']} pg_dump --format=custom --no-acl --no-owner --username app appdb | head -c 5; echo
docker exec {n['db']} pg_dumpall --username app | grep -c 'CREATE TABLE public.marker'
docker exec {n['db']} pg_isready -q && echo ready
docker exec {n['db']} stat -c '%u:%g' /var/lib/postgresql/data/PG_VERSION
client="docker run --rm --network coolify postgres:16-alpine env"
$client PGPASSWORD=s3cr3t psql -h {n['db']} -U app -d appdb -Atc 'SELECT 40+2'
$client PGPASSWORD=wrong psql -h {n['db']} -U app -d appdb -c 'SELECT 1' 2>&1 \
  | grep -o 'password authentication failed' || true
""")
    lines = out.splitlines()
    assert lines[0] == GVISOR_KERNEL, out
    assert lines[1:3] == ["37", "42"], out  # custom config_file applied; initdb.d SQL ran
    assert lines[3] == "ran", out  # initdb.d shell script ran
    assert lines[4] == "PGDMP", out  # a real custom-format dump
    assert int(lines[5]) >= 1 and lines[6] == "ready", out
    assert lines[7] == "70:70", out  # the -alpine images' postgres user
    assert lines[8] == "42", out  # scram login from the network
    assert lines[9] == "password authentication failed", out


def test_redis_standin_enforces_its_password(run_server_box, names):
    n = names
    _sh(run_server_box, f"""
docker network create --attachable coolify >/dev/null 2>&1 || true
docker run -d --name {n['db']} --network coolify --health-cmd 'redis-cli ping' --health-interval 1s \
  --health-retries 60 redis:7.2 redis-server --requirepass r3dis --appendonly yes >/dev/null
""")
    _wait_healthy(run_server_box, n["db"])
    out = _sh(run_server_box, f"""
docker exec {n['db']} uname -r
docker exec {n['db']} redis-cli ping 2>&1 || true
docker exec {n['db']} redis-cli -a r3dis --no-auth-warning ping
docker exec {n['db']} redis-cli -a r3dis --no-auth-warning set k v >/dev/null
docker run --rm --network coolify redis:7.2 redis-cli -h {n['db']} -a r3dis --no-auth-warning get k
docker exec {n['db']} stat -c '%u:%g %n' /data/appendonlydir
""")
    lines = [line for line in out.splitlines() if line]
    assert lines[0] == GVISOR_KERNEL, out
    assert lines[1].startswith("NOAUTH"), out
    assert lines[2:4] == ["PONG", "v"], out
    assert lines[4] == "999:999 /data/appendonlydir", out  # written by the server, running as redis


def test_mongo_standin_honours_its_config_and_initdb(run_server_box, names):
    n = names
    _sh(run_server_box, f"""
docker network create --attachable coolify >/dev/null 2>&1 || true
docker volume create {n['conf']} >/dev/null
docker volume create {n['init']} >/dev/null
docker run --rm -v {n['conf']}:/c -v {n['init']}:/i nginx:1.27-alpine sh -ec '
  printf "net:\\n  port: 27018\\n  bindIp: 0.0.0.0\\n" > /c/mongod.conf
  echo "db.createCollection(\\"init_collection\\")" > /i/01-default-database.js'
docker run -d --name {n['db']} --network coolify -v {n['conf']}:/etc/mongo:ro \
  -v {n['init']}:/docker-entrypoint-initdb.d:ro --health-cmd 'echo ok' --health-interval 1s \
  mongo:7 mongod --config /etc/mongo/mongod.conf >/dev/null
docker run --name {n['client']} mongo:7 mongod --config /etc/mongo/absent.conf >/dev/null 2>&1 || true
""")
    _wait_healthy(run_server_box, n["db"])
    deadline = time.monotonic() + 60
    while True:  # healthy = the process runs; the port answers a moment later
        ping = sandbox.exec_in_box(
            run_server_box, f"docker exec {n['db']} mongosh --quiet --eval 'db.runCommand({{ping:1}})'", timeout=30)
        if ping.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert ping.stdout.strip() == "{ ok: 1 }", ping.stderr
    out = _sh(run_server_box, f"""
docker exec {n['db']} uname -r
docker exec {n['db']} cat /data/db/inkmcp-initdb.log
docker exec {n['db']} sh -c 'echo "db.runCommand(\\"ping\\").ok" | mongosh --quiet'
docker inspect -f '{{{{.State.ExitCode}}}}' {n['client']}
docker logs {n['client']} 2>&1
""")
    lines = out.splitlines()
    assert lines[0] == GVISOR_KERNEL, out
    assert lines[1] == "ran /docker-entrypoint-initdb.d/01-default-database.js", out
    assert lines[2] == "1", out
    assert lines[3] == "1" and "Error reading config file" in out, out  # a missing --config file stops it


def test_proxy_standin_answers_on_coolifys_entrypoints(run_server_box, names):
    """Traefik with the flags of Coolify's proxy compose (replay data, proxy_start): healthy by the
    compose healthcheck, HTTP on 80, 443 and the API's 8080, reaches an app on the `coolify` network by
    name, and stops at once (docker stop in StartProxy)."""
    n = names
    compose = next(f for f in load_replay().operation("proxy_start").files if f.path.endswith("docker-compose.yml"))
    service = yaml.safe_load(compose.content.replace("{network}", "coolify"))["services"]["traefik"]
    flags = " ".join(f"'{c}'" for c in service["command"])
    health = service["healthcheck"]["test"]
    _sh(run_server_box, f"""
docker network create --attachable coolify >/dev/null 2>&1 || true
docker run -d --name {n['app']} --network coolify nginx:1.27-alpine >/dev/null
docker run -d --name {n['proxy']} --network coolify --health-cmd "{health}" --health-interval 1s \
  --health-retries 60 {service['image']} {flags} >/dev/null
""")
    _wait_healthy(run_server_box, n["proxy"])
    out = _sh(run_server_box, f"""
docker exec {n['proxy']} uname -r
for p in 80 443 8080; do docker exec {n['proxy']} wget -qO- http://127.0.0.1:$p/ping; echo " $p"; done
docker exec {n['proxy']} wget -qO- http://{n['app']}/
start=$(date +%s%N); docker stop {n['proxy']} >/dev/null; echo stop_ms $(( ($(date +%s%N) - start) / 1000000 ))
""")
    lines = out.splitlines()
    assert lines[0] == GVISOR_KERNEL, out
    assert lines[1:4] == ["OK 80", "OK 443", "OK 8080"], out
    assert "Welcome to nginx!" in lines[4], out
    assert int(lines[5].split()[1]) < 5000, out  # not the 10 s SIGKILL fallback


def test_sablier_needs_the_socket_and_sentinel_answers_its_healthcheck(run_server_box, names):
    n = names
    out = _sh(run_server_box, f"""
docker run --name {n['client']} sablierapp/sablier:1.16.2 start --provider.name=docker >/dev/null 2>&1 || true
docker inspect -f '{{{{.State.ExitCode}}}}' {n['client']}
docker logs {n['client']} 2>&1
docker run -d --name {n['app']} --health-cmd 'curl --fail http://127.0.0.1:8888/api/health || exit 1' \
  --health-interval 1s --health-retries 60 docker.io/coollabsio/sentinel:0.0.22 >/dev/null
""")
    assert out.splitlines()[0] == "1" and "Cannot connect to the Docker daemon" in out, out
    _wait_healthy(run_server_box, n["app"])
    version = _sh(run_server_box, f"docker exec {n['app']} curl -fsS http://127.0.0.1:8888/api/version")
    assert version == "0.0.22"
