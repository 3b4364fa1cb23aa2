"""The JSON bodies the GitHub stand-in answers and sends, in GitHub's published shapes (every property the spec
marks required: `inkmcp.github.spec`), with real values where InkMCP reads them (ids, logins, names, `private`,
`permissions`, `default_branch`, clone URLs, refs and commits) and GitHub's URL templates for the rest."""

from __future__ import annotations

import datetime as dt
from typing import Any

from inkmcp.github.standin.state import Repo, User

EPOCH = "2024-01-01T00:00:00Z"

_USER_URLS = {"events_url": "/events{/privacy}", "followers_url": "/followers",
              "following_url": "/following{/other_user}", "gists_url": "/gists{/gist_id}",
              "organizations_url": "/orgs", "received_events_url": "/received_events", "repos_url": "/repos",
              "starred_url": "/starred{/owner}{/repo}", "subscriptions_url": "/subscriptions"}
_REPO_URLS = {
    "archive_url": "/{archive_format}{/ref}", "assignees_url": "/assignees{/user}", "blobs_url": "/git/blobs{/sha}",
    "branches_url": "/branches{/branch}", "collaborators_url": "/collaborators{/collaborator}",
    "comments_url": "/comments{/number}", "commits_url": "/commits{/sha}", "compare_url": "/compare/{base}...{head}",
    "contents_url": "/contents/{+path}", "contributors_url": "/contributors", "deployments_url": "/deployments",
    "downloads_url": "/downloads", "events_url": "/events", "forks_url": "/forks",
    "git_commits_url": "/git/commits{/sha}", "git_refs_url": "/git/refs{/sha}", "git_tags_url": "/git/tags{/sha}",
    "hooks_url": "/hooks", "issue_comment_url": "/issues/comments{/number}",
    "issue_events_url": "/issues/events{/number}", "issues_url": "/issues{/number}", "keys_url": "/keys{/key_id}",
    "labels_url": "/labels{/name}", "languages_url": "/languages", "merges_url": "/merges",
    "milestones_url": "/milestones{/number}", "notifications_url": "/notifications{?since,all,participating}",
    "pulls_url": "/pulls{/number}", "releases_url": "/releases{/id}", "stargazers_url": "/stargazers",
    "statuses_url": "/statuses/{sha}", "subscribers_url": "/subscribers", "subscription_url": "/subscription",
    "tags_url": "/tags", "teams_url": "/teams", "trees_url": "/git/trees{/sha}",
}


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def simple_user(user: User | None, login: str, web: str, api: str) -> dict[str, Any]:
    uid = user.id if user else 0
    base = f"{api}/users/{login}"
    return {"login": login, "id": uid, "node_id": f"U_{uid}", "avatar_url": f"{web}/{login}.png", "gravatar_id": "",
            "url": base, "html_url": f"{web}/{login}", "type": "User", "site_admin": False,
            **{k: base + v for k, v in _USER_URLS.items()}}


def private_user(user: User, web: str, api: str) -> dict[str, Any]:
    """`GET /user` for the token's own user: GitHub's private-user view."""
    return {**simple_user(user, user.login, web, api), "user_view_type": "private", "name": None, "company": None,
            "blog": "", "location": None, "email": None, "hireable": None, "bio": None, "public_repos": 0,
            "public_gists": 0, "followers": 0, "following": 0, "created_at": EPOCH, "updated_at": EPOCH,
            "private_gists": 0, "total_private_repos": 0, "owned_private_repos": 0, "disk_usage": 0,
            "collaborators": 0, "two_factor_authentication": False}


def _repo_common(repo: Repo, owner: User | None, web: str, api: str) -> dict[str, Any]:
    base = f"{api}/repos/{repo.full_name}"
    host = web.split("://", 1)[1]
    return {
        "id": repo.id, "node_id": f"R_{repo.id}", "name": repo.name, "full_name": repo.full_name,
        "private": repo.private, "visibility": "private" if repo.private else "public",
        "owner": simple_user(owner, repo.owner, web, api), "html_url": f"{web}/{repo.full_name}",
        "description": None, "fork": False, "url": base, **{k: base + v for k, v in _REPO_URLS.items()},
        "created_at": EPOCH, "updated_at": EPOCH, "pushed_at": now(),
        "git_url": f"git://{host}/{repo.full_name}.git", "ssh_url": f"git@{host.split(':')[0]}:{repo.full_name}.git",
        "clone_url": f"{web}/{repo.full_name}.git", "svn_url": f"{web}/{repo.full_name}", "homepage": None,
        "mirror_url": None, "size": 0, "stargazers_count": 0, "watchers_count": 0, "language": None,
        "has_issues": True, "has_projects": True, "has_downloads": True, "has_wiki": True, "has_pages": False,
        "has_discussions": False, "forks_count": 0, "archived": False, "disabled": False, "open_issues_count": 0,
        "license": None, "forks": 0, "open_issues": 0, "watchers": 0, "default_branch": repo.default_branch,
        "topics": [],
    }


def full_repository(repo: Repo, owner: User | None, web: str, api: str,
                    permissions: dict[str, bool] | None) -> dict[str, Any]:
    """`GET /repos/{owner}/{repo}`: GitHub's full-repository; `permissions` only for an authenticated caller."""
    body = {**_repo_common(repo, owner, web, api), "network_count": 0, "subscribers_count": 0}
    if permissions is not None:
        body["permissions"] = permissions
    return body


def push_event(repo: Repo, owner: User | None, pusher: User, web: str, api: str, *, branch: str, before: str,
               after: str, message: str) -> dict[str, Any]:
    """The `push` webhook payload for one branch update (`branch` a full `refs/tags/<name>`: a tag's)."""
    zero = "0" * 40
    person = {"name": pusher.login, "email": f"{pusher.id}+{pusher.login}@users.noreply.example",
              "username": pusher.login}
    commit = {"id": after, "tree_id": after, "distinct": True, "message": message, "timestamp": now(),
              "url": f"{web}/{repo.full_name}/commit/{after}", "author": person, "committer": person,
              "added": [], "removed": [], "modified": []}
    repository = {**_repo_common(repo, owner, web, api), "created_at": 1704067200, "stargazers": 0,
                  "master_branch": repo.default_branch}
    repository["owner"] = {**repository["owner"], "name": repo.owner, "email": None}
    return {
        "ref": branch if branch.startswith("refs/") else f"refs/heads/{branch}",
        "before": before, "after": after, "created": before == zero,
        "deleted": after == zero, "forced": False, "base_ref": None,
        "compare": f"{web}/{repo.full_name}/compare/{before[:12]}...{after[:12]}",
        "commits": [commit] if after != zero else [], "head_commit": commit if after != zero else None,
        "repository": repository, "pusher": {"name": pusher.login, "email": person["email"]},
        "sender": simple_user(pusher, pusher.login, web, api),
    }
