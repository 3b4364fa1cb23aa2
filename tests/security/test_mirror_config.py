"""redteam4 #7: settings a tenant planted in its git mirror's config acted in InkMCP's fetch, in the host's mounts.

InkMCP fetches a project's sources into a bare mirror owned by the project's Unix user, with git run as that user
but outside the tenant's sandbox (the host's mount namespace: the host's /tmp). git reads the mirror's own config,
and the tenant's app could write it (its uid owns the mirror; the path is beside its download caches). With
`[http] cookieFile = /tmp/x` and `saveCookies = true` there, the next fetch over HTTP wrote the git server's
cookies into the HOST's /tmp, and would have sent cookies read from any host file in cookie format; `url.insteadOf`
rewrote which repository was fetched.

Fixed twice over (build/process.py step 3, build/source.py `_ensure_mirror`): every sandboxed process of the
project has the mirrors dir covered by an empty tmpfs, so mallory's app cannot reach it (her attempt fails with
EACCES, seen from her side); and a mirror whose config holds anything `git init --bare` did not write (planted
before the cover existed) is removed and fetched anew before git uses it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import secrets
import subprocess
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.security.conftest import ROOT, deploy_live, lab_exec, lab_repo, session, via_proxy
from tests.support import ServerProc, serving

pytestmark = [pytest.mark.asyncio, pytest.mark.slow, ROOT]  # slow: deploys a lab on the shared server

PROJECT = "rt4-mirrorcfg"
COOKIE = "rt4session=mallory-was-here"

# Run inside mallory's app: append a cookie jar setting to every mirror config of her project, and say what she saw.
PLANT = r"""
import os
mirrors = ARGS["mirrors"]
setting = "\n[http]\n\tcookieFile = " + ARGS["jar"] + "\n\tsaveCookies = true\n"
listing = attempt(os.listdir, mirrors)
planted = {}
for name in (listing[1] if listing[0] == "ok" else [ARGS["key"]]):
    def plant(path=mirrors + "/" + name + "/config"):
        with open(path, "a") as f:
            f.write(setting)
    planted[name] = attempt(plant)
result = {"list": listing, "planted": planted}
"""


@contextlib.contextmanager
def cookie_git_server(root: Path, source: Path) -> Iterator[int]:
    """A bare copy of `source` over git's dumb HTTP protocol, setting a cookie on every answer (a git host the
    tenant runs); yields its port."""
    bare = root / "repo.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(source), str(bare)], check=True)
    subprocess.run(["git", "-C", str(bare), "update-server-info"], check=True)

    class Handler(SimpleHTTPRequestHandler):
        def end_headers(self) -> None:
            self.send_header("Set-Cookie", f"{COOKIE}; Path=/")
            super().end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    with serving(ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))) as port:
        yield port


def mirror_of(server: ServerProc, url: str) -> Path:
    """The project's mirror of `url` (build/source.py `_mirror_key`: sha256 of the credential-free URL)."""
    key = hashlib.sha256(url.encode()).hexdigest()[:32]
    found = list((server.data_dir / "compute" / "projects").glob(f"*/mirrors/{key}"))
    assert len(found) == 1, found
    return found[0]


async def test_a_setting_planted_in_the_mirror_never_acts_in_the_fetch(server: ServerProc, repos: Path) -> None:
    """mallory deploys her lab from her own git host (HTTP, it sets a cookie), then her app tries to add a cookie
    jar in the host's /tmp to her mirror's config: refused (EACCES, her side), and her next deploy writes no jar.
    Then the same setting is put there from outside the sandbox (a mirror planted before the cover existed): the
    next fetch removes the mirror and fetches it anew, and still no jar is written; her app goes live both times."""
    web = repos / "mirrorcfg-web"
    web.mkdir()
    jar = Path("/tmp") / f"rt4-cookie-jar-{secrets.token_hex(4)}"
    try:
        with cookie_git_server(web, lab_repo(repos, "rt4-mirrorcfg-src")) as port:
            url = f"http://127.0.0.1:{port}/repo.git"
            args = {"repo_url": url, "project_name": PROJECT, "start_command": "python3 lab.py", "mode": "persistent"}
            async with session(server, "mallory") as m:
                first = await deploy_live(m, **args, env_vars={"LAB_OWNER": "mallory"})
                mirror = mirror_of(server, url)
                seen = lab_exec(server, first["url"], PLANT, mirrors=str(mirror.parent), key=mirror.name, jar=str(jar))
                assert seen["list"][0] == "EACCES", seen
                assert all(outcome[0] == "EACCES" for outcome in seen["planted"].values()), seen
                second = await deploy_live(m, **args, env_vars={"LAB_OWNER": "mallory", "ROUND": "2"})
                assert not jar.exists(), f"mallory's cookie jar was written into the host's /tmp: {jar.read_text()}"

                # planted from outside the sandbox (as before the cover existed): as mallory's uid, like hers was
                config = mirror / "config"
                owner = config.stat()
                config.write_text(config.read_text() + f"[http]\n\tcookieFile = {jar}\n\tsaveCookies = true\n")
                assert (config.stat().st_uid, config.stat().st_gid) == (owner.st_uid, owner.st_gid)
                third = await deploy_live(m, **args, env_vars={"LAB_OWNER": "mallory", "ROUND": "3"})
            assert not jar.exists(), f"the planted cookie jar was written into the host's /tmp: {jar.read_text()}"
            assert "cookiefile" not in config.read_text().lower(), config.read_text()
            assert mirror.stat().st_uid == owner.st_uid  # fetched anew, as hers
            assert len({first["deployment_id"], second["deployment_id"], third["deployment_id"]}) == 3
            assert via_proxy(server, third["url"]).text == "mallory says hi"
            assert "held settings InkMCP never writes (http.cookiefile, http.savecookies)" in server.log()
    finally:
        jar.unlink(missing_ok=True)
