"""Helpers for the stand-in's own tests (test_standin_*.py): a plain httpx client per token (not InkMCP's
Coolify client: these tests check the stand-in itself), a seeded team, and polling with a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from inkmcp.coolify.standin import CoolifyStandin, NodeServer

T = TypeVar("T")


def api(standin: CoolifyStandin, token: str, timeout: float = 5.0) -> httpx.Client:
    return httpx.Client(base_url=standin.url + "/api/v1", timeout=timeout,
                        headers={"Authorization": f"Bearer {token}", "Accept": "application/json"})


def wait_for(probe: Callable[[], T | None], timeout: float = 5.0, what: str = "condition") -> T:
    """Poll `probe` until it returns something truthy (no fixed sleeps as synchronisation)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


@dataclass
class Team:
    token: str
    client: httpx.Client
    project: str
    environment: str
    servers: list[NodeServer]

    def app_body(self, **overrides: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"project_uuid": self.project, "server_uuid": self.servers[0].uuid,
                                "environment_name": "production", "environment_uuid": self.environment,
                                "git_repository": "https://github.com/inkmcp/demo", "git_branch": "main",
                                "build_pack": "nixpacks", "ports_exposes": "3000"}
        body.update(overrides)
        return {k: v for k, v in body.items() if v is not None}

    def create_app(self, **overrides: Any) -> str:
        r = self.client.post("/applications/public", json=self.app_body(**overrides))
        assert r.status_code == 201, r.text
        return str(r.json()["uuid"])

    def deploy(self, app: str, **params: Any) -> httpx.Response:
        return self.client.post("/deploy", params={"uuid": app, **params})

    def deployment(self, uuid: str) -> dict[str, Any]:
        r = self.client.get(f"/deployments/{uuid}")
        assert r.status_code == 200, r.text
        return dict(r.json())

    def wait_deployment(self, uuid: str, timeout: float = 5.0) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            d = self.deployment(uuid)
            return d if d["status"] not in ("queued", "in_progress") else None
        return wait_for(done, timeout, f"deployment {uuid} to end")

    def app(self, uuid: str) -> dict[str, Any]:
        r = self.client.get(f"/applications/{uuid}")
        assert r.status_code == 200, r.text
        return dict(r.json())


def seed(standin: CoolifyStandin, *abilities: str, servers: int = 2) -> Team:
    """A root (or `abilities`) token, `servers` usable run servers, and a project made over the API."""
    token = standin.add_token(*(abilities or ("root",)))
    client = api(standin, token)
    nodes = standin.add_servers(servers)
    r = client.post("/projects", json={"name": "demo project"})
    assert r.status_code == 201, r.text
    project = r.json()["uuid"]
    environment = client.get(f"/projects/{project}/production").json()["uuid"]
    return Team(token, client, project, environment, nodes)
