"""The registry copy (`inkmcp dr backup-registry`: rsync to the Storage Box stand-in + a box snapshot through the
Hetzner API stand-in; Hetzner Volumes have no snapshot) and the re-validation of run servers after a Coolify
restore (`inkmcp dr revalidate-servers` against the Coolify stand-in, every request checked against Coolify's
OpenAPI spec)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from inkmcp.cli import app
from inkmcp.coolify.spec import CoolifySpec
from tests.coolify_standin import CoolifyStandin
from tests.dr.conftest import World


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_registry_copy_and_box_snapshot(world: World, tmp_path: Path) -> None:
    storage = tmp_path / "registry"
    v2 = storage / "docker" / "registry" / "v2"
    blob = v2 / "blobs" / "sha256" / "ab" / ("ab" + "1" * 62) / "data"
    blob.parent.mkdir(parents=True)
    blob.write_bytes(b"layer" * 50_000)
    tag = v2 / "repositories" / "t1" / "app" / "_manifests" / "tags" / "latest" / "current" / "link"
    tag.parent.mkdir(parents=True)
    tag.write_text("sha256:" + "ab" + "1" * 62)
    env = world.env(INKMCP_DR_BOX_KEY=str(world.backup_key))
    before = len(world.state()["snapshots"])  # type: ignore[arg-type]
    r = world.inkmcp("backup-registry", "--storage", str(storage), env=env)
    assert _tree(world.box_home / "registry") == _tree(storage)
    snaps = world.state()["snapshots"]
    assert len(snaps) == before + 1  # type: ignore[arg-type]
    snap = snaps[-1]  # type: ignore[index]
    assert snap["labels"] == {"inkmcp": "registry"} and not snap["is_automatic"]
    assert f"snapshot {snap['name']}" in r.stdout
    assert _tree(world.api_state / "snapshots" / snap["name"] / "registry") == _tree(storage)
    assert world.state()["violations"] == []
    # A deleted tag disappears from the copy (the snapshot keeps the old state).
    tag.unlink()
    world.inkmcp("backup-registry", "--storage", str(storage), "--no-snapshot", env=env)
    assert _tree(world.box_home / "registry") == _tree(storage)
    assert len(world.state()["snapshots"]) == before + 1  # type: ignore[arg-type]
    # A token the API refuses: said before anything is copied.
    tag.write_text("sha256:" + "ab" + "1" * 62)
    r = world.inkmcp("backup-registry", "--storage", str(storage),
                     env={**env, "INKMCP_DR_HETZNER_TOKEN": "wrong-token"}, check=False)
    assert r.returncode == 1 and "Storage Box 4242: unauthorized" in r.stderr, r.stderr
    assert not (world.box_home / "registry" / tag.relative_to(storage)).exists()
    # Not a registry directory: refused, nothing sent.
    r = world.inkmcp("backup-registry", "--storage", str(tmp_path), env=env, check=False)
    assert r.returncode == 1 and "no docker/registry/v2" in r.stderr


def test_revalidate_servers_waits_for_a_fresh_validation(tmp_path: Path) -> None:
    """The restored database says every server is usable; only a validation run after the restore counts."""
    with CoolifyStandin(tmp_path / "nodes", spec=CoolifySpec.load(), validation_delay=0.1) as s:
        token = s.add_token("read", "write")
        servers = s.add_servers(3)  # usable, as the dump recorded them
        s.nodes_reachable = False  # ... but the restored master cannot reach them (e.g. key not restored)
        argv = ["dr", "revalidate-servers", "--coolify-url", s.url, "--timeout", "0.5", "--poll", "0.05",
                "--settle", "0.3"]
        env = {"INKMCP_DR_COOLIFY_API_TOKEN": token}
        r = CliRunner().invoke(app, argv, env=env)
        assert r.exit_code == 1, r.stdout
        assert "not usable after" in r.stderr and "run-1, run-2, run-3" in r.stderr
        assert "Server is not reachable" in r.stdout
        assert s.request_count(token, method="POST", path=r"/servers/[^/]+/validate") == 3
        s.nodes_reachable = True
        r = CliRunner().invoke(app, argv, env=env)
        assert r.exit_code == 0, r.stdout + r.stderr
        assert r.stdout.count("yes") == 3 and all(srv.ip in r.stdout for srv in servers)
        assert s.request_count(token, method="POST", path=r"/servers/[^/]+/validate") == 6
        assert s.request_violations == []
