"""deploy_app after update_env_vars: the call's env_vars must be what the service runs with.

Seen by driving a real `inkmcp serve` as an agent: deploy_app(env_vars={"GREETING": "hi"}), then
update_env_vars(GREETING="hello2") (the live service restarts with it), then the first deploy_app call again to
put "hi" back. That call answered `reused: true` (a no-op: the live deployment's "same commit + settings + env"
hash still matched the first call's), stored nothing, and the app kept serving "hello2" while the agent read
"live". update_env_vars now retires the services' no-op hashes, so the repeat deploys and "hi" is served.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e import apps
from tests.e2e.conftest import local_only
from tests.e2e.test_deploy import deploy_live, via_proxy
from tests.support import ServerProc, call, git_repo, mcp_session


@local_only("the no-op hash is the core's; the provider only restarts")
@pytest.mark.asyncio
async def test_deploy_after_update_env_vars_applies_the_calls_env(server: ServerProc, repos: Path) -> None:
    repo = git_repo(repos / "greeter", apps.PY_WEB)
    first = {"repo_url": str(repo), "project_name": "envredeploy", "env_vars": {"GREETING": "hi"}}
    async with mcp_session(server, server.keys["alice"]) as s:
        dep = await deploy_live(s, **first)
        assert via_proxy(server, dep["url"], "/env").json()["GREETING"] == "hi"

        upd = await call(s, "update_env_vars", project_name="envredeploy", env_vars={"GREETING": "hello2"})
        assert upd["restarted"] == ["web"], upd
        assert via_proxy(server, dep["url"], "/env").json()["GREETING"] == "hello2"

        again = await deploy_live(s, **first)
        assert not again["reused"], again  # the live service runs "hello2": not the state this call asks for
        assert again["deployment_id"] != dep["deployment_id"]
        assert via_proxy(server, again["url"], "/env").json()["GREETING"] == "hi"
        shown = await call(s, "list_env_vars", project_name="envredeploy", service_name="web", reveal=True)
        assert shown["env"]["GREETING"] == "hi", shown

        # and the same call once more is the no-op the README promises
        third = await deploy_live(s, **first)
        assert third["reused"] and third["deployment_id"] == again["deployment_id"], third


@local_only("list_env_vars reads the core's store")
@pytest.mark.asyncio
async def test_list_env_vars_shows_deploy_apps_values(server: ServerProc, repos: Path) -> None:
    """deploy_app(env_vars=...) stores them on the service; list_env_vars(project_name) answered `env: {}`, which an
    agent reads as "my env vars were lost". Without service_name it now shows each service's own values too."""
    repo = git_repo(repos / "lister", apps.PY_WEB)
    async with mcp_session(server, server.keys["alice"]) as s:
        await deploy_live(s, repo_url=str(repo), project_name="envlister", env_vars={"MSG": "yo-value-1"})
        await call(s, "update_env_vars", project_name="envlister", env_vars={"SHARED": "everyone-1"})
        listed = await call(s, "list_env_vars", project_name="envlister")
        assert listed["env"] == {"SHARED": listed["env"]["SHARED"]} and listed["env"]["SHARED"] != "everyone-1"
        assert list(listed["services"]) == ["web"] and list(listed["services"]["web"]) == ["MSG"], listed
        assert listed["services"]["web"]["MSG"] != "yo-value-1"  # masked
        revealed = await call(s, "list_env_vars", project_name="envlister", reveal=True)
        assert revealed["services"] == {"web": {"MSG": "yo-value-1"}}, revealed
        one = await call(s, "list_env_vars", project_name="envlister", service_name="web", reveal=True)
        assert one["env"] == {"SHARED": "everyone-1", "MSG": "yo-value-1"} and one["services"] == {}, one

