"""redteam4: a tenant's own ~/.ssh/config ran its commands in InkMCP's git fetch, outside the tenant's sandbox.

InkMCP fetches a project's sources with git run as the project's Unix user, but outside the sandbox every other
tenant process starts in (build/source.py: git runs no tenant code, so it starts through `setpriv` in the git
jail): the host's mount namespace (the host's /tmp, /dev/shm and a /proc without hidepid), the host's IPC
namespace, no Landlock scope, the git jail's cgroup shared by every tenant. So nothing the tenant wrote may make
that git run a command: the mirror's hooks, fsmonitor, gitProxy and filter drivers are all turned off. But for an
ssh URL git runs `ssh`, and OpenSSH reads `~/.ssh/config` from the user's passwd home (not $HOME, which InkMCP
sets to /nonexistent): the project's home, which the tenant's own app and build steps write. A `ProxyCommand`
(or `Match exec`, `LocalCommand`, `KnownHostsCommand`) there runs at the next deploy of any ssh URL, as the
tenant, outside the sandbox: back in the host's IPC namespace (redteam3's SysV attacks: other tenants' 0666
segments, every shm id PostgreSQL needs), reaching other tenants' abstract unix sockets (the Landlock scope is not
there), other users' command lines in /proc, and the host's /tmp; a daemon it leaves lives in the git jail's
cgroup, outside the project's limits.

Fix (`_git_env`): ssh runs with `-F /dev/null`: no configuration file is read, the user's or the system's.
The test performs the attack from mallory's app and reads what her ProxyCommand left (nothing, now).
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest

from tests.security.conftest import ROOT, deploy_failure, lab_exec, lab_live, lab_repo, session, whoami
from tests.support import ServerProc

pytestmark = [pytest.mark.asyncio, pytest.mark.slow, ROOT]  # slow: deploys a lab on the shared server

PROJECT = "rt4-sshcfg"

# Run inside mallory's app: plant ~/.ssh/config with a ProxyCommand that records where it ran, and say where the
# app itself runs (its namespaces), to compare.
PLANT = r'''
import os
home = os.environ["HOME"]
os.makedirs(home + "/.ssh", mode=0o700, exist_ok=True)
marker = home + "/" + ARGS["marker"]
script = home + "/rt4-proxy.sh"
with open(script, "w") as f:
    f.write("#!/bin/sh\n{ echo ran; readlink /proc/self/ns/ipc /proc/self/ns/mnt; "
            "head -c 200 /proc/1/cmdline | tr '\\0' ' '; echo; } > " + marker + " 2>&1\nexit 1\n")
with open(home + "/.ssh/config", "w") as f:
    f.write("Host *\n    ProxyCommand /bin/sh " + script + "\n")
os.chmod(home + "/.ssh/config", 0o600)
result = {"ipc": os.readlink("/proc/self/ns/ipc"), "mnt": os.readlink("/proc/self/ns/mnt")}
'''

READ = r'''
import os
path = os.environ["HOME"] + "/" + ARGS["marker"]
result = open(path).read() if os.path.exists(path) else None
'''


@pytest.fixture(scope="module")
async def lab(server: ServerProc, repos: Path) -> dict[str, Any]:
    async with session(server, "mallory") as m:
        return await lab_live(m, lab_repo(repos, "rt4-sshcfg-lab"), "mallory", project_name=PROJECT)


async def test_a_tenants_ssh_config_never_runs_a_command_in_the_fetch(server: ServerProc,
                                                                     lab: dict[str, Any]) -> None:
    """mallory's app writes ~/.ssh/config (ProxyCommand: a script of hers that records its namespaces and reads
    /proc/1/cmdline), then deploys an ssh URL to the same project. The fetch fails (nothing answers there) and
    her script never ran: no marker in her home. Before the fix it ran at the fetch, in the host's IPC and mount
    namespaces (not her app's) and read root's command line through a /proc without hidepid."""
    marker = f"rt4-escaped-{secrets.token_hex(4)}"
    inside = lab_exec(server, lab["url"], PLANT, marker=marker)
    async with session(server, "mallory") as m:
        text = await deploy_failure(m, repo_url="ssh://git@127.0.0.1:1/rt4/nothing.git", project_name=PROJECT,
                                    service_name="fetcher", start_command="true")
    escaped = lab_exec(server, lab["url"], READ, marker=marker)
    assert escaped is None, (
        f"mallory's ProxyCommand ran in InkMCP's fetch, outside her sandbox (her app: {inside}):\n{escaped}")
    # control: the fetch really ran ssh against that address (and was refused there, not before)
    assert "ssh" in text.lower() or "connect" in text.lower() or "127.0.0.1" in text, text
    assert whoami(server, lab["url"])["owner"] == "mallory"
