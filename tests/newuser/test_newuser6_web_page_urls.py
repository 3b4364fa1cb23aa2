"""A repository's web page passed as repo_url (newuser6, 2026-12-03).

An agent asked to deploy "the api folder of https://github.com/owner/monorepo" passes what the browser shows for that
folder, https://github.com/owner/monorepo/tree/main/api. git asked github.com for a repository at that whole path, the
host answered "Repository not found", and the refusal said "check the owner/repository name and that the repository
exists; if it is private, pass a URL with a token that can read it, e.g. https://<token>@github.com/owner/monorepo/
tree/main/api": the agent went looking for a token. The web page of a directory, a file or a commit on github.com,
gitlab.com and bitbucket.org is now refused before any work (no fetch, no project), naming the repo_url, ref and
app_dir that deploy it; every other URL is checked as before.
"""

from __future__ import annotations

import uuid

import pytest

from inkmcp.build.source import SourcePolicy, check_repo_url
from inkmcp.errors import SourceError
from tests.support import ServerProc, call, call_error, mcp_session

ACCOUNT = f"newuser6-{uuid.uuid4().hex[:8]}"
DENY = SourcePolicy(allow_local=False)


@pytest.mark.parametrize(("url", "fix"), [
    ("https://github.com/owner/monorepo/tree/main/api",
     "pass repo_url='https://github.com/owner/monorepo.git', ref='main', app_dir='api'"),
    ("https://github.com/owner/monorepo/tree/main/services/api/",
     "pass repo_url='https://github.com/owner/monorepo.git', ref='main', app_dir='services/api'"),
    ("https://www.github.com/owner/app/tree/v2", "pass repo_url='https://github.com/owner/app.git', ref='v2'"),
    ("https://github.com/owner/app/blob/main/backend/app.py",
     "pass repo_url='https://github.com/owner/app.git', ref='main', app_dir='backend'"),
    ("https://github.com/owner/app/blob/main/README.md",
     "pass repo_url='https://github.com/owner/app.git', ref='main'"),
    ("https://github.com/owner/app/commit/0123abc", "pass repo_url='https://github.com/owner/app.git', ref='0123abc'"),
    ("https://tok-123@github.com/owner/app/tree/dev/web",
     "pass repo_url='https://<token>@github.com/owner/app.git', ref='dev', app_dir='web'"),
    ("https://gitlab.com/group/sub/app/-/tree/main/api",
     "pass repo_url='https://gitlab.com/group/sub/app.git', ref='main', app_dir='api'"),
    ("https://bitbucket.org/team/app/src/main/api/",
     "pass repo_url='https://bitbucket.org/team/app.git', ref='main', app_dir='api'"),
])
def test_a_web_page_url_is_refused_with_the_arguments_that_deploy_it(url: str, fix: str) -> None:
    with pytest.raises(SourceError) as err:
        check_repo_url(url, DENY)
    assert err.value.argument == "repo_url"
    assert "is the web page of" in err.value.message and "not the repository's git URL" in err.value.message
    assert (err.value.fix or "").startswith(fix), err.value.fix
    assert "tok-123" not in err.value.render()


@pytest.mark.parametrize("url", [
    "https://github.com/owner/app", "https://github.com/owner/app.git", "https://github.com/owner/tree.git",
    "https://gitlab.com/group/sub/app.git", "https://bitbucket.org/team/app.git",
    "https://git.example.com/owner/app/tree/main/api",  # another host: its paths are its own
])
def test_repository_urls_are_not_taken_for_web_pages(url: str) -> None:
    check_repo_url(url, DENY)


@pytest.mark.slow
@pytest.mark.asyncio
async def test_the_agent_reads_the_call_that_deploys_the_folder(server: ServerProc) -> None:
    """Through the MCP client: refused before any work (no project named after the URL's last part)."""
    async with mcp_session(server, server.keys[ACCOUNT]) as s:
        said = await call_error(s, "deploy_app", repo_url="https://github.com/owner/monorepo/tree/main/api")
        assert "is the web page of a directory in a repository on github.com" in said, said
        assert "pass repo_url='https://github.com/owner/monorepo.git', ref='main', app_dir='api'" in said, said
        assert "token" not in said, said
        assert (await call(s, "list_projects"))["projects"] == []


@pytest.mark.parametrize(("url", "fix"), [
    ("github.com/owner/app", "pass the https URL https://github.com/owner/app"),
    ("gitlab.com/group/sub/app.git", "pass the https URL https://gitlab.com/group/sub/app.git"),
    ("github.com/owner/monorepo/tree/main/api",
     "pass repo_url='https://github.com/owner/monorepo.git', ref='main', app_dir='api'"),
    ("relative/path", "pass a reachable git URL such as https://github.com/owner/repo.git"),
])
def test_a_url_without_its_scheme_is_told_its_https_form(url: str, fix: str) -> None:
    """`github.com/owner/app`, as people write a repository, was told "pass a reachable git URL such as
    https://github.com/owner/repo.git", not that its own https form is one."""
    with pytest.raises(SourceError) as err:
        check_repo_url(url, DENY)
    assert err.value.argument == "repo_url" and (err.value.fix or "").startswith(fix), err.value.render()
