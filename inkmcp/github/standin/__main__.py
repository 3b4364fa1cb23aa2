"""`python -m inkmcp.github.standin`: the GitHub stand-in for local development.

    python -m inkmcp.github.standin --root /tmp/gh --port 8700 --user alice --repo alice/app:private \\
        --hook alice/app=http://127.0.0.1:8000/webhooks/github

prints the INKMCP_* settings that point an InkMCP server at it, and each user's personal token. Repositories
start empty: push to them with `git push http://x:TOKEN@127.0.0.1:8700/alice/app.git main` (a push through HTTP
delivers the `push` webhook to the repo's hooks, signed with --webhook-secret). `--collaborator alice/app=bob:admin`
shares a repo (admins may manage its deploy keys, `/api/v3/repos/OWNER/NAME/keys`).
"""

from __future__ import annotations

import argparse
import secrets
import signal
import threading
from pathlib import Path

from inkmcp.github.standin.app import StandinGitHub


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m inkmcp.github.standin", description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="directory for the hosted bare repositories")
    parser.add_argument("--port", type=int, default=8700)
    parser.add_argument("--client-id", default="Iv1.local-standin")
    parser.add_argument("--client-secret", default=None, help="default: a random one, printed")
    parser.add_argument("--webhook-secret", default=None, help="default: a random one, printed")
    parser.add_argument("--user", action="append", default=[], help="a user login (repeatable)")
    parser.add_argument("--repo", action="append", default=[], help="OWNER/NAME[:private] (repeatable)")
    parser.add_argument("--hook", action="append", default=[], help="OWNER/NAME=URL: push webhook (repeatable)")
    parser.add_argument("--collaborator", action="append", default=[],
                        help="OWNER/NAME=LOGIN[:admin]: read and write, or admin (may add deploy keys) (repeatable)")
    args = parser.parse_args(argv)
    client_secret = args.client_secret or secrets.token_hex(20)
    webhook_secret = args.webhook_secret or secrets.token_hex(20)
    args.root.mkdir(parents=True, exist_ok=True)
    standin = StandinGitHub(args.root, port=args.port)
    standin.add_app(args.client_id, client_secret)
    users = [standin.add_user(login) for login in args.user]
    repos = {}
    for spec in args.repo:
        name, _, flag = spec.partition(":")
        owner, _, repo = name.partition("/")
        repos[name.lower()] = standin.create_repo(owner, repo, private=flag == "private")
    for spec in args.collaborator:
        name, _, who = spec.partition("=")
        login, _, role = who.partition(":")
        user = standin.state.user_by_login(login)
        if user is None:
            parser.error(f"--collaborator {spec}: add the user with --user {login} first")
        repos[name.lower()].collaborators.add(user.id)
        if role == "admin":
            repos[name.lower()].admins.add(user.id)
    for spec in args.hook:
        name, _, url = spec.partition("=")
        standin.add_hook(repos[name.lower()], url, webhook_secret)
    standin.start()
    print(f"GitHub stand-in on {standin.url}\n")
    print(f"export INKMCP_GITHUB_URL={standin.url}\nexport INKMCP_GITHUB_API_URL={standin.api_url}")
    print(f"export INKMCP_GITHUB_CLIENT_ID={args.client_id}\nexport INKMCP_GITHUB_CLIENT_SECRET={client_secret}")
    print(f"export INKMCP_GITHUB_WEBHOOK_SECRET={webhook_secret}\n")
    for user in users:
        print(f"user {user.login} (id {user.id}): token {user.token}")
    done = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: done.set())
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    done.wait()
    standin.stop()


if __name__ == "__main__":
    main()
