"""A deploy_app of a private GitHub repo under Coolify whose deploy-key step fails leaves nothing behind: no
project, no service, no key on GitHub, no key in Coolify; the same call afterwards deploys it.

Real `inkmcp serve` on the Coolify stand-in (every request checked against Coolify's spec) with the GitHub stand-in,
over the real MCP transport. The failure is Coolify's answer to the key's registration (`POST /security/keys` 500),
after the public half was already added to the repository on GitHub: before, the refused call left its new service
row (and its project) behind, and with them a deploy key on the repository that nothing would ever remove.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from inkmcp.github.standin import StandinGitHub
from tests.e2e.coolify import CoolifyServerProc
from tests.github.test_deploy_keys_e2e import SITE, keyed_coolify_server, signed_in
from tests.github_support import deploy_live
from tests.support import call, call_error, mcp_session

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(github_standin: StandinGitHub) -> Iterator[CoolifyServerProc]:
    with keyed_coolify_server(github_standin, "inkmcp-ghkeyfail-") as srv:
        yield srv


async def test_a_failed_deploy_key_step_leaves_no_service_project_or_key(
        server: CoolifyServerProc, github_standin: StandinGitHub) -> None:
    key, _, alice = await signed_in(server, github_standin, "keyfail")
    repo = github_standin.create_repo(alice.login, "vault", private=True, files=SITE)
    standin = server.standin
    keys_before = set(standin.private_keys)
    standin.fail_next("POST", r"/security/keys$", status=500)

    async with mcp_session(server, key) as s:
        error = await call_error(s, "deploy_app", repo_url=github_standin.html_url(repo),
                                 service_type="webapp_static", project_name=f"vault-{alice.login}")
        assert "deploy key" in error.lower() or "500" in error, error
        assert (await call(s, "list_projects"))["projects"] == []  # the project and service this call made: gone
        assert repo.deploy_keys == []  # the public half it had added on GitHub: removed again
        assert set(standin.private_keys) == keys_before  # and nothing registered in Coolify

        # the same call now: deployed through a fresh key, exactly one on each side
        dep = await deploy_live(s, repo_url=github_standin.html_url(repo), service_type="webapp_static",
                                project_name=f"vault-{alice.login}")
        assert dep["commit"] == github_standin.state.head(repo)
        assert len(repo.deploy_keys) == 1 and len(set(standin.private_keys) - keys_before) == 1
    assert github_standin.request_violations == []
